"""The avatar's mesh: MediaPipe's canonical face triangles, extended beyond the face (hair,
ears, neck), over the body and out to the image border, with how strongly each vertex
follows the head's turns (rigidity) and its translation and scale (body weight).

The face part has holes at the eyes and the mouth (the canonical tessellation has none
there); the generator fills them with the eyeballs and the mouth interior. The rings around
the face carry hair and neck along with the head's turns, fading to nothing: a turn is the
head's own. Leaning in and sliding sideways move the whole person: head, neck and shoulders
whole (the neck keeps its length), the weight easing off down the torso, and a coarse grid
over the body carries it smoothly. The background never moves: the person is composited
over a still plate by its mask, the mesh only carries that mask along (outside the person,
where the body weight fades to the still border, the warped texture is transparent).
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

# Rings around the face oval: (distance from the face centre in oval radii, how much of the
# head motion they follow above the face, and below it: the neck follows less).
RINGS = ((1.2, 1.0, 0.55), (1.45, 0.75, 0.15), (1.75, 0.0, 0.0))
BORDER_STEPS = 6
# The body follows the head's translation and scale fully down to BODY_FULL face heights
# below the chin (neck, shoulders), easing off to nothing at BODY_NONE; outside the person
# the weight holds for one grid step (the mask's edge moves whole), then fades over
# BODY_FADE face heights towards the still border.
BODY_FULL, BODY_NONE, BODY_FADE = 1.0, 3.5, 1.0
BODY_GRID = 0.4  # the body grid's step, in face heights
MOUTH_OPEN_AT_REST = 0.04  # inner-lip gap per eye distance above which the avatar's own
# mouth interior (teeth...) is part of the mesh


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
    free: np.ndarray  # (V, 2) 1 where a vertex may move in x, y: the border vertices only
    # slide along their edge (the mesh covers the whole image: a gap would show nothing)
    mouth_open_at_rest: bool

    @property
    def eye_distance(self) -> float:
        return eye_distance(self.vertices[:N_LANDMARKS])


def _inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    contour = polygon.astype(np.float32).reshape(-1, 1, 2)
    return np.array(
        [cv2.pointPolygonTest(contour, (float(x), float(y)), False) > 0 for x, y in points]
    )


def _ring_vertices(points: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertices around the face oval and their rigidity; those outside the image are left
    out (the border vertices take over there)."""
    oval = points[FACE_OVAL]
    center = oval[:, :2].mean(0)
    unit = eye_distance(points)
    vertices, rigidity = [], []
    for radius, above, below in RINGS:
        for point in oval:
            direction = point[:2] - center
            up = float(np.clip(-direction[1] / (np.linalg.norm(direction) + 1e-9), -1, 1))
            share = below + (above - below) * (up + 1) / 2
            xy = center + direction * radius
            depth = point[2] + (radius - 1.0) * unit * 0.6  # further back than the face
            if 1 <= xy[0] < width - 1 and 1 <= xy[1] < height - 1:
                vertices.append((*xy, depth))
                rigidity.append(share)
    return np.array(vertices, np.float64).reshape(-1, 3), np.array(rigidity)


def _border_vertices(width: int, height: int) -> np.ndarray:
    xs = np.linspace(0, width - 1, BORDER_STEPS + 1)
    ys = np.linspace(0, height - 1, BORDER_STEPS + 1)
    edge = [(x, 0) for x in xs] + [(x, height - 1) for x in xs]
    edge += [(0, y) for y in ys[1:-1]] + [(width - 1, y) for y in ys[1:-1]]
    return np.array([(x, y, 0.0) for x, y in edge], np.float64)


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
    (uint8, 255 = person; without it all of the image below the face counts as body)."""
    points = np.asarray(points, np.float64)
    unit = eye_distance(points)
    rings, ring_rigidity = _ring_vertices(points, width, height)
    step = BODY_GRID * float(np.ptp(points[:N_FACE, 1]))
    grid = _grid_vertices(points, rings, width, height, step)
    border = _border_vertices(width, height)
    outside = np.vstack([grid, border[:, :2]])
    weights = body_weights(np.vstack([rings[:, :2], outside]), points, person, step)
    ring_weights, outside_weights = weights[: len(rings)], weights[len(rings) :]
    # The body and the background lie behind the head, the background furthest: a fold out
    # there (the border holds while the body slides up to it) is drawn under the person.
    far = max(float(points[:, 2].max()), float(rings[:, 2].max(initial=0.0))) + 0.5 * unit
    outside_depth = far + (1.0 - outside_weights) * unit
    vertices = np.vstack([points, rings, np.column_stack([outside, outside_depth])])
    rigidity = np.concatenate([np.ones(N_LANDMARKS), ring_rigidity, np.zeros(len(outside))])
    body = np.concatenate([np.ones(N_LANDMARKS), ring_weights, outside_weights])
    free = np.ones((len(vertices), 2))
    edge = border[:, :2]
    free[len(vertices) - len(border) :] = np.column_stack(
        [(edge[:, 0] > 0) & (edge[:, 0] < width - 1), (edge[:, 1] > 0) & (edge[:, 1] < height - 1)]
    )

    # Outside the face: Delaunay over the oval, the rings, the body grid and the border.
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
    mouth_open = bool(gap > MOUTH_OPEN_AT_REST)
    if mouth_open:  # the avatar's own teeth and tongue stretch with the opening
        ring = np.array(LIPS_UPPER_INNER + LIPS_LOWER_INNER[-2:0:-1])
        inner = ring[Delaunay(points[ring, :2]).simplices]
        keep = _inside(points[ring, :2], points[inner, :2].mean(1))
        triangles.append(inner[keep])
    return AvatarMesh(
        vertices, np.vstack(triangles).astype(np.int32), rigidity, body, free, mouth_open
    )
