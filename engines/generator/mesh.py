"""The avatar's mesh: MediaPipe's canonical face triangles, extended beyond the face (hair,
ears, neck) and out to the image border, with how strongly each vertex follows the head.

The face part has holes at the eyes and the mouth (the canonical tessellation has none
there); the generator fills them with the eyeballs and the mouth interior. The rings around
the face carry hair and neck along with the head, fading to the still border, so the
background never moves (the person is also separated from it by its mask).
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


def build_mesh(points: np.ndarray, width: int, height: int) -> AvatarMesh:
    """The mesh of one avatar from its landmarks (avatar pixels) and image size."""
    points = np.asarray(points, np.float64)
    rings, ring_rigidity = _ring_vertices(points, width, height)
    border = _border_vertices(width, height)
    vertices = np.vstack([points, rings, border])
    rigidity = np.concatenate([np.ones(N_LANDMARKS), ring_rigidity, np.zeros(len(border))])

    # Outside the face: Delaunay over the oval, the rings and the border.
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
    return AvatarMesh(vertices, np.vstack(triangles).astype(np.int32), rigidity, mouth_open)
