"""The avatar's mesh: MediaPipe's canonical face triangles, extended beyond the face (hair,
ears, neck), over the body and out to the image border, with how strongly each vertex
follows the head's turns (rigidity) and its translation and scale (body weight).

The face part has holes at the eyes and the mouth (the canonical tessellation has none
there); the generator fills them with the eyeballs and the mouth interior. Beyond the face
the head (skull, hair, ears) is one rigid body: its vertices reach out to the head's outline
(the person mask's edge, or the silhouette of a head proxy fitted to the face where the mask
misses hair) and take their depth from that proxy, so a turn moves the hair as the skull
carries it and near parts cover far ones. A band outside the outline takes up the turn (the
background plate shows what the head uncovers); below the jaw the neck blends. Leaning in
and sliding sideways move the whole person: head, neck and shoulders whole (the neck keeps
its length), the weight easing off down the torso, a coarse grid over the body carrying it
smoothly. The background never moves: the person is composited over a still plate by its
mask, the mesh only carries that mask along.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from engines.facegeom import (
    FACE_OVAL,
    LIPS_LOWER_INNER,
    LIPS_UPPER_INNER,
    N_FACE,
    N_LANDMARKS,
    eye_distance,
)

# The neck's rings around the lower face oval: (distance from the face centre in oval radii,
# how much of the head motion they follow); it blends to the still torso.
NECK_RINGS = ((1.2, 0.55), (1.45, 0.15), (1.75, 0.0))
# The head proxy: an ellipsoid through the face oval. Across, the oval's width at the ears
# (grown a little: the skull's sides); up, from the ears' level to the crown, which is this
# share of the face's height (chin to hairline) above the hairline; its centre this many eye
# distances behind the oval's sides (which lie in front of the ears).
HEAD_WIDTH_GROWTH, CROWN_ABOVE_HAIRLINE, CENTRE_BEHIND_EARS = 1.08, 0.3, 0.5
HEAD_REACH = 0.9  # the hair outline is looked for at most this many oval radii beyond it
OUTLINE_MARGIN = 0.06  # eye distances beyond the person mask's edge (its soft edge moves too)
BAND = 0.35  # eye distances: the band outside the head that takes up its motion
OUTLINE_KEEPS = (0.0, 1.0, 0.0)  # per ring vertex (half-way, outline, band): AvatarMesh.outline
BORDER_STEPS = 12
# The body follows the head's translation and scale fully down to BODY_FULL face heights
# below the chin (neck, shoulders), easing off to nothing at BODY_NONE; outside the person
# the weight holds for one grid step (the mask's edge moves whole), then fades over
# BODY_FADE face heights towards the still border.
BODY_FULL, BODY_NONE, BODY_FADE = 1.0, 3.5, 1.0
BODY_GRID = 0.4  # the body grid's step, in face heights
FRAME_MARGIN = 1.5  # the still frame of vertices around the image, in face heights outside
MOUTH_OPEN_AT_REST = 0.04  # inner-lip gap per eye distance above which the avatar's own
# mouth interior (teeth...) is drawn (as layers moving with the skull and jaw)


@functools.cache
def face_triangles() -> np.ndarray:
    """MediaPipe's canonical face triangles (from its tessellation edges)."""
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {
        tuple(sorted((a, b, c)))
        for a, b in FACEMESH_TESSELATION
        for c in neighbours[a] & neighbours[b]
    }
    return np.array(sorted(triangles), np.int32)


@dataclass(frozen=True, slots=True)
class AvatarMesh:
    """Vertices in avatar pixels (x, y, depth like the landmarks); the first 478 are the
    landmarks themselves (the irises take no part in the triangles)."""

    vertices: np.ndarray  # (V, 3) float64
    triangles: np.ndarray  # (T, 3) int32
    rigidity: np.ndarray  # (V,) share of the head motion each vertex follows
    body: np.ndarray  # (V,) share of the head's translation and scale each vertex follows
    mouth_open_at_rest: bool
    # (V,) how much each vertex keeps its place on the head's silhouette instead of turning
    # with the skull: the hair's outline. A round head's outline hardly changes as it turns
    # or nods; carried round with the skull, the outline went behind it (the crown cut flat
    # on a nod up, the background showing beside the far cheek on a turn), where the avatar
    # has no picture of the back of the head to show.
    outline: np.ndarray
    head_center: np.ndarray  # (3,) the head proxy's centre (avatar pixels, depth)

    @property
    def eye_distance(self) -> float:
        return eye_distance(self.vertices[:N_LANDMARKS])


def _inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array(
        [cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in points]
    )


