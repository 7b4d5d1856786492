"""Self-reenactment: the field's ground-truth test of realism (FOMM, face-vid2vid and
LivePortrait report it). Frame 0 of a real clip is the avatar and the same clip drives it,
so a perfect generator reproduces every real frame; each output frame is scored against the
real one in the head region.

    python -m thc_tools.reenact --data ../shared/data --out reports   (part of `make eval`)

Per clip: the avatar is frame 0 (prepared like any avatar), the neutral face is frame 0 (held:
no automatic calibration or refinement, since the avatar shows exactly that face), the
output is rendered by the daemon's own pipeline at the avatar's own size and framing (one
output pixel per avatar pixel), losslessly in memory. Next to ours, two baselines through
the same path: frame 0 repeated (no animation), and frame 0 moved by the face's 2D
similarity (a least-squares fit of the landmarks, frame 0 → frame t, applied to the whole
image). Scores, over the frames after frame 0 where the real face is tracked (frame 0 is the
avatar itself: no method predicts it, and the similarity baseline's exact copy of it scored
PSNR's cap, 99 dB, which alone moved a 60-frame clip's mean by 0.8 dB):

- psnr, ssim (grey, the SSIM map averaged), l1 (mean absolute error, 0-255) in the head
  region: the real face's hull grown 1.6× about its centre and raised by 0.35 eye distances
  to take in the hair;
- akd: the mean distance between the landmarks FaceMesh finds on the output and on the real
  frame, per eye distance (an untracked output frame counts as the frame-0 placement);
- lips_psnr, eyes_psnr: PSNR in a box around the lips, and around the eyes and brows.

The dev clips have little leaning or sliding, so two more clips are made from them: a crop
that zooms in over time (a lean towards the camera) and one that pans (a slide sideways).
They are still real frames, with ground truth. Contact sheets (real above, ours below, at 8
frames) go beside the report.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from daemon.config import Config
from daemon.errors import TalkingHeadCamError
from engines.facegeom import (
    FACE_OVAL,
    LEFT_EYE_BROW_RING,
    LEFT_EYE_LOWER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_OUTER,
    RIGHT_EYE_BROW_RING,
    RIGHT_EYE_LOWER,
    eye_distance,
)
from thc_tools.evaluate import (
    FALLBACK_FPS,
    read_frames,
    render,
    report_parser,
    run_report,
    track,
)

METHODS = ("ours", "still", "similarity")
SCORES = ("psnr", "ssim", "l1", "akd", "lips_psnr", "eyes_psnr")
HEAD_GROW, HEAD_RAISE = 1.6, 0.35
SHEET_FRAMES, SHEET_HEIGHT = 8, 180
MAX_FRAMES = 200  # per clip: 8 s at 25 fps
LIPS = LIPS_UPPER_OUTER + LIPS_LOWER_OUTER
EYES_AND_BROWS = RIGHT_EYE_LOWER + LEFT_EYE_LOWER + RIGHT_EYE_BROW_RING + LEFT_EYE_BROW_RING
EYEBROWS = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # FaceMesh's brows, upper edge


# ---------------------------------------------------------------- regions and scores


def head_mask(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The head region of one frame (see the module docstring), from its real landmarks."""
    hull = cv2.convexHull(points[FACE_OVAL, :2].astype(np.float32)).reshape(-1, 2)
    center = hull.mean(0)
    grown = (hull - center) * HEAD_GROW + center - (0.0, HEAD_RAISE * eye_distance(points))
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillConvexPoly(mask, np.round(grown).astype(np.int32), 255)
    return mask > 0


