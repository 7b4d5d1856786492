"""MediaPipe's face mesh pipelines in torch, on whatever device is given.

The same steps as MediaPipe's FaceLandmarkFrontCpu graph, so the points match the CPU
backend's: short-range face detection (SSD anchors, weighted NMS) on a letterboxed
128x128 image; a rotated square ROI around each face (scale 1.5, rotated by the eyes); a
192x192 face model; the next frame's ROI from its points (eye corners 33/263); and the
478-point FaceMesh layout (refine_landmarks=True). Two face models give those 478 points:

- "attention" (the default): the attention mesh, FaceMesh(refine_landmarks=True)'s own
  model, whose lips, eye and iris points come from patches of its feature map (MediaPipe's
  custom ops, translated in engines/landmarks/nets.py). Same model as the CPU backend, so
  the same points.
- "iris": MediaPipe's classic pipeline, the 468-point mesh plus the iris model on 64x64
  eye crops (scale 2.3), one of them mirrored, refining the eyelids and adding the irises.
  A different model: 1-3.5 px from the CPU backend's points on 140-400 px faces.

Either way the irises get the mean z of their eyelid contour, as in MediaPipe.

Crops follow MediaPipe's ImageToTensorCalculator: the ROI's corners map onto the tensor's
corners, dst pixel i samples the ROI at fraction i / size, bilinear on 8-bit values (rounded),
zero border for the detector and replicated border for the landmark models. Everything per
frame stays in torch on the device; numpy appears only in the final `Landmarks`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engines.landmarks.config import MediaPipeTrackingConfig
from engines.landmarks.interface import Landmarks, choose_face
from engines.landmarks.nets import MESH_MODEL_NETWORKS, NETWORKS, TFLiteNet, load_networks
from engines.runtime.cuda_stream import upload

log = logging.getLogger(__name__)

# Face detector (face_detection_short_range): SSD anchors and decoding options.
DETECTOR_STRIDES = (8, 16, 16, 16)
DETECTOR_ANCHORS_PER_LAYER = 2  # aspect ratio 1 plus the interpolated scale, fixed size
DETECTOR_SCALE = 128.0  # x/y/w/h scale of the raw box regressors
DETECTOR_KEYPOINTS = 6
NMS_IOU = 0.3
SCORE_CLIP = 100.0

# ROIs: the face (from a detection or from the previous mesh) and the eyes.
FACE_ROI_SCALE = 1.5
FACE_ROTATION_POINTS = (33, 263)  # the mesh's eye outer corners
DETECTION_ROTATION_KEYPOINTS = (0, 1)  # the detector's two eye keypoints
ASSOCIATION_IOU = 0.5  # a detection this close to a tracked face is the same face
EYE_ROI_SCALE = 2.3
RIGHT_EYE_CORNERS = (33, 133)  # the subject's right eye: MediaPipe's "left" (image left)
LEFT_EYE_CORNERS = (362, 263)

# Mesh indices of the iris model's 71 eye-contour points (eye, 2 halos, brow), per eye,
# as in MediaPipe's refinement of the face mesh; the first 16 are the eyelid contour that
# gives the iris its z.
RIGHT_EYE_REFINED = (
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
    226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
    156, 70, 63, 105, 66, 107, 55, 193,
)  # fmt: skip
LEFT_EYE_REFINED = (
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417,
)  # fmt: skip
EYELID_POINTS = 16
# How many of those 71 points replace the mesh's. MediaPipe's iris graph took all 71; the
# FaceMesh(refine_landmarks=True) backend we must agree with is closest when only the
# eyelids are taken: the iris model's halos and brows, cut by its 2.3x eye crop, sit
# 4-8 px off that backend's on 400 px faces, while its eyelids follow blinks better
# than the classic mesh's (see tests/test_landmark_path.py).
DEFAULT_REFINED_EYE_POINTS = EYELID_POINTS
# The attention mesh's lips points, as mesh indices in the order of its lips output (the
# subset its lips patch is cut around; tests check it against the model file).
LIPS_REFINED = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0,
    267, 269, 270, 409, 78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191,
    80, 81, 82, 13, 312, 311, 310, 415, 76, 77, 90, 180, 85, 16, 315, 404,
    320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408, 62, 96, 89, 179,
    86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407,
)  # fmt: skip
MESH_MODELS = tuple(MESH_MODEL_NETWORKS)
MESH_POINTS = 468
RIGHT_IRIS_SLOT = 468  # 468..472: centre then 4 points around; 473..477 the left iris
LEFT_IRIS_SLOT = 473
ALL_POINTS = 478
# The iris model's 5 points are centre, then around; on a mirrored crop "around" runs the
# other way, and FaceMesh lists both irises in the same image-space order.
MIRRORED_IRIS_ORDER = (0, 3, 2, 1, 4)


def ssd_anchors(device: torch.device | str = "cpu") -> torch.Tensor:
    """(896, 2) anchor centres (fractions of the 128 input), in the detector's output order:
    layers of equal stride share a grid; per cell, the anchors of all those layers."""
    centers = []
    layer = 0
    while layer < len(DETECTOR_STRIDES):
        stride = DETECTOR_STRIDES[layer]
        same = sum(1 for s in DETECTOR_STRIDES[layer:] if s == stride)
        cells = math.ceil(DETECTOR_SCALE / stride)
        coords = (torch.arange(cells, dtype=torch.float32) + 0.5) / cells
        ys, xs = torch.meshgrid(coords, coords, indexing="ij")
        grid = torch.stack([xs, ys], -1).reshape(-1, 1, 2)
        per_cell = same * DETECTOR_ANCHORS_PER_LAYER
        centers.append(grid.expand(-1, per_cell, 2).reshape(-1, 2))
        layer += same
    return torch.cat(centers).to(device)


@dataclass(frozen=True, slots=True)
class Detections:
    """Detector rows: boxes (K, 4) as x0, y0, x1, y1 and keypoints (K, 6, 2), in whatever
    frame they were last mapped to; scores (K,) after the sigmoid, -1 for a row that holds
    no face. Rows are never dropped on the device: that would need their count on the host
    (a sync on CUDA); empty rows are carried along and ignored."""

    boxes: torch.Tensor
    keypoints: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def valid(self) -> torch.Tensor:
        return self.scores >= 0

    def select(self, index: torch.Tensor) -> Detections:
        """The rows at `index` (integers: a boolean mask would sync the host on CUDA)."""
        return Detections(self.boxes[index], self.keypoints[index], self.scores[index])

    def scaled(self, scale: float, offset: torch.Tensor) -> Detections:
        """Mapped by p → p · scale + offset (offset: (2,))."""
        return Detections(
            self.boxes * scale + offset.repeat(2), self.keypoints * scale + offset, self.scores
        )


def decode_detections(
    regressors: torch.Tensor, classificators: torch.Tensor, anchors: torch.Tensor, min_score: float
) -> Detections:
    """One image's raw SSD outputs ((896, 16), (896, 1)) as 896 detector rows, those under
    `min_score` empty (score -1), coordinates as fractions of the detector input."""
    scores = torch.sigmoid(classificators[:, 0].clamp(-SCORE_CLIP, SCORE_CLIP))
    scores = torch.where(scores >= min_score, scores, -1.0)
    raw, anchor = regressors, anchors
    center = raw[:, 0:2] / DETECTOR_SCALE + anchor
    half = raw[:, 2:4] / DETECTOR_SCALE / 2
    boxes = torch.cat([center - half, center + half], 1)
    keypoints = raw[:, 4 : 4 + 2 * DETECTOR_KEYPOINTS].reshape(-1, DETECTOR_KEYPOINTS, 2)
    keypoints = keypoints / DETECTOR_SCALE + anchor[:, None, :]
    return Detections(boxes, keypoints, scores)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) intersection over union of x0, y0, x1, y1 boxes."""
    low = torch.maximum(a[:, None, :2], b[None, :, :2])
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = (high - low).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0.0)


