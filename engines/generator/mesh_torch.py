"""The mesh generator with its per-pixel work in torch (issue 7, GPU engines).

TorchMeshGenerator is MeshGenerator with the image stages moved to a torch device: the mesh
logic (deform, lids, unfolding, framing: numpy on ~600 points) is the CPU class's own, so
both animate alike; per frame only the vertex geometry (and the small mouth-interior patch)
goes up, and one finished frame comes down. Avatar texture, background, still frame and
eyeballs are uploaded once. `render_tensor` keeps the frame on the device for a GPU
pipeline, which converts it with torch_warp.bgr_to_i420 before its own single copy.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from engines.errors import EngineUnavailable
from engines.generator.avatar_prep import PreparedAvatar
from engines.generator.config import MeshGeneratorConfig
from engines.generator.interface import DriverView
from engines.generator.mesh_cpu import (
    EYES,
    Eyeball,
    MeshGenerator,
    MouthLayer,
    lash_over_eye,
    lid_edge,
    shut_weight,
)
from engines.generator.skin import face_box
from engines.generator.torch_warp import (
    affine_maps,
    affine_sample,
    blend,
    fixed_corners,
    grow_ids,
    paint_over,
    polygon_mask,
    rasterize_ids,
    sample,
    upsample_map,
)
from engines.generator.warp import Roi, triangle_affines, within
from engines.motion.estimator import Motion
from engines.runtime.cuda_stream import upload

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`name` ("cpu", "cuda", "cuda:1", ...) → a usable torch device, or EngineUnavailable
    with a one-line reason (before any work is done on it)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise EngineUnavailable(f"torch device {name!r} is not a device name: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineUnavailable(
                f"torch device {name!r}: torch {torch.__version__} sees no CUDA device "
                "(use device 'cpu' or the mesh generator)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineUnavailable(
                f"torch device {name!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise EngineUnavailable(f"torch device {name!r}: only 'cpu' and 'cuda' are supported")
    return device


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(H, W[, C]) uint8 → (C, H, W) float32 on the device: 8-bit levels as floats."""
    planes = image[:, :, None] if image.ndim == 2 else image
    return upload(planes.transpose(2, 0, 1), device).float()


def _inverse_affine(matrix: np.ndarray) -> list[list[float]]:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64)).tolist()


