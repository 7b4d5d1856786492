"""Piecewise-affine (triangle mesh) image warping: the rendering core of the mesh generator.

Each output pixel is mapped back into the source image through the affine transform of the
triangle that covers it; triangles are rasterised far-first, so a nearer triangle covers a
farther one (a turned head's near cheek hides the far one) and nothing tears. Vertex
positions keep sub-pixel precision (1/16 px), so slow motion stays smooth. One cv2.remap
then samples the source.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SUBPIXEL_BITS = 4  # fillConvexPoly's fixed-point vertex precision: 1/16 px


@dataclass(frozen=True, slots=True)
class Roi:
    """An axis-aligned box of the output, [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @classmethod
    def around(cls, points: np.ndarray, margin: float, width: int, height: int) -> Roi:
        """The box around `points` (N, 2) plus a margin, clipped to a width × height frame."""
        (x0, y0), (x1, y1) = points.min(0) - margin, points.max(0) + margin
        return cls(
            max(0, int(np.floor(x0))),
            max(0, int(np.floor(y0))),
            min(width, int(np.ceil(x1)) + 1),
            min(height, int(np.ceil(y1)) + 1),
        )


def triangle_affines(
    triangles: np.ndarray, dest: np.ndarray, source: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per triangle, the affine map dest → source as (T, 2, 3), and which triangles are
    usable (non-degenerate in the output). Closed form: the linear part maps the dest
    edges (e1, e2) onto the source edges (f1, f2), A = [f1 f2]·[e1 e2]⁻¹."""
    d = dest[triangles].astype(np.float64)  # (T, 3, 2)
    s = source[triangles].astype(np.float64)
    e1, e2 = d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]
    f1, f2 = s[:, 1] - s[:, 0], s[:, 2] - s[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    valid = np.abs(det) > 1e-6
    inv_det = np.where(valid, 1.0 / np.where(valid, det, 1.0), 0.0)[:, None]
    affines = np.empty((len(triangles), 2, 3))
    affines[:, :, 0] = (f1 * e2[:, 1:] - f2 * e1[:, 1:]) * inv_det
    affines[:, :, 1] = (f2 * e1[:, :1] - f1 * e2[:, :1]) * inv_det
    # the translation, s0 − A·d0, written out (einsum over a 2-vector per triangle was
    # slower than the rest of this function together)
    x0, y0 = d[:, 0, :1], d[:, 0, 1:]
    affines[:, :, 2] = s[:, 0] - (affines[:, :, 0] * x0 + affines[:, :, 1] * y0)
    return affines, valid


def signed_areas(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Twice the signed area of each triangle (the sign says which way round it faces)."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])


def within(triangles: np.ndarray, dest: np.ndarray, roi: Roi, order: np.ndarray) -> np.ndarray:
    """`order` less the triangles wholly outside the ROI (a mesh reaching past the image,
    or a body grid around a small moving head, has many): each costs a polygon fill."""
    # per axis, the corners' extremes as element-wise min/max of three columns (min/max
    # along an axis of length 3 cost numpy several times more)
    overlaps = np.ones(len(triangles), bool)
    for axis, (start, end) in enumerate(((roi.x0, roi.x1), (roi.y0, roi.y1))):
        a, b, c = (dest[triangles[:, k], axis] for k in range(3))
        overlaps &= np.maximum(np.maximum(a, b), c) >= start - 1
        overlaps &= np.minimum(np.minimum(a, b), c) <= end
    return order[overlaps[order]]


def rasterize_ids(
    triangles: np.ndarray, dest: np.ndarray, roi: Roi, order: np.ndarray, scale: int = 1
) -> np.ndarray:
    """An int32 image of the ROI (at 1/scale resolution) holding 1 + the index of the
    triangle drawn last at each pixel (0: none), drawing in `order`."""
    ids = np.zeros((-(-roi.height // scale), -(-roi.width // scale)), np.int32)
    offset = np.array([roi.x0, roi.y0])
    fixed = np.round((dest - offset + 0.5 - 0.5 * scale) / scale * (1 << SUBPIXEL_BITS))
    corners = fixed.astype(np.int32)[triangles[order]]
    fill = cv2.fillConvexPoly
    for polygon, value in zip(corners, (order + 1).tolist(), strict=True):
        fill(ids, polygon, value, cv2.LINE_8, SUBPIXEL_BITS)
    return ids


def warp_maps(
    triangles: np.ndarray,
    dest: np.ndarray,
    source: np.ndarray,
    roi: Roi,
    depth: np.ndarray | None = None,
    scale: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(map_x, map_y, covered) for cv2.remap over the ROI: for each output pixel the source
    position it shows; covered is False where no triangle lies (the map points outside the
    source there, except one pixel around the mesh's edges, which continue it).

    `depth` (V,) orders the triangles: larger = farther, drawn first. With scale > 1 the
    maps are computed at 1/scale resolution and interpolated up (they are piecewise linear).
    """
    map_x, map_y, covered = _maps_and_cover(triangles, dest, source, roi, depth, scale)
    if scale > 1:
        covered = _upsample(covered.astype(np.uint8), scale, roi, linear=False) > 0
    return map_x, map_y, covered


def source_maps(
    triangles: np.ndarray,
    dest: np.ndarray,
    source: np.ndarray,
    roi: Roi,
    depth: np.ndarray | None = None,
    scale: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """warp_maps' (map_x, map_y) alone, for a caller whose source carries its own alpha
    (the generator's frame): the covered mask's upsampling is skipped."""
    map_x, map_y, _ = _maps_and_cover(triangles, dest, source, roi, depth, scale)
    return map_x, map_y


def _maps_and_cover(
    triangles: np.ndarray,
    dest: np.ndarray,
    source: np.ndarray,
    roi: Roi,
    depth: np.ndarray | None,
    scale: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """warp_maps' maps (at full resolution) and its covered mask at 1/scale resolution."""
    affines, valid = triangle_affines(triangles, dest, source)
    if depth is None:
        order = np.flatnonzero(valid)
    else:
        tri_depth = depth[triangles].mean(1)
        order = np.flatnonzero(valid)[np.argsort(-tri_depth[valid], kind="stable")]
    ids = rasterize_ids(triangles, dest, roi, within(triangles, dest, roi, order), scale)
    covered = ids > 0
    # Extend each edge triangle's map one step outwards: anti-aliased edges drawn over the
    # mesh's holes find real texture under them, and interpolating maps up (scale > 1) never
    # mixes a source position with the "uncovered" marker.
    grown = cv2.dilate(ids.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
    ids = np.where(covered, ids, grown)
    origin = (roi.x0 + 0.5 * scale - 0.5, roi.y0 + 0.5 * scale - 0.5)
    map_x, map_y = maps_from_ids(ids, affines, *origin, scale)
    if scale > 1:
        map_x = _upsample(map_x, scale, roi, linear=True)
        map_y = _upsample(map_y, scale, roi, linear=True)
    return map_x, map_y, covered


def maps_from_ids(
    ids: np.ndarray, affines: np.ndarray, x0: float, y0: float, scale: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) for an id image (rasterize_ids) and the triangles' dest → source
    affines; sample (i, j) of `ids` sits at pixel (x0 + j·scale, y0 + i·scale). Pixels with no
    triangle (id 0) map outside the source."""
    table = np.empty((6, len(affines) + 1), np.float32)
    table[:, 1:] = affines.reshape(-1, 6).T
    table[:, 0] = (0, 0, -1, 0, 0, -1)
    a00, a01, a02, a10, a11, a12 = (row.take(ids) for row in table)
    xs = np.arange(ids.shape[1], dtype=np.float32) * scale + np.float32(x0)
    ys = np.arange(ids.shape[0], dtype=np.float32)[:, None] * scale + np.float32(y0)
    map_x = a00 * xs
    map_x += a01 * ys
    map_x += a02
    map_y = a10 * xs
    map_y += a11 * ys
    map_y += a12
    return map_x, map_y


def _upsample(small: np.ndarray, scale: int, roi: Roi, linear: bool) -> np.ndarray:
    """Scale a 1/scale map up by exactly `scale` (sample i sits at pixel i·scale + (scale −
    1)/2), whatever the ROI's size: pad one extrapolated sample each side, resize by the
    integer factor, crop the ROI. Resizing to the ROI's own size would stretch the map."""
    if linear:
        padded = np.pad(small, 1, mode="reflect", reflect_type="odd")
        method = cv2.INTER_LINEAR
    else:
        padded = np.pad(small, 1, mode="edge")
        method = cv2.INTER_NEAREST
    big = cv2.resize(padded, None, fx=scale, fy=scale, interpolation=method)
    return big[scale : scale + roi.height, scale : scale + roi.width]


def warp_image(
    image: np.ndarray,
    triangles: np.ndarray,
    dest: np.ndarray,
    source: np.ndarray,
    roi: Roi,
    depth: np.ndarray | None = None,
    scale: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The source image as the moved mesh shows it over the ROI, and the covered mask."""
    map_x, map_y, covered = warp_maps(triangles, dest, source, roi, depth, scale)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return warped, covered