def weighted_nms(detections: Detections, iou_threshold: float, max_faces: int) -> Detections:
    """MediaPipe's weighted non-maximum suppression: the best remaining detection takes
    the score-weighted mean box and keypoints of everything overlapping it by more than
    `iou_threshold` (itself included) and keeps its own score. Always `max_faces` rows, the
    best first; rows past the faces found are empty."""
    count = len(detections)
    order = torch.argsort(detections.scores, descending=True)
    detections = detections.select(order)
    iou = box_iou(detections.boxes, detections.boxes)
    remaining = detections.valid
    positions = torch.arange(count, device=detections.scores.device)
    boxes, keypoints, scores = [], [], []
    for _ in range(max_faces):
        # sorted by score: the first remaining one is the best; none left gives index 0
        # of an all-false mask, caught by `alive` below without a device sync per step.
        # `best` is a 1-element tensor, not a 0-d one: indexing with a 0-d tensor calls
        # .item() (a host sync on CUDA), a 1-element index stays on the device.
        best = torch.argmax(remaining.float(), dim=0, keepdim=True)
        alive = remaining[best]
        # a degenerate (zero-area) best box still counts as overlapping itself
        cluster = remaining & ((iou[best][0] > iou_threshold) | (positions == best))
        weights = detections.scores * cluster
        total = weights.sum().clamp(min=1e-12)
        boxes.append((weights[:, None] * detections.boxes).sum(0) / total)
        keypoints.append((weights[:, None, None] * detections.keypoints).sum(0) / total)
        scores.append(torch.where(alive, detections.scores[best], -1.0))
        remaining = remaining & ~cluster
    return Detections(torch.stack(boxes), torch.stack(keypoints), torch.cat(scores))


