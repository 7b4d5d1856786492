"""Skin that folds (issue 15): what a smile and a frown do to the skin beyond the landmarks.

Three parts, all in the avatar's rest geometry, so the one warp carries them with the face:

- cheek rise (geometry): a smile bunches the cheeks up towards the lower lids, which the
  tracker's cheek landmarks under-report; an extra expression offset, smooth over the mesh.
- fold shading: a smile deepens the nasolabial folds, a frown draws vertical lines between
  the brows; soft band-limited log-luminance layers, scaled by how far the expression goes.
- driver detail (`skin_detail: driver`): the driver's own expression wrinkles, as the
  band-passed log-luminance of the driver's face over its neutral's, both warped into the
  avatar's rest face at low resolution; clamped to a few percent, eyes, brows and lips left
  out: it carries creases, never the driver's shading, colour or features.

Both are summed into one small log-luminance image in "skin space" (the avatar's face at about
SKIN_WIDTH pixels wide), which the generators sample with the person layer's own warp maps and
apply to the warped face as a luminance ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import sparse

from engines.facegeom import (
    FACE_OVAL,
    LEFT_EYE_BROW_RING,
    LEFT_EYE_CREASE,
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    MOUTH_CLOSED,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    N_FACE,
    RIGHT_EYE_BROW_RING,
    RIGHT_EYE_CREASE,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
)
from engines.generator.interface import DriverView
from engines.generator.warp import Roi, rasterize_ids
from engines.motion.estimator import Motion

# ---------------------------------------------------------------- how far the expression goes

# Per side (the subject's right, then left): mouth corner, the cheek's centre (landmarks whose
# mean is the malar area's middle), the cheek's inner edge (beside the nose wing, down along the
# nasolabial fold to below the corner), the fold's crease from the nose wing (its end is put
# just outside the corner) and the inner brow.
CORNERS = (MOUTH_RIGHT, MOUTH_LEFT)
CHEEK_CENTRES = ((50, 101, 118, 205), (280, 330, 347, 425))
CHEEK_EDGES = ((203, 206, 216, 212), (423, 426, 436, 432))
CREASES = ((129, 206), (358, 426))
INNER_BROWS = ((55, 65, 107), (285, 295, 336))
OUTWARD = (-1.0, 1.0)  # image x direction away from the face's middle, per side
FULL_SMILE = 0.08  # corner travel (eye distances, up + half out) that counts as a full smile
FULL_FROWN = 0.04  # inner brows' travel (eye distances, down + together): a full frown


def smile_amounts(expression: np.ndarray | None) -> tuple[float, float]:
    """How far each mouth corner went up and out from the neutral (eye distances; 0 for a
    corner that went down or in): up counts whole, out half (a wide 'ee' is no smile)."""
    if expression is None:
        return 0.0, 0.0
    amounts = []
    for corner, outward in zip(CORNERS, OUTWARD, strict=True):
        dx, dy = float(expression[corner, 0]), float(expression[corner, 1])
        amounts.append(max(0.0, -dy + 0.5 * max(0.0, outward * dx)))
    return amounts[0], amounts[1]


def frown_amount(expression: np.ndarray | None) -> float:
    """How far the inner brows went down and together (eye distances, the sides' mean)."""
    if expression is None:
        return 0.0
    travel = 0.0
    for brow, outward in zip(INNER_BROWS, OUTWARD, strict=True):
        moved = expression[list(brow), :2].astype(np.float64).mean(0)
        travel += max(0.0, moved[1]) + max(0.0, -outward * moved[0])
    return travel / 2


# ---------------------------------------------------------------- cheek rise

CHEEK_RADIUS = 0.2  # the cheek bump's Gaussian radius, eye distances
CHEEK_RISE = 0.8  # the cheek's middle rises this share of the corner's smile travel
CHEEK_OUT = 0.25  # ... and moves out this share
LOWER_LID_SHARE = 0.45  # the lower lid rises this share of the cheek just below it
NOT_THE_CHEEK = sorted(
    set(
        RIGHT_EYE_UPPER
        + LEFT_EYE_UPPER
        + RIGHT_EYE_CREASE
        + LEFT_EYE_CREASE
        + RIGHT_EYE_BROW_RING
        + LEFT_EYE_BROW_RING
        + LIPS_UPPER_INNER
        + LIPS_LOWER_INNER
        + LIPS_UPPER_OUTER
        + LIPS_LOWER_OUTER
        + FACE_OVAL
    )
)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _inside_distance(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Signed distance of each point inside `polygon` (negative outside)."""
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(contour, (float(x), float(y)), True) for x, y in points])


def cheek_weights(points: np.ndarray, unit: float, neighbours: sparse.csr_matrix) -> np.ndarray:
    """(2, N_FACE): how much of each side's cheek rise each face vertex takes. A bump over
    the malar area, nothing medial of the nasolabial fold (nose, upper lip), at the face's
    outline, below the mouth corner or above the lower lid; the lower lid a share of the cheek
    under it (a smile narrows the eye from below). Smoothed over the mesh (no crease where
    the weight falls off), the lids, lips and outline held at zero."""
    xy = points[:N_FACE, :2]
    inside = _inside_distance(points[FACE_OVAL, :2], xy)
    held = np.array(NOT_THE_CHEEK)
    lowers = (RIGHT_EYE_LOWER, LEFT_EYE_LOWER)
    weights = np.zeros((2, N_FACE))
    for side in range(2):
        outward = OUTWARD[side]
        centre = xy[list(CHEEK_CENTRES[side])].mean(0)
        bump = np.exp(-0.5 * (np.linalg.norm(xy - centre, axis=1) / (CHEEK_RADIUS * unit)) ** 2)
        fold = xy[list(CHEEK_EDGES[side])]
        fold_x = np.interp(xy[:, 1], fold[:, 1], fold[:, 0])  # clamped above and below
        lateral = _smoothstep(outward * (xy[:, 0] - fold_x) / (0.08 * unit))
        lid = xy[lowers[side]]
        order = np.argsort(lid[:, 0])
        lid_y = np.interp(xy[:, 0], lid[order, 0], lid[order, 1])
        under_lid = xy[:, 1] - lid_y
        below_eye = np.where(
            under_lid >= -0.01 * unit,
            LOWER_LID_SHARE + (1.0 - LOWER_LID_SHARE) * _smoothstep(under_lid / (0.2 * unit)),
            0.0,
        )
        corner_y = xy[CORNERS[side], 1]
        above_corner = _smoothstep((corner_y + 0.03 * unit - xy[:, 1]) / (0.17 * unit))
        in_face = _smoothstep(inside / (0.2 * unit))
        this_side = outward * (xy[:, 0] - xy[[168, 6, 197, 195, 5, 4], 0].mean()) > 0
        w = bump * lateral * below_eye * above_corner * in_face * this_side
        lower_lid = np.array(lowers[side][1:-1])
        lid_weights = w[lower_lid].copy()
        w[held] = 0.0
        for _ in range(3):
            w = 0.5 * w + 0.5 * (neighbours @ w)
            w[held] = 0.0
            w[lower_lid] = lid_weights
        weights[side] = w / max(float(w.max()), 1e-9)
    return weights


def cheek_offsets(weights: np.ndarray, expression: np.ndarray | None, unit: float) -> np.ndarray:
    """(N_FACE, 2) pixel offsets raising (and widening) each cheek by its corner's smile."""
    offsets = np.zeros((N_FACE, 2))
    for side, amount in enumerate(smile_amounts(expression)):
        if amount > 0.0:
            lift = amount * unit * weights[side]
            offsets[:, 0] += OUTWARD[side] * CHEEK_OUT * lift
            offsets[:, 1] -= CHEEK_RISE * lift
    return offsets


# ---------------------------------------------------------------- skin space

SKIN_WIDTH = 144  # the avatar's face this many pixels wide in skin space
SKIN_MARGIN = 0.15  # around the face's landmarks, eye distances


@dataclass(frozen=True, slots=True)
class SkinSpace:
    """The avatar's rest face at low resolution: avatar pixels · scale − origin. The face's
    triangles are rasterised here once (the rest geometry never changes), and each pixel
    written as the mix of its triangle's corners, so warping a driver frame into it costs
    one sparse product and one remap."""

    scale: float
    origin: np.ndarray  # (2,)
    size: tuple[int, int]  # width, height
    points: np.ndarray  # (N_FACE, 2) the avatar's face landmarks in skin pixels
    unit: float  # the avatar's eye distance in skin pixels
    triangles: np.ndarray  # face triangles
    ids: np.ndarray  # 1 + the triangle at each skin pixel (0: none)
    mixes: sparse.csr_matrix  # (pixels, N_FACE): each pixel's barycentric weights
    outside: np.ndarray  # float32 (H, W): −1 where no triangle lies, else 0

    @classmethod
    def build(
        cls, points: np.ndarray, unit: float, triangles: np.ndarray, depth: np.ndarray
    ) -> SkinSpace:
        """`points`: the avatar's face landmarks (avatar pixels), `unit` its eye distance."""
        face = points[:N_FACE, :2].astype(np.float64)
        scale = SKIN_WIDTH / max(float(np.ptp(face[:, 0])), 1.0)
        low = face.min(0) - SKIN_MARGIN * unit
        high = face.max(0) + SKIN_MARGIN * unit
        origin = low * scale
        width, height = (np.ceil((high - low) * scale).astype(int) + 1).tolist()
        skin = face * scale - origin
        order = np.argsort(-depth[triangles].mean(1), kind="stable")
        ids = rasterize_ids(triangles, skin, Roi(0, 0, width, height), order)
        mixes = barycentric_mixes(ids, triangles, skin)
        outside = np.where(ids == 0, -1.0, 0.0).astype(np.float32)
        return cls(
            scale, origin, (width, height), skin, unit * scale, triangles, ids, mixes, outside
        )

    def maps_to(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(map_x, map_y) from skin space into an image whose face landmarks lie at `source`
        (N_FACE, 2): each pixel the same mix of its triangle's corners there as here, the
        same maps as its triangle's affine gives (per-triangle affines and a lookup per
        pixel took twice as long). Outside the face they point outside the image (−1)."""
        moved = self.mixes @ np.asarray(source, np.float64)
        height, width = self.ids.shape
        map_x = moved[:, 0].reshape(height, width).astype(np.float32) + self.outside
        map_y = moved[:, 1].reshape(height, width).astype(np.float32) + self.outside
        return map_x, map_y

    def polygon_mask(self, ids: list[int], grow: float = 0.0) -> np.ndarray:
        """float32 0..1: the polygon through these landmarks, grown by `grow` eye distances."""
        mask = np.zeros(self.size[::-1], np.uint8)
        cv2.fillPoly(mask, [np.round(self.points[ids] * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        radius = round(abs(grow) * self.unit)
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
            mask = (cv2.dilate if grow > 0 else cv2.erode)(mask, kernel)
        return mask.astype(np.float32) / 255.0

    def to_skin(self, map_x: np.ndarray, map_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Warp maps into the avatar (avatar pixels) → the same maps into skin space."""
        return (
            map_x * np.float32(self.scale) - np.float32(self.origin[0]),
            map_y * np.float32(self.scale) - np.float32(self.origin[1]),
        )


def barycentric_mixes(
    ids: np.ndarray, triangles: np.ndarray, points: np.ndarray
) -> sparse.csr_matrix:
    """(pixels, points) weights: each pixel of an id image (rasterize_ids, 0: none) as the
    barycentric mix of its triangle's corners (outside the triangle, at its drawn edge, the
    same extrapolation its affine makes); pixels with no triangle get an empty row."""
    height, width = ids.shape
    ys, xs = np.nonzero(ids)
    corners = triangles[ids[ys, xs] - 1]  # (P, 3)
    a, b, c = (points[corners[:, k]].astype(np.float64) for k in range(3))
    e1, e2 = b - a, c - a
    offset = np.column_stack([xs, ys]) - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) > 1e-12, det, 1.0)  # a degenerate triangle draws no pixel
    w1 = (offset[:, 0] * e2[:, 1] - offset[:, 1] * e2[:, 0]) / det
    w2 = (e1[:, 0] * offset[:, 1] - e1[:, 1] * offset[:, 0]) / det
    weights = np.column_stack([1.0 - w1 - w2, w1, w2])
    rows = np.repeat(ys * width + xs, 3)
    shape = (height * width, len(points))
    return sparse.csr_matrix((weights.ravel(), (rows, corners.ravel())), shape=shape)


