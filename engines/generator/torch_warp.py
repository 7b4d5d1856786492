"""The mesh generator's per-pixel stages in torch, on any device: triangle rasterisation into
a warp map, bilinear sampling in cv2.remap's pixel-centre convention, 8-bit alpha blending,
anti-aliased polygon masks and BGR → I420.

Each stage reproduces its OpenCV counterpart in warp.py and mesh_cpu.py so that the two
generators' frames agree within rounding: the rasteriser paints exactly the pixels
cv2.fillConvexPoly paints (its integer arithmetic, clipping included), in the same far-first
order; the same one-pixel growth at the mesh's edge and exact 2x map upsampling follow. Only
the eye openings' anti-aliased outline is an approximation of cv2.fillPoly's. Images are
float32 tensors holding 8-bit values, channels first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from engines.runtime.cuda_stream import upload

SUBPIXEL_BITS = 4  # cv2.fillConvexPoly's vertex precision (shift 4): 1/16 px
SUBPIXEL_ONE = 1 << SUBPIXEL_BITS
SUBPIXEL = float(SUBPIXEL_ONE)
LINE_BITS = 16  # OpenCV's line drawing works in 16.16 fixed point
LINE_HALF = 1 << (LINE_BITS - 1)
EDGES = ((0, 1), (1, 2), (2, 0))
# How strongly cv2.fillPoly's anti-aliased edge covers a pixel outside the polygon, by the
# pixel's distance from the edge along the edge's minor axis in 1/16 px (measured from
# OpenCV's output; gone beyond 1.5 px).
EDGE_PROFILE_STEPS = 16
EDGE_PROFILE = (
    232, 232, 230, 226, 221, 214, 204, 193, 181, 167, 151, 135, 118,
    101, 87, 72, 58, 47, 37, 29, 21, 16, 12, 8, 6, 0,
)  # fmt: skip
# OpenCV's fixed-point BT.601 video-range RGB → YUV coefficients (shift 20), as its
# COLOR_BGR2YUV_I420 uses them: the same integer maths gives the same levels.
YUV_SHIFT = 20
Y_COEFFS = (269484, 528482, 102760)  # R, G, B
U_COEFFS = (-155188, -305135, 460324)
V_COEFFS = (460324, -385875, -74448)


# ---------------------------------------------------------------- rasterisation


def fixed_corners(points: np.ndarray) -> np.ndarray:
    """Pixel positions → int64 in 1/16 px, rounded as fillConvexPoly's shift 4 takes them
    (np.round, halves to even, as engines.generator.warp rounds them for cv2.fillConvexPoly)."""
    return np.round(points * SUBPIXEL).astype(np.int64)


def candidate_boxes(corners: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each fixed-point (T, 3, 2) triangle's bounding box in whole pixels, rounded as
    fillConvexPoly rounds it and clipped to the image: (T, 4) as x0, y0, columns, rows
    (no rows or columns for a triangle outside). Worked out on the host, where the corners
    are: the number of candidate pixels is then known there, and nothing waits for the GPU."""
    half = SUBPIXEL_ONE // 2
    low = np.maximum((corners.min(1) + half) >> SUBPIXEL_BITS, 0)
    high = np.minimum((corners.max(1) + half) >> SUBPIXEL_BITS, (width - 1, height - 1))
    return np.concatenate([low, np.maximum(high - low + 1, 0)], 1)