@dataclass(frozen=True, slots=True)
class HeadProxy:
    """The head as one rigid body: an ellipsoid fitted to the face oval, turned in the image
    by the face's own roll. Depth like the landmarks' (larger = farther)."""

    center: np.ndarray  # (3,) x, y (avatar pixels), depth
    axes: np.ndarray  # (3,) semi-axes: across, up, depth
    across: np.ndarray  # (2,) unit vector across the face (its right to left), in the image
    up: np.ndarray  # (2,) unit vector from the chin towards the crown, in the image
    jaw: float  # the jaw's angle level: its height along `up` from the centre (negative)

    def local(self, xy: np.ndarray) -> np.ndarray:
        """Image points → (across, up) in semi-axes: inside the silhouette where |.| < 1."""
        offset = np.asarray(xy, np.float64)[..., :2] - self.center[:2]
        return np.stack([offset @ self.across / self.axes[0], offset @ self.up / self.axes[1]], -1)

    def inside(self, xy: np.ndarray) -> np.ndarray:
        return (self.local(xy) ** 2).sum(-1) < 1.0

    def depth(self, xy: np.ndarray) -> np.ndarray:
        """The ellipsoid's front surface behind each image point; its centre's depth (the
        silhouette's) outside it, where hair stands off the skull."""
        rest = np.clip(1.0 - (self.local(xy) ** 2).sum(-1), 0.0, 1.0)
        return self.center[2] - self.axes[2] * np.sqrt(rest)

    def exit(self, start: np.ndarray, direction: np.ndarray) -> np.ndarray:
        """How far (pixels) from each start point along its unit direction the silhouette
        lies (0 where the start is outside)."""
        p, d = self.local(start), self.local(self.center[:2] + direction)
        a, b, c = (d * d).sum(-1), 2 * (p * d).sum(-1), (p * p).sum(-1) - 1.0
        root = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
        return np.maximum((-b + root) / (2 * a), 0.0)

    def mask(self, shape: tuple[int, ...], above: float = -np.inf) -> np.ndarray:
        """uint8 mask of the silhouette (above the level `above` along `up`, in pixels)."""
        ys, xs = np.mgrid[: shape[0], : shape[1]]
        xy = np.stack([xs, ys], -1).astype(np.float64)
        local = self.local(xy)
        keep = ((local**2).sum(-1) < 1.0) & (local[..., 1] * self.axes[1] > above)
        return keep.astype(np.uint8) * 255


def fit_head(points: np.ndarray) -> HeadProxy:
    """The head proxy of one face (see HeadProxy), from its landmarks."""
    points = np.asarray(points, np.float64)
    unit = eye_distance(points)
    right, left = points[234], points[454]  # the oval's sides, by the ears
    across = (left[:2] - right[:2]) / np.linalg.norm(left[:2] - right[:2])
    up = np.array([across[1], -across[0]])
    middle = (left + right) / 2
    height = float((points[10, :2] - points[152, :2]) @ up)  # chin to hairline
    crown = float((points[10, :2] - middle[:2]) @ up) + CROWN_ABOVE_HAIRLINE * height
    half_width = HEAD_WIDTH_GROWTH * float(np.linalg.norm(left[:2] - right[:2])) / 2
    center_depth = float(middle[2]) + CENTRE_BEHIND_EARS * unit
    # Deep enough that the forehead lies on the surface.
    forehead = float((points[10, :2] - middle[:2]) @ up) / crown
    depth = (center_depth - float(points[10, 2])) / np.sqrt(max(1.0 - forehead**2, 0.1))
    jaw = float(((points[172, :2] + points[397, :2]) / 2 - middle[:2]) @ up)
    return HeadProxy(
        np.array([*middle[:2], center_depth]),
        np.array([half_width, crown, max(depth, half_width)]),
        across,
        up,
        jaw,
    )


def _outline_distance(
    person: np.ndarray | None, start: np.ndarray, direction: np.ndarray, reach: np.ndarray
) -> np.ndarray:
    """Along each ray (start, unit direction), how far the person mask goes on (pixels, at
    most `reach`; the image's edge does not end it)."""
    if person is None:
        return np.zeros(len(start))
    height, width = person.shape[:2]
    steps = np.linspace(0.0, 1.0, 48)
    along = reach[:, None] * steps  # (R, S)
    xy = start[:, None, :] + direction[:, None, :] * along[..., None]
    x = np.clip(np.round(xy[..., 0]).astype(int), 0, width - 1)
    y = np.clip(np.round(xy[..., 1]).astype(int), 0, height - 1)
    outside = person[y, x] < 128
    first = np.where(outside.any(1), outside.argmax(1), len(steps) - 1)
    return along[np.arange(len(start)), first]


