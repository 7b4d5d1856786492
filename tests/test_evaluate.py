"""The evaluation harness: its metrics on hand-made series, the driver scored against itself
(must be perfect), the static avatar (must score poorly), `eval --json` and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATA, TESTS_DIR, write_video
from thc_tools.evaluate import (
    METRIC_NAMES,
    Signals,
    background_change,
    blink_events,
    blink_f1,
    blink_f1_of,
    eval_config,
    evaluate,
    evaluate_self,
    jitter_px,
    main,
    match_events,
    pearson,
    squeezes,
    track,
    write_report,
)

from daemon.config import Config
from engines.facegeom import RIGID, angles_to_rotation, mouth_opening
from engines.generator.avatar_prep import prepare_avatar

JSON_KEYS = {
    "clip",
    "avatar",
    "generator",
    "width",
    "height",
    "fps",
    "frames",
    "pipeline",
    "baseline",
    "background",
}


def dev_file(*parts: str):
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"dev data not present: {path}")
    return path


def assert_perfect(metrics, blinks: bool | None = None) -> None:
    assert metrics.tracked == 1.0
    assert metrics.pose_err_deg == pytest.approx(0.0, abs=1e-9)
    assert metrics.mouth_r == pytest.approx(1.0, abs=1e-9)
    assert metrics.gaze_r == pytest.approx(1.0, abs=1e-9)
    assert metrics.blink_f1 in (None, 1.0)
    if blinks is not None:
        assert (metrics.blink_f1 == 1.0) is blinks


@pytest.fixture(scope="module")
def hopper_clip(tmp_path_factory, face_image):
    """A real MP4 of the default avatar drifting sideways: a face in every frame."""
    return write_video(tmp_path_factory.mktemp("eval") / "hopper.mp4", face_image, 30, 25)


# ---------------------------------------------------------------- metrics on made-up series


def test_blinks_are_the_middle_frames_of_runs_below_055_of_the_median():
    openness = np.full(80, 0.3)
    openness[10:13] = 0.05  # → 11
    openness[30:34] = 0.1  # even run → the lower middle, 31
    openness[50] = 0.16  # one frame, just below 0.55 × 0.3 = 0.165 → 50
    openness[60] = 0.17  # just above: no blink
    openness[70:72] = 0.05  # split by an untracked frame: two events
    openness[72] = np.nan
    openness[73:75] = 0.05
    assert blink_events(openness) == [11, 31, 50, 70, 73]
    assert blink_events(np.full(20, 0.3)) == []
    assert blink_events(np.full(5, np.nan)) == []


def test_events_match_one_to_one_within_two_frames():
    assert match_events([10, 20], [12, 23]) == 1
    assert match_events([10], [7, 8, 11, 12]) == 1  # one found event per reference event
    assert match_events([10, 11], [10]) == 1
    assert match_events([10, 12], [11, 13]) == 2  # not 10↔11 and 12 unmatched
    assert match_events([10, 14], [12]) == 1
    assert match_events([], [3]) == 0


def test_a_squeeze_counts_neither_as_a_blink_nor_against_one():
    """At 25 fps: a 3-frame run is a blink, a 12-frame one (0.48 s) eyes screwed shut; the
    output's event inside the squeeze is neither a hit nor a false blink, the one elsewhere
    still is a false blink."""
    driver = np.full(100, 0.3)
    driver[10:13] = 0.05  # blink → 11
    driver[40:52] = 0.05  # squeeze
    assert blink_events(driver) == [11, 45]
    assert blink_events(driver, fps=25.0) == [11]
    assert squeezes(driver, 25.0) == [(40, 51)]
    assert blink_events(driver, fps=50.0) == [11, 45]  # 12 frames at 50 fps: a slow blink
    output = np.full(100, 0.3)
    output[[11, 50, 80]] = 0.05
    assert blink_f1_of(driver, output, 25.0) == pytest.approx(2 * 1 / 3)  # 11 hit, 80 false
    assert blink_f1_of(driver, output, None) == pytest.approx(2 * 1 / 5)  # every run a blink


def test_a_blink_read_open_for_a_frame_in_its_middle_is_one_blink():
    """At 25 fps, runs 2 frames apart are one blink (a lid cannot reopen and shut again in
    80 ms), 3 frames apart two; an untracked frame between them keeps them apart."""
    eyes = np.full(60, 0.3)
    eyes[[10, 13]] = 0.05  # two frames between: one blink, 10..13 → 11
    eyes[[30, 34]] = 0.05  # three: two blinks
    eyes[[50, 52]] = 0.05
    eyes[51] = np.nan
    assert blink_events(eyes) == [10, 13, 30, 34, 50, 52]
    assert blink_events(eyes, fps=25.0) == [11, 30, 34, 50, 52]
    assert blink_events(eyes, fps=12.0) == [10, 13, 30, 34, 50, 52]  # 1 frame at 12 fps


def test_blink_f1():
    assert blink_f1([], [3, 9]) is None  # the driver never blinks
    assert blink_f1([10, 40], []) == 0.0
    assert blink_f1([10, 40], [11, 40]) == 1.0
    assert blink_f1([10, 40], [12, 25, 60]) == pytest.approx(2 * 1 / 5)


def test_pearson_of_a_constant_series_is_zero():
    x = np.array([0.1, 0.5, 0.2, 0.9])
    assert pearson(x, np.full(4, 0.3)) == 0.0
    assert pearson(np.full(4, 7.0), x) == 0.0
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert pearson([], []) is None


def test_jitter_is_the_mean_2d_landmark_step_between_tracked_frames():
    a = np.zeros((478, 3))
    b = a + np.array([3.0, 4.0, 100.0])  # z is ignored
    assert jitter_px([a, b, b]) == pytest.approx(2.5)
    assert jitter_px([a, None, b]) is None
    assert jitter_px([a]) is None


def test_pose_is_recovered_from_landmarks_turned_by_known_angles(face_image):
    (points,) = track([face_image])
    assert points is not None
    center = points[RIGID].mean(0)
    turned = (points - center) @ angles_to_rotation(20.0, -10.0, 5.0).T * 1.3 + center + 40
    signals = Signals.measure([None, points, turned])
    assert signals.tracked.tolist() == [False, True, True]
    np.testing.assert_allclose(signals.angles[1], 0.0, atol=1e-9)
    np.testing.assert_allclose(signals.angles[2], [20.0, -10.0, 5.0], atol=1e-6)
    assert signals.mouth[2] == pytest.approx(mouth_opening(points))


# ---------------------------------------------------------------- whole sequences


def test_driver_against_itself_is_perfect_and_the_avatar_is_tracked(hopper_clip):
    assert_perfect(evaluate_self(hopper_clip))
    config = eval_config(Config(), "default", 256, 256)
    result = evaluate(config, hopper_clip)
    assert result.pipeline_metrics.tracked == result.baseline_metrics.tracked == 1.0
    assert result.baseline_metrics.jitter_px is not None
    assert len(result.output) == len(result.baseline) == len(result.driver) == 30


def test_eval_cli_json_has_the_documented_keys(hopper_clip):
    command = [sys.executable, "-m", "thc_tools", "eval", "--json", "--driver", str(hopper_clip)]
    command += ["--width", "256", "--height", "256"]
    result = subprocess.run(
        command,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == JSON_KEYS
    assert (data["width"], data["height"], data["fps"]) == (256, 256, 25)
    assert data["frames"] == {"driver": 30, "driver_tracked": 30, "output": 30, "still": 30}
    change, noise = data["background"]["change"], data["background"]["codec_noise"]
    assert 0.0 <= change < noise  # the background outside the person stays still
    for side in ("pipeline", "baseline"):
        assert set(data[side]) == set(METRIC_NAMES)
        assert data[side]["tracked"] == 1.0


@pytest.mark.parametrize("moves", ["person", "plate"])
def test_the_background_measure_lets_the_person_move_and_not_the_plate(tmp_path, moves):
    """The person slid by the head's shift (its landmarks too) is still; the whole picture
    slid, plate and all, is not: the measure can fail."""
    avatar = prepare_avatar("default", tmp_path)
    image, person, points = avatar.image, avatar.person, avatar.points
    shift = np.float32([[1, 0, 8], [0, 1, 0]])
    size = image.shape[1::-1]
    slid_points = points + np.float32([8, 0, 0])
    if moves == "person":
        slid = cv2.warpAffine(image, shift, size)
        alpha = cv2.warpAffine(person, shift, size)[:, :, None] / 255.0
        moved = (slid * alpha + avatar.plate * (1 - alpha)).astype(np.uint8)
    else:
        moved = cv2.warpAffine(image, shift, size, borderMode=cv2.BORDER_REPLICATE)
    change, noise = background_change([image, moved], [points, slid_points], points, person)
    assert (change < noise) == (moves == "person"), (change, noise)


def test_eval_cli_reports_a_missing_driver(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "thc_tools", "eval", "--driver", str(tmp_path / "none.mp4")],
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "none.mp4 not found" in result.stderr


def test_report_skips_avatars_without_a_face(tmp_path, hopper_clip, face_image, capsys):
    data = tmp_path / "data"
    (data / "driving").mkdir(parents=True)
    (data / "avatars").mkdir()
    (data / "driving" / "hopper.mp4").write_bytes(hopper_clip.read_bytes())
    cv2.imwrite(str(data / "avatars" / "hopper.png"), face_image)
    cv2.imwrite(str(data / "avatars" / "wall.png"), np.full((256, 256, 3), 128, np.uint8))
    report = write_report(
        Config(), data, tmp_path / "reports", ["hopper.png", "wall.png"], 256, 256
    )
    text = report.read_text()
    assert "Skipped (no face found in the avatar image): wall.png" in text
    assert "| hopper.mp4 | hopper.png | 1.000 / 1.000 |" in text
    assert "| **mean** |" in text
    assert ", ".join(map(str, RIGID.tolist())) in text
    assert (tmp_path / "reports" / "eval_hopper.png").stat().st_size > 1000
    assert "skipping avatar wall.png" in capsys.readouterr().out


def test_make_eval_without_dev_data_skips_cleanly(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "r")]) == 0
    assert f"skipped: dev data not found at {tmp_path / 'absent'}" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- dev data


def test_a_talking_blinking_driver_against_itself_is_perfect():
    clip = dev_file("driving", "talk_blinks_a.mp4")
    assert_perfect(evaluate_self(clip), blinks=True)


def test_the_static_avatar_scores_poorly():
    avatar = dev_file("avatars", "photo_woman_neutral.png")
    config = eval_config(Config(), str(avatar), 256, 256)
    turns = evaluate(config, dev_file("driving", "talk_head_turns.mp4")).baseline_metrics
    assert turns.tracked == 1.0
    assert turns.pose_err_deg > 3.0
    assert turns.mouth_r < 0.5
    talk = evaluate(config, dev_file("driving", "talk_c.mp4")).baseline_metrics
    assert talk.mouth_r < 0.5
    assert talk.blink_f1 in (None, 0.0)