def _candidate_pixels(
    boxes: torch.Tensor, candidates: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (triangle, x, y) whose pixel lies in the triangle's box (candidate_boxes; their
    `candidates` pixels in all): the candidates for the edge test."""
    low, spans = boxes[:, :2], boxes[:, 2:]
    counts = spans[:, 0] * spans[:, 1]
    triangle = torch.repeat_interleave(
        torch.arange(len(boxes), device=boxes.device), counts, output_size=candidates
    )
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(triangle), device=boxes.device) - starts[triangle]
    box_width = spans[triangle, 0]
    xs = low[triangle, 0] + local % box_width
    ys = low[triangle, 1] + torch.div(local, box_width, rounding_mode="floor")
    return triangle, xs, ys


def _shift_round(value: torch.Tensor) -> torch.Tensor:
    """A 16.16 fixed-point coordinate → its nearest whole pixel (halves up)."""
    return (value + LINE_HALF) >> LINE_BITS


def _outcode(point: torch.Tensor, right: int, bottom: int, rows_too: bool) -> torch.Tensor:
    """Cohen–Sutherland region bits: 1 left, 2 right, 4 above, 8 below."""
    code = (point[:, 0] < 0).long() + (point[:, 0] > right).long() * 2
    if rows_too:
        code = code + (point[:, 1] < 0).long() * 4 + (point[:, 1] > bottom).long() * 8
    return code


def _move_to(
    point: torch.Tensor, other: torch.Tensor, axis: int, target: torch.Tensor, moving: torch.Tensor
) -> torch.Tensor:
    """`point` slid along the line to `other` until its `axis` coordinate is `target`, with
    OpenCV's double-precision step truncated to an integer (where `moving`)."""
    cross = 1 - axis
    run = (other[:, axis] - point[:, axis]).double()
    run = torch.where(moving, run, torch.ones_like(run))
    step = (target - point[:, axis]).double() * (other[:, cross] - point[:, cross]).double() / run
    moved = point.clone()
    moved[:, cross] = point[:, cross] + step.long()
    moved[:, axis] = target
    return torch.where(moving[:, None], moved, point)