BROWS = (  # each brow's hair, upper edge then lower edge back
    [70, 63, 105, 66, 107, 55, 65, 52, 53, 46],
    [300, 293, 334, 296, 336, 285, 295, 282, 283, 276],
)


def skin_mask(space: SkinSpace) -> np.ndarray:
    """Where driver detail may show (float32 0..1, feathered): the face's skin inside its
    outline, less the eyes and lids, the brows' hair and the lips (their own edges move with
    the expression, and would read as the driver's features)."""
    mask = space.polygon_mask(FACE_OVAL, -0.06)
    holes = [
        space.polygon_mask(RIGHT_EYE_UPPER + RIGHT_EYE_LOWER[-2:0:-1], 0.08),
        space.polygon_mask(LEFT_EYE_UPPER + LEFT_EYE_LOWER[-2:0:-1], 0.08),
        space.polygon_mask(BROWS[0], 0.025),
        space.polygon_mask(BROWS[1], 0.025),
        space.polygon_mask(LIPS_UPPER_OUTER + LIPS_LOWER_OUTER[-2:0:-1], 0.05),
    ]
    for hole in holes:
        mask *= 1.0 - hole
    feather = max(0.8, 0.035 * space.unit)
    return cv2.GaussianBlur(mask, (0, 0), feather)


