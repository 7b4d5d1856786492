"""`render`, `demo` and `bench` through the CLI, on real video files."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import (
    SHARED_DATA,
    TESTS_DIR,
    expected_still,
    face_x,
    mean_abs_diff,
    mesh_rest_frame,
    read_video,
    write_video,
)
from thc_tools.evaluate import Signals, pearson, track

from daemon.demo import scripted_motion


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=120
    )


def tools(*args: str) -> subprocess.CompletedProcess[str]:
    """The team's tools (tests/thc_tools), as `make bench` runs them."""
    return subprocess.run(
        [sys.executable, "-m", "thc_tools", *args],
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_render_writes_one_frame_per_driver_frame_at_the_driver_fps(
    tmp_path, face_image, other_face
):
    driver = write_video(tmp_path / "driver.mp4", other_face, frames=37, fps=25)
    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), face_image)
    out = tmp_path / "out.mp4"
    config = tmp_path / "still.yaml"
    config.write_text("generator: {type: still}\n")
    result = cli(
        "--config",
        str(config),
        "render",
        "--avatar",
        str(avatar),
        "--driver",
        str(driver),
        "--out",
        str(out),
        "--width",
        "256",
        "--height",
        "192",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (37 frames, 256x192 @ 25 fps)"
    frames, fps = read_video(out)
    assert (len(frames), fps) == (37, 25)
    still = expected_still(face_image, 256, 192)
    camera = cv2.resize(other_face, (256, 192))
    for frame in frames:
        assert mean_abs_diff(frame, still) < 6 < 30 < mean_abs_diff(frame, camera)


def test_render_animates_the_avatar_with_the_mesh_generator(tmp_path, face_image, other_face):
    driver = write_video(tmp_path / "driver.mp4", other_face, frames=20, fps=20)
    out = tmp_path / "out.mp4"
    result = cli(
        "render", "--driver", str(driver), "--out", str(out), "--width", "256", "--height", "192"
    )
    assert result.returncode == 0, result.stderr
    frames, fps = read_video(out)
    assert (len(frames), fps) == (20, 20)
    rest = mesh_rest_frame(256, 192)
    camera = [cv2.resize(f, (256, 192)) for f in read_video(driver)[0]]
    for frame in frames:
        # The avatar, never the camera: the whole person slides with the driver (9 px here),
        # so the frame leaves the rest frame as it goes (seen 3 → 25), yet stays far nearer
        # to it than to any camera frame (seen 86)
        to_camera = min(mean_abs_diff(frame, c) for c in camera)
        assert to_camera > 30
        assert mean_abs_diff(frame, rest) < 0.5 * to_camera
    assert_follows_sideways(face_x(camera), face_x(frames))


def assert_follows_sideways(driver_x: np.ndarray, avatar_x: np.ndarray) -> None:
    """The re-tracked avatar's head moves with the driver's (which drifts 9 px sideways and
    back, see conftest.write_video): a frozen avatar passes every "close to the rest frame"
    check but not this one."""
    assert np.ptp(avatar_x) > 4, f"the avatar's head moved {np.ptp(avatar_x):.1f} px"  # seen 12-15
    r = pearson(driver_x, avatar_x)
    assert r is not None and r > 0.8, f"head x against the driver's: r = {r}"  # seen 0.94-0.97


def test_render_a_dev_clip_frame_for_frame(tmp_path):
    clip = SHARED_DATA / "driving" / "talk_c.mp4"
    if not clip.is_file():
        pytest.skip(f"dev data not present: {clip} (see ../shared/data/README.md)")
    cap = cv2.VideoCapture(str(clip))
    count, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    out = tmp_path / "out.mp4"
    result = cli(
        "render", "--driver", str(clip), "--out", str(out), "--width", "320", "--height", "180"
    )
    assert result.returncode == 0, result.stderr
    frames, out_fps = read_video(out)
    assert (len(frames), out_fps) == (count, fps)
    # ... and the avatar does what the driver does (a frozen one would pass the above)
    driver, output = Signals.measure(track(read_video(clip)[0])), Signals.measure(track(frames))
    assert output.tracked.all()
    mouth_r = pearson(driver.mouth, output.mouth)
    assert mouth_r > 0.7, f"mouth opening against the driver's: r = {mouth_r}"  # seen 0.88
    roll_r = pearson(driver.angles[:, 2], output.angles[:, 2])  # the clip's head tilts 16°
    assert roll_r > 0.8, f"head roll against the driver's: r = {roll_r}"  # seen 0.98


def test_render_errors_are_one_clear_line(tmp_path, face_image):
    result = cli("render", "--driver", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o.mp4"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"talking-head-cam: video file {tmp_path / 'nope.mp4'} not found; fix --driver"
    )
    driver = write_video(tmp_path / "d.mp4", face_image, frames=2, fps=10)
    result = cli(
        "render",
        "--avatar",
        str(tmp_path / "missing.png"),
        "--driver",
        str(driver),
        "--out",
        str(tmp_path / "o.mp4"),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"talking-head-cam: --avatar: {tmp_path / 'missing.png'}"
        " not found; fix the path or use 'default'"
    )


def test_demo_needs_no_camera_and_says_where_it_wrote(tmp_path):
    out = tmp_path / "demo.mp4"
    result = cli("demo", "--out", str(out), "--seconds", "2", "--width", "320", "--height", "240")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (60 frames, 320x240 @ 30 fps)"
    frames, _ = read_video(out)
    assert len(frames) == 60
    rest = mesh_rest_frame(320, 240)
    assert max(mean_abs_diff(frame, rest) for frame in frames) < 20  # the avatar throughout ...
    # ... performing the script: what a tracker reads off the video follows it (a frozen
    # avatar's frames differ from the rest frame by the codec's noise alone, whose spread
    # is over 0.5: only the re-tracked face tells the two apart).
    script = [scripted_motion(index / 30) for index in range(60)]
    read = Signals.measure(track(frames))
    assert read.tracked.all()
    mouth_r = pearson([m.mouth_open for m in script], read.mouth)
    eyes_r = pearson([m.eye_open[0] for m in script], read.eyes)
    assert mouth_r > 0.9, f"talking: r = {mouth_r}"  # seen 0.99
    assert eyes_r > 0.8, f"the blink at 0.9 s: r = {eyes_r}"  # seen 0.94


def test_bench_prints_per_stage_latency_and_loop_fps(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("output: {width: 320, height: 240}\n")
    result = tools(
        "--config",
        str(config),
        "bench",
        "--frames",
        "10",
        "--paced-s",
        "0.3",
        "--warp-runs",
        "2",
        "--skimage-runs",
        "0",
        "--engine-frames",
        "4",
    )
    assert result.returncode == 0, result.stderr
    header, *unpaced, paced, warp, engines, targets = result.stdout.strip().split("\n\n")
    assert header.startswith("Talking Head Cam bench: output 320x240 @ 30 fps, driver 1280x720")

    assert len(unpaced) == 2 and unpaced[1].splitlines()[0].endswith("OpenCV threads: 1")
    for run in unpaced:
        lines = run.splitlines()
        assert lines[0].startswith("pipeline at 320x240, 10 frames, unpaced, OpenCV threads: ")
        stages = {line.split()[0] for line in lines[2:-2]}
        assert {"capture_decode", "landmarks", "motion", "generator", "sink:file"} <= stages
        assert lines[-2].startswith("loop fps (unpaced, whole pipeline): ")
        assert float(lines[-2].split()[5]) > 0
        assert "→ I420 for the virtual camera" in lines[-2]
        assert lines[-1].startswith("CPU cores busy: ")
        assert float(lines[-1].rsplit(" ", 1)[1]) > 0

    lines = paced.splitlines()
    assert lines[0].startswith("daemon paced at 30 fps, 320x240, 0.3 s per setting")
    rows = [line.rsplit(maxsplit=3) for line in lines[2:]]
    assert len(rows) == 2 and rows[1][0] == "1"
    assert all(float(fps) > 0 and float(cpu) > 0 for _, fps, cpu, _ in rows)

    lines = warp.splitlines()
    assert lines[0].startswith("warp: ours (engines.generator.warp.warp_image) vs scikit-image")
    assert [line.split(",")[0] for line in lines[3:-1]] == ["ours"] * 2
    assert lines[-1] == "scikit-image: skipped (--skimage-runs 0)"

    lines = engines.splitlines()
    assert lines[0].startswith("engines side by side (unpaced, whole pipeline")
    unavailable = [line.split()[0] for line in lines[2:] if "unavailable: " in line]
    ran = {tuple(row.split()[:2]): row.split()[2:] for row in lines[2:] if "unavailable" not in row}
    engines_ran = sorted({engine for engine, _ in ran})
    assert "cpu" in engines_ran and sorted(engines_ran + unavailable) == ["cpu", "cuda", "tensorrt"]
    for engine in engines_ran:  # every engine that runs here, at both sizes, every stage timed
        for size in ("1280x720", "1920x1080"):
            cells = [float(c) for c in ran[engine, size]]
            assert len(cells) == 6 and all(c > 0 for c in cells), (engine, size, cells)

    names = [line.split(":")[0] for line in targets.splitlines()]
    assert names == [
        "targets",
        "generator median <= 8 ms at 320x240",
        "whole pipeline >= 60 fps with <= 1 core busy",
        "whole-pipeline frame <= 3x the landmark stage",
        "generator <= 1.3x the landmark stage",
        "daemon CPU at 240p30",
    ]


def test_render_neutral_frame_option(tmp_path, face_image):
    driver = write_video(tmp_path / "driver.mp4", face_image, frames=12, fps=24, size=(300, 350))
    out = tmp_path / "out.mp4"
    ok = cli(
        "render",
        "--driver",
        str(driver),
        "--out",
        str(out),
        "--neutral-frame",
        "5",
        "--width",
        "160",
        "--height",
        "120",
    )
    assert ok.returncode == 0, ok.stderr
    assert len(read_video(out)[0]) == 12
    beyond = cli("render", "--driver", str(driver), "--out", str(out), "--neutral-frame", "40")
    assert beyond.returncode == 1
    assert beyond.stderr.strip() == (
        f"talking-head-cam: --neutral-frame 40: {driver} has fewer frames than that"
    )
    blank = write_video(tmp_path / "blank.mp4", face_image * 0, frames=3, fps=24)
    noface = cli("render", "--driver", str(blank), "--out", str(out), "--neutral-frame", "1")
    assert noface.returncode == 1
    assert f"no face found in that frame of {blank}" in noface.stderr


def test_demo_with_a_driver_shows_it_side_by_side(tmp_path, other_face):
    driver = write_video(tmp_path / "driver.mp4", other_face, frames=12, fps=24, size=(320, 240))
    out = tmp_path / "sbs.mp4"
    result = cli(
        "demo", "--driver", str(driver), "--out", str(out), "--width", "320", "--height", "240"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} (12 frames, 640x240 @ 24 fps)"
    frames, _ = read_video(out)
    assert len(frames) == 12 and frames[0].shape == (240, 640, 3)
    camera = read_video(driver)[0]
    assert mean_abs_diff(frames[5][:, :320], camera[5]) < 12  # the driver, left
    avatar = frames[5][:, 320:]  # the avatar (the whole person slides with the driver):
    assert mean_abs_diff(avatar, mesh_rest_frame(320, 240)) < 0.5 * mean_abs_diff(avatar, camera[5])
    left = [np.ascontiguousarray(f[:, :320]) for f in frames]
    right = [np.ascontiguousarray(f[:, 320:]) for f in frames]
    assert_follows_sideways(face_x(left), face_x(right))  # ... moving with the driver


def test_render_without_a_size_gives_the_portrait_back_pixel_for_pixel(tmp_path, face_image):
    """No --width/--height: the avatar's own size and framing; .mkv is lossless. Driven by
    the avatar itself, the neutral frame (zero motion) is the avatar: ≥ 40 dB in the head
    region. (Later frames move a little: the tracker's landmarks on a still picture drift
    once it tracks instead of detecting.)"""
    import av

    from engines.facegeom import FACE_OVAL, eye_distance
    from engines.landmarks.config import MediaPipeTrackingConfig
    from engines.landmarks.mediapipe_cpu import MediaPipeLandmarks

    avatar = tmp_path / "avatar.png"
    cv2.imwrite(str(avatar), face_image)
    driver = write_video(tmp_path / "driver.mp4", face_image, frames=6, fps=25)
    out = tmp_path / "out.mkv"
    result = cli("render", "--avatar", str(avatar), "--driver", str(driver), "--out", str(out))
    assert result.returncode == 0, result.stderr
    height, width = face_image.shape[:2]
    assert f"{width - width % 2}x{height - height % 2} @ 25 fps" in result.stdout
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "ffv1"
    frames, _ = read_video(out)
    detector = MediaPipeLandmarks(MediaPipeTrackingConfig(), static_images=True)
    points = detector.detect(face_image, 0.0, 0).points
    detector.close()
    hull = cv2.convexHull(points[FACE_OVAL, :2]).reshape(-1, 2)
    center = hull.mean(0)
    grown = (hull - center) * 1.6 + center - (0.0, 0.35 * eye_distance(points))
    head = np.zeros(frames[0].shape[:2], np.uint8)
    cv2.fillConvexPoly(head, np.round(grown).astype(np.int32), 255)
    avatar_pixels = face_image[: frames[0].shape[0], : frames[0].shape[1]].astype(np.float64)
    error = np.mean((frames[0].astype(np.float64) - avatar_pixels)[head > 0] ** 2)
    assert len(frames) == 6 and 10 * np.log10(255**2 / max(error, 1e-9)) >= 40.0
