"""The mesh generator (`generator.type: mesh`): the avatar photo come alive.

Per frame: the avatar's 3D mesh takes the driver's pose-free expression (scaled to the
avatar's face), its lids close by the blink signal, then the whole head turns, moves and
scales around the avatar's head centre; hair and ears with it (one rigid body), the neck
partly, and the whole person (neck, shoulders, the torso less and less) follows its
translation and scale, the border not at all.
The image is rendered by a piecewise-affine warp of the avatar (far triangles first), the
eye and mouth holes are filled with the avatar's own eyeballs (the iris moved by the gaze)
and a mouth interior, and the person is composited over a still background.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import sparse

from engines.facegeom import (
    CHIN,
    LEFT_EYE_BROW_RING,
    LEFT_EYE_CREASE,
    LEFT_EYE_LOWER,
    LEFT_EYE_UPPER,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    LOWER_LIP_INNER,
    N_FACE,
    RIGHT_EYE_BROW_RING,
    RIGHT_EYE_CREASE,
    RIGHT_EYE_LOWER,
    RIGHT_EYE_UPPER,
    RIGID,
    angles_to_rotation,
    eye_distance,
    resting_mouth_gap,
)
from engines.generator.avatar import load_avatar
from engines.generator.avatar_prep import PreparedAvatar, paint_out_person
from engines.generator.config import MeshGeneratorConfig
from engines.generator.interface import DriverView
from engines.generator.mesh import AvatarMesh, HeadProxy, build_mesh, fit_head
from engines.generator.skin import (
    SkinShading,
    apply_shading,
    cheek_offsets,
    cheek_weights,
    face_box,
)
from engines.generator.warp import Roi, signed_areas, source_maps, warp_image
from engines.motion.estimator import Motion

EYES = (  # (upper margin, lower margin, crease, iris landmark): the subject's right, left
    (RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, RIGHT_EYE_CREASE, 468),
    (LEFT_EYE_UPPER, LEFT_EYE_LOWER, LEFT_EYE_CREASE, 473),
)
BROW_RINGS = (RIGHT_EYE_BROW_RING, LEFT_EYE_BROW_RING)
LID_DRIVEN = sorted(
    set(
        RIGHT_EYE_UPPER
        + RIGHT_EYE_LOWER
        + RIGHT_EYE_CREASE
        + LEFT_EYE_UPPER
        + LEFT_EYE_LOWER
        + LEFT_EYE_CREASE
    )
)
# How far each ring above the eye travels with the lid margin: the lashes and the lid's
# edge come down whole, the skin above them stretches (a closed lid, not a squashed eye).
CREASE_TRAVEL, BROW_RING_TRAVEL = 0.9, 0.35
LID_OVERSHOOT = 1.2  # a shut lid tucks just past the lower one: no sliver of eye remains
OWN_INTERIOR_UNTIL = 0.15  # jaw drop (eye distances) by which the own interior gives way
OWN_TEETH_LIGHT = 0.5  # an own upper row shows teeth from this share of the palette's teeth L*
# Synthetic upper teeth in a parted-lips avatar's dark gap: this much higher behind the lip
# (eye distances; its gap showed none), and the own interior gives way to them by this share
# of OWN_INTERIOR_UNTIL (it is only shade): mouth_r as without them (talk_c 0.953 → 0.953,
# talk_blinks_a 0.811 → 0.810 on photo_woman_bun; drawn at the lip and slowly: 0.932, 0.817)
GAP_TEETH_TUCK = 0.02
GAP_FADE = 0.7
GUM_REACH = 0.12  # how far the upper row goes on above the upper lip, per mouth width
GUM_SHADE = 0.75  # gum: the lip's colour this much darker
ROW_GAP_DARKER = 0.6  # the gap between rows of teeth: this much darker than the teeth
# Teeth, seen from the front: each tooth's arc length along the dental arch from the middle
# (per half mouth width: central and lateral incisor, canine, premolars, first molar), its
# crown's height and how far its edge reaches past the resting lip line (eye distances).
# The upper edges lie deep: a driver's upper lip often comes down over the skull-fixed row
# as they talk, and a mouth open with no teeth in it read to the face tracker as shut on a
# statue-grey photo (mouth_r on its head-turn clip 0.67 → 0.74 at these depths). The crowns
# are as much longer (nearer life size): the gum line stays where it was, above the lip line.
UPPER_ARCS = (0.34, 0.26, 0.28, 0.26, 0.25, 0.3)
UPPER_CROWNS = (0.168, 0.14, 0.154, 0.126, 0.119, 0.112)
UPPER_EDGES = (0.117, 0.1, 0.104, 0.081, 0.063, 0.045)  # below the lip line
LOWER_ARCS = (0.22, 0.24, 0.28, 0.27, 0.26, 0.3)
LOWER_CROWNS = (0.09, 0.09, 0.1, 0.085, 0.08, 0.075)
LOWER_EDGES = (0.03, 0.03, 0.025, 0.03, 0.035, 0.04)  # the top, below the lip line
ARCH_RADIUS = 1.05  # the dental arch's radius, per half mouth width: teeth recede with it
ROW_REACH = 1.2  # each row goes on (darker, fading) this far past the corners (per half
# width): a smile's wider opening shows it turning away, not its end
GUM_ABOVE = 0.2  # how far (eye distances) the gum goes on past the crowns
BITE_OVERLAP = 0.01  # eye distances the lower incisors reach up behind the upper ones
JAW_TEETH_TRAVEL = 0.85  # the lower teeth drop this share of the lower lip's drop (they sit
# nearer the jaw's hinge than the lip)
LOWER_ROW_SHADE = 0.8  # the lower row lies in the upper lip's and upper row's shadow
LIP_SHADOW = 0.02  # eye distances under the lip's edge that the teeth lie in its shadow
LIP_SHADOW_DEPTH = 0.35  # ... this much darker at the edge
UPPER_CLEAR = 0.3  # share of the opening above the lower lip the upper teeth leave dark
TRANSLUCENT = np.array([0.72, 0.68, 0.64])  # a tooth's translucent edge: its colour times
# this (BGR: a cool grey, the dark cavity seen through it)
TEETH_LIGHT = (0.35, 52.0)  # the teeth's L* from the skin's: lighter, less spread
TEETH_CHROMA = 0.5  # the teeth's share of the skin's colourfulness
GAP_DARKER = 0.4  # the gap between two teeth, at full detail: this much darker
SKIN_DETAIL_FULL = 6.0  # grey levels of fine skin texture (a photo's) for full-detail teeth
LASH_LINE = 0.08  # a shut lid's lash line, thickness per eye width
LASH_OVER_EYE = 0.05  # ... drawn again over the eye painted under a shut lid (as it shows)
LID_SKIN = 0.6  # a shut lid's colour: this share the skin under the eye, the rest its own
SHUT_FROM = 0.5  # lid closure from which the shut lid's own skin fades in
GAZE_LOWERS_LIDS = 4.0  # upper lid closure per eye width the iris looks down (up to the max)
MAX_GAZE_LOWERING = 0.35
OPENS_FROM = 0.8  # an eye read this open (of its recent level) starts to show its widening
WINK_OTHER_OPEN = 0.75  # one eye shuts alone only while the other reads this open
WINK_BELOW = 0.35  # ... and it reads this shut: a far eye narrowed by a head turn is no wink
LIDS_ALIKE = 0.5  # how far each lid short of shut moves towards the two lids' mean
# Vertices whose place is the signal itself (lid edges, inner lips): a fold is undone by
# moving their neighbours first.
KEEP_IN_PLACE = np.array(
    sorted(set(RIGHT_EYE_UPPER + LEFT_EYE_UPPER + LIPS_UPPER_INNER + LIPS_LOWER_INNER))
)
# ... less so towards the corners, where the lids meet anyway (no fold at the corners)
LID_PROFILE = np.sin(np.linspace(0.0, np.pi, len(RIGHT_EYE_UPPER))) ** 0.3
NECK = np.array([0.0, 0.8, 1.0])  # the joint the head turns on, from the face's centre (eye
# distances): below it and behind, where the spine meets the skull
SLIVER = 0.01  # a face triangle under this share of the median one's area is a sliver
FACE_HEIGHT_SHARE = 0.55  # at most this share of the output height is face (chin to brow)


# ---------------------------------------------------------------- framing and background


@dataclass(frozen=True, slots=True)
class Framing:
    """avatar pixels → output pixels: uniform scale, then offset."""

    scale: float
    offset: np.ndarray  # (2,)

    def matrix(self) -> np.ndarray:
        return np.float32([[self.scale, 0, self.offset[0]], [0, self.scale, self.offset[1]]])

    def apply(self, points: np.ndarray) -> np.ndarray:
        out = np.array(points, np.float64)
        out[:, :2] = out[:, :2] * self.scale + self.offset
        if out.shape[1] > 2:
            out[:, 2] *= self.scale
        return out


def frame_avatar(points: np.ndarray, size: tuple[int, int], width: int, height: int) -> Framing:
    """At the avatar's own size (an odd side one pixel short: video sizes are even), one
    output pixel per avatar pixel. Else fill the output with the avatar (cover), unless that
    would make the face too big; the face centred across and a little above the middle."""
    img_w, img_h = size
    if 0 <= img_w - width <= 1 and 0 <= img_h - height <= 1:
        return Framing(1.0, np.zeros(2))
    face = points[:N_FACE, :2]
    face_height = float(np.ptp(face[:, 1]))
    scale = min(max(width / img_w, height / img_h), FACE_HEIGHT_SHARE * height / face_height)
    center = face.mean(0)
    offset = np.array([width / 2 - center[0] * scale, 0.46 * height - center[1] * scale])
    for axis, (out, src) in enumerate(((width, img_w), (height, img_h))):
        span = src * scale  # no gap where the image can cover; centred where it cannot
        offset[axis] = np.clip(offset[axis], out - span, 0.0) if span >= out else ((out - span) / 2)
    return Framing(scale, offset)


def _cover(image: np.ndarray, width: int, height: int) -> np.ndarray:
    scale = max(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


def build_background(
    config: MeshGeneratorConfig, avatar: PreparedAvatar, framing: Framing, width: int, height: int
) -> np.ndarray:
    """The still background of the output (what shows around and behind the person)."""
    if config.background == "color":
        return np.full((height, width, 3), config.background_bgr(), np.uint8)
    if config.background == "image":
        return _cover(
            load_avatar(str(config.background_image), "generator.background_image"), width, height
        )
    plate = avatar.plate
    blurred = cv2.GaussianBlur(_cover(plate, width, height), (0, 0), 25)
    if config.background == "blur":
        sharp = cv2.GaussianBlur(plate, (0, 0), max(plate.shape[:2]) / 60)
    else:
        sharp = plate
    inside = cv2.warpAffine(
        np.full(plate.shape[:2], 255, np.uint8),
        framing.matrix(),
        (width, height),
        flags=cv2.INTER_LINEAR,
    )
    framed = cv2.warpAffine(
        sharp,
        framing.matrix(),
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return _blend(blurred, framed, inside)


BROWS_TOP = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # FaceMesh's brows, upper edge


def complete_head(avatar: PreparedAvatar, head: HeadProxy) -> PreparedAvatar:
    """The head never loses its skull: where the person mask misses hair (dark hair on a
    dark background), the head proxy's silhouette above the brows still counts as head,
    and the plate is painted out again under it."""
    brows = avatar.points[BROWS_TOP, :2].astype(np.float64).mean(0)
    proxy = head.mask(avatar.person.shape, above=float((brows - head.center[:2]) @ head.up))
    proxy = cv2.GaussianBlur(proxy, (0, 0), 1.0)
    person = np.maximum(avatar.person, proxy)
    if np.count_nonzero(person > avatar.person.astype(np.int16) + 64) == 0:
        return avatar
    return replace(avatar, person=person, plate=paint_out_person(avatar.image, person))


PLATE_COMPLETES_BELOW = 0.75


def unmix_person(avatar: PreparedAvatar) -> PreparedAvatar:
    """The avatar with the person's own colours where its mask is soft (hair, edges), and a
    plate that completes them. There the avatar's pixels I mix the person with what was
    behind: F = (I − (1 − α)·plate) / α un-mixes them, and where F had to be clipped the
    plate takes the rest, plate' = (I − α·F) / (1 − α), where α < PLATE_COMPLETES_BELOW (above
    it the division blows the rest up into a line that shows when the head moves off it).
    Composited back, F over plate' is the avatar's own picture at rest (≥ 40 dB in the head),
    and a moving edge no longer drags the old background along."""
    alpha = avatar.person.astype(np.float32)[:, :, None] / 255.0
    image = avatar.image.astype(np.float32)
    plate = avatar.plate.astype(np.float32)
    soft = (alpha > 0.0) & (alpha < 1.0)
    unmixed = (image - (1.0 - alpha) * plate) / np.maximum(alpha, 1.0 / 255.0)
    person = np.where(soft, np.clip(np.rint(unmixed), 0, 255), image)
    completed = (image - alpha * person) / np.maximum(1.0 - alpha, 1.0 / 255.0)
    completes = soft & (alpha < PLATE_COMPLETES_BELOW)
    plate = np.where(completes, np.clip(np.rint(completed), 0, 255), plate)
    return replace(avatar, image=person.astype(np.uint8), plate=plate.astype(np.uint8))


def _colour_and_alpha(bgra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A BGRA image's colour and alpha as contiguous arrays, for _blend: handed the strided
    views bgra[:, :, :3] and bgra[:, :, 3], OpenCV first copies them pixel by pixel (three
    quarters of the frame's blend went on that)."""
    return cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR), cv2.extractChannel(bgra, 3)