class TorchMeshGenerator(MeshGenerator):
    """MeshGenerator whose rasterisation, sampling, eye and mouth layers and compositing run
    in torch on `device`; same constructor (plus the device), same output."""

    def __init__(
        self,
        config: MeshGeneratorConfig,
        avatar: PreparedAvatar,
        width: int,
        height: int,
        device: str = "cpu",
    ):
        self.device = resolve_device(device)  # fail before the CPU set-up's work
        super().__init__(config, avatar, width, height)
        self.texture = _image_tensor(self.bgra, self.device)
        self.texture_shut = _image_tensor(self.bgra_shut, self.device)
        self.background_t = _image_tensor(self.background, self.device)
        self.still_t = self._still_tensor()
        self.still = self.still_t.cpu().numpy()
        self.still.setflags(write=False)
        self.eye_textures = [
            (
                _image_tensor(eye.sclera, self.device),
                _image_tensor(eye.iris, self.device),
                _image_tensor(eye.shut, self.device),
            )
            for eye in self.eyeballs
        ]
        log.debug("torch mesh generator on %s, working size %s", self.device, self.work_size)

    def _still_tensor(self) -> torch.Tensor:
        """The still frame scaled up on the device as a patch is (see _patch_to_output): a
        patch where nothing moved is then the still frame's own pixels, background and all."""
        if self.work_per_output == (1.0, 1.0):
            return torch.from_numpy(np.array(self.still_work)).to(self.device)
        inverse = self.output_to_work()
        work = _image_tensor(self.still_work, self.device)
        up = affine_sample(work, inverse, self.height, self.width, replicate=True)
        return up.permute(1, 2, 0).round().to(torch.uint8).contiguous()

    # ------------------------------------------------------------ rendering

    def render(self, motion: Motion, driver: DriverView | None = None) -> np.ndarray:
        """The frame as BGR uint8 on the host (one device → host copy)."""
        return self.render_tensor(motion, driver).cpu().numpy()

    @torch.inference_mode()
    def render_tensor(self, motion: Motion, driver: DriverView | None = None) -> torch.Tensor:
        """The frame as an (H, W, 3) uint8 BGR tensor left on the device."""
        self.last_dest = self.deform(motion)
        dest = self.to_work(self.last_dest)
        roi = self.roi(dest)
        person, map_x, map_y = self._warp_person(dest, roi)
        offset = np.array([roi.x0, roi.y0], np.float64)
        for (ys, xs), weight in self.shut_lid_boxes(dest, roi):
            shut = sample(self.texture_shut, map_x[ys, xs], map_y[ys, xs])
            box = person[:, ys, xs]
            person[:, ys, xs] = (box * (1.0 - weight) + shut * weight).round_()
        shading = self.skin.frame(motion, driver)
        face = face_box(dest, roi) if shading is not None else None
        if face is not None:
            self._apply_shading(person, map_x, map_y, shading, face)
        for eyeball, textures, (upper, lower, _, _), closure in zip(
            self.eyeballs, self.eye_textures, EYES, self.closures, strict=True
        ):
            polygon = np.vstack([dest[upper, :2], dest[lower[-2:0:-1], :2]]) - offset
            self._paint_eye(
                person,
                eyeball,
                textures,
                polygon,
                dest,
                offset,
                motion.gaze,
                shut_weight(closure),
            )
            if shut_weight(closure) > 0.0:
                margin = lid_edge(dest[upper, :2] - offset, dest[lower, :2] - offset)
                self._paint_lash(person, margin, eyeball.lash, shut_weight(closure))
        mouth = self._mouth_layer(dest, offset, roi, motion, driver)
        if mouth is not None:
            self._paint_layer(person, mouth)
        patch = blend(self.background_t[:, roi.y0 : roi.y1, roi.x0 : roi.x1], person[:3], person[3])
        out_roi, patch = self._patch_to_output(patch, roi)
        frame = self.still_t.clone()
        frame[out_roi.slices] = patch.permute(1, 2, 0).round().to(torch.uint8)
        return frame

    def _warp_person(
        self, dest: np.ndarray, roi: Roi
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The avatar's BGRA as the moved mesh shows it over the ROI (working pixels): the
        warp maps at 1/map_scale, scaled up exactly, then one bilinear sampling; and the maps
        (the shut lids sample them too)."""
        scale = self.config.map_scale
        triangles = self.mesh.triangles
        affines, valid = triangle_affines(triangles, dest[:, :2], self.source)
        depth = dest[:, 2][triangles].mean(1)
        order = np.flatnonzero(valid)[np.argsort(-depth[valid], kind="stable")]
        order = within(triangles, dest, roi, order)
        grid = (dest[:, :2] - (roi.x0, roi.y0) + 0.5 - 0.5 * scale) / scale
        table = np.empty((6, len(triangles) + 1), np.float32)
        table[:, 1:] = affines.reshape(-1, 6).T
        table[:, 0] = (0, 0, -1, 0, 0, -1)  # no triangle: outside the source
        ids = rasterize_ids(
            fixed_corners(grid[triangles]),
            order,
            -(-roi.height // scale),
            -(-roi.width // scale),
            self.device,
        )
        origin = (roi.x0 + 0.5 * scale - 0.5, roi.y0 + 0.5 * scale - 0.5)
        map_x, map_y = affine_maps(grow_ids(ids), upload(table, self.device), origin, scale)
        map_x = upsample_map(map_x, scale, roi.height, roi.width)
        map_y = upsample_map(map_y, scale, roi.height, roi.width)
        return sample(self.texture, map_x, map_y), map_x, map_y

    def _apply_shading(
        self,
        person: torch.Tensor,
        map_x: torch.Tensor,
        map_y: torch.Tensor,
        shading: np.ndarray,
        box: tuple[slice, slice],
    ) -> None:
        """The skin's log-luminance image (skin space) sampled through the person's warp maps
        and applied to its colour as a ratio, as mesh_cpu's apply_shading does."""
        space = self.skin.space
        xs = map_x[box] * space.scale - float(space.origin[0])
        ys = map_y[box] * space.scale - float(space.origin[1])
        height, width = shading.shape
        grid = torch.stack([(2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1], dim=-1)
        image = upload(np.asarray(shading, np.float32), self.device)
        log = F.grid_sample(
            image[None, None],
            grid[None],
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )[0]
        colour = person[(slice(0, 3), *box)]
        person[(slice(0, 3), *box)] = (colour * torch.exp(log) + 0.5).floor_().clamp_(0, 255)

    def _paint_eye(
        self,
        person: torch.Tensor,
        eyeball: Eyeball,
        textures: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        polygon: np.ndarray,
        dest: np.ndarray,
        offset: np.ndarray,
        gaze: tuple[float, float],
        shut: float = 0.0,
    ) -> None:
        """The eyeball (white, and the iris moved by the gaze) inside the lids' opening, as
        MeshGenerator._paint_eye draws it."""
        x0, y0 = np.floor(polygon.min(0)).astype(int) - 1
        x1, y1 = np.ceil(polygon.max(0)).astype(int) + 2
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, person.shape[2]), min(y1, person.shape[1])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        height, width = y1 - y0, x1 - x0
        mask = polygon_mask(polygon - (x0, y0), height, width, self.device)
        box_origin = offset + np.array([x0, y0], np.float64)
        patch_to_box, iris_to_box = (
            m.astype(np.float64) for m in self.eye_maps(eyeball, dest, box_origin, gaze)
        )
        sclera, iris, skin = textures
        eye = affine_sample(sclera, _inverse_affine(patch_to_box), height, width, replicate=True)
        iris = affine_sample(iris, _inverse_affine(iris_to_box), height, width, replicate=False)
        eye = blend(eye, iris[:3], iris[3])
        if shut > 0.0:
            skin = affine_sample(skin, _inverse_affine(patch_to_box), height, width, replicate=True)
            eye = (eye * (1.0 - shut) + skin * shut).round_()
        paint_over(person[:, y0:y1, x0:x1], eye, mask)

    def _paint_lash(
        self, person: torch.Tensor, margin: np.ndarray, lash: np.ndarray, shut: float
    ) -> None:
        """The shut lid's lash line over the painted eye, as MeshGenerator._paint_lash draws
        it (the line's alpha drawn by the CPU code: a few hundred pixels)."""
        drawn = lash_over_eye(margin, shut, person.shape[1], person.shape[2])
        if drawn is None:
            return
        x0, y0, line = drawn
        alpha = upload(line, self.device).float()
        box = person[:3, y0 : y0 + line.shape[0], x0 : x0 + line.shape[1]]
        colour = torch.tensor(lash, dtype=box.dtype, device=box.device)[:, None, None]
        box.copy_(blend(box, colour.expand_as(box), alpha))

    def _mouth_layer(
        self,
        dest: np.ndarray,
        offset: np.ndarray,
        roi: Roi,
        motion: Motion,
        driver: DriverView | None,
    ) -> MouthLayer | None:
        """The mouth interior, drawn by the CPU code (MeshGenerator.mouth_layer): a patch of
        a few hundred pixels whose shapes (teeth, tongue, blur) are not worth a device port; it
        goes up per frame."""
        unit = self.unit * self.work_per_output[0]
        return self.mouth_layer(dest, offset, (roi.height, roi.width), unit * motion.scale, driver)

    def _paint_layer(self, person: torch.Tensor, layer: MouthLayer) -> None:
        x0, y0 = layer.origin
        height, width = layer.mask.shape
        box = _image_tensor(layer.box, self.device)
        mask = upload(layer.mask, self.device).float()
        paint_over(person[:, y0 : y0 + height, x0 : x0 + width], box, mask)

    def _patch_to_output(self, patch: torch.Tensor, roi: Roi) -> tuple[Roi, torch.Tensor]:
        """The working-resolution patch scaled up as MeshGenerator._paste_output scales it."""
        if self.work_per_output == (1.0, 1.0):
            return roi, patch
        out, inverse = self.output_box(roi)
        return out, affine_sample(patch, inverse, out.height, out.width, replicate=True)