def box_mask(points: np.ndarray, indices: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """The landmarks' bounding box, grown by a fifth of an eye distance each way."""
    margin = 0.2 * eye_distance(points)
    (x0, y0), (x1, y1) = points[indices, :2].min(0) - margin, points[indices, :2].max(0) + margin
    mask = np.zeros(shape[:2], bool)
    height, width = shape[:2]
    mask[max(0, int(y0)) : min(height, int(np.ceil(y1))), max(0, int(x0)) : min(width, int(x1))] = 1
    return mask


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    error = float(np.mean((a.astype(np.float64) - b.astype(np.float64))[mask] ** 2))
    return 99.0 if error < 1e-10 else 10.0 * np.log10(255.0**2 / error)


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """SSIM of the grey images inside the mask's bounding box, its map averaged in the mask."""
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    grey = [cv2.cvtColor(image[box], cv2.COLOR_BGR2GRAY) for image in (a, b)]
    if min(grey[0].shape) < 7:
        return float("nan")
    _, ssim_map = structural_similarity(grey[0], grey[1], data_range=255, full=True)
    return float(ssim_map[mask[box]].mean())


def akd(found: np.ndarray | None, real: np.ndarray, fallback: np.ndarray) -> float:
    """Mean landmark distance per eye distance; an output without a face is scored at the
    fallback (frame 0's) placement."""
    points = fallback if found is None else found
    distance = np.linalg.norm(points[:, :2] - real[:, :2], axis=1).mean()
    return float(distance / eye_distance(real))


def frame_scores(out: np.ndarray, real: np.ndarray, real_points: np.ndarray) -> dict[str, float]:
    """The pixel scores of one output frame against the real one (AKD is added apart)."""
    head = head_mask(real_points, real.shape)
    return {
        "psnr": psnr(out, real, head),
        "ssim": ssim(out, real, head),
        "l1": float(np.abs(out.astype(np.float64) - real)[head].mean()),
        "lips_psnr": psnr(out, real, box_mask(real_points, LIPS, real.shape)),
        "eyes_psnr": psnr(out, real, box_mask(real_points, EYES_AND_BROWS + EYEBROWS, real.shape)),
    }


# ---------------------------------------------------------------- the baselines


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares 2D similarity src → dst (landmarks' x, y) as a 2x3 matrix."""
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    s0, d0 = s - s.mean(), d - d.mean()
    a = np.vdot(s0, d0) / np.vdot(s0, s0)
    b = d.mean() - a * s.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def moved_by_similarity(first: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = first.shape[:2]
    return cv2.warpAffine(
        first, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


# ---------------------------------------------------------------- clips made from clips


def zoom_pan(frames: Sequence[np.ndarray], kind: str) -> list[np.ndarray]:
    """Real frames cropped by a window that zooms in (`lean`: the person comes 1.3× closer)
    or pans (`slide`: a sixth of the width sideways) over the clip, scaled back to size."""
    height, width = frames[0].shape[:2]
    out = []
    for index, frame in enumerate(frames):
        progress = index / max(1, len(frames) - 1)
        if kind == "lean":
            crop = 0.9 - 0.21 * progress
            center_x = width / 2
        else:
            crop = 0.8
            center_x = width / 2 + (progress - 0.5) * width / 6
        w, h = crop * width, crop * height
        x0 = float(np.clip(center_x - w / 2, 0, width - w))
        y0 = (height - h) / 2
        scale = width / w
        matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
        out.append(cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR))
    return out


# ---------------------------------------------------------------- one clip


@dataclass
class ClipResult:
    name: str
    frames: int
    scored: int
    scores: dict[str, dict[str, float]]  # method → score → mean over the scored frames
    sheet: Path | None = None
    seconds: float = 0.0
    per_frame: dict[str, list[dict[str, float]]] = field(default_factory=dict, repr=False)


def reenact_frames(
    config: Config, name: str, frames: Sequence[np.ndarray], fps: float, work: Path
) -> tuple[ClipResult, dict[str, list[np.ndarray]]]:
    """Self-reenactment of one sequence of real frames: (scores, the frames of each method)."""
    started = time.monotonic()
    height, width = (side - side % 2 for side in frames[0].shape[:2])  # video sizes are even
    real = [np.ascontiguousarray(f[:height, :width]) for f in frames]
    avatar = work / f"{name}.frame0.png"
    cv2.imwrite(str(avatar), real[0])
    calibration = config.motion.calibration.model_copy(update={"auto": False, "refine": False})
    run_config = config.model_copy(
        update={
            "motion": config.motion.model_copy(update={"calibration": calibration}),
            "avatar": config.avatar.model_copy(update={"image": str(avatar)}),
            "output": config.output.model_copy(
                update={"width": width, "height": height, "fps": fps}
            ),
        }
    )
    real_points = track(real)
    first_points = real_points[0]
    if first_points is None:
        raise TalkingHeadCamError(f"{name}: no face in frame 0")
    outputs = {
        "real": real,
        "ours": list(render(run_config, real, fps)),
        "still": [real[0]] * len(real),
        "similarity": [
            real[0]
            if points is None
            else moved_by_similarity(real[0], similarity_2d(first_points, points))
            for points in real_points
        ],
    }
    per_frame: dict[str, list[dict[str, float]]] = {}
    for method in METHODS:
        images = outputs[method]
        found = track(images)
        per_frame[method] = [
            frame_scores(out, truth, points) | {"akd": akd(found_points, points, first_points)}
            for out, truth, points, found_points in itertools.islice(
                zip(images, real, real_points, found, strict=True), 1, None
            )
            if points is not None
        ]
    scores = {
        method: {key: float(np.nanmean([f[key] for f in rows])) for key in SCORES}
        for method, rows in per_frame.items()
    }
    scored = len(per_frame["ours"])
    result = ClipResult(name, len(real), scored, scores, per_frame=per_frame)
    result.seconds = time.monotonic() - started
    return result, outputs


def contact_sheet(path: Path, outputs: dict[str, list[np.ndarray]]) -> Path:
    """Real frames above, ours below, at SHEET_FRAMES evenly spaced frames."""
    real, ours = outputs["real"], outputs["ours"]
    picks = np.linspace(0, len(real) - 1, SHEET_FRAMES).round().astype(int)
    scale = SHEET_HEIGHT / real[0].shape[0]

    def row(images: Sequence[np.ndarray]) -> np.ndarray:
        tiles = [
            cv2.resize(images[i], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            for i in picks
        ]
        return np.hstack(tiles)

    sheet = np.vstack([row(real), row(ours)])
    cv2.imwrite(str(path), sheet)
    return path


# ---------------------------------------------------------------- all clips, the report


def clips(data: Path) -> Iterable[tuple[str, list[np.ndarray], float]]:
    """(name, frames, fps) of every dev clip, then the lean and slide made from two of them."""
    paths = sorted((data / "driving").glob("*.mp4"))
    loaded = {}
    for path in paths:
        frames = []
        for frame in read_frames(path):
            frames.append(frame)
            if len(frames) >= MAX_FRAMES:
                break
        capture = cv2.VideoCapture(str(path))
        fps = capture.get(cv2.CAP_PROP_FPS) or FALLBACK_FPS
        capture.release()
        loaded[path.stem] = (frames, fps)
        yield path.stem, frames, fps
    for kind, source in (("lean", "talk_blinks_a"), ("slide", "talk_c")):
        if source in loaded:
            frames, fps = loaded[source]
            yield f"{kind}_{source}", zoom_pan(frames, kind), fps


def targets(results: Sequence[ClipResult]) -> list[str]:
    """The issue's realism targets, each with what was measured."""
    mean = {
        m: {k: float(np.mean([r.scores[m][k] for r in results])) for k in SCORES} for m in METHODS
    }
    beats = [
        r.name
        for r in results
        if all(
            r.scores["ours"][k] > max(r.scores[b][k] for b in ("still", "similarity"))
            for k in ("psnr", "ssim")
        )
        and r.scores["ours"]["akd"] < min(r.scores[b]["akd"] for b in ("still", "similarity"))
    ]
    gain = mean["ours"]["psnr"] - mean["still"]["psnr"]
    akd_ratio = mean["ours"]["akd"] / mean["similarity"]["akd"]
    boxes = {
        k: [r.name for r in results if r.scores["ours"][k] <= r.scores["similarity"][k]]
        for k in ("lips_psnr", "eyes_psnr")
    }
    return [
        f"- beats both baselines in PSNR, SSIM and AKD: **{len(beats)} of {len(results)}** clips"
        f" ({', '.join(beats) or 'none'}; target: all)",
        f"- mean PSNR over the no-animation baseline: **{gain:+.2f} dB** (target ≥ +2 dB)",
        f"- mean AKD / the similarity baseline's: **{akd_ratio:.2f}** (target ≤ 0.8)",
        *(
            f"- {k.split('_')[0]} box PSNR above the similarity baseline's: "
            f"**{len(results) - len(losing)} of {len(results)}** clips "
            f"(below: {', '.join(losing) or 'none'}; target: all; mean ours "
            f"{mean['ours'][k]:.2f} dB, similarity {mean['similarity'][k]:.2f} dB)"
            for k, losing in boxes.items()
        ),
    ]


def format_report(results: Sequence[ClipResult], seconds: float, data: Path) -> str:
    lines = [
        "# Self-reenactment: does the output look like the real person?",
        "",
        f"Generated by `make eval` (`python -m thc_tools.reenact`) on {time.strftime('%Y-%m-%d')}"
        f" in {seconds:.0f} s from {data}/driving: frame 0 of each clip is the avatar, the clip"
        " drives it, every output frame is scored against the real frame in the head region"
        " (see tests/thc_tools/reenact.py). Baselines: frame 0 repeated (still) and frame 0"
        " moved by the face's 2D similarity. Rendered losslessly at the avatar's own size.",
        "",
        "**Targets:**",
        "",
        *targets(results),
        "",
        "Each cell: **ours** / still / similarity (higher is better, but AKD and L1: lower).",
        "",
        "| clip | frames | PSNR dB | SSIM | L1 | AKD | lips PSNR | eyes PSNR |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    digits = {"psnr": 2, "ssim": 3, "l1": 2, "akd": 3, "lips_psnr": 2, "eyes_psnr": 2}

    def cells(scores: dict[str, dict[str, float]]) -> str:
        return " | ".join(
            f"**{scores['ours'][k]:.{digits[k]}f}** / {scores['still'][k]:.{digits[k]}f} / "
            f"{scores['similarity'][k]:.{digits[k]}f}"
            for k in ("psnr", "ssim", "l1", "akd", "lips_psnr", "eyes_psnr")
        )

    for result in results:
        lines.append(
            f"| {result.name} | {result.scored}/{result.frames} | {cells(result.scores)} |"
        )
    mean = {
        m: {k: float(np.mean([r.scores[m][k] for r in results])) for k in SCORES} for m in METHODS
    }
    lines.append(f"| **mean** | | {cells(mean)} |")
    lines += ["", "Contact sheets (real above, ours below):", ""]
    lines += [f"- {r.name}: ![{r.name}]({r.sheet.name})" for r in results if r.sheet is not None]
    return "\n".join(lines) + "\n"


def write_report(
    config: Config, data: Path, out_dir: Path, progress: Callable[[str], None] = print
) -> Path:
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="reenact-") as tmp:
        for name, frames, fps in clips(data):
            progress(f"{name}: {len(frames)} frames")
            result, outputs = reenact_frames(config, name, frames, fps, Path(tmp))
            result.sheet = contact_sheet(out_dir / f"reenact_{name}.png", outputs)
            results.append(result)
    report = out_dir / "reenact.md"
    report.write_text(format_report(results, time.monotonic() - started, data))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = report_parser("python -m thc_tools.reenact", __doc__.splitlines()[0]).parse_args(argv)
    return run_report(
        "reenact", args, lambda config, data: write_report(config, data, Path(args.out))
    )


if __name__ == "__main__":
    sys.exit(main())