def _blend(background: np.ndarray, foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """background · (1 − α) + foreground · α for an uint8 mask α, in 8-bit arithmetic (the
    frame's hottest loop: about twice as fast as per-pixel float weights)."""
    weight = cv2.cvtColor(alpha, cv2.COLOR_GRAY2BGR) if foreground.ndim == 3 else alpha
    front = cv2.multiply(foreground, weight, scale=1.0 / 255.0)
    back = cv2.multiply(background, cv2.bitwise_not(weight), scale=1.0 / 255.0)
    return cv2.add(front, back)


# ---------------------------------------------------------------- eyes


class LidState:
    """Blink signal → lid closure (0 open .. 1 shut), with hysteresis: the tracker never
    reads a closed eye as 0 (more like 0.2–0.3 of open), and one threshold would flicker.
    The lid shuts once the driver's eye reads under half open: a half blink (0.45–0.55 of
    open, a fifth of the dev clips' blinks) shown as a lid three quarters down read to the
    tracker as an eye still open. It opens again just above: held shut until nearly fully
    open, two blinks with a half-open eye between were shown as one long one."""

    CLOSE_BELOW = 0.5
    OPEN_ABOVE = 0.56
    SHUT_READING = 0.3  # what a shut eye reads (relative to the neutral's opening)
    MAX_PARTIAL = 0.85
    MAX_WIDENING = 0.35  # eyes opened wider than the neutral's raise the lids (surprise; at
    # 0.3, a grin clip whose frame 0 squints widened its eyes short of the real ones)

    def __init__(self) -> None:
        self.closed = False

    def closure(self, eye_open: float, expected: float = 1.0, shown: float | None = None) -> float:
        """`expected`: what an open eye reads now (less than 1 while the eyes look down: the
        lid follows the eye down, and that is no blink). `shown`: the openness the lid shows
        short of shut, where it is not `eye_open` (see lid_closures)."""
        reading = eye_open / max(expected, 1e-6)
        if self.closed and reading > self.OPEN_ABOVE:
            self.closed = False
        elif not self.closed and reading < self.CLOSE_BELOW:
            self.closed = True
        if self.closed:
            return 1.0
        return self.partial(eye_open if shown is None else shown)

    def partial(self, eye_open: float) -> float:
        """The lid as low as the driver's, short of shut."""
        partial = (1.0 - eye_open) / (1.0 - self.SHUT_READING)
        return float(np.clip(partial, -self.MAX_WIDENING, self.MAX_PARTIAL))


def lid_closures(
    lids: Sequence[LidState],
    eye_open: Sequence[float],
    gaze_down: float,
    open_level: Sequence[float] = (1.0, 1.0),
) -> list[float]:
    """Both lids' closure (0 open .. 1 shut), read together: the upper lids follow the eyes
    down (a look down lowers both, and is read as no blink); one eye shuts alone only while
    the other is clearly open and it reads well shut (a wink stays a wink; one lid read lower
    than the other while looking down, or the far eye narrowed by a turn, is no wink), and
    lids short of shut move alike (the tracker reads the two
    eyes unevenly, a face rarely moves them so).

    `open_level`: per eye, how open the driver's open eye has lately read (Motion's
    eye_open_level): shutting is read against it, and an open eye shows how much wider than
    the neutral's it is (_shown_openness)."""
    follow = float(np.clip(GAZE_LOWERS_LIDS * gaze_down, 0.0, MAX_GAZE_LOWERING))
    expected = 1.0 - follow
    eye_open = [e / max(level, 1e-6) for e, level in zip(eye_open, open_level, strict=True)]
    shown = [_shown_openness(e, level) for e, level in zip(eye_open, open_level, strict=True)]
    was_shut = [lid.closed for lid in lids]
    closures = [
        lid.closure(e, expected, own) for lid, e, own in zip(lids, eye_open, shown, strict=True)
    ]
    shut = [lid.closed for lid in lids]
    if shut[0] != shut[1] and _blink_read_unevenly(eye_open, expected, shut.index(True)):
        for lid in lids:
            lid.closed = True
        return [1.0, 1.0]
    if shut[0] != shut[1]:
        alone = shut.index(True)
        winks = was_shut[alone] or eye_open[alone] / expected < WINK_BELOW
        if not winks:
            lids[alone].closed = False  # no wink begins short of shut
        if not winks or eye_open[1 - alone] / expected < WINK_OTHER_OPEN:
            closures[alone] = lids[alone].partial(shown[alone])
            shut[alone] = False
    moving = [i for i in range(2) if not shut[i]]
    if len(moving) == 2:
        mean = (closures[0] + closures[1]) / 2
        closures = [c + LIDS_ALIKE * (mean - c) for c in closures]
    return [c if shut[i] or follow <= 0.0 else max(c, follow) for i, c in enumerate(closures)]


def _shown_openness(reading: float, level: float) -> float:
    """The openness a lid short of shut shows, from the eye's reading against its recent
    open level: as read while it closes (a lid on its way down or up, shown as before, as
    the tracker reads a blink), and as wide as the driver's eye against the neutral once it
    is open (a narrowed neutral, then the eyes opened: the avatar opens its own wider).
    Continuous from 0.8 of open to open, so a lid never jumps."""
    wider = max(0.0, level - 1.0) * float(
        np.clip((reading - OPENS_FROM) / (1.0 - OPENS_FROM), 0, 1)
    )
    return reading + wider


def _blink_read_unevenly(eye_open: Sequence[float], expected: float, alone: int) -> bool:
    """Whether one eye read shut while the other is not clearly open is a blink of both: the
    two eyes read together under the closing threshold. The tracker reads the two eyes of a
    blink unevenly (one under half open, the other just over it: a blink as the eval counts
    blinks, on the mean of both), and the rule for a wink that is none left both lids short
    of shut: no blink at all."""
    if eye_open[1 - alone] / expected >= WINK_OTHER_OPEN:
        return False  # the other eye is open: a wink, or a far eye narrowed by a turn
    return (eye_open[0] + eye_open[1]) / 2 / expected < LidState.CLOSE_BELOW


@dataclass(frozen=True, slots=True)
class Eyeball:
    """One eye's content behind the lids, in avatar pixels: the white with the iris painted
    out, and the iris as a patch with its own alpha (only the part the lids showed)."""

    origin: np.ndarray  # (2,) top-left of the sclera patch
    sclera: np.ndarray  # BGR
    iris: np.ndarray  # BGRA, centred on the iris
    iris_origin: np.ndarray  # (2,) top-left of the iris patch: whole pixels, so that at rest
    # the iris lands on its own pixels, unresampled
    corners: tuple[int, int]  # landmark indices: outer, inner
    width: float  # corner to corner
    shut: np.ndarray  # BGR, the sclera patch's place in the shut lids' texture
    lash: np.ndarray  # BGR, the lashes' colour (the shut lid's lash line)


def build_eyeball(
    image: np.ndarray,
    points: np.ndarray,
    upper: list[int],
    lower: list[int],
    iris: int,
    shut: np.ndarray,
) -> Eyeball:
    """`shut`: the avatar with its lids shut (see shut_lid_texture)."""
    corners = (upper[0], upper[-1])
    opening = np.vstack([points[upper, :2], points[lower[-2:0:-1], :2]])
    width = float(np.linalg.norm(points[corners[0], :2] - points[corners[1], :2]))
    margin = 0.5 * width
    x0, y0 = np.floor(opening.min(0) - margin).astype(int).clip(0)
    x1, y1 = np.ceil(opening.max(0) + margin).astype(int)
    x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
    patch = image[y0:y1, x0:x1].copy()
    origin = np.array([x0, y0], np.float64)
    center = points[iris, :2]
    radius = max(
        2.0, float(np.mean(np.linalg.norm(points[iris + 1 : iris + 5, :2] - center, axis=1)))
    )
    local_open = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(
        local_open, [np.round((opening - origin) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4
    )
    disc = np.zeros(patch.shape[:2], np.uint8)
    cv2.circle(
        disc,
        tuple(np.round((center - origin) * 16).astype(int)),
        round(radius * 1.15 * 16),
        255,
        -1,
        cv2.LINE_AA,
        4,
    )
    iris_alpha = cv2.min(disc, local_open)
    painted_out = cv2.dilate(iris_alpha, np.ones((3, 3), np.uint8))
    sclera = cv2.inpaint(patch, painted_out, 3, cv2.INPAINT_TELEA)
    # The iris layer covers every pixel the inpainting changed, fading out only over the
    # untouched white beyond: over the white the eye at rest is the avatar's own pixels.
    alpha = cv2.GaussianBlur(cv2.dilate(painted_out, np.ones((3, 3), np.uint8)), (3, 3), 0)
    alpha[painted_out > 0] = 255
    bgra = np.dstack([patch, alpha])
    half = int(np.ceil(radius * 1.4))
    cx, cy = np.round(center - origin).astype(int)
    iris_patch = np.zeros((2 * half + 1, 2 * half + 1, 4), np.uint8)
    sy0, sy1 = max(0, cy - half), min(patch.shape[0], cy + half + 1)
    sx0, sx1 = max(0, cx - half), min(patch.shape[1], cx + half + 1)
    iris_patch[sy0 - (cy - half) : sy1 - (cy - half), sx0 - (cx - half) : sx1 - (cx - half)] = bgra[
        sy0:sy1, sx0:sx1
    ]
    iris_origin = origin + np.array([cx - half, cy - half], np.float64)
    lash = _lash_colour(image, points[upper, :2], width)
    return Eyeball(
        origin, sclera, iris_patch, iris_origin, corners, width, shut[y0:y1, x0:x1].copy(), lash
    )


def shut_lid_texture(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The avatar (BGR) with each upper lid, margin to crease, redrawn as a shut lid: skin
    filled in from around it and one lash line along the margin. A blink stretches this lid
    over the eye; the avatar's own lid band (lashes, a hooded fold, a painted shadow) stretched
    that far read as a narrowed eye to a person and to the tracker (0.7–1.1 of open on a
    squinting photo and a painting, against 0.2 for a real shut eye)."""
    shut = image.copy()
    for upper, lower, crease, _ in EYES:
        width = float(np.linalg.norm(points[upper[0], :2] - points[upper[-1], :2]))
        if width < 4.0:
            continue
        lid = np.vstack([points[upper, :2], points[crease[::-1], :2]])
        opening = np.vstack([points[upper, :2], points[lower[-2:0:-1], :2]])
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(lid).astype(np.int32)], 255)
        cv2.fillPoly(mask, [np.round(opening).astype(np.int32)], 255)
        grow = max(1, round(0.04 * width))
        mask = cv2.dilate(mask, np.ones((2 * grow + 1,) * 2, np.uint8))
        lash = _lash_colour(image, points[upper, :2], width)
        filled = cv2.inpaint(shut, mask, max(2.0, 0.15 * width), cv2.INPAINT_TELEA)
        # a shut lid faces the light as the skin under the eye does, not the socket's shadow
        skin = _skin_under(image, points[lower, :2], width)
        lit = cv2.addWeighted(filled, 1.0 - LID_SKIN, np.full_like(filled, skin), LID_SKIN, 0.0)
        soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.05 * width))
        shut = _blend(filled, lit, soft)
        shut = _blend(
            shut, np.full_like(shut, lash), _lash_line(mask.shape, points[upper, :2], width)
        )
    return shut


def _skin_under(image: np.ndarray, lower: np.ndarray, width: float) -> np.ndarray:
    """The median colour of a band of skin under the lower lid."""
    band = np.zeros(image.shape[:2], np.uint8)
    inner = lower[1:-1] + np.array([0.0, 0.12 * width])
    outer = lower[-2:0:-1] + np.array([0.0, 0.3 * width])
    cv2.fillPoly(band, [np.round(np.vstack([inner, outer])).astype(np.int32)], 255)
    pixels = image[band > 0]
    if len(pixels) == 0:
        return np.round(image.reshape(-1, 3).mean(0)).astype(np.uint8)
    return np.median(pixels, axis=0).astype(np.uint8)


def _lash_line(
    shape: tuple[int, ...], margin: np.ndarray, width: float, thickness: float = LASH_LINE
) -> np.ndarray:
    """Alpha of a shut lid's lash line: along the margin, on the lid's side of it (the
    lid's triangles carry it down; the eye's side is the eye's), thickest in the middle."""
    line = np.zeros(shape[:2], np.uint8)
    thickness *= width
    for i, (a, b) in enumerate(itertools.pairwise(margin)):
        taper = 0.5 + 0.5 * min(LID_PROFILE[i], LID_PROFILE[i + 1])
        lift = np.array([0.0, -0.5 * thickness * taper])
        ends = np.round(np.array([a + lift, b + lift]) * 16).astype(np.int32)
        cv2.line(
            line,
            tuple(ends[0]),
            tuple(ends[1]),
            255,
            max(1, round(thickness * taper)),
            cv2.LINE_AA,
            4,
        )
    return line


def lid_edge(upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """The upper lid's margin where it shows: kept above the lower lid's (a shut lid that
    crossed the lower one is hidden behind it there)."""
    order = np.argsort(lower[:, 0])
    floor = np.interp(upper[:, 0], lower[order, 0], lower[order, 1])
    edge = upper.copy()
    edge[:, 1] = np.minimum(upper[:, 1], floor)
    return edge


def lash_over_eye(
    margin: np.ndarray, shut: float, height: int, width: int
) -> tuple[int, int, np.ndarray] | None:
    """(x0, y0, alpha): the shut lid's lash line drawn again along the lid's visible margin
    (lid_edge), over the eye painted under it, as shut as the lid is; None where it would
    not show. The texture's own line, carried down by the lid's triangles, is cut into
    pieces where the eye (its shut skin) is painted over a lid that crossed the lower one (a
    smile or a turn raises the lower lid past the shut upper one). Shared with torch."""
    eye_width = float(np.linalg.norm(margin[-1] - margin[0]))
    reach = LASH_LINE * eye_width + 2.0
    (x0, y0) = np.floor(margin.min(0) - reach).astype(int)
    (x1, y1) = np.ceil(margin.max(0) + reach).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if eye_width < 4.0 or x1 - x0 < 2 or y1 - y0 < 2:
        return None
    line = _lash_line((y1 - y0, x1 - x0), margin - (x0, y0), eye_width, LASH_OVER_EYE)
    if shut < 1.0:
        line = cv2.multiply(line, np.full_like(line, 255), scale=shut / 255.0)
    return int(x0), int(y0), line


def _lash_colour(image: np.ndarray, margin: np.ndarray, width: float) -> np.ndarray:
    """The darkest tenth of the pixels along the upper lid's margin: its lashes."""
    band = np.zeros(image.shape[:2], np.uint8)
    cv2.polylines(
        band, [np.round(margin).astype(np.int32)], False, 255, max(1, round(0.08 * width))
    )
    pixels = image[band > 0].astype(np.float64)
    if len(pixels) == 0:
        return np.zeros(3, np.uint8)
    darkest = pixels[np.argsort(pixels.sum(1))[: max(1, len(pixels) // 10)]]
    return np.round(darkest.mean(0)).astype(np.uint8)


def shut_weight(closure: float) -> float:
    """How much of the shut lid's texture a lid closed this far shows: none while the eye is
    open or narrowed (a squint keeps the avatar's own lid), all of it once shut."""
    t = float(np.clip((closure - SHUT_FROM) / (1.0 - SHUT_FROM), 0.0, 1.0))
    return t * t * (3.0 - 2.0 * t)


def _similarity(
    src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """2x3 similarity taking the segment src onto the segment dst."""
    s0, s1 = complex(*src[0]), complex(*src[1])
    d0, d1 = complex(*dst[0]), complex(*dst[1])
    a = (d1 - d0) / (s1 - s0) if s1 != s0 else 1.0
    b = d0 - a * s0
    return np.float32([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


# ---------------------------------------------------------------- mouth


@dataclass(frozen=True, slots=True)
class MouthColours:
    """The avatar's own lip, skin and light, to colour a synthetic mouth interior; `contrast`
    (0.3 flat .. 1 photographic) says how much fine detail its skin has, so that a cartoon
    gets flat teeth and a photo shaded, separate ones."""

    cavity: np.ndarray
    teeth: np.ndarray
    tongue: np.ndarray
    gum: np.ndarray
    contrast: float

    @classmethod
    def sample(cls, image: np.ndarray, points: np.ndarray) -> MouthColours:
        lips = np.zeros(image.shape[:2], np.uint8)
        outer = np.vstack([points[LIPS_UPPER_OUTER, :2], points[LIPS_LOWER_OUTER[-2:0:-1], :2]])
        inner = np.vstack([points[LIPS_UPPER_INNER, :2], points[LIPS_LOWER_INNER[-2:0:-1], :2]])
        cv2.fillPoly(lips, [np.round(outer).astype(np.int32)], 255)
        cv2.fillPoly(lips, [np.round(inner).astype(np.int32)], 0)
        lip = np.array(cv2.mean(image, lips)[:3])
        cheeks = np.zeros(image.shape[:2], np.uint8)
        for index in (50, 280, 101, 330):
            cv2.circle(
                cheeks,
                tuple(np.round(points[index, :2]).astype(int)),
                max(2, round(eye_distance(points) * 0.08)),
                255,
                -1,
            )
        skin = np.array(cv2.mean(image, cheeks)[:3])
        return cls(
            cavity=lip * 0.22,
            teeth=teeth_colour(skin),
            tongue=lip * 0.62,
            gum=lip * GUM_SHADE,
            contrast=skin_contrast(image, cheeks, eye_distance(points)),
        )


def teeth_colour(skin: np.ndarray) -> np.ndarray:
    """Teeth in the avatar's palette (BGR): a light, much desaturated tint of its skin (ivory
    in a warm painting, grey in a grey statue), lighter than the skin yet never paper-white."""
    lab = cv2.cvtColor(np.float32(np.asarray(skin)[None, None] / 255.0), cv2.COLOR_BGR2Lab)
    lightness, chroma = lab[0, 0, 0], lab[0, 0, 1:]
    lab[0, 0, 0] = np.clip(TEETH_LIGHT[0] * lightness + TEETH_LIGHT[1], 0.0, 92.0)
    lab[0, 0, 1:] = chroma * TEETH_CHROMA
    return cv2.cvtColor(lab, cv2.COLOR_Lab2BGR)[0, 0].astype(np.float64) * 255.0


def skin_contrast(image: np.ndarray, cheeks: np.ndarray, unit: float) -> float:
    """How much fine texture (pores, brush strokes) the skin under `cheeks` has, 0.3 (flat
    colour: a cartoon) .. 1 (a photo): the synthetic teeth get as much detail."""
    x, y, w, h = cv2.boundingRect(cheeks)
    if w < 2 or h < 2:
        return 1.0
    grey = cv2.cvtColor(image[y : y + h, x : x + w], cv2.COLOR_BGR2GRAY).astype(np.float32)
    fine = grey - cv2.GaussianBlur(grey, (0, 0), max(1.0, 0.015 * unit))
    spread = float(np.sqrt(cv2.mean(fine * fine, cheeks[y : y + h, x : x + w])[0]))
    return float(np.clip(spread / SKIN_DETAIL_FULL, 0.3, 1.0))


@dataclass(frozen=True, slots=True)
class MouthLayer:
    """A mouth interior ready to paint: BGR box, its anti-aliased mask, top-left corner."""

    box: np.ndarray
    mask: np.ndarray
    origin: tuple[int, int]

    def paint(self, person: np.ndarray) -> None:
        x0, y0 = self.origin
        height, width = self.mask.shape
        _paint_over(person[y0 : y0 + height, x0 : x0 + width], self.box, self.mask)


@dataclass(frozen=True, slots=True)
class TeethRow:
    """One row of teeth with its gum, drawn once per avatar at the working resolution of the
    resting face (then only moved per frame): BGRA float32 and its top-left corner, in
    resting working pixels."""

    sprite: np.ndarray
    origin: np.ndarray
    under_lip: bool  # the upper row: in the upper lip's shadow just under its edge

    def placed(self, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The row moved by `matrix` (2x3: resting working pixels → box pixels) into a box
        of `size` (width, height)."""
        moved = np.array(matrix, np.float64)
        moved[:, 2] += moved[:, :2] @ self.origin
        return cv2.warpAffine(
            self.sprite, moved, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )


@dataclass(frozen=True, slots=True)
class Teeth:
    """A closed-mouth avatar's synthetic teeth: the upper row rides on the skull, the lower
    on the jaw, whose drop is measured at the lower inner lip's middle (`jaw_mark`, resting
    working pixels)."""

    upper: TeethRow
    lower: TeethRow
    jaw_mark: np.ndarray


def build_teeth(
    upper_lip: np.ndarray, lower_lip: np.ndarray, unit: float, colours: MouthColours
) -> Teeth:
    """Both rows for the resting inner lips (working pixels, `unit` the eye distance there)."""
    return Teeth(
        upper=teeth_row(upper_lip, unit, colours, upper=True),
        lower=teeth_row(lower_lip, unit, colours, upper=False),
        jaw_mark=np.asarray(lower_lip[len(lower_lip) // 2], np.float64),
    )


def _arch_columns(
    xs: np.ndarray, centre: float, half: float, arcs: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per column of a row seen from the front: its tooth's index, where across that tooth
    (0..1), how much the arch faces the viewer there (1 in the middle, 0 at its side) and
    the tooth's seen width: the arch recedes, so teeth narrow towards the corners."""
    radius = half * ARCH_RADIUS
    along = np.concatenate([[0.0], np.cumsum(arcs)]) * half
    bounds = radius * np.sin(np.minimum(along / radius, np.pi / 2))
    offset = np.abs(xs - centre)
    index = np.clip(np.searchsorted(bounds, offset, side="right") - 1, 0, len(arcs) - 1)
    width = np.maximum(bounds[index + 1] - bounds[index], 1e-6)
    across = np.clip((offset - bounds[index]) / width, 0.0, 1.0)
    facing = np.sqrt(1.0 - np.clip(offset / radius, 0.0, 1.0) ** 2)
    return index, across, facing, width


def teeth_row(lip: np.ndarray, unit: float, colours: MouthColours, upper: bool) -> TeethRow:
    """One row behind the resting inner lip `lip` (working pixels): separate teeth along the
    receding arch (incisors broad and bright in the middle, canines and premolars narrower
    and darker towards the corners), thin dark gaps between them that widen at the biting
    edge, a little translucency there, a scalloped gum line beyond the crowns, all in the
    avatar's palette and with as much detail as its skin has."""
    xs_lip, ys_lip = _by_x(np.asarray(lip, np.float64))
    centre, half = (xs_lip[0] + xs_lip[-1]) / 2, max((xs_lip[-1] - xs_lip[0]) / 2, 1.0)
    arcs, crowns, edges = (
        (UPPER_ARCS, UPPER_CROWNS, UPPER_EDGES)
        if upper
        else (LOWER_ARCS, LOWER_CROWNS, LOWER_EDGES)
    )
    sign = 1.0 if upper else -1.0  # from the gum towards the biting edge: down for the upper
    reach = (max(crowns) + max(edges) + GUM_ABOVE) * unit
    x0 = int(np.floor(centre - ROW_REACH * half)) - 1
    x1 = int(np.ceil(centre + ROW_REACH * half)) + 2
    if upper:
        y0, y1 = (
            int(np.floor(ys_lip.min() - reach)),
            int(np.ceil(ys_lip.max() + max(edges) * unit)) + 2,
        )
    else:
        y0, y1 = (
            int(np.floor(ys_lip.min() + min(edges) * unit)) - 2,
            int(np.ceil(ys_lip.max() + reach)),
        )
    xs = np.arange(x0, x1, dtype=np.float64)
    ys = np.arange(y0, y1, dtype=np.float64)[:, None]
    index, across, facing, width = _arch_columns(xs, centre, half, arcs)
    bump = np.sin(np.pi * across)  # 1 across a tooth's middle, 0 at its sides
    # no two teeth quite alike (left and right differ too): a denture's sameness reads false
    tooth_id = index + len(arcs) * (xs > centre)
    unlike = np.sin(3.7 * tooth_id + 1.3)
    line = np.interp(xs, xs_lip, ys_lip)
    crown = np.asarray(crowns)[index] * unit * (0.8 + 0.2 * bump)  # the gum dips between
    contrast = colours.contrast
    # the edge's corners round off (barely in a cartoon: notches read as fangs there)
    rounded = 0.012 * unit * (1.0 - bump) ** 2 * (0.2 + 0.8 * contrast)
    edge = line + (np.asarray(edges)[index] + 0.002 * unlike) * unit - sign * rounded
    gum_line = edge - sign * crown
    v = (ys - gum_line) / (edge - gum_line)  # 0 at the gum line .. 1 at the edge
    receding = 0.7 * (1.0 - facing**1.2) * (0.4 + 0.6 * contrast)  # flat in a cartoon
    shade = (1.0 - 0.18 * contrast * (1.0 - bump)) * (1.0 - receding) * (1.0 + 0.025 * unlike)
    tooth = (
        np.asarray(colours.teeth, np.float64)
        * (shade[None, :] * (0.9 + 0.1 * np.clip(v / 0.25, 0, 1)))[..., None]
    )
    clear = np.clip((v - 0.7) / 0.3, 0.0, 1.0) * 0.4 * contrast  # the edge: translucent
    tooth += clear[..., None] * (
        np.asarray(colours.teeth) * TRANSLUCENT * shade[None, :, None] - tooth
    )
    side = np.minimum(across, 1.0 - across) * width  # pixels to the nearest gap
    spread = max(0.5, 0.007 * unit) * (1.0 + 1.5 * np.clip((v - 0.75) / 0.25, 0.0, 1.0))
    tooth *= (1.0 - GAP_DARKER * contrast * np.exp(-((side / spread) ** 2)))[..., None]
    into_gum = np.clip(-v * crown / (0.08 * unit), 0.0, 1.0)  # darker further from the teeth
    gum = (
        np.asarray(colours.gum, np.float64)
        * (1.0 - 0.4 * into_gum)[..., None]
        * (1.0 - receding)[None, :, None]
    )
    is_tooth = np.clip(sign * (ys - gum_line) + 0.5, 0.0, 1.0)[..., None]
    colour = gum + is_tooth * (tooth - gum)
    alpha = np.clip(sign * (edge - ys) + 0.5, 0.0, 1.0)
    sides = np.clip((ROW_REACH * half - np.abs(xs - centre)) / (0.3 * half), 0.0, 1.0)
    alpha *= sides * sides * (3.0 - 2.0 * sides)  # the row fades into the dark corners
    if not upper:
        colour *= LOWER_ROW_SHADE
    sprite = np.dstack([np.clip(colour, 0, 255), alpha]).astype(np.float32)
    return TeethRow(sprite, np.array([x0, y0], np.float64), under_lip=upper)


def synthetic_mouth(
    shape: tuple[int, ...],
    upper: np.ndarray,
    lower: np.ndarray,
    colours: MouthColours,
    unit: float,
    rows: Sequence[tuple[TeethRow, np.ndarray]] = (),
) -> MouthLayer | None:
    """A mouth interior inside the current inner-lip contour (ROI pixel coordinates): dark
    cavity, darker towards the corners, a tongue low at the back, then `rows` of teeth (each
    with its 2x3 from resting working pixels to ROI pixels; drawn in order, the lips cover
    them), the teeth shadowed just under the lips; it fades in with the opening. None while
    the lips meet. The cavity is dark right up to the lips: a lip-coloured rim inside them
    read to the face tracker as more lip, the mouth less open (mouth_r 0.55 → 0.67 on a
    statue-grey photo's head-turn clip without it)."""
    polygon = np.vstack([upper, lower[-2:0:-1]])
    gap = float(np.max(lower[1:-1, 1] - upper[1:-1, 1]))
    if gap < 0.015 * unit:
        return None
    (x0, y0), (x1, y1) = (
        np.floor(polygon.min(0)).astype(int) - 2,
        np.ceil(polygon.max(0)).astype(int) + 3,
    )
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, shape[1]), min(y1, shape[0])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    origin = np.array([x0, y0], np.float64)
    box = np.empty((y1 - y0, x1 - x0, 3), np.float32)
    box[:] = colours.cavity
    width = float(np.linalg.norm(upper[-1] - upper[0]))
    if gap > 0.12 * unit:
        tongue = lower[len(lower) // 2] - origin - np.array([0.0, 0.25 * gap])
        _draw_tongue(box, tongue, (0.28 * width, 0.3 * gap), colours)
    center_x = (upper[0, 0] + upper[-1, 0]) / 2 - x0
    xs = np.arange(box.shape[1], dtype=np.float32) - center_x
    box *= (0.45 + 0.55 * np.exp(-((xs / (0.42 * width)) ** 2)))[None, :, None]
    box = cv2.GaussianBlur(box, (0, 0), max(0.6, 0.05 * gap))
    mask = np.zeros(box.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round((polygon - origin) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
    if rows:
        inside = cv2.distanceTransform((mask >= 128).astype(np.uint8), cv2.DIST_L2, 3)[..., None]
        lip_shadow = np.exp(-inside / max(LIP_SHADOW * unit, 0.5))
        clear = _above_lower_lip(box.shape[:2], upper - origin, lower - origin, unit)
        box = _draw_rows(box, rows, origin, lip_shadow, clear)
    fade = float(np.clip((gap - 0.015 * unit) / (0.035 * unit), 0.0, 1.0))
    if fade < 1.0:
        mask = (mask * fade).astype(np.uint8)
    return MouthLayer(np.clip(box, 0, 255).astype(np.uint8), mask, (x0, y0))


def _draw_tongue(
    box: np.ndarray, centre: np.ndarray, axes: tuple[float, float], colours: MouthColours
) -> None:
    """The tongue on the cavity's floor (in place): the upper half of an ellipse about
    `centre`, lit at the front (low in the image, by the teeth) and darker towards the
    back of the mouth, with a faint groove down its middle. Only its own rectangle of the
    box is touched (it runs every frame)."""
    x0 = max(int(centre[0] - axes[0]) - 2, 0)
    y0 = max(int(centre[1] - axes[1]) - 2, 0)
    x1 = min(int(centre[0] + axes[0]) + 3, box.shape[1])
    y1 = min(int(centre[1]) + 3, box.shape[0])
    if x1 - x0 < 1 or y1 - y0 < 1:
        return
    local = centre - (x0, y0)
    shape = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cv2.ellipse(
        shape,
        tuple(np.round(local * 16).astype(int)),
        tuple(max(1, round(a * 16)) for a in axes),
        0,
        180,
        360,
        255,
        -1,
        cv2.LINE_AA,
        4,
    )
    ys = np.arange(y1 - y0, dtype=np.float32)[:, None]
    xs = np.arange(x1 - x0, dtype=np.float32)[None, :]
    depth = np.clip((local[1] - ys) / max(axes[1], 1e-6), 0.0, 1.0)  # 1 at its back
    groove = np.exp(-(((xs - local[0]) / max(0.06 * axes[0], 0.5)) ** 2))
    light = (1.05 - 0.4 * depth) * (1.0 - 0.15 * colours.contrast * groove)
    cover = (shape.astype(np.float32) / 255.0)[..., None]
    colour = np.asarray(colours.tongue, np.float32) * light[..., None]
    part = box[y0:y1, x0:x1]
    part += cover * (colour - part)


def _above_lower_lip(
    shape: tuple[int, int], upper: np.ndarray, lower: np.ndarray, unit: float
) -> np.ndarray:
    """(h, w, 1) 1 where the upper teeth may show, fading to 0 over a band of the opening
    just above the lower lip (box pixels): teeth that reach down to the lower lip read to a
    face tracker as the lips meeting, a dark band above it as the mouth open."""
    height, width = shape
    xs = np.arange(width, dtype=np.float64)
    top = np.interp(xs, *_by_x(upper))
    bottom = np.interp(xs, *_by_x(lower))
    gap = np.maximum(bottom - top, 0.0)
    room = bottom - UPPER_CLEAR * gap  # the teeth may reach down to here
    soft = np.maximum(0.25 * UPPER_CLEAR * gap, max(LIP_SHADOW * unit, 0.7))
    ys = np.arange(height, dtype=np.float64)[:, None]
    return np.clip((room - ys) / soft + 0.5, 0.0, 1.0).astype(np.float32)[..., None]


def _draw_rows(
    box: np.ndarray,
    rows: Sequence[tuple[TeethRow, np.ndarray]],
    origin: np.ndarray,
    lip_shadow: np.ndarray,
    clear: np.ndarray,
) -> np.ndarray:
    """The rows of teeth over the cavity `box` (float BGR), each moved by its matrix; the
    upper row's parts just under the lips' edge (`lip_shadow` 1 there) in the lip's shadow,
    the upper row only where `clear` (see _above_lower_lip) lets it show."""
    height, width = box.shape[:2]
    shaded = np.zeros((height, width, 1), np.float32)
    for row, matrix in rows:
        to_box = np.array(matrix, np.float64)
        to_box[:, 2] -= origin
        layer = row.placed(to_box, (width, height))
        alpha = layer[:, :, 3:] * clear if row.under_lip else layer[:, :, 3:]
        box = box + alpha * (layer[:, :, :3] - box)
        shaded = shaded + (alpha * (1.0 - shaded) if row.under_lip else -alpha * shaded)
    return box * (1.0 - LIP_SHADOW_DEPTH * shaded * lip_shadow)


@dataclass(frozen=True, slots=True)
class OwnMouth:
    """A parted-lips avatar's own mouth interior, cut out at preparation into layers that move
    whole: the upper row (teeth under the upper lip, gum above) with the skull, the lower row
    with the jaw. Stretched with the lips instead, opening the mouth wide drew the teeth out
    into vertical streaks."""

    origin: np.ndarray  # (2,) top-left of the layers, avatar pixels
    upper: np.ndarray  # BGRA
    lower: np.ndarray  # BGRA


def own_teeth_colour(own: OwnMouth) -> np.ndarray | None:
    """The colour of a parted-lips avatar's own teeth (BGR): the brightest tenth of its upper
    row (the rest is gum, lip and the gaps); None when the row shows nothing."""
    shown = own.upper[:, :, 3] > 128
    if shown.sum() < 8:
        return None
    pixels = own.upper[:, :, :3][shown].astype(np.float64)
    bright = pixels[pixels.sum(1) >= np.percentile(pixels.sum(1), 90)]
    return np.median(bright, axis=0)


def shows_teeth(own: np.ndarray | None, teeth: np.ndarray) -> bool:
    """Whether an avatar's own upper row (`own`: its colour, see own_teeth_colour) shows teeth:
    teeth in the face's light are about as light as the palette's (`teeth`, from its skin);
    a row under half as light shows shadow and the lips' inside (a gap as dark as the
    lipstick: opened, it was a cavity with no teeth at all)."""
    if own is None:
        return False
    lightness = [
        cv2.cvtColor(np.float32(np.asarray(c)[None, None] / 255.0), cv2.COLOR_BGR2Lab)[0, 0, 0]
        for c in (own, teeth)
    ]
    return bool(lightness[0] >= OWN_TEETH_LIGHT * lightness[1])


def lip_edge_only(own: OwnMouth, points: np.ndarray) -> OwnMouth:
    """The own mouth with its upper row cut down to the upper lip's inner edge and the gum
    above it: what its gap showed below that (no teeth) gives way to the synthetic rows."""
    upper_lip = points[LIPS_UPPER_INNER, :2]
    width = float(np.linalg.norm(upper_lip[-1] - upper_lip[0]))
    height, columns = own.upper.shape[:2]
    xs = np.arange(columns, dtype=np.float64) + own.origin[0]
    edge = np.interp(xs, *_by_x(upper_lip)) + _lip_trim(width) - own.origin[1]
    rows = np.arange(height, dtype=np.float64)[:, None]
    keep = np.clip(edge[None, :] - rows + 0.5, 0.0, 1.0)
    upper = own.upper.copy()
    upper[:, :, 3] = np.round(upper[:, :, 3] * keep).astype(np.uint8)
    return replace(own, upper=upper)


def _lip_trim(width: float) -> float:
    """How far (avatar pixels) into the opening a lip's inner edge goes with its own row."""
    return max(1.5, 0.03 * width)


def own_bite_depth(own: OwnMouth, points: np.ndarray) -> float | None:
    """How far (avatar pixels) below the resting upper inner lip a parted-lips avatar's own
    upper teeth end (their biting edge), over the middle of the mouth; None without teeth."""
    shown = own.upper[:, :, 3] > 128
    depths = []
    for x, y in points[LIPS_UPPER_INNER[3:-3], :2]:
        column = round(x - own.origin[0])
        if 0 <= column < shown.shape[1] and shown[:, column].any():
            depths.append(own.origin[1] + np.flatnonzero(shown[:, column])[-1] - y)
    return float(np.median(depths)) if depths else None


def build_own_mouth(image: np.ndarray, points: np.ndarray) -> OwnMouth:
    """Split what shows between the avatar's lips into an upper and a lower row: at the darkest
    band across the opening (the gap between the rows) where there is one, else all of it
    is the upper row (a smile shows the upper teeth; the lower ones hide behind the lip)."""
    upper_lip, lower_lip = points[LIPS_UPPER_INNER, :2], points[LIPS_LOWER_INNER, :2]
    ring = np.vstack([upper_lip, lower_lip[-2:0:-1]])
    width = float(np.linalg.norm(upper_lip[-1] - upper_lip[0]))
    margin = max(3.0, 0.1 * width)
    x0, y0 = np.floor(ring.min(0) - margin).astype(int).clip(0)
    x1, y1 = np.ceil(ring.max(0) + margin).astype(int)
    x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
    patch = image[y0:y1, x0:x1]
    origin = np.array([x0, y0], np.float64)
    opening = np.zeros(patch.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(ring - origin).astype(np.int32)], 255)
    grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY).astype(np.float64)
    xs = np.arange(patch.shape[1], dtype=np.float64) + x0
    top = np.interp(xs, *_by_x(upper_lip))
    bottom = np.interp(xs, *_by_x(lower_lip))
    split = _row_split(grey, top - y0, bottom - y0, upper_lip[:, 0], xs)
    rows = np.arange(patch.shape[0], dtype=np.float64)[:, None] + y0
    boundary = top + split * (bottom - top)
    around = cv2.dilate(opening, np.ones((5, 5), np.uint8)).astype(np.float64) / 255.0
    # Each lip's inner edge goes with its own row: the lower lip's with the jaw, never as a red
    # line left across the opened mouth by an upper row that reached down to it.
    trim = _lip_trim(width)
    above_split = np.clip(boundary[None, :] - rows + 0.5, 0.0, 1.0)
    near_top = np.clip(top[None, :] + trim - rows + 0.5, 0.0, 1.0)
    near_bottom = np.clip(rows - bottom[None, :] + trim + 0.5, 0.0, 1.0)
    upper_alpha = np.maximum(above_split, near_top) * (1.0 - near_bottom)
    lower_alpha = 1.0 - upper_alpha
    upper_bgra = np.dstack([patch, np.round(255 * around * upper_alpha).astype(np.uint8)])
    reach = max(2, round(GUM_REACH * width))
    _grow_upward(upper_bgra, top - y0, reach, lip_colour(patch, top - y0))
    return OwnMouth(
        origin,
        upper_bgra,
        np.dstack([patch, np.round(255 * around * lower_alpha).astype(np.uint8)]),
    )


def lip_colour(patch: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The median colour of the few rows just above the upper inner lip (the lip itself)."""
    rows = np.round(top).astype(int)
    columns = np.flatnonzero((rows >= 3) & (rows < patch.shape[0]))
    if len(columns) == 0:
        return np.median(patch.reshape(-1, 3), axis=0)
    samples = np.vstack([patch[rows[columns] - k, columns] for k in (2, 3)])
    return np.median(samples, axis=0)


def _grow_upward(layer: np.ndarray, top: np.ndarray, reach: int, lip: np.ndarray) -> None:
    """Continue the upper row above the upper lip's line (in place): its top pixels, then
    gum, for when the upper lip rises off the teeth (else the cavity shows as a black slot)."""
    height = layer.shape[0]
    first = np.ceil(top).astype(int) + 1  # the first row surely inside the opening
    inside = (first >= 1) & (first < height)
    inside[inside] &= layer[first[inside], np.flatnonzero(inside), 3] > 0
    columns = np.flatnonzero(inside)
    gum = np.asarray(lip, np.float64) * GUM_SHADE
    for k in range(1, reach + 1):
        rows = first[columns] - k
        keep = rows >= 0
        cols, rows = columns[keep], rows[keep]
        edge = layer[first[cols], cols, :3].astype(np.float64)
        mix = min(1.0, 2.0 * k / reach)
        layer[rows, cols, :3] = np.round(edge + mix * (gum - edge)).astype(np.uint8)
        layer[rows, cols, 3] = 255


def _by_x(contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(contour[:, 0])
    return contour[order, 0], contour[order, 1]


def _row_split(
    grey: np.ndarray, top: np.ndarray, bottom: np.ndarray, mouth_xs: np.ndarray, xs: np.ndarray
) -> float:
    """Where (0 upper lip .. 1 lower lip) the upper row ends: the darkest band across the
    middle of the opening when clearly darker than the teeth above it, else 1."""
    lo, hi = np.percentile(mouth_xs, (25, 75))
    columns = np.flatnonzero((xs >= lo) & (xs <= hi) & (bottom - top > 2.0))
    if len(columns) == 0:
        return 1.0
    steps = np.linspace(0.0, 1.0, 21)
    ys = top[columns][None, :] + steps[:, None] * (bottom - top)[columns][None, :]
    samples = cv2.remap(
        grey.astype(np.float32),
        np.broadcast_to(columns[None, :], ys.shape).astype(np.float32),
        ys.astype(np.float32),
        cv2.INTER_LINEAR,
    )
    profile = samples.mean(1)
    middle = (steps >= 0.35) & (steps <= 0.9)
    darkest = int(np.flatnonzero(middle)[np.argmin(profile[middle])])
    teeth = profile[: darkest + 1].max()
    return float(steps[darkest]) if profile[darkest] < ROW_GAP_DARKER * teeth else 1.0


def driver_mouth(
    synthetic: MouthLayer, upper: np.ndarray, lower: np.ndarray, driver: DriverView
) -> MouthLayer:
    """The driver's own mouth interior (mouth_interior: driver), warped from the driver's
    inner-lip contour onto the avatar's, colour-matched to the synthetic interior's light and
    shown only inside the avatar's lips."""
    target = np.vstack([upper, lower[-2:0:-1]]) - np.array(synthetic.origin, np.float64)
    source = np.vstack(
        [driver.points[LIPS_UPPER_INNER, :2], driver.points[LIPS_LOWER_INNER[-2:0:-1], :2]]
    )
    fan = np.array([(0, i, i % len(target) + 1) for i in range(1, len(target) + 1)])
    dest = np.vstack([target.mean(0), target])
    src = np.vstack([source.mean(0), source])
    height, width = synthetic.mask.shape
    warped, covered = warp_image(driver.image, fan, dest, src, Roi(0, 0, width, height))
    inside = covered & (synthetic.mask > 0)
    if not inside.any():
        return synthetic
    pixels = warped[inside].astype(np.float32)
    reference = synthetic.box[inside].astype(np.float32)
    matched = (pixels - pixels.mean(0)) * (reference.std(0) + 1.0) / (pixels.std(0) + 1.0)
    box = synthetic.box.copy()
    box[inside] = np.clip(matched + reference.mean(0), 0, 255).astype(np.uint8)
    return MouthLayer(box, synthetic.mask, synthetic.origin)


def _warp_patch(
    patch: np.ndarray,
    matrix: np.ndarray,
    size: tuple[int, int],
    border: int = cv2.BORDER_REPLICATE,
) -> np.ndarray:
    """A patch moved by a 2x3 affine into a box of `size` (bilinear)."""
    return cv2.warpAffine(patch, matrix, size, flags=cv2.INTER_LINEAR, borderMode=border)


def _paint_over(person: np.ndarray, layer: np.ndarray, mask: np.ndarray) -> None:
    """Fill a hole of the warped face (BGRA, in place) with `layer` inside the anti-aliased
    `mask`; the hole's outline is the mask's, smooth at any map resolution."""
    colour, alpha = _colour_and_alpha(person)
    person[:, :, :3] = _blend(colour, layer, mask)
    person[:, :, 3] = np.maximum(alpha, mask)


def neighbour_mean(triangles: np.ndarray, count: int) -> sparse.csr_matrix:
    """The (count × count) operator that averages each vertex's mesh neighbours."""
    edges = np.vstack([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.unique(np.vstack([edges, edges[:, ::-1]]), axis=0)
    adjacency = sparse.csr_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(count, count)
    )
    degree = np.asarray(adjacency.sum(1)).ravel()
    return sparse.diags(1.0 / np.maximum(degree, 1.0)) @ adjacency


JAW_HINGE_BEHIND = 0.25  # the jaw's hinge (in front of the ears) lies this far (eye
# distances) behind the face oval's ear-level edge
CHEEK_BAND = 0.2  # eye distances over which the cheek blends from the skull to the jaw
EAR_LEVEL = (234, 454)  # the face oval's edge at ear level: right, left
MOUTH_CORNERS = (61, 291)


def _below_line(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Signed distance of each point below the line through a and b (image y points down)."""
    direction = (b - a) / (np.linalg.norm(b - a) + 1e-9)
    normal = np.array([-direction[1], direction[0]])
    if normal[1] < 0:
        normal = -normal
    return (points - a) @ normal


def jaw_weights(points: np.ndarray, unit: float, triangles: np.ndarray) -> np.ndarray:
    """How far each face vertex drops when the mouth opens, as a share of the lower lip's
    drop: the jaw turns about a hinge below the ears, so a point drops by its lever, its
    depth in front of the hinge (the chin nearly as much as the lip, the jaw's angle a
    third); only the jaw moves (below the upper lip's line, and beyond the corners below
    the line from each corner to the ear), the cheek blending over a band; along the lower
    lip 1 in the middle, 0 at the corners (a lens-shaped opening). Smoothed over the mesh so
    neighbours never differ abruptly (which would fold triangles at the mouth corners)."""
    xy, depth = points[:, :2], points[:, 2]
    upper = points[LIPS_UPPER_INNER, :2]
    order = np.argsort(upper[:, 0])
    lip_line = np.interp(xy[:, 0], upper[order, 0], upper[order, 1])  # flat beyond corners
    hinge_depth = float(points[list(EAR_LEVEL), 2].mean()) + JAW_HINGE_BEHIND * unit
    lip_lever = hinge_depth - float(points[LIPS_LOWER_INNER[len(LIPS_LOWER_INNER) // 2], 2])
    lever = np.clip((hinge_depth - depth) / max(lip_lever, 1e-6), 0.0, 1.0)
    below = xy[:, 1] - lip_line  # between the corners: below the upper lip
    for corner, ear in zip(MOUTH_CORNERS, EAR_LEVEL, strict=True):
        outside = (xy[:, 0] - points[corner, 0]) * (points[ear, 0] - points[corner, 0]) > 0
        beyond = _below_line(xy, points[corner, :2], points[ear, :2])
        below = np.where(outside, beyond, below)
    on_jaw = np.clip(below / (CHEEK_BAND * unit) + 1.0, 0.0, 1.0)  # the cheek above blends
    weights = on_jaw * lever
    weights[xy[:, 1] <= lip_line + 0.01 * unit] = 0.0
    along = np.sin(np.linspace(0.0, np.pi, len(LIPS_LOWER_INNER))) ** 0.5
    fixed = {  # the lower lip moves whole: inner and outer edge alike
        **dict.fromkeys(LIPS_UPPER_INNER + LIPS_UPPER_OUTER, 0.0),
        **dict(zip(LIPS_LOWER_INNER, along, strict=True)),
        **dict(zip(LIPS_LOWER_OUTER[1:-1], along[1:-1], strict=True)),
    }
    ids, values = np.array(list(fixed)), np.array(list(fixed.values()))
    weights[ids] = values
    edges = np.vstack([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    edges = np.vstack([edges, edges[:, ::-1]])
    degree = np.bincount(edges[:, 0], minlength=len(points)).astype(np.float64)
    for _ in range(4):  # neighbour averaging, the fixed vertices held
        summed = np.bincount(edges[:, 0], weights=weights[edges[:, 1]], minlength=len(points))
        weights = np.where(
            degree > 0, 0.5 * weights + 0.5 * summed / np.maximum(degree, 1), weights
        )
        weights[ids] = values
    # the jaw ends below the cheekbones: nothing at or above the nose moves
    return weights * np.clip((xy[:, 1] - lip_line + 0.15 * unit) / (0.1 * unit), 0.0, 1.0)


# ---------------------------------------------------------------- the generator


class MeshGenerator:
    """Renders the avatar with the driver's motion (see the module docstring)."""

    def __init__(
        self, config: MeshGeneratorConfig, avatar: PreparedAvatar, width: int, height: int
    ):
        avatar = complete_head(avatar, fit_head(avatar.points))
        self.config, self.avatar = config, avatar
        self.width, self.height = width, height
        self.uses_driver_pixels = (
            config.mouth_interior == "driver" or config.skin_detail == "driver"
        )
        img_h, img_w = avatar.image.shape[:2]
        self.mesh: AvatarMesh = build_mesh(avatar.points, img_w, img_h, avatar.person)
        self.framing = frame_avatar(avatar.points, (img_w, img_h), width, height)
        self.rest = self.framing.apply(self.mesh.vertices)  # output pixels, with depth
        self.unit = eye_distance(self.rest[: len(avatar.points)])
        self.source = self.mesh.vertices[:, :2].astype(np.float64)
        self.layers = unmix_person(avatar)  # the person over its plate, edges un-mixed
        self.bgra = np.dstack([self.layers.image, avatar.person])
        # Frames are drawn at the avatar's own resolution when the output enlarges it (the
        # detail is not there anyway) and scaled up once: a fraction of the pixel work.
        factor = min(1.0, 1.0 / self.framing.scale)
        self.work_size = (max(2, round(width * factor)), max(2, round(height * factor)))
        self.work_per_output = (self.work_size[0] / width, self.work_size[1] / height)
        k = np.array(self.work_per_output)
        work_framing = Framing(self.framing.scale * k[0], (self.framing.offset + 0.5) * k - 0.5)
        self.background = build_background(config, self.layers, work_framing, *self.work_size)
        person = cv2.warpAffine(
            self.bgra,
            work_framing.matrix(),
            self.work_size,
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
        )
        self.still_work = _blend(self.background, person[:, :, :3], person[:, :, 3])
        self.still = self._scale_up(self.still_work)
        self.still.setflags(write=False)
        shut = shut_lid_texture(self.layers.image, avatar.points)
        self.bgra_shut = np.dstack([shut, avatar.person])
        self.eyeballs = [
            build_eyeball(avatar.image, avatar.points, up, low, iris, shut)
            for up, low, _, iris in EYES
        ]
        self.mouth_colours = MouthColours.sample(avatar.image, avatar.points)
        self.own_mouth = (
            build_own_mouth(self.layers.image, avatar.points)
            if self.mesh.mouth_open_at_rest
            else None
        )
        # the inner lips' resting depth: the own mouth's layers turn with the head there
        self.mouth_depth = float(self.rest[LIPS_UPPER_INNER + LIPS_LOWER_INNER, 2].mean())
        self.head = (np.eye(3), 1.0, np.zeros(3))  # the last frame's (rotation, scale, shift)
        self.jaw_drop = 0.0  # the last frame's jaw drop at the lower lip, output pixels
        self.teeth_drop = 0.0  # ... and the lower teeth's (see _drop_teeth)
        self.lids = [LidState(), LidState()]
        self.closures = [0.0, 0.0]  # the lids' closure in the last frame deformed
        # The head turns about the centre of its rigid landmarks: the point whose movement the
        # motion's shift measures, so a turn is not counted twice (a pivot further back moved
        # the face by its own lever on top of the measured shift: 0.045 → 0.028 AKD on a clip
        # of head turns). Where the real pivot, the neck, sits is already in that shift.
        self.pivot = self.rest[RIGID].mean(0)
        self.head_centre = self.framing.apply(self.mesh.head_center[None])[0]
        self.outline_ids = np.flatnonzero(self.mesh.outline > 0)
        self.teeth, self.from_rest = self._synthetic_teeth()  # after the head's pivot
        self.gap_teeth = self._gap_teeth()
        self.hidden_lower = self._hidden_lower_teeth()  # its bite: the whole own row's
        if self.gap_teeth is not None:
            self.own_mouth = lip_edge_only(self.own_mouth, avatar.points)
        vertices = self.mesh.vertices
        self.image_bottom = np.flatnonzero(  # the image's bottom edge (not the frame below)
            (np.abs(vertices[:, 1] - (img_h - 1)) < 1e-6)
            & (vertices[:, 0] >= 0)
            & (vertices[:, 0] <= img_w - 1)
        )
        triangles = self.mesh.triangles
        self.moving = triangles[self.mesh.rigidity[triangles].max(1) > 0]  # with the head
        follows = (self.mesh.rigidity > 0) | (self.mesh.body > 0)
        self.body_moving = triangles[follows[triangles].any(1)]  # ... and with the body
        # Vertices that only the head's translation and scale move: they say when it did.
        self.body_ids = np.flatnonzero((self.mesh.body > 0) & (self.mesh.rigidity == 0))
        # roi()'s fixed parts, worked out once (np.unique and the rest box on every frame
        # were a twentieth of the generator's time)
        self.body_rest_work = self.to_work(self.rest[self.body_ids, :2])
        self.roi_vertices = {
            moved: self._rest_box(np.unique(used))
            for moved, used in ((False, self.moving), (True, self.body_moving))
        }
        self.face_triangles = self.mesh.triangles[(self.mesh.triangles < N_FACE).all(1)]
        # Folds are looked for in all but the slivers (the lip corners crowd vertices into
        # triangles of ~0.2% of a median one): a sliver turned over shows nothing, yet undoing
        # it took a dozen rounds on nearly every frame, a fifth of the generator's time.
        areas = signed_areas(self.face_triangles, self.rest[:, :2])
        kept = np.abs(areas) >= SLIVER * np.median(np.abs(areas))
        # nor between the inner lips (an avatar's own teeth at rest): closing its mouth
        # squashes them flat by design, and undoing that kept the lips apart
        kept &= ~np.isin(self.face_triangles, LIPS_UPPER_INNER + LIPS_LOWER_INNER).all(1)
        self.fold_triangles, self.rest_sign = self.face_triangles[kept], np.sign(areas[kept])
        self.jaw = jaw_weights(self.rest[:N_FACE], self.unit, self.face_triangles)
        self.rest_gap = resting_mouth_gap(avatar.points)
        self.rest_lip_gap = (
            float(  # the inner lips' widest gap at rest, eye distances
                np.max(self.rest[LIPS_LOWER_INNER[1:-1], 1] - self.rest[LIPS_UPPER_INNER[1:-1], 1])
            )
            / self.unit
        )
        self.neighbours = neighbour_mean(self.face_triangles, N_FACE)
        self.cheeks = cheek_weights(self.rest, self.unit, self.neighbours)
        self.skin = SkinShading.build(
            avatar.points,
            eye_distance(avatar.points),
            self.face_triangles,
            avatar.points[:, 2],
            config.skin_detail == "driver",
        )
        self.keep_in_place = np.isin(np.arange(N_FACE), KEEP_IN_PLACE)
        self.lid_driven = np.isin(np.arange(N_FACE), LID_DRIVEN)
        self.last_dest = self.rest

    def forget_driver_neutral(self) -> None:
        """The user recalibrated: the driver's neutral skin (skin_detail: driver) is learnt
        anew from the next near-neutral frames."""
        if self.skin.driver is not None:
            self.skin.driver.forget()

    # ------------------------------------------------------------ geometry

    def deform(self, motion: Motion) -> np.ndarray:
        """Vertex positions (output pixels, with depth) for this motion."""
        closures = lid_closures(self.lids, motion.eye_open, motion.gaze[1], motion.eye_open_level)
        self.closures = closures
        signals = self.rest.copy()  # the signals alone: jaw drop and lids
        self._open_mouth(signals, motion.mouth_open, motion.mouth_own)
        self._close_lids(signals, closures)
        self._drop_teeth(motion.expression)
        face = signals.copy()
        if motion.expression is not None:
            offsets = motion.expression[:N_FACE].astype(np.float64) * self.unit
            offsets[LID_DRIVEN] = 0.0  # the lids follow the blink signal, not the shape
            # The lower face keeps the driver's own motion less the lower lip's, whose drop
            # the opening signal gives in the avatar's proportions. (Riding the jaw on the upper
            # lip instead matched self-reenactment a little better, but the gap then never
            # exceeded the measured one, and small openings no longer read as open on another
            # face: mouth_r 0.92 → 0.53 on a head-turn clip.)
            offsets[:, 1] -= offsets[LOWER_LIP_INNER, 1] * self.jaw
            offsets[:, :2] += cheek_offsets(self.cheeks, motion.expression, self.unit)
            face[:N_FACE] += offsets
        self._keep_lips_apart(face)
        self._unfold(face, signals)
        rotation = angles_to_rotation(motion.yaw, motion.pitch, motion.roll)
        shift = np.array([*motion.shift, 0.0]) * self.unit
        self.head = (rotation, motion.scale, shift)
        head = (face - self.pivot) @ rotation.T * motion.scale + self.pivot + shift
        self._keep_outline(head, face, motion, rotation, shift)
        body_shift = self.body_shift(motion, rotation)
        body = (self.rest - self.pivot) * motion.scale + self.pivot + body_shift - self.rest
        rigid = self.mesh.rigidity[:, None]
        own = face - self.rest + self.mesh.body[:, None] * body  # all but the turn
        dest = self.rest + rigid * (head - self.rest) + (1.0 - rigid) * own
        dest[self.image_bottom, 1] = self.rest[self.image_bottom, 1]  # the torso goes on below
        return dest  # the image: moved up, it must not show a gap under it

    def _keep_outline(
        self,
        head: np.ndarray,
        face: np.ndarray,
        motion: Motion,
        rotation: np.ndarray,
        shift: np.ndarray,
    ) -> None:
        """The hair's outline (in place) keeps to the head's silhouette: it goes where the
        head's centre goes, tilts with the roll and scales, but neither turns nor nods
        (AvatarMesh.outline); the hair between it and the face stretches or bunches."""
        ids = self.outline_ids
        if ids.size == 0:
            return
        centre = (self.head_centre - self.pivot) @ rotation.T * motion.scale + self.pivot + shift
        roll = angles_to_rotation(0.0, 0.0, motion.roll)
        kept = (face[ids] - self.head_centre) @ roll.T * motion.scale + centre
        weight = self.mesh.outline[ids, None]
        head[ids] += weight * (kept - head[ids])

    def body_shift(self, motion: Motion, rotation: np.ndarray | None = None) -> np.ndarray:
        """How far (output pixels, x y 0) the body moves: as the neck does, the face's shift
        less what turning on the neck explains (a nod moves the face's centre, never the
        shoulders). `rotation`: the motion's, where the caller has it already."""
        if rotation is None:
            rotation = angles_to_rotation(motion.yaw, motion.pitch, motion.roll)
        neck = NECK * self.unit
        moved = np.array([*motion.shift, 0.0]) * self.unit + neck @ rotation.T - neck
        moved[2] = 0.0
        return moved

    def _flipped(self, face: np.ndarray) -> np.ndarray:
        return np.sign(signed_areas(self.fold_triangles, face[:, :2])) != self.rest_sign

    def _unfold(self, face: np.ndarray, signals: np.ndarray) -> None:
        """No face triangle may end up turned over (in place, before the head turns). A fold
        is undone by taking back expression first (towards the signals alone), then the skin
        around the lid edges and inner lips (towards rest), and at last anything."""
        in_signals = None  # folds the signals alone make: taking expression back can't help
        phase_two_until, best = 20, None
        for round_ in range(200):
            flipped = self._flipped(face)
            if not flipped.any():
                return
            folds = int(flipped.sum())
            if 8 <= round_ < phase_two_until and best is not None and folds >= best:
                phase_two_until = round_  # giving way no longer helps: move on
            best = folds if best is None else min(best, folds)
            if in_signals is None:
                in_signals = self._flipped(signals)
            corners = self.fold_triangles[flipped]
            ids = np.flatnonzero(np.bincount(corners.ravel(), minlength=N_FACE))
            if round_ < 8 and (flipped & ~in_signals).any():  # halve the expression away
                face[ids] = signals[ids] + 0.5 * (face[ids] - signals[ids])
                continue
            movable = ids[~self.keep_in_place[ids]]
            if round_ < phase_two_until and movable.size:  # skin by lid edges and lips gives way:
                around_eyes = movable[self.lid_driven[movable]]  # lid folds back a half,
                face[around_eyes] = self.rest[around_eyes] + 0.5 * (
                    face[around_eyes] - self.rest[around_eyes]
                )
                elsewhere = movable[~self.lid_driven[movable]]  # elsewhere each vertex takes
                moved = self.neighbours @ (face[:N_FACE] - self.rest[:N_FACE])  # its neighbours'
                face[elsewhere] = self.rest[elsewhere] + moved[elsewhere]  # mean
                continue
            if round_ < 150:  # then a folded triangle moves as one: its three corners share
                moved = (face[corners] - self.rest[corners]).mean(1)  # their mean displacement
                flat = corners.ravel()
                total = np.stack(
                    [np.bincount(flat, np.repeat(moved[:, k], 3), N_FACE) for k in range(3)], 1
                )
                count = np.bincount(flat, minlength=N_FACE)[ids, None]
                face[ids] = self.rest[ids] + total[ids] / count
                continue
            face[ids] = self.rest[ids]  # at last: back to rest (rest has no fold)

    def _open_mouth(self, face: np.ndarray, mouth_open: float, mouth_own: float) -> None:
        """Move the jaw to the measured opening: the driver's opening (counted from shut), in
        the avatar's own proportions, whatever the driver's face shape or its neutral's mouth.
        An avatar whose lips part at rest is already open by its resting gap: the driver's
        smaller opening raises its jaw (a shut driver mouth shuts it), a larger one drops it
        by the difference only (the avatar's own opening is not counted twice). `mouth_own`
        keeps that share of the resting gap on top (idle: the avatar as it is)."""
        drop = (max(0.0, mouth_open) - (1.0 - mouth_own) * self.rest_gap) * self.unit
        face[:N_FACE, 1] += drop * self.jaw
        self.jaw_drop = drop * float(self.jaw[LOWER_LIP_INNER])

    def _drop_teeth(self, expression: np.ndarray | None) -> None:
        """How far the lower teeth drop (output pixels): as the chin does, at most as the lower
        lip. They sit on the jaw, and the driver's chin says what the jaw did: a grin pulls the
        lower lip down off the teeth while the jaw stays shut (dropped with the lip, the
        teeth left a dark gap under the upper row where the real mouth shows them)."""
        if expression is None:
            self.teeth_drop = self.jaw_drop
            return
        chin = max(0.0, float(expression[CHIN, 1])) * self.unit
        self.teeth_drop = min(self.jaw_drop, chin)

    def _close_lids(self, face: np.ndarray, closures: list[float]) -> None:
        for (upper, lower, crease, _), brow, closure in zip(
            EYES, BROW_RINGS, closures, strict=True
        ):
            if closure == 0.0:
                continue
            top, bottom = face[upper], face[lower]
            travel = closure * LID_OVERSHOOT * (bottom - top) * LID_PROFILE[:, None]
            face[upper[1:-1]] += travel[1:-1]
            face[crease[1:-1]] += CREASE_TRAVEL * travel[1:-1]
            face[brow] += BROW_RING_TRAVEL * travel[1:-1]

    def _keep_lips_apart(self, face: np.ndarray) -> None:
        upper, lower = face[LIPS_UPPER_INNER[1:-1]], face[LIPS_LOWER_INNER[1:-1]]
        crossed = lower[:, 1] < upper[:, 1]
        if crossed.any():
            middle = (upper[crossed] + lower[crossed]) / 2
            face[np.array(LIPS_UPPER_INNER[1:-1])[crossed]] = middle
            face[np.array(LIPS_LOWER_INNER[1:-1])[crossed]] = middle

    def to_work(self, points: np.ndarray) -> np.ndarray:
        """Output pixels → working pixels (pixel centres kept aligned; depth scaled too)."""
        kx, ky = self.work_per_output
        out = np.array(points, np.float64)
        out[:, 0] = (out[:, 0] + 0.5) * kx - 0.5
        out[:, 1] = (out[:, 1] + 0.5) * ky - 0.5
        if out.shape[1] > 2:
            out[:, 2] *= kx
        return out

    def _rest_box(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """These vertices, and the corners (2, 2) of the box around them at rest (working
        pixels): what roi() needs of them besides their current positions."""
        rest = self.to_work(self.rest[ids, :2])
        return ids, np.vstack([rest.min(0), rest.max(0)])

    def roi(self, dest: np.ndarray) -> Roi:
        """The working-resolution box where anything moves (for dest, in working pixels):
        the head always, the body where the head's translation or scale moved it."""
        body_moved = np.abs(dest[self.body_ids, :2] - self.body_rest_work).max(initial=0.0) > 1e-3
        used, rest_box = self.roi_vertices[bool(body_moved)]
        return Roi.around(np.vstack([dest[used, :2], rest_box]), 2.0, *self.work_size)

    def output_box(self, roi: Roi) -> tuple[Roi, list[list[float]]]:
        """The output pixels whose samples lie inside a working-resolution ROI, and the
        output → working affine map that scales the patch up exactly as cv2.resize scales
        the whole working frame (no seams). Shared with the torch generator."""
        kx, ky = self.work_per_output
        x0 = int(np.ceil((roi.x0 + 0.5) / kx - 0.5))
        y0 = int(np.ceil((roi.y0 + 0.5) / ky - 0.5))
        x1 = min(self.width, int(np.floor((roi.x1 - 1 + 0.5) / kx - 0.5)) + 1)
        y1 = min(self.height, int(np.floor((roi.y1 - 1 + 0.5) / ky - 0.5)) + 1)
        out = Roi(max(x0, 0), max(y0, 0), x1, y1)
        inverse = [
            [kx, 0.0, (out.x0 + 0.5) * kx - 0.5 - roi.x0],
            [0.0, ky, (out.y0 + 0.5) * ky - 0.5 - roi.y0],
        ]
        return out, inverse

    def output_to_work(self) -> list[list[float]]:
        """The whole output frame → working pixels (pixel centres aligned, as to_work maps
        points); the patches' maps are this one offset (output_box). Shared with torch."""
        kx, ky = self.work_per_output
        return [[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]]

    def _scale_up(self, work: np.ndarray) -> np.ndarray:
        """A whole working frame scaled up to the output, exactly as _to_output scales a
        patch of it (the same warp, so a patch of the background equals the still frame's
        own pixels: nothing flickers at the patch's edge, or under it where nothing moved)."""
        if self.work_per_output == (1.0, 1.0):
            return work.copy()
        inverse = np.float32(self.output_to_work())
        return cv2.warpAffine(
            work,
            inverse,
            (self.width, self.height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )

    def _paste_output(self, patch: np.ndarray, roi: Roi, frame: np.ndarray) -> None:
        """Scale a working-resolution patch up into its place in the output frame (in place;
        see output_box): the warp writes there itself, no scaled-up copy to paste."""
        if self.work_per_output == (1.0, 1.0):
            frame[roi.slices] = patch
            return
        out, inverse = self.output_box(roi)
        cv2.warpAffine(
            patch,
            np.float32(inverse),
            (out.width, out.height),
            dst=frame[out.slices],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )

    # ------------------------------------------------------------ rendering

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray:
        self.last_dest = self.deform(motion)
        dest = self.to_work(self.last_dest)
        unit = self.unit * self.work_per_output[0]
        roi = self.roi(dest)
        map_x, map_y = source_maps(
            self.mesh.triangles,
            dest[:, :2],
            self.source,
            roi,
            depth=dest[:, 2],
            scale=self.config.map_scale,
        )
        person = cv2.remap(
            self.bgra, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        offset = np.array([roi.x0, roi.y0], np.float64)
        for box, weight in self.shut_lid_boxes(dest, roi):
            shut = cv2.remap(
                self.bgra_shut,
                map_x[box],
                map_y[box],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
            )
            person[box] = cv2.addWeighted(person[box], 1.0 - weight, shut, weight, 0.0)
        shading = self.skin.frame(motion, driver)
        face = face_box(dest, roi) if shading is not None else None
        if face is not None:
            apply_shading(person, map_x, map_y, shading, self.skin.space, face)
        for eyeball, (upper, lower, _, _), closure in zip(
            self.eyeballs, EYES, self.closures, strict=True
        ):
            self._paint_eye(
                person,
                eyeball,
                dest[upper, :2] - offset,
                dest[lower, :2] - offset,
                dest,
                offset,
                motion.gaze,
                shut_weight(closure),
            )
        mouth = self.mouth_layer(dest, offset, person.shape, unit * motion.scale, driver)
        if mouth is not None:
            mouth.paint(person)
        patch = _blend(self.background[roi.slices], *_colour_and_alpha(person))
        frame = self.still.copy()
        self._paste_output(patch, roi, frame)
        return frame

    def mouth_layer(
        self,
        dest: np.ndarray,
        offset: np.ndarray,
        shape: tuple[int, ...],
        unit: float,
        driver: DriverView | None,
    ) -> MouthLayer | None:
        """The mouth interior inside the current inner lips (ROI pixels): the avatar's own
        rows of teeth where its lips part at rest, else the synthetic one (or the driver's
        own, when configured). Shared with the torch generator."""
        upper = dest[LIPS_UPPER_INNER, :2] - offset
        lower = dest[LIPS_LOWER_INNER, :2] - offset
        if self.own_mouth is not None:
            return self._own_mouth_layer(upper, lower, offset, shape, unit)
        rows = self._teeth_rows(lower, offset)
        mouth = synthetic_mouth(shape, upper, lower, self.mouth_colours, unit, rows)
        if mouth is not None and driver is not None and self.config.mouth_interior == "driver":
            mouth = driver_mouth(mouth, upper, lower, driver)
        return mouth

    def _hidden_lower_row(
        self, offset: np.ndarray, jaw_shift: np.ndarray
    ) -> list[tuple[TeethRow, np.ndarray]]:
        """A parted-lips avatar's lower teeth that its lower lip hid at rest (synthetic, in
        its own teeth's colour or its palette's), on the jaw: a grin pulls the lower lip down
        off them while the jaw stays, and the real mouth then shows them, not a dark gap
        under the upper row. Then its synthetic upper row, if it has one (see _gap_teeth), on
        the skull."""
        rows = []
        skull = self.skull_matrix() @ self.from_rest
        skull[:, 2] -= offset
        if self.hidden_lower is not None:
            jaw = skull.copy()
            jaw[:, 2] += jaw_shift
            rows.append((self.hidden_lower, jaw))
        if self.gap_teeth is not None:
            rows.append((self.gap_teeth, skull))
        return rows

    def _synthetic_teeth(self) -> tuple[Teeth | None, np.ndarray]:
        """A closed-mouth avatar's teeth (None for an avatar with its own), drawn once
        behind its resting inner lips in resting working pixels, and the 3x3 from those back
        to avatar pixels (whence the skull's matrix carries them into each frame)."""
        from_rest = np.linalg.inv(np.vstack([self.skull_matrix(), [0.0, 0.0, 1.0]]))
        if self.own_mouth is not None:
            return None, from_rest
        work = self.to_work(self.rest[:, :2])
        unit = self.unit * self.work_per_output[0]
        teeth = build_teeth(
            work[LIPS_UPPER_INNER], work[LIPS_LOWER_INNER], unit, self.mouth_colours
        )
        return teeth, from_rest

    def _gap_teeth(self) -> TeethRow | None:
        """Synthetic upper teeth for a parted-lips avatar whose own upper row shows none (a
        dark gap), behind its resting upper lip, in its palette: they ride on the skull as a
        closed mouth's do and show as the mouth opens. None where the avatar has its own."""
        if self.own_mouth is None:
            return None
        if shows_teeth(own_teeth_colour(self.own_mouth), self.mouth_colours.teeth):
            return None
        work = self.to_work(self.rest[LIPS_UPPER_INNER, :2])
        unit = self.unit * self.work_per_output[0]
        work[:, 1] -= GAP_TEETH_TUCK * unit
        return teeth_row(work, unit, self.mouth_colours, upper=True)

    def _hidden_lower_teeth(self) -> TeethRow | None:
        """A parted-lips avatar's synthetic lower row (see _hidden_lower_row), behind its
        resting lower lip, coloured like its own teeth (its palette's, under synthetic upper
        ones); None for a closed-mouth avatar."""
        if self.own_mouth is None:
            return None
        distance = eye_distance(self.avatar.points)
        colour = own_teeth_colour(self.own_mouth)
        bite = own_bite_depth(self.own_mouth, self.avatar.points)
        if colour is None or bite is None:
            return None
        if self.gap_teeth is not None:
            colour = self.mouth_colours.teeth
        # a lip line that puts the row's top just behind the upper teeth's biting edge
        line = self.avatar.points[LIPS_UPPER_INNER, :2].copy()
        line[:, 1] += bite - (LOWER_EDGES[0] + BITE_OVERLAP) * distance
        placed = self.framing.apply(np.column_stack([line, np.zeros(len(line))]))[:, :2]
        work = self.to_work(placed)
        unit = self.unit * self.work_per_output[0]
        colours = replace(self.mouth_colours, teeth=colour)
        return teeth_row(work, unit, colours, upper=False)

    def _teeth_rows(
        self, lower: np.ndarray, offset: np.ndarray
    ) -> list[tuple[TeethRow, np.ndarray]]:
        """The synthetic rows and where they go (2x3: resting working pixels → ROI pixels):
        the upper with the skull, never stretched; the lower with it too, dropped along the
        head's vertical by the jaw (a share of the lower lip's drop: held at the chin's, as
        the parted-lips avatar's are, its teeth filled a talking mouth's small openings and
        the tracker read them as less open, mouth_r 0.84 → 0.73 on a statue-like photo).
        Lower first: the upper row overlaps it."""
        if self.teeth is None:
            return []
        skull = self.skull_matrix() @ self.from_rest
        skull[:, 2] -= offset
        down = skull[:, 1] / max(float(np.linalg.norm(skull[:, 1])), 1e-9)
        mark = skull[:, :2] @ self.teeth.jaw_mark + skull[:, 2]
        drop = max(0.0, float((lower[len(lower) // 2] - mark) @ down))
        jaw = skull.copy()
        jaw[:, 2] += JAW_TEETH_TRAVEL * drop * down
        return [(self.teeth.lower, jaw), (self.teeth.upper, skull)]

    def skull_matrix(self) -> np.ndarray:
        """2x3: avatar pixels → working pixels, as the head's last pose carries a point at
        the inner lips' depth with no expression of its own (what the skull does there)."""
        rotation, scale, shift = self.head
        fs, (ox, oy) = self.framing.scale, self.framing.offset
        linear = scale * rotation[:2, :2]
        pivot = self.pivot
        translation = (
            linear @ (np.array([ox, oy]) - pivot[:2])
            + scale * rotation[:2, 2] * (self.mouth_depth - pivot[2])
            + pivot[:2]
            + shift[:2]
        )
        kx, ky = self.work_per_output
        to_work = np.diag([kx, ky])
        matrix = np.empty((2, 3))
        matrix[:, :2] = to_work @ linear * fs
        matrix[:, 2] = to_work @ (translation + 0.5) - 0.5
        return matrix

    def _own_mouth_layer(
        self,
        upper: np.ndarray,
        lower: np.ndarray,
        offset: np.ndarray,
        shape: tuple[int, ...],
        unit: float,
    ) -> MouthLayer | None:
        """The own mouth's rows, whole: the upper with the skull, the lower dropped with the
        jaw, over the synthetic cavity and tongue, seen through the lips' current opening."""
        assert self.own_mouth is not None
        rotation, scale, _ = self.head
        jaw_shift = np.array(self.work_per_output) * scale * rotation[:2, 1] * self.teeth_drop
        cavity = synthetic_mouth(
            shape, upper, lower, self.mouth_colours, unit, self._hidden_lower_row(offset, jaw_shift)
        )
        if cavity is None:
            return None  # the lips meet
        x0, y0 = cavity.origin
        height, width = cavity.mask.shape
        skull = self.skull_matrix()
        skull[:, 2] += skull[:, :2] @ self.own_mouth.origin - offset - (x0, y0)
        jaw = skull.copy()
        jaw[:, 2] += jaw_shift
        fade = self._own_fade(upper, lower, unit)
        box = self._own_interior(cavity, upper, lower, fade).astype(np.float32)
        # The rows' weights add up (over one another, the soft seam between them would show
        # the cavity through).
        cover = np.zeros((height, width, 1), np.float32)
        rows = np.zeros_like(box)
        for layer, matrix in ((self.own_mouth.upper, skull), (self.own_mouth.lower, jaw)):
            moved = cv2.warpAffine(
                layer,
                matrix,
                (width, height),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
            ).astype(np.float32)
            weight = moved[:, :, 3:] / 255.0
            rows += moved[:, :, :3] * weight
            cover += weight
        shown = np.minimum(cover, 1.0)  # where the jaw rises, the rows overlap: share
        box = box * (1.0 - shown) + rows / np.maximum(cover, 1.0)
        box = np.round(box).clip(0, 255).astype(np.uint8)
        polygon = np.vstack([upper, lower[-2:0:-1]]) - (x0, y0)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_AA, 4)
        return MouthLayer(box, mask, (x0, y0))

    def _own_fade(self, upper: np.ndarray, lower: np.ndarray, unit: float) -> float:
        """How far (0 .. 1) the own interior has given way to the synthetic one: as the jaw
        drops, or as the lips part beyond their rest by themselves (see _own_interior)."""
        drop = self.jaw_drop * self.work_per_output[1] / max(unit, 1e-6)
        gap = float(np.max(lower[1:-1, 1] - upper[1:-1, 1])) / max(unit, 1e-6)
        opened = max(drop, gap - self.rest_lip_gap)
        until = OWN_INTERIOR_UNTIL * (GAP_FADE if self.gap_teeth is not None else 1.0)
        fade = float(np.clip(opened / until, 0.0, 1.0))
        return fade * fade * (3.0 - 2.0 * fade)

    def _own_interior(
        self, cavity: MouthLayer, upper: np.ndarray, lower: np.ndarray, fade: float
    ) -> np.ndarray:
        """What shows between the rows: while the mouth opens little, the avatar's own
        interior spread over the opening (what the real mouth shows then: more of the same
        teeth and shade), fading (`fade`) into the synthetic cavity and teeth as the mouth
        opens further, where spreading would draw the teeth out into streaks: as the jaw
        drops, or as the lips part beyond their rest by themselves (a grin bares the lower
        teeth with the jaw shut; spread, frame 0's dark gap under the teeth showed as a grey
        band)."""
        assert self.own_mouth is not None
        if fade >= 1.0:
            return cavity.box
        x0, y0 = cavity.origin
        height, width = cavity.mask.shape
        ring = np.array(LIPS_UPPER_INNER + LIPS_LOWER_INNER[-2:0:-1])
        target = np.vstack([upper, lower[-2:0:-1]]) - (x0, y0)
        source = self.source[ring]
        fan = np.array([(0, i, i % len(ring) + 1) for i in range(1, len(ring) + 1)])
        spread, covered = warp_image(
            self.layers.image,
            fan,
            np.vstack([target.mean(0), target]),
            np.vstack([source.mean(0), source]),
            Roi(0, 0, width, height),
        )
        mixed = cv2.addWeighted(spread, 1.0 - fade, cavity.box, fade, 0.0)
        return np.where(covered[:, :, None], mixed, cavity.box)

    def shut_lid_boxes(self, dest: np.ndarray, roi: Roi) -> list[tuple[tuple[slice, slice], float]]:
        """Where (slices of the ROI) and how much each closing lid shows its shut texture
        (see shut_lid_texture): a box around the lid and eye, the rest is the same in both.
        Shared with the torch generator."""
        boxes = []
        for (upper, lower, crease, _), brow, closure in zip(
            EYES, BROW_RINGS, self.closures, strict=True
        ):
            weight = shut_weight(closure)
            if weight <= 0.0:
                continue
            ring = dest[upper + lower + crease + brow, :2] - (roi.x0, roi.y0)
            x0, y0 = np.floor(ring.min(0)).astype(int) - 2
            x1, y1 = np.ceil(ring.max(0)).astype(int) + 3
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, roi.width), min(y1, roi.height)
            if x1 - x0 >= 2 and y1 - y0 >= 2:
                boxes.append(((slice(y0, y1), slice(x0, x1)), weight))
        return boxes

    def eye_maps(
        self, eyeball: Eyeball, dest: np.ndarray, box_origin: np.ndarray, gaze: tuple[float, float]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Affine maps into an eye box whose top-left is `box_origin` (working pixels): from
        the eyeball's white patch, and from its iris patch moved by the gaze (kept on the
        white). Shared with the torch generator."""
        outer, inner = eyeball.corners
        to_box = _similarity(
            (self.source[outer], self.source[inner]),
            (dest[outer, :2] - box_origin, dest[inner, :2] - box_origin),
        )
        patch_to_box = to_box.copy()
        patch_to_box[:, 2] += to_box[:, :2] @ eyeball.origin
        shift = np.clip(
            np.array(gaze) * eyeball.width,
            (-0.22 * eyeball.width, -0.1 * eyeball.width),
            (0.22 * eyeball.width, 0.1 * eyeball.width),
        )
        iris_to_box = to_box.copy()
        iris_to_box[:, 2] += to_box[:, :2] @ (eyeball.iris_origin + shift)
        return patch_to_box, iris_to_box

    def _paint_eye(
        self,
        person: np.ndarray,
        eyeball: Eyeball,
        upper: np.ndarray,
        lower: np.ndarray,
        dest: np.ndarray,
        offset: np.ndarray,
        gaze: tuple[float, float],
        shut: float = 0.0,
    ) -> None:
        """`shut`: how far the eye shows the shut lid's skin (what a lid not quite down over
        it still leaves: no sliver of iris under a shut lid)."""
        polygon = np.vstack([upper, lower[-2:0:-1]])
        (x0, y0) = np.floor(polygon.min(0)).astype(int) - 1
        (x1, y1) = np.ceil(polygon.max(0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, person.shape[1]), min(y1, person.shape[0])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(
            mask, [np.round((polygon - (x0, y0)) * 16).astype(np.int32)], 255, cv2.LINE_AA, 4
        )
        if not mask.any():
            return
        patch_to_box, iris_to_box = self.eye_maps(eyeball, dest, offset + np.array([x0, y0]), gaze)
        size = (x1 - x0, y1 - y0)
        eye = _warp_patch(eyeball.sclera, patch_to_box, size)
        iris = _warp_patch(eyeball.iris, iris_to_box, size, cv2.BORDER_CONSTANT)
        eye = _blend(eye, iris[:, :, :3], iris[:, :, 3])
        if shut > 0.0:
            skin = _warp_patch(eyeball.shut, patch_to_box, size)
            eye = cv2.addWeighted(eye, 1.0 - shut, skin, shut, 0.0)
        _paint_over(person[y0:y1, x0:x1], eye, mask)
        if shut > 0.0:
            self._paint_lash(person, lid_edge(upper, lower), eyeball.lash, shut)

    @staticmethod
    def _paint_lash(person: np.ndarray, margin: np.ndarray, lash: np.ndarray, shut: float) -> None:
        """The shut lid's lash line over the painted eye (lash_over_eye), colour only."""
        drawn = lash_over_eye(margin, shut, *person.shape[:2])
        if drawn is None:
            return
        x0, y0, line = drawn
        box = person[y0 : y0 + line.shape[0], x0 : x0 + line.shape[1]]
        colour, _ = _colour_and_alpha(box)
        box[:, :, :3] = _blend(colour, np.full_like(colour, lash), line)