def _ring_vertices(
    points: np.ndarray, head: HeadProxy, person: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices on rays out of the face oval, their rigidity and how much they keep to the
    head's outline (see AvatarMesh.outline). Above the jaw the head: half-way to its outline,
    on it (the person mask's edge, or the proxy's silhouette where the mask misses hair),
    and a band beyond it that stays still; below the jaw the neck's rings, blending to the
    torso; between the two a blend."""
    oval = points[FACE_OVAL]
    center = oval[:, :2].mean(0)
    unit = eye_distance(points)
    offset = oval[:, :2] - center
    radius = np.linalg.norm(offset, axis=1)
    direction = offset / radius[:, None]
    level = (oval[:, :2] - head.center[:2]) @ head.up
    share = np.clip((level - head.jaw) / (0.5 * -head.jaw), 0.0, 1.0)[:, None]  # 1: head

    outline = np.maximum(
        _outline_distance(person, oval[:, :2], direction, HEAD_REACH * radius),
        head.exit(oval[:, :2], direction),
    )
    outline = np.minimum(outline + OUTLINE_MARGIN * unit, HEAD_REACH * radius)
    head_at = np.stack([outline / 2, outline, outline + BAND * unit], 1)  # (N, 3) beyond oval
    neck_at = radius[:, None] * (np.array([r for r, _ in NECK_RINGS]) - 1.0)
    at = share * head_at + (1 - share) * neck_at
    xy = oval[:, None, :2] + direction[:, None, :] * at[..., None]
    head_depth = head.depth(xy)
    head_depth[:, 2] = head.center[2] + head.axes[2]  # the band: behind the head
    neck_depth = oval[:, None, 2] + at / radius[:, None] * unit * 0.6  # behind the face
    depth = share * head_depth + (1 - share) * neck_depth
    rigidity = share * np.array([1.0, 1.0, 0.0]) + (1 - share) * np.array(
        [r for _, r in NECK_RINGS]
    )
    outline_weight = share * np.array(OUTLINE_KEEPS)
    vertices = np.concatenate([xy, depth[..., None]], -1).reshape(-1, 3)
    return vertices, rigidity.reshape(-1), outline_weight.reshape(-1)


def _border_vertices(width: int, height: int, margin: float = 0.0) -> np.ndarray:
    """Vertices along the image's edge, or along a frame `margin` pixels outside it."""
    xs = np.linspace(-margin, width - 1 + margin, BORDER_STEPS + 1)
    ys = np.linspace(-margin, height - 1 + margin, BORDER_STEPS + 1)
    edge = [(x, ys[0]) for x in xs] + [(x, ys[-1]) for x in xs]
    edge += [(xs[0], y) for y in ys[1:-1]] + [(xs[-1], y) for y in ys[1:-1]]
    return np.array([(x, y, 0.0) for x, y in edge], np.float64)


def _border_rigidity(
    border: np.ndarray, rings: np.ndarray, ring_rigidity: np.ndarray
) -> np.ndarray:
    """Where the head reaches past the image's edge (hair cut off by the frame), the border
    inside its outline follows it like the nearest outline vertex; elsewhere it stays."""
    outline = rings.reshape(-1, 3, 3)[:, 1, :2]  # (N, 2) the outline, on each ray
    follows = ring_rigidity.reshape(-1, 3)[:, 1]
    head = follows >= 0.5  # the head's rays, above the jaw
    polygon = outline[head].astype(np.float32).reshape(-1, 1, 2)
    inside = np.array(
        [cv2.pointPolygonTest(polygon, (float(x), float(y)), True) for x, y in border[:, :2]]
    )
    nearest = np.linalg.norm(border[:, None, :2] - outline[None], axis=2).argmin(1)
    return np.where(inside >= 0.0, follows[nearest], 0.0)


def _ease(t: np.ndarray) -> np.ndarray:
    """1 at t ≤ 0 down to 0 at t ≥ 1, smoothly (a half cosine)."""
    return 0.5 + 0.5 * np.cos(np.pi * np.clip(t, 0.0, 1.0))


def _grid_vertices(
    points: np.ndarray, rings: np.ndarray, width: int, height: int, step: float
) -> np.ndarray:
    """A coarse grid over the image, kept off the border and off the face and its rings."""
    xs = np.arange(step / 2, width - step / 2, step)
    ys = np.arange(step / 2, height - step / 2, step)
    grid = np.array([(x, y) for y in ys for x in xs], np.float64).reshape(-1, 2)
    head = cv2.convexHull(np.vstack([points[FACE_OVAL, :2], rings[:, :2]]).astype(np.float32))
    off_head = np.array(
        [cv2.pointPolygonTest(head, (float(x), float(y)), True) < -0.5 * step for x, y in grid]
    ).astype(bool)
    return grid[off_head]


def body_weights(
    xy: np.ndarray, points: np.ndarray, person: np.ndarray | None, step: float
) -> np.ndarray:
    """How much of the head's translation and scale each point (avatar pixels) follows:
    all of it down to BODY_FULL face heights below the chin, easing off down the torso, and
    outside the person mask fading to nothing (see the constants)."""
    face_y = points[:N_FACE, 1]
    face_height = float(np.ptp(face_y))
    chin = float(points[FACE_OVAL, 1].max())
    below = (xy[:, 1] - chin) / face_height
    weight = _ease((below - BODY_FULL) / (BODY_NONE - BODY_FULL))
    if person is not None:
        outside = (person < 128).astype(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, 5)
        h, w = person.shape[:2]
        ix = np.clip(np.round(xy[:, 0]).astype(int), 0, w - 1)
        iy = np.clip(np.round(xy[:, 1]).astype(int), 0, h - 1)
        beyond = (distance[iy, ix] - step) / (BODY_FADE * face_height)
        weight = weight * _ease(beyond)
    return weight


def build_mesh(
    points: np.ndarray, width: int, height: int, person: np.ndarray | None = None
) -> AvatarMesh:
    """The mesh of one avatar from its landmarks (avatar pixels), image size and person mask
    (uint8 alpha; without it the head proxy's silhouette alone outlines the head)."""
    points = np.asarray(points, np.float64)
    head = fit_head(points)
    rings, ring_rigidity, ring_outline = _ring_vertices(points, head, person)
    border = _border_vertices(width, height)
    border_rigidity = _border_rigidity(border, rings, ring_rigidity)
    border[:, 2] = np.where(border_rigidity > 0, head.depth(border), head.center[2] + head.axes[2])
    shown = (
        (rings[:, 0] >= 1)
        & (rings[:, 0] < width - 1)
        & (rings[:, 1] >= 1)
        & (rings[:, 1] < height - 1)
    )  # those outside the image are left out: the border vertices take over there
    rings, ring_rigidity, ring_outline = rings[shown], ring_rigidity[shown], ring_outline[shown]
    unit = eye_distance(points)
    step = BODY_GRID * float(np.ptp(points[:N_FACE, 1]))
    grid = _grid_vertices(points, rings, width, height, step)
    weights = body_weights(np.vstack([rings[:, :2], grid, border[:, :2]]), points, person, step)
    ring_weights = weights[: len(rings)]
    grid_weights, border_weights = weights[len(rings) : -len(border)], weights[-len(border) :]
    # The body and the background lie behind the head, the background furthest: a fold out
    # there (the border holds while the body slides up to it) is drawn under the person.
    far = max(float(points[:, 2].max()), float(rings[:, 2].max(initial=0.0))) + 0.5 * unit
    grid = np.column_stack([grid, far + (1.0 - grid_weights) * unit])
    border[:, 2] = np.where(border_rigidity > 0, border[:, 2], far + (1.0 - border_weights) * unit)
    # The image's edge moves with the body and the head; a frame outside the image does not:
    # between the two, a moved edge uncovers what lies outside the image, which is nothing
    # (the plate shows), not the person's edge stretched out to a still border.
    frame = _border_vertices(width, height, FRAME_MARGIN * float(np.ptp(points[:N_FACE, 1])))
    frame[:, 2] = far + 2.0 * unit
    vertices = np.vstack([points, rings, grid, border, frame])
    still = np.zeros(len(frame))
    rigidity = np.concatenate(
        [np.ones(N_LANDMARKS), ring_rigidity, np.zeros(len(grid)), border_rigidity, still]
    )
    body = np.concatenate([np.ones(N_LANDMARKS), ring_weights, grid_weights, border_weights, still])
    outline = np.concatenate(  # the hair the image's edge cuts off is outline too
        [np.zeros(N_LANDMARKS), ring_outline, np.zeros(len(grid)), border_rigidity, still]
    )

    # Outside the face: Delaunay over the oval, the rings, the body grid, the edge, the frame.
    outer_ids = np.concatenate([FACE_OVAL, np.arange(N_LANDMARKS, len(vertices))])
    outer_ids = outer_ids[~np.isin(outer_ids, np.arange(N_FACE, N_LANDMARKS))]
    delaunay = Delaunay(vertices[outer_ids, :2]).simplices
    outer = outer_ids[delaunay]
    centroids = vertices[outer, :2].mean(1)
    outer = outer[~_inside(points[FACE_OVAL, :2], centroids)]

    triangles = [face_triangles(), outer]
    gap = np.linalg.norm(
        points[LIPS_UPPER_INNER[1:-1], :2] - points[LIPS_LOWER_INNER[1:-1], :2], axis=1
    ).max() / eye_distance(points)
    mouth_open = bool(gap > MOUTH_OPEN_AT_REST)  # its own teeth are drawn as layers
    return AvatarMesh(
        vertices,
        np.vstack(triangles).astype(np.int32),
        rigidity,
        body,
        mouth_open,
        outline,
        head.center.copy(),
    )