def rois_from_boxes(
    boxes: torch.Tensor, start: torch.Tensor, end: torch.Tensor, scale: float
) -> torch.Tensor:
    """(N, 5) rotated square ROIs (cx, cy, side, side, angle), pixels and radians, as
    MediaPipe's DetectionsToRects + RectTransformation(square_long): centred on the box,
    the box's long side times `scale`, turned so that start → end is horizontal."""
    center = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = (boxes[:, 2:] - boxes[:, :2]).amax(-1) * scale
    delta = end - start
    angle = -torch.atan2(-delta[:, 1], delta[:, 0])
    angle = angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))
    return torch.stack([center[:, 0], center[:, 1], side, side, angle], -1)


def rois_from_points(points: torch.Tensor, start: int, end: int, scale: float) -> torch.Tensor:
    """ROIs around point sets (N, P, 2+) (their bounding box), rotated by points start → end."""
    xy = points[..., :2]
    boxes = torch.cat([xy.amin(1), xy.amax(1)], -1)
    return rois_from_boxes(boxes, xy[:, start], xy[:, end], scale)


def crop_rois(
    image: torch.Tensor,
    rois: torch.Tensor,
    size: int,
    value_range: tuple[float, float],
    zero_border: bool,
    flip: bool = False,
) -> torch.Tensor:
    """(N, 3, size, size) crops of a (1, 3, H, W) 0..255 float image, mapped to
    `value_range`. dst pixel i samples the ROI at fraction i / size (MediaPipe's corner
    mapping); `flip` mirrors the crops' pixels horizontally, as cv2.flip does in MediaPipe's
    iris graph (pixel i samples fraction (size - 1 - i) / size)."""
    height, width = image.shape[-2:]
    pixels = torch.arange(size, device=image.device, dtype=image.dtype)
    steps = pixels / size - 0.5
    fx = (size - 1 - pixels) / size - 0.5 if flip else steps
    fx, fy = fx[None, None, :], steps[None, :, None]
    cx, cy, w, h, angle = (rois[:, i, None, None] for i in range(5))
    cos, sin = torch.cos(angle), torch.sin(angle)
    src_x = cx + fx * w * cos - fy * h * sin
    src_y = cy + fx * w * sin + fy * h * cos
    grid = torch.stack([(2 * src_x + 1) / width - 1, (2 * src_y + 1) / height - 1], -1)
    crops = F.grid_sample(
        image.expand(len(rois), -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="zeros" if zero_border else "border",
        align_corners=False,
    )
    crops = torch.floor(crops + 0.5)  # MediaPipe warps 8-bit images
    low, high = value_range
    return crops * ((high - low) / 255.0) + low


def project_points(
    points: torch.Tensor, rois: torch.Tensor, size: int, flip: bool = False
) -> torch.Tensor:
    """Model points (N, P, 3) in crop pixels back into the frame: x, y in pixels, z scaled
    like x (MediaPipe: z / size · ROI width)."""
    fx = points[..., 0] / size
    if flip:
        fx = 1 - fx
    fx, fy = fx - 0.5, points[..., 1] / size - 0.5
    cx, cy, w, h, angle = (rois[:, i, None] for i in range(5))
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = cx + fx * w * cos - fy * h * sin
    y = cy + fx * w * sin + fy * h * cos
    z = points[..., 2] / size * w
    return torch.stack([x, y, z], -1)


def refine_mesh(
    mesh: torch.Tensor,
    contours: tuple[torch.Tensor, torch.Tensor],
    irises: tuple[torch.Tensor, torch.Tensor],
    eye_indices: tuple[torch.Tensor, torch.Tensor],
    eye_points: int = DEFAULT_REFINED_EYE_POINTS,
    lips: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N, 478, 3): the mesh with the first `eye_points` of each eye's 71 contour points'
    x, y replaced (z kept), likewise the lips (points, mesh indices) if given, and the
    irises appended, each with its eyelid contour's mean z (MediaPipe's refinement). Pairs
    are (right eye, left eye); `eye_indices` are RIGHT_EYE_REFINED and LEFT_EYE_REFINED as
    tensors on the device."""
    points = torch.cat([mesh, mesh.new_zeros(mesh.shape[0], ALL_POINTS - MESH_POINTS, 3)], 1)
    if lips is not None:
        lip_points, lip_indices = lips
        points[:, lip_indices, :2] = lip_points[..., :2]
    for index, contour, iris, slot in zip(
        eye_indices, contours, irises, (RIGHT_IRIS_SLOT, LEFT_IRIS_SLOT), strict=True
    ):
        points[:, index[:eye_points], :2] = contour[:, :eye_points, :2]
        eyelid_z = mesh[:, index[:EYELID_POINTS], 2].mean(1, keepdim=True)
        points[:, slot : slot + 5, :2] = iris[..., :2]
        points[:, slot : slot + 5, 2] = eyelid_z
    return points


def _with_zero_z(points: torch.Tensor) -> torch.Tensor:
    """(N, P, 2) points as (N, P, 3) with z = 0."""
    return torch.cat([points, torch.zeros_like(points[..., :1])], -1)


class TorchFaceMesh:
    """The per-frame pipeline on tensors: frames in (uint8 H×W×3 RGB on the device),
    478-point faces out, tracking faces from frame to frame like MediaPipe.

    `mesh_model` picks the face model (see the module's docstring): "attention" needs the
    face_detector and face_landmark_attention networks, "iris" the face_detector,
    face_landmark and iris_landmark ones."""

    def __init__(
        self,
        networks: dict[str, TFLiteNet],
        max_faces: int = 1,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        refined_eye_points: int = DEFAULT_REFINED_EYE_POINTS,
        mesh_model: str = "attention",
    ):
        if not 0 <= refined_eye_points <= len(RIGHT_EYE_REFINED):
            raise ValueError(f"refined_eye_points {refined_eye_points} is not within 0..71")
        if mesh_model not in MESH_MODELS:
            raise ValueError(f"mesh_model {mesh_model!r} is not one of {MESH_MODELS}")
        self.mesh_model = mesh_model
        self.mesh_network = MESH_MODEL_NETWORKS[mesh_model][1]
        self.networks = networks
        self.refined_eye_points = refined_eye_points
        self.device = next(networks[self.mesh_network].parameters()).device
        self.max_faces = max_faces
        self.min_detection_confidence = min_detection_confidence
        self.min_tracking_confidence = min_tracking_confidence
        self.anchors = ssd_anchors(self.device)
        self.eye_indices = (
            torch.tensor(RIGHT_EYE_REFINED, device=self.device),
            torch.tensor(LEFT_EYE_REFINED, device=self.device),
        )
        self.lip_indices = torch.tensor(LIPS_REFINED, device=self.device)
        self.mirrored_iris_order = torch.tensor(MIRRORED_IRIS_ORDER, device=self.device)
        # on the device once: a Python index sequence would be uploaded (a sync) per frame
        self.eye_corners = (
            torch.tensor(RIGHT_EYE_CORNERS, device=self.device),
            torch.tensor(LEFT_EYE_CORNERS, device=self.device),
        )
        self._letterboxes: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
        self._tracked: torch.Tensor | None = None  # (K, 5) ROIs from the last meshes

    def reset(self) -> None:
        """Forget the tracked faces: the next frame runs the detector."""
        self._tracked = None

    @torch.inference_mode()
    def detect_faces(self, image: torch.Tensor) -> Detections:
        """Detector on a (1, 3, H, W) 0..255 float image: detections in pixels."""
        height, width = image.shape[-2:]
        side = float(max(height, width))
        key = (height, width, image.dtype)
        letterbox = self._letterboxes.get(key)
        if letterbox is None:  # built once per frame size: an upload syncs the host
            letterbox = torch.tensor(
                [[width / 2, height / 2, side, side, 0.0]], device=image.device, dtype=image.dtype
            )
            self._letterboxes[key] = letterbox
        size = NETWORKS["face_detector"].input_size
        tensor = crop_rois(image, letterbox, size, NETWORKS["face_detector"].input_range, True)
        regressors, classificators = self.networks["face_detector"](tensor)
        found = decode_detections(
            regressors[0], classificators[0], self.anchors, self.min_detection_confidence
        )
        found = weighted_nms(found, NMS_IOU, self.max_faces)
        origin = letterbox[0, :2] - side / 2
        return found.scaled(side, origin)

    def face_rois(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ROIs to run the face model on, and which of them hold a face: the tracked faces,
        plus, while fewer than max_faces are tracked, the best detections that overlap no
        tracked face, up to max_faces rows in all (empty detector rows included: the
        number of rows never depends on the image, so nothing here waits for the GPU)."""
        tracked = self._tracked
        if tracked is not None and len(tracked) >= self.max_faces:
            return tracked, torch.ones_like(tracked[:, 0], dtype=torch.bool)
        found = self.detect_faces(image)
        start, end = DETECTION_ROTATION_KEYPOINTS
        detected = rois_from_boxes(
            found.boxes, found.keypoints[:, start], found.keypoints[:, end], FACE_ROI_SCALE
        )
        if tracked is None or len(tracked) == 0:
            return detected, found.valid
        overlap = box_iou(_axis_aligned(detected), _axis_aligned(tracked))
        fresh = torch.where(found.valid & (overlap <= ASSOCIATION_IOU).all(1), found.scores, -1.0)
        best = torch.topk(fresh, self.max_faces - len(tracked)).indices  # best first
        rois = torch.cat([tracked, detected[best]])
        return rois, torch.cat([torch.ones_like(tracked[:, 0], dtype=torch.bool), fresh[best] >= 0])

    @torch.inference_mode()
    def mesh(self, image: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The face model in each ROI: points in pixels, (N, 468, 3) for the classic mesh
        and (N, 478, 3) refined for the attention mesh, and (N,) face scores."""
        spec = NETWORKS[self.mesh_network]
        crops = crop_rois(image, rois, spec.input_size, spec.input_range, False)
        outputs = self.networks[self.mesh_network](crops)
        size = spec.input_size
        points = project_points(outputs[0].reshape(-1, MESH_POINTS, 3), rois, size)
        if self.mesh_model == "attention":
            points = self._refined_by_attention(points, outputs[1:6], rois, size)
        return points, torch.sigmoid(outputs[-1][:, 0])

    def _refined_by_attention(
        self,
        mesh: torch.Tensor,
        parts: tuple[torch.Tensor, ...],
        rois: torch.Tensor,
        size: int,
    ) -> torch.Tensor:
        """The attention mesh's 478 points: its lips, eyes and irises (crop pixels, x and y)
        over the mesh, as FaceMesh(refine_landmarks=True) does."""
        count = mesh.shape[0]
        lips, image_left_eye, image_right_eye, image_left_iris, image_right_iris = (
            project_points(_with_zero_z(part.reshape(count, -1, 2)), rois, size) for part in parts
        )
        return refine_mesh(
            mesh,
            (image_left_eye, image_right_eye),  # the subject's right eye, then left
            (image_left_iris, image_right_iris),
            self.eye_indices,
            len(RIGHT_EYE_REFINED),
            lips=(lips, self.lip_indices),
        )

    @torch.inference_mode()
    def irises(self, image: torch.Tensor, mesh: torch.Tensor) -> torch.Tensor:
        """(N, 478, 3): the classic meshes refined by the iris model on both eyes."""
        spec = NETWORKS["iris_landmark"]
        size = spec.input_size
        right_corners, left_corners = self.eye_corners
        right = rois_from_points(mesh[:, right_corners], 0, 1, EYE_ROI_SCALE)
        left = rois_from_points(mesh[:, left_corners], 0, 1, EYE_ROI_SCALE)
        crops = torch.cat(
            [
                crop_rois(image, right, size, spec.input_range, False),
                crop_rois(image, left, size, spec.input_range, False, flip=True),
            ]
        )
        contours, irises = self.networks["iris_landmark"](crops)
        count = mesh.shape[0]
        contours = contours.reshape(2 * count, -1, 3)
        irises = irises.reshape(2 * count, -1, 3)
        left_iris = project_points(irises[count:], left, size, flip=True)
        return refine_mesh(
            mesh,
            (
                project_points(contours[:count], right, size),
                project_points(contours[count:], left, size, flip=True),
            ),
            (project_points(irises[:count], right, size), left_iris[:, self.mirrored_iris_order]),
            self.eye_indices,
            self.refined_eye_points,
        )

    @torch.inference_mode()
    def track_all(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The face model on every ROI of a (1, 3, H, W) 0..255 float frame: points in
        pixels ((K, 468, 3) for the classic mesh, before the iris model; (K, 478, 3) for the
        attention mesh) and (K,) face scores (0 for a row that held no face), all left on
        the device: nothing here waits for the GPU. The next frame's ROIs come from these
        points (as MediaPipe does), lost faces included until `keep` hears which were
        found."""
        rois, holds_face = self.face_rois(image)
        mesh, scores = self.mesh(image, rois)
        start, end = FACE_ROTATION_POINTS
        self._tracked = rois_from_points(mesh, start, end, FACE_ROI_SCALE)
        return mesh, torch.where(holds_face, scores, 0.0)

    def keep(self, found: np.ndarray) -> None:
        """Track on only the faces of the last frame that `found` (host booleans, one per
        face) marks as faces: none found means detecting again."""
        if self._tracked is None or found.all():
            return
        if not found.any():
            self._tracked = None
            return
        self._tracked = self._tracked[upload(np.flatnonzero(found), self._tracked.device)]

    def found(self, scores: np.ndarray) -> np.ndarray:
        """Which face scores (read back to the host) count as a face."""
        return scores >= self.min_tracking_confidence

    @torch.inference_mode()
    def track(self, image: torch.Tensor) -> torch.Tensor:
        """track_all with the lost faces dropped (a host sync): (K, 468|478, 3) points."""
        mesh, scores = self.track_all(image)
        found = self.found(scores.cpu().numpy())
        self.keep(found)
        return mesh[upload(np.flatnonzero(found), mesh.device)]

    @torch.inference_mode()
    def process_all(self, image_rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every tracked or detected face in a uint8 (H, W, 3) RGB frame on the device:
        (K, 478, 3) float32 points, pixels of that frame (z scaled like x), and (K,) scores
        (see `found`); the caller reads both back and calls `keep`. Nothing here waits for
        the GPU, on a tracking frame or a detecting one."""
        image = to_float_image(image_rgb)
        mesh, scores = self.track_all(image)
        if self.mesh_model == "iris":
            mesh = self.irises(image, mesh)
        return mesh, scores


def exact_fp32_convolutions() -> None:
    """cuDNN runs fp32 convolutions as TF32 by default on Ampere and later GPUs: a 10-bit
    mantissa, about 0.1 px on outputs that are pixels of a 192 px crop. These networks are
    small enough to run in full fp32 at no visible cost. (The legacy flag, which sets cuDNN's
    convolutions and RNNs alike: mixing it with the per-op API makes torch raise.)"""
    if torch.backends.cudnn.allow_tf32:
        torch.backends.cudnn.allow_tf32 = False
        log.info("cuDNN TF32 off: the landmark networks run in full fp32")


def to_float_image(image_rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) → float (1, 3, H, W), still 0..255."""
    return image_rgb.permute(2, 0, 1)[None].float()


def _axis_aligned(rois: torch.Tensor) -> torch.Tensor:
    """ROIs as x0, y0, x1, y1 boxes, rotation ignored (as MediaPipe's association does)."""
    half = rois[:, 2:4] / 2
    return torch.cat([rois[:, :2] - half, rois[:, :2] + half], 1)


def _scale_points(points: torch.Tensor, x_ratio: float, y_ratio: float) -> torch.Tensor:
    """(K, P, 3) points with x and z times x_ratio, y times y_ratio: scalars, so nothing is
    uploaded (a torch.tensor(..., device=cuda) would wait for the device)."""
    return torch.cat(
        [points[..., :1] * x_ratio, points[..., 1:2] * y_ratio, points[..., 2:] * x_ratio], -1
    )


def downscaled(image_rgb: torch.Tensor, max_width: int) -> torch.Tensor:
    """A uint8 (H, W, 3) frame no wider than max_width (area averaging, like cv2.INTER_AREA)."""
    height, width = image_rgb.shape[:2]
    if width <= max_width:
        return image_rgb
    size = (round(height * max_width / width), max_width)
    chw = image_rgb.permute(2, 0, 1)[None].float()
    small = F.interpolate(chw, size=size, mode="area")
    return small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


class TorchLandmarkDetector:
    """The daemon's LandmarkDetector on the torch pipeline: same options, same frame
    downscaling, same choice of face and periodic re-detection as the MediaPipe backend."""

    MAX_WIDTH = 640

    def __init__(
        self,
        config: MediaPipeTrackingConfig,
        device: str = "cpu",
        networks: dict[str, TFLiteNet] | None = None,
        mesh_model: str = "attention",
    ):
        self.config = config
        if networks is None:
            networks = load_networks(device, MESH_MODEL_NETWORKS[mesh_model])
        self.pipeline = TorchFaceMesh(
            networks,
            max_faces=config.max_faces,
            min_detection_confidence=config.min_detection_confidence,
            min_tracking_confidence=config.min_tracking_confidence,
            mesh_model=mesh_model,
        )
        self.device = self.pipeline.device  # where the networks are, if they were given
        if self.device.type == "cuda":
            exact_fp32_convolutions()
        self._previous: Landmarks | None = None
        self._last_detection: float | None = None

    def detect(self, image: np.ndarray, t_capture: float, index: int) -> Landmarks | None:
        """The followed face in a BGR uint8 frame, or None."""
        return self.detect_uploaded(upload(image, self.device), t_capture, index)

    def detect_uploaded(
        self, frame: torch.Tensor, t_capture: float, index: int
    ) -> Landmarks | None:
        """`detect` for a BGR uint8 (H, W, 3) frame already on the device (the daemon's GPU
        frame loop uploads each frame ahead of its work)."""
        self._redetect_when_due(t_capture)
        packed = self.uploaded_on_device(frame).cpu().numpy()  # the frame's one readback
        return self._followed_face(packed, frame.shape[1], frame.shape[0], t_capture, index)

    def frame_on_device(self, image: np.ndarray) -> torch.Tensor:
        """A BGR uint8 frame's device work, none of it waiting for the GPU: the upload
        (async, through pinned memory), then `uploaded_on_device`."""
        return self.uploaded_on_device(upload(image, self.device))

    def uploaded_on_device(self, frame: torch.Tensor) -> torch.Tensor:
        """An uploaded BGR uint8 frame's device work, none of it waiting for the GPU: the
        face models, and the result packed for one readback: (K, 478·3 + 1) float32, each
        row a face's points in frame pixels and its score. The tracker then needs to hear
        which rows held faces (see `detect_uploaded`)."""
        rgb = frame.to(self.device).flip(-1)
        height, width = rgb.shape[:2]
        small = downscaled(rgb, self.MAX_WIDTH)
        faces, scores = self.pipeline.process_all(small)
        scaled = _scale_points(faces, width / small.shape[1], height / small.shape[0])
        return torch.cat([scaled.flatten(1), scores[:, None]], 1)

    def _followed_face(
        self, packed: np.ndarray, width: int, height: int, t_capture: float, index: int
    ) -> Landmarks | None:
        """From the read-back rows: drop the lost faces (here and in the tracker) and pick
        the one to follow."""
        found = self.pipeline.found(packed[:, -1])
        self.pipeline.keep(found)
        arrays = [p.reshape(ALL_POINTS, 3).astype(np.float32) for p in packed[found, :-1]]
        if not arrays:
            self._previous = None
            return None
        chosen = choose_face(arrays, self._previous, width, height)
        landmarks = Landmarks(arrays[chosen], width, height, t_capture, index, len(arrays))
        self._previous = landmarks
        return landmarks

    def _redetect_when_due(self, t_capture: float) -> None:
        redetect_s = self.config.redetect_s
        if self._last_detection is None or t_capture < self._last_detection:
            self._last_detection = t_capture
        elif redetect_s and t_capture - self._last_detection > redetect_s:
            self.reset()
            self._last_detection = t_capture

    def reset(self) -> None:
        """Forget the track: the next frame runs the face detector again."""
        self.pipeline.reset()

    def close(self) -> None:
        self.pipeline.reset()
        self._previous = None