# ---------------------------------------------------------------- fold shading

FOLD_DARKEST = 0.09  # a full smile's nasolabial crease: this much darker (log luminance)
FOLD_LIGHTER = 0.25  # the skin just inside the fold: lighter by this share of the crease
GLABELLA_DARKEST = 0.1  # a full frown's lines between the brows
MAX_FOLD_STRENGTH = 1.5  # expressions past full deepen the folds no further than this
FAINTEST_FOLD = 0.02  # fold strengths below this are not drawn at all


def _line_layer(space: SkinSpace, polyline: np.ndarray, sigma: float) -> np.ndarray:
    """A soft line along `polyline` (skin pixels): a Gaussian profile of `sigma` eye
    distances across it, peak 1."""
    line = np.zeros(space.size[::-1], np.float32)
    cv2.polylines(line, [np.round(polyline * 16).astype(np.int32)], False, 1.0, 1, cv2.LINE_AA, 4)
    soft = cv2.GaussianBlur(line, (0, 0), max(0.6, sigma * space.unit))
    return soft / max(float(soft.max()), 1e-6)


def _curve(points: np.ndarray, samples: int = 24) -> np.ndarray:
    """A smooth curve through the points (Catmull-Rom, ends held)."""
    padded = np.vstack([points[:1], points, points[-1:]])
    out = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1 : i + 3]
        for t in np.linspace(0.0, 1.0, samples // (len(padded) - 3), endpoint=False):
            out.append(
                0.5
                * (
                    2 * p1
                    + (-p0 + p2) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t
                    + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
                )
            )
    out.append(padded[-2])
    return np.array(out)


def fold_layers(space: SkinSpace) -> np.ndarray:
    """(3, H, W) float32 log-luminance per unit strength: the right and left nasolabial folds
    (a dark crease from the nose wing to just outside the mouth corner, lighter skin just
    inside it) and the glabella lines (two short vertical creases between the brows)."""
    p, unit = space.points, space.unit
    layers = np.zeros((3, *space.size[::-1]), np.float32)
    for side in range(2):
        out = np.array([OUTWARD[side], 0.0])
        end = p[CORNERS[side]] + (out * 0.09 + (0.0, 0.0)) * unit
        crease = np.vstack([p[list(CREASES[side])], end])
        curve = _curve(crease)
        dark = _line_layer(space, curve, 0.02)
        light = _line_layer(space, curve - out * 0.04 * unit, 0.035)
        layers[side] = -FOLD_DARKEST * dark + FOLD_LIGHTER * FOLD_DARKEST * light
    heads = p[[INNER_BROWS[0][0], INNER_BROWS[1][0]]]
    middle = heads.mean(0)
    for outward in OUTWARD:
        top = middle + np.array([outward * 0.065, -0.1]) * unit
        bottom = middle + np.array([outward * 0.045, 0.06]) * unit
        layers[2] -= GLABELLA_DARKEST * _line_layer(space, np.vstack([top, bottom]), 0.012)
    return layers


def fold_strengths(expression: np.ndarray | None) -> np.ndarray:
    """(3,) how deep each fold layer shows: each corner's smile, the frown."""
    right, left = smile_amounts(expression)
    frown = frown_amount(expression)
    raw = np.array([right / FULL_SMILE, left / FULL_SMILE, frown / FULL_FROWN])
    return np.clip(raw, 0.0, MAX_FOLD_STRENGTH)


# ---------------------------------------------------------------- detail from the driver

DETAIL_FINE = 0.008  # band-pass: detail finer than this (eye distances) is dropped (pores)...
DETAIL_COARSE = 0.035  # ... and coarser than this (shading, the face's own relief)
DETAIL_LIMIT = 0.08  # the ratio's log is clamped to ± this (a few percent)
NEUTRAL_FRAMES = 30  # the neutral is the mean of about this many recent near-neutral frames
STATIC_EDGE = 0.1  # where the neutral itself has band-passed contrast beyond about this
# (glasses' frames, moles, the nostrils' rims), a small misregistration would read as a
# crease: the driver detail fades there
NEUTRAL_EXPRESSION = 0.03  # near neutral: no landmark moved more than this (eye distances)
NEUTRAL_TURN_DEG = 12.0
DETAIL_TURN_DEG = (15.0, 30.0)  # the driver's detail fades out over this yaw / pitch
DETAIL_EASE = 0.6  # per update, the detail moves this share towards the new one (less flicker)
# The driver's face is warped and band-passed on every this many frames, the last detail held
# between: 15 updates a second at 30 fps follow a wrinkle's coming and going, and the warp was
# the skin's whole cost (1.6 ms a frame at 720p, a sixth of the generator).
DETAIL_EVERY = 2


def band_pass(grey: np.ndarray, unit: float) -> np.ndarray:
    """Log luminance band-passed at wrinkle scale (difference of Gaussians)."""
    log = np.log(grey.astype(np.float32) + 8.0)
    fine = cv2.GaussianBlur(log, (0, 0), max(0.5, DETAIL_FINE * unit))
    coarse = cv2.GaussianBlur(log, (0, 0), DETAIL_COARSE * unit)
    return fine - coarse


def near_neutral(motion: Motion) -> bool:
    """Whether the driver's face now shows (about) no expression: the frames its neutral
    skin is learnt from."""
    if motion.state != "tracked" or motion.expression is None:
        return False
    moved = np.abs(motion.expression[:N_FACE, :2]).max()
    return bool(
        moved < NEUTRAL_EXPRESSION
        and motion.mouth_open < MOUTH_CLOSED
        and min(motion.eye_open) > 0.8
        and max(abs(motion.yaw), abs(motion.pitch)) < NEUTRAL_TURN_DEG
    )


def _facing(motion: Motion) -> float:
    """1 while the driver faces the camera, fading to 0 as it turns away (its far cheek
    then hides, and the warp into the rest face stretches what is left)."""
    turned = max(abs(motion.yaw), abs(motion.pitch))
    low, high = DETAIL_TURN_DEG
    return 1.0 - float(_smoothstep(np.array((turned - low) / (high - low))))


@dataclass(slots=True)
class DriverDetail:
    """The driver's expression wrinkles in skin space (skin_detail: driver): its band-passed
    log luminance less its neutral's. The neutral is learnt per generator from near-neutral
    frames and forgotten whenever the face is lost."""

    space: SkinSpace
    mask: np.ndarray
    neutral: np.ndarray | None = None
    neutral_frames: int = 0
    last: np.ndarray | None = field(default=None, repr=False)
    forget_requested: bool = False
    frames_seen: int = 0
    weight: np.ndarray | None = field(default=None, repr=False)  # see update

    def reset(self) -> None:
        self.neutral, self.neutral_frames, self.last, self.frames_seen = None, 0, None, 0
        self.forget_requested = False

    def forget(self) -> None:
        """Learn the neutral anew from the next frames (the user recalibrated). Any thread:
        the frame loop's next update does it."""
        self.forget_requested = True

    def warp_driver(self, driver: DriverView) -> np.ndarray:
        """The driver frame's face band-passed in skin space (float32)."""
        points = driver.points[:N_FACE, :2].astype(np.float64)
        low = np.floor(points.min(0)).astype(int) - 2
        high = np.ceil(points.max(0)).astype(int) + 3
        x0, y0 = np.maximum(low, 0)
        x1, y1 = min(high[0], driver.image.shape[1]), min(high[1], driver.image.shape[0])
        crop = driver.image[y0:y1, x0:x1]
        # grey before shrinking: area-averaging one channel, not three, was most of the cost
        grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
        # about skin space's own scale first (area-averaged: no aliasing), then the warp
        shrink = min(1.0, 1.25 * SKIN_WIDTH / max(float(np.ptp(points[:, 0])), 1.0))
        small = cv2.resize(grey, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        source = (points - (x0, y0) + 0.5) * shrink - 0.5
        map_x, map_y = self.space.maps_to(source)
        warped = cv2.remap(small, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return band_pass(warped, self.space.unit)

    def update(self, motion: Motion, driver: DriverView | None) -> np.ndarray | None:
        """This frame's detail (log luminance in skin space, masked, clamped), or None while
        there is none to show (no driver frame, no neutral learnt yet, the face turned away)."""
        if motion.state != "tracked" or self.forget_requested:
            self.reset()
        if motion.state != "tracked":
            return None
        if driver is None:
            return self.last
        self.frames_seen += 1
        if self.last is not None and self.frames_seen % DETAIL_EVERY:
            return self.last  # wrinkles come and go over a tenth of a second or more
        learns = near_neutral(motion)
        if not learns and (self.neutral is None or _facing(motion) <= 0.0):
            self.last = None  # no detail to show: the warp would be thrown away
            return None
        detail = self.warp_driver(driver)
        if learns:
            self.neutral_frames = min(self.neutral_frames + 1, NEUTRAL_FRAMES)
            if self.neutral is None:
                self.neutral = detail
            else:
                self.neutral += (detail - self.neutral) / self.neutral_frames
            # where the neutral itself has strong edges (glasses, moles, nostrils) the
            # detail fades: the mask times that, kept until the neutral next changes
            self.weight = self.mask / (1.0 + (self.neutral / STATIC_EDGE) ** 2)
        if self.neutral is None:
            return None
        facing = _facing(motion)
        if facing <= 0.0:
            self.last = None
            return None
        ratio = np.clip(detail - self.neutral, -DETAIL_LIMIT, DETAIL_LIMIT)
        ratio *= self.weight * facing
        if self.last is not None:
            ratio = self.last + DETAIL_EASE * (ratio - self.last)
        self.last = ratio
        return ratio


# ---------------------------------------------------------------- the generators' part


@dataclass(slots=True)
class SkinShading:
    """Per generator: the skin space, the fold layers and the driver's detail; per frame the
    one log-luminance image (skin space) to apply to the warped face, or None."""

    space: SkinSpace
    folds: np.ndarray
    driver: DriverDetail | None

    @classmethod
    def build(
        cls,
        points: np.ndarray,
        unit: float,
        triangles: np.ndarray,
        depth: np.ndarray,
        from_driver: bool,
    ) -> SkinShading:
        space = SkinSpace.build(points, unit, triangles, depth)
        detail = DriverDetail(space, skin_mask(space)) if from_driver else None
        return cls(space, fold_layers(space), detail)

    def frame(self, motion: Motion, driver: DriverView | None) -> np.ndarray | None:
        strengths = fold_strengths(motion.expression)
        shading = None
        if strengths.max() > FAINTEST_FOLD:
            shading = np.tensordot(strengths.astype(np.float32), self.folds, axes=1)
        if self.driver is not None:
            detail = self.driver.update(motion, driver)
            if detail is not None:
                shading = detail if shading is None else shading + detail
        return shading


def face_box(dest: np.ndarray, roi: Roi) -> tuple[slice, slice] | None:
    """The ROI's slices around the face's landmarks (dest: working pixels), or None."""
    face = dest[:N_FACE, :2] - (roi.x0, roi.y0)
    x0, y0 = np.floor(face.min(0)).astype(int) - 2
    x1, y1 = np.ceil(face.max(0)).astype(int) + 3
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, roi.width), min(y1, roi.height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return slice(y0, y1), slice(x0, x1)


def apply_shading(
    person: np.ndarray,
    map_x: np.ndarray,
    map_y: np.ndarray,
    shading: np.ndarray,
    space: SkinSpace,
    box: tuple[slice, slice],
) -> None:
    """Multiply the warped person's colour (BGRA uint8, in place) by exp(shading) sampled
    through the person's warp maps (CPU)."""
    sx, sy = space.to_skin(map_x[box], map_y[box])
    log = cv2.remap(shading, sx, sy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    ratio = np.exp(log)
    # Colour out and back whole, through OpenCV (numpy's strided reads and writes of the
    # BGRA's colour channels were most of this function's time).
    view = person[box]
    colour = cv2.multiply(
        cv2.cvtColor(view, cv2.COLOR_BGRA2BGR), cv2.merge([ratio] * 3), dtype=cv2.CV_32F
    )
    colour += 0.5  # then rounded: never below 0 (a ratio is positive), so only capped
    shaded = np.minimum(colour, 255.0).astype(np.uint8)
    view[:] = cv2.merge([shaded, cv2.extractChannel(view, 3)])