def _clip_line(
    start: torch.Tensor, end: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cv2.clipLine on 16.16 fixed-point segments against the image: the clipped ends and
    whether anything is left (OpenCV draws a polygon's outline clipped so)."""
    right, bottom = (width << LINE_BITS) - 1, (height << LINE_BITS) - 1
    c1, c2 = _outcode(start, right, bottom, True), _outcode(end, right, bottom, True)
    clipping = ((c1 & c2) == 0) & ((c1 | c2) != 0)
    p1, p2 = start, end
    for first in (True, False):  # rows first: the top or bottom edge, one end then the other
        code = c1 if first else c2
        moving = clipping & ((code & 12) != 0)
        target = torch.where(code < 8, 0, bottom)
        if first:
            p1 = _move_to(p1, p2, 1, target, moving)
            c1 = torch.where(moving, _outcode(p1, right, bottom, False), c1)
        else:
            p2 = _move_to(p2, p1, 1, target, moving)
            c2 = torch.where(moving, _outcode(p2, right, bottom, False), c2)
    clipping &= ((c1 & c2) == 0) & ((c1 | c2) != 0)
    for first in (True, False):  # then the left or right edge
        code = c1 if first else c2
        moving = clipping & (code != 0)
        target = torch.where(code == 1, 0, right)
        if first:
            p1 = _move_to(p1, p2, 0, target, moving)
            c1 = torch.where(moving, 0, c1)
        else:
            p2 = _move_to(p2, p1, 0, target, moving)
            c2 = torch.where(moving, 0, c2)
    return p1, p2, (c1 | c2) == 0


def _line_walks(start: torch.Tensor, end: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """OpenCV's 8-connected line from `start` to `end` (K, 2; 16.16 fixed) as (K, 8) int64
    columns: x-major, first pixel along the major axis, steps, minor start, minor slope,
    end pixel x and y, visible. The line is clipped to the image first, as OpenCV clips it;
    then it walks the major axis from the rounded start, the minor coordinate advanced by a
    truncated fixed-point slope, and paints the rounded end point too."""
    start, end, visible = _clip_line(start, end, height, width)
    delta = end - start
    x_major = delta[:, 0].abs() > delta[:, 1].abs()
    swap = torch.where(x_major, delta[:, 0] < 0, delta[:, 1] < 0)[:, None]
    first, last = torch.where(swap, end, start), torch.where(swap, start, end)
    first_major = torch.where(x_major, first[:, 0], first[:, 1])
    first_minor = torch.where(x_major, first[:, 1], first[:, 0])
    span_major = torch.where(x_major, last[:, 0], last[:, 1]) - first_major
    span_minor = torch.where(x_major, last[:, 1], last[:, 0]) - first_minor
    slope = torch.div(span_minor << LINE_BITS, span_major | 1, rounding_mode="trunc")
    columns = (
        x_major.long(),
        _shift_round(first_major),
        span_major >> LINE_BITS,
        first_minor + LINE_HALF,
        slope,
        _shift_round(last[:, 0]),
        _shift_round(last[:, 1]),
        visible.long(),
    )
    return torch.stack(columns, 1)


def _on_line(walk: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Which pixels the candidates' lines (rows of _line_walks) paint."""
    x_major, first, steps, minor, slope, end_x, end_y, visible = walk.unbind(1)
    along = torch.where(x_major > 0, xs, ys) - first
    across = torch.where(x_major > 0, ys, xs)
    walked = (along >= 0) & (along <= steps) & (across == (minor + along * slope) >> LINE_BITS)
    return (visible > 0) & (walked | ((xs == end_x) & (ys == end_y)))


def _edge_walks(points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """fillConvexPoly's scanline edges as (K, 3, 4) int64: per edge its top row, its height
    in rows, its x at the top row (its upper vertex's, 16.16) and its rounded x step per row.
    An edge within one row has height 0 and takes no part."""
    walks = []
    for a, b in EDGES:
        upper = (rows[:, a] <= rows[:, b])[:, None]
        top = torch.where(upper, points[:, a], points[:, b])
        bottom = torch.where(upper, points[:, b], points[:, a])
        row_top = torch.minimum(rows[:, a], rows[:, b])
        height = torch.maximum(rows[:, a], rows[:, b]) - row_top
        steps = height.clamp(min=1)
        step = torch.div((bottom[:, 0] - top[:, 0]) * 2 + steps, 2 * steps, rounding_mode="trunc")
        walks.append(torch.stack([row_top, height, top[:, 0], step], 1))
    return torch.stack(walks, 1)


def _in_spans(walks: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Which pixels the scanline fill paints (walks: the candidates' rows of _edge_walks): on
    each row from the top vertex's (rounded) row to before the bottom one's, between the two
    edges active there, the span's ends rounded."""
    row_top, height, x_top, step = walks.unbind(2)  # (N, 3) each
    rows = ys[:, None]
    active = (height > 0) & (rows >= row_top) & (rows < row_top + height)
    x = x_top + (rows - row_top) * step
    left = torch.where(active, x, torch.iinfo(torch.int64).max).min(1).values
    right = torch.where(active, x, torch.iinfo(torch.int64).min).max(1).values
    return (right >= left) & (xs >= _shift_round(left)) & (xs <= _shift_round(right))


def _painted(
    corners: torch.Tensor,
    triangle: torch.Tensor,
    xs: torch.Tensor,
    ys: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """Which candidates cv2.fillConvexPoly(..., LINE_8, shift=4) paints for their triangle:
    its scanline fill plus its outline, in OpenCV's own integer arithmetic (exact on every
    device). Per-triangle set-up first, then one gather per candidate."""
    points = corners << (LINE_BITS - SUBPIXEL_BITS)  # (K, 3, 2) 16.16 fixed
    rows = (corners[..., 1] + SUBPIXEL_ONE // 2) >> SUBPIXEL_BITS
    painted = _in_spans(_edge_walks(points, rows)[triangle], xs, ys)
    for a, b in ((2, 0), (0, 1), (1, 2)):  # the outline, drawn from the last vertex on
        walk = _line_walks(points[:, a], points[:, b], height, width)
        painted |= _on_line(walk[triangle], xs, ys)
    return painted


def rasterize_ids(
    corners: np.ndarray,
    order: np.ndarray,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """A (height, width) int64 image on `device` holding 1 + the index of the triangle drawn
    last at each pixel (0: none), triangles drawn in `order` (far first), like
    engines.generator.warp.rasterize_ids.

    `corners` (T, 3, 2) are int64 pixel positions in 1/16 px (see fixed_corners). Each triangle
    proposes the pixels of its bounding box; an edge test keeps its own, and a scatter-max of
    the drawing rank leaves the last-drawn one: painter's order without a loop.
    """
    drawn = corners[order]
    boxes = candidate_boxes(drawn, height, width)
    candidates = int((boxes[:, 2] * boxes[:, 3]).sum())
    drawn_t, boxes_t, order_t = (upload(a, device) for a in (drawn, boxes, order))
    triangle, xs, ys = _candidate_pixels(boxes_t, candidates)
    keep = _painted(drawn_t, triangle, xs, ys, height, width)
    # candidates lie inside the image: the ones not kept scatter rank 0, which changes
    # nothing under amax (no boolean compaction, so no host sync on CUDA)
    rank = torch.zeros(height * width, dtype=torch.long, device=drawn_t.device)
    drawn_rank = torch.where(keep, triangle + 1, 0)
    rank.scatter_reduce_(0, ys * width + xs, drawn_rank, reduce="amax", include_self=True)
    lookup = torch.cat([order_t.new_zeros(1), order_t + 1])
    return lookup[rank].view(height, width)


def grow_ids(ids: torch.Tensor) -> torch.Tensor:
    """Uncovered pixels next to the mesh take a neighbouring triangle (the largest id among
    the 3x3 neighbours, as cv2.dilate picks it): the edge's map continues one step out."""
    grown = F.max_pool2d(ids[None, None].float(), 3, stride=1, padding=1)[0, 0].long()
    return torch.where(ids > 0, ids, grown)


def affine_maps(
    ids: torch.Tensor, table: torch.Tensor, origin: tuple[float, float], step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(map_x, map_y): each pixel's source position through its triangle's affine.

    `table` (6, T + 1) holds the affines' rows with column 0 for "no triangle" (it maps to
    (−1, −1), outside the source); pixel (i, j) sits at origin + (j, i) · step.
    """
    a00, a01, a02, a10, a11, a12 = table[:, ids]
    xs = torch.arange(ids.shape[1], dtype=table.dtype, device=ids.device) * step + origin[0]
    ys = torch.arange(ids.shape[0], dtype=table.dtype, device=ids.device)[:, None] * step
    ys = ys + origin[1]
    return a00 * xs + a01 * ys + a02, a10 * xs + a11 * ys + a12


def upsample_map(small: torch.Tensor, scale: int, height: int, width: int) -> torch.Tensor:
    """A 1/scale map scaled up by exactly `scale` (sample i at pixel i·scale + (scale − 1)/2):
    one linearly extrapolated sample each side, bilinear by the integer factor, cropped."""
    if scale == 1:
        return small
    padded = torch.cat([2 * small[:1] - small[1:2], small, 2 * small[-1:] - small[-2:-1]], 0)
    padded = torch.cat(
        [2 * padded[:, :1] - padded[:, 1:2], padded, 2 * padded[:, -1:] - padded[:, -2:-1]], 1
    )
    big = F.interpolate(padded[None, None], scale_factor=scale, mode="bilinear")[0, 0]
    return big[scale : scale + height, scale : scale + width]


# ---------------------------------------------------------------- sampling and blending


def sample(
    image: torch.Tensor, map_x: torch.Tensor, map_y: torch.Tensor, replicate: bool = False
) -> torch.Tensor:
    """cv2.remap(image, map_x, map_y, INTER_LINEAR) for a (C, H, W) image, rounded to 8-bit
    levels: zeros outside the image (BORDER_CONSTANT) or its edge continued (replicate)."""
    height, width = image.shape[-2:]
    grid = torch.stack([(2 * map_x + 1) / width - 1, (2 * map_y + 1) / height - 1], dim=-1)
    out = F.grid_sample(
        image[None],
        grid[None],
        mode="bilinear",
        padding_mode="border" if replicate else "zeros",
        align_corners=False,
    )[0]
    return out.round_().clamp_(0, 255)


def affine_sample(
    image: torch.Tensor,
    inverse: Sequence[Sequence[float]],
    height: int,
    width: int,
    replicate: bool,
) -> torch.Tensor:
    """cv2.warpAffine with WARP_INVERSE_MAP semantics: output pixel (x, y) shows the image at
    inverse @ (x, y, 1), `inverse` being 2 rows of 3 numbers (no upload needed). The
    positions are worked out in float64: a patch and the whole frame then sample the same
    place for the same output pixel, whatever their offsets (a float32 sum differs in its
    last bit, and the level sometimes with it)."""
    (a00, a01, a02), (a10, a11, a12) = inverse
    xs = torch.arange(width, dtype=torch.float64, device=image.device)
    ys = torch.arange(height, dtype=torch.float64, device=image.device)[:, None]
    map_x = (a00 * xs + a01 * ys + a02).to(image.dtype)
    map_y = (a10 * xs + a11 * ys + a12).to(image.dtype)
    return sample(image, map_x, map_y, replicate)


def blend(background: torch.Tensor, foreground: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """background · (1 − α) + foreground · α for an 8-bit α, each term rounded to a level as
    mesh_cpu._blend's cv2.multiply / cv2.add do (so the two agree to the level)."""
    front = torch.round(foreground * alpha * (1.0 / 255.0))
    back = torch.round(background * (255.0 - alpha) * (1.0 / 255.0))
    return (front + back).clamp_(max=255.0)


def paint_over(person: torch.Tensor, layer: torch.Tensor, mask: torch.Tensor) -> None:
    """Fill a hole of the warped BGRA person (in place) with `layer` inside `mask`."""
    person[:3] = blend(person[:3], layer, mask)
    torch.maximum(person[3], mask, out=person[3])


def polygon_mask(
    polygon: np.ndarray, height: int, width: int, device: torch.device
) -> torch.Tensor:
    """An anti-aliased (height, width) mask of a closed polygon (N, 2; host coordinates) in
    0..255 levels, the way cv2.fillPoly(..., LINE_AA, shift=4) draws it: vertex rows rounded
    to whole pixels, pixel centres inside the polygon full, and outside them the strongest
    anti-aliased edge, fading with the distance from it along its minor axis. All edges at
    once: a few kernels whatever the polygon, no device round trip."""
    snapped = np.round(np.asarray(polygon, np.float64) * SUBPIXEL) / SUBPIXEL
    snapped[:, 1] = np.floor(snapped[:, 1] + 0.5)
    edges = np.hstack([snapped, np.roll(snapped, -1, 0)])  # (N, 4): x0 y0 x1 y1
    edges_t = upload(edges, device)
    xs = torch.arange(width, dtype=torch.float64, device=device)
    ys = torch.arange(height, dtype=torch.float64, device=device)
    inside = _scanline_inside(edges_t, xs, ys)
    strength = _edge_strength(edges, edges_t, xs, ys).amax(0)
    return torch.round(torch.where(inside, 1.0, strength) * 255.0).float()


def _scanline_inside(edges: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Pixel centres between pairs of edge crossings on their row (even-odd, spans closed at
    both ends, each edge counting on rows [upper, lower) as a scanline fill counts them)."""
    x0, y0, x1, y1 = (edges[:, i, None] for i in range(4))  # (N, 1) against the rows
    active = (ys >= torch.minimum(y0, y1)) & (ys < torch.maximum(y0, y1))  # (N, rows)
    rise = torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
    cross = x0 + (ys - y0) * (x1 - x0) / rise
    cross = torch.where(active, cross, torch.inf).sort(0).values.T  # (rows, N), inf last
    if cross.shape[1] % 2:
        cross = torch.cat([cross, torch.full_like(cross[:, :1], torch.inf)], 1)
    left, right = cross[:, 0::2, None], cross[:, 1::2, None]  # (rows, pairs, 1)
    return ((left <= xs) & (xs <= right)).any(1)


def _edge_strength(
    edges: np.ndarray, edges_t: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
) -> torch.Tensor:
    """Each anti-aliased edge's coverage (0..1) of each pixel, (N, rows, cols): by the pixel's
    distance from the edge along the edge's minor axis, within the edge's major-axis extent."""
    dx, dy = edges[:, 2] - edges[:, 0], edges[:, 3] - edges[:, 1]
    x_major = np.abs(dx) > np.abs(dy)
    lows = np.minimum(edges[:, :2], edges[:, 2:])  # (N, 2)
    highs = np.maximum(edges[:, :2], edges[:, 2:])
    lows[:, 0], highs[:, 0] = np.floor(lows[:, 0] + 0.5), np.floor(highs[:, 0] + 0.5)
    per_edge = np.stack(
        [
            np.where(x_major, dy / np.where(dx == 0, 1, dx), dx / np.where(dy == 0, 1, dy)),
            x_major,
            *lows.T,
            *highs.T,
        ],
        1,
    )
    slope, major, low_x, low_y, high_x, high_y = (
        column[:, None, None] for column in upload(per_edge, xs.device).unbind(1)
    )
    x0, y0 = edges_t[:, 0, None, None], edges_t[:, 1, None, None]
    rows, cols = ys[:, None], xs[None, :]
    vertical = (rows - (y0 + (cols - x0) * slope)).abs()  # for mostly horizontal edges
    horizontal = (cols - (x0 + (rows - y0) * slope)).abs()
    along_x = (cols >= low_x) & (cols <= high_x)
    along_y = (rows >= low_y) & (rows <= high_y)
    is_major = major > 0
    distance = torch.where(is_major, vertical, horizontal)
    within = torch.where(is_major, along_x, along_y)
    profile = upload(np.array(EDGE_PROFILE, np.float64) / 255.0, xs.device).to(xs.dtype)
    position = (distance * EDGE_PROFILE_STEPS).clamp(max=len(EDGE_PROFILE) - 1)
    low = position.floor().long()
    high = (low + 1).clamp(max=len(EDGE_PROFILE) - 1)
    weight = position - low
    strength = profile[low] * (1 - weight) + profile[high] * weight
    return torch.where(within, strength, 0.0)


# ---------------------------------------------------------------- colour conversion


def _luma_chroma(bgr: torch.Tensor, coeffs: tuple[int, int, int], bias: int) -> torch.Tensor:
    blue, green, red = (bgr[..., i].to(torch.int32) for i in range(3))
    total = coeffs[0] * red + coeffs[1] * green + coeffs[2] * blue
    total = total + ((bias << YUV_SHIFT) + (1 << (YUV_SHIFT - 1)))
    return (total >> YUV_SHIFT).clamp_(0, 255).to(torch.uint8)


def bgr_to_i420(frame: torch.Tensor) -> torch.Tensor:
    """A (H, W, 3) uint8 BGR frame → the flat I420 buffer (Y, then U and V at half size),
    BT.601 video range in OpenCV's integer maths (daemon.sinks.bgr_to_i420 on the host).
    Chroma comes from each 2x2 block's top-left pixel, as OpenCV takes it."""
    height, width = frame.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"I420 needs an even frame size, not {width}x{height}")
    luma = _luma_chroma(frame, Y_COEFFS, 16)
    corner = frame[::2, ::2]
    u = _luma_chroma(corner, U_COEFFS, 128)
    v = _luma_chroma(corner, V_COEFFS, 128)
    return torch.cat([luma.reshape(-1), u.reshape(-1), v.reshape(-1)])
