"""Bad input on the command line or in the config gets one clear line (exit 2, or 1 for what
only running finds) that names the argument or the config field and the fix; never a
traceback, never argparse's usage block. Through the real CLI, in a child process."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from conftest import TEST_SUPPORT, TESTS_DIR, write_video

from daemon.cli_args import seconds, whole_number
from daemon.config import ConfigError, load_config, missing_files, parse_yaml, validate_config

REPO = TESTS_DIR.parent
PATH = {"PYTHONPATH": f"{REPO}{os.pathsep}{TESTS_DIR}"}
FOLDER_PROBLEM = "is a folder; pass a config file (YAML) to --config"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m daemon ARGS` (or `-m thc_tools` when ARGS start with it), from the repo."""
    module = ["-m", *args] if args[0] == "thc_tools" else ["-m", "daemon", *args]
    return subprocess.run(
        [sys.executable, *module],
        cwd=REPO,
        env={**os.environ, **PATH, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """The one stderr line of a failed command, checked for its exit code and names."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- numbers on the command line


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e308", "eight"])
def test_demo_seconds_must_be_a_finite_positive_length(value, tmp_path):
    result = run("demo", "--seconds", value, "--out", str(tmp_path / "d.mp4"))
    line = one_line(result, 2, "--seconds", repr(value))
    assert line.startswith("talking-head-cam demo: argument --seconds: expected seconds above 0")
    assert not (tmp_path / "d.mp4").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--frames", "0"),
        ("--frames", "-1"),
        ("--frames", "2.5"),
        ("--paced-s", "-1"),
        ("--paced-s", "nan"),
        ("--paced-s", "inf"),
        ("--warp-runs", "-1"),
        ("--skimage-runs", "-3"),
        ("--engine-frames", "-1"),
        ("--engine-frames", "nan"),
    ],
)
def test_bench_numbers_are_checked_before_anything_runs(option, value):
    result = run("thc_tools", "bench", option, value)
    one_line(result, 2, f"argument {option}:", repr(value), "python -m thc_tools bench")


def test_render_neutral_frame_and_output_size_name_their_argument(tmp_path, face_image):
    driver = str(write_video(tmp_path / "d.mp4", face_image, frames=2, fps=10))
    out = str(tmp_path / "o.mp4")
    one_line(
        run("render", "--driver", driver, "--out", out, "--neutral-frame", "-1"),
        2,
        "--neutral-frame",
    )
    line = one_line(run("render", "--driver", driver, "--out", out, "--width", "641"), 2, "--width")
    assert "multiple of 2" in line and "output.width" not in line
    line = one_line(run("demo", "--height", "0", "--out", out), 2, "--height")
    assert "greater than or equal to 16" in line
    assert not Path(out).exists()


def test_number_types_accept_what_they_should():
    assert whole_number(0)("0") == 0 and whole_number(1)("300") == 300
    assert seconds(zero_ok=True)("0") == 0.0
    assert seconds(zero_ok=False, maximum=10)("2.5") == 2.5
    for parse, text in [
        (whole_number(1), "0"),
        (seconds(zero_ok=False), "0"),
        (seconds(zero_ok=True), "-0.5"),
        (seconds(zero_ok=True, maximum=10), "10.5"),
        (seconds(zero_ok=True), str(math.nan)),
    ]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)


# ---------------------------------------------------------------- avatar prepare --out


@pytest.fixture
def face_file(tmp_path, face_image) -> Path:
    path = tmp_path / "face.png"
    assert cv2.imwrite(str(path), face_image)
    return path


@pytest.mark.parametrize("name", ["x.foo", "noextension"])
def test_prepare_out_of_a_type_opencv_cannot_write_says_use_png(name, tmp_path, face_file):
    out = tmp_path / name
    line = one_line(run("avatar", "prepare", str(face_file), "--out", str(out)), 2, "--out")
    assert line.endswith("use .png (or .jpg)")
    assert not out.exists()


def test_prepare_out_in_a_missing_folder_or_a_folder_names_out(tmp_path, face_file):
    out = tmp_path / "nowhere" / "x.png"
    line = one_line(run("avatar", "prepare", str(face_file), "--out", str(out)), 2, "--out")
    assert f"the folder {out.parent} does not exist; create it" in line
    line = one_line(run("avatar", "prepare", str(face_file), "--out", str(tmp_path)), 2, "--out")
    assert "is a folder" in line


# ---------------------------------------------------------------- --config that is no file


def test_config_naming_a_folder_is_one_line_naming_config(tmp_path):
    for args in (["--config", str(tmp_path), "demo"], ["check-config", "--config", str(tmp_path)]):
        line = one_line(run(*args), 2, "--config")
        assert line == f"talking-head-cam: {tmp_path}: {FOLDER_PROBLEM}"
    one_line(run("check-config", str(tmp_path)), 2, FOLDER_PROBLEM)
    one_line(run("thc_tools", "--config", str(tmp_path), "bench"), 2, FOLDER_PROBLEM)


def test_config_that_is_missing_or_not_a_regular_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    line = one_line(run("--config", str(missing), "check-config"), 2, "--config")
    assert line == f"talking-head-cam: {missing}: file not found; pass an existing file to --config"
    fifo = tmp_path / "config.fifo"  # reading it would block forever
    os.mkfifo(fifo)
    one_line(run("--config", str(fifo), "run"), 2, "is not a regular file", "--config")


def test_config_that_is_not_utf8_is_one_line(tmp_path):
    binary = write_config(tmp_path / "c.yaml", "")
    binary.write_bytes(b"\xff\xfe\x00garbage")
    line = one_line(run("--config", str(binary), "check-config"), 2, str(binary))
    assert line.endswith("cannot read the file: not UTF-8 text (byte 0); save it as UTF-8")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_unreadable_config_is_one_line_naming_config(tmp_path):
    config = write_config(tmp_path / "c.yaml", "sinks: [{type: null}]\n")
    config.chmod(0)
    line = one_line(run("--config", str(config), "check-config"), 2, "--config")
    assert "cannot read the file (Permission denied)" in line


def test_unreadable_config_names_the_reason_and_config(tmp_path, monkeypatch):
    config = write_config(tmp_path / "c.yaml", "sinks: [{type: null}]\n")

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # the OS refusing (we may run as root)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}: cannot read the file (Permission denied); pass a readable file to --config"
    )


# ---------------------------------------------------------------- the right name in messages


def test_missing_background_image_is_named_as_itself(tmp_path):
    background = tmp_path / "bg.png"
    config = write_config(
        tmp_path / "c.yaml",
        f"generator: {{type: mesh, background: image, background_image: {background}}}\n"
        "sinks: [{type: null}]\n",
    )
    args = ("--width", "64", "--height", "64", "--seconds", "0.1", "--out", str(tmp_path / "d.mp4"))
    line = one_line(run("demo", "--config", str(config), *args), 1)
    assert line == (
        f"talking-head-cam: generator.background_image: {background} not found; fix the path"
    )


def test_render_driver_problems_name_driver(tmp_path):
    out = str(tmp_path / "o.mp4")
    missing = tmp_path / "missing.mp4"
    line = one_line(run("render", "--driver", str(missing), "--out", out), 1)
    assert line == f"talking-head-cam: video file {missing} not found; fix --driver"
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01garbage" * 1000)
    result = run("render", "--driver", str(garbage), "--out", out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # FFmpeg's own diagnosis ("moov atom not found") may come first, from native code
    assert result.stderr.splitlines()[-1] == (
        f"talking-head-cam: cannot decode video file {garbage}; "
        "use an MP4/MKV/AVI file for --driver"
    )
    line = one_line(run("thc_tools", "eval", "--driver", str(missing)), 1)
    assert line == f"eval: video file {missing} not found; fix --driver"


# ---------------------------------------------------------------- keys written twice


def duplicate_problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_yaml(text, "c.yaml")
    return info.value.problems


def test_a_section_written_twice_names_the_key_and_both_lines():
    text = "output: {fps: 25}\ncapture: {fps: 30}\noutput:\n  width: 640\n"
    assert duplicate_problems(text) == [
        "output: written twice (lines 1 and 3); merge the two into one"
    ]


def test_any_key_written_twice_is_found_wherever_it_is():
    text = (
        "capture:\n"
        "  width: 640\n"
        "  height: 480\n"
        "  width: 320\n"
        "sinks:\n"
        "  - {type: file, path: a.mp4, path: b.mp4}\n"
        "log_level: info\n"
        "1: x\n"
        "01: y\n"  # the same key to YAML (an octal 1): the dict would keep one
    )
    assert duplicate_problems(text) == [
        "capture.width: written twice (lines 2 and 4); keep one",
        "sinks.0.path: written twice (both on line 6); keep one",
        "01: written twice (lines 8 and 9); keep one",
    ]


def test_merges_and_aliases_are_not_duplicates():
    text = (
        "base: &out {width: 640, fps: 25}\n"
        "output:\n"
        "  <<: *out\n"
        "  fps: 30\n"  # overriding a merged key is what merges are for
        "web: &web {port: 8390}\n"
        "copy: *web\n"
    )
    data, _ = parse_yaml(text, "c.yaml")
    assert data["output"] == {"width": 640, "fps": 30}


def test_check_config_reports_a_section_written_twice(tmp_path):
    config = write_config(
        tmp_path / "c.yaml", "output: {width: 640}\nsinks: [{type: null}]\noutput: {fps: 25}\n"
    )
    result = run("check-config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"talking-head-cam: {config}: invalid config",
        "  output: written twice (lines 1 and 3); merge the two into one",
    ]


# ---------------------------------------------------------------- --config after the command


@pytest.mark.parametrize(
    "command",
    [
        ["run"],
        ["check-config"],
        ["render", "--driver", "d.mp4", "--out", "o.mp4"],
        ["demo"],
        ["status"],
        ["avatar", "list"],
        ["avatar", "use", "default"],
        ["engines"],
        ["thc_tools", "bench"],
        ["thc_tools", "eval", "--driver", "d.mp4"],
    ],
)
def test_config_after_the_command_is_used(command, tmp_path):
    result = run(*command, "--config", str(tmp_path))  # a folder: refused as --config
    one_line(result, 2, f"{tmp_path}: {FOLDER_PROBLEM}")


def test_config_after_the_command_loads_that_file(tmp_path):
    config = write_config(tmp_path / "c.yaml", "sinks: [{type: null}]\n")
    result = run("check-config", "--config", str(config))
    assert (result.returncode, result.stdout.strip()) == (0, f"{config}: valid")
    result = run("doctor", "--config", str(config))
    assert f"config: {config} is valid" in result.stdout
    result = run("--config", str(config), "check-config")  # before the command, as ever
    assert (result.returncode, result.stdout.strip()) == (0, f"{config}: valid")


def test_calibrate_takes_config_after_the_command(tmp_path):
    config = write_config(tmp_path / "c.yaml", "web: {enabled: false}\n")
    result = run("calibrate", "--config", str(config), env={"XDG_RUNTIME_DIR": str(tmp_path)})
    one_line(result, 1, "the daemon is not running", str(tmp_path))  # parsed, not a usage error


def test_config_given_before_and_after_must_agree(tmp_path):
    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    one_line(run("--config", a, "demo", "--config", b), 2, "--config", "given twice", a, b)
    one_line(run("thc_tools", "--config", a, "bench", "--config", b), 2, "given twice")
    one_line(run("check-config", a, "--config", b), 2, "give one")


def test_readme_says_config_goes_before_or_after_the_command():
    readme = (REPO / "README.md").read_text()
    assert "`--config FILE` goes before the command." not in readme
    assert "`--config FILE` may go before or after the command" in readme


# ---------------------------------------------------------------- check-config and files


def test_check_config_rejects_the_test_support_sink_without_the_switch(tmp_path):
    config = write_config(tmp_path / "c.yaml", "sinks: [{type: fault, control: x}]\n")
    result = run("check-config", str(config))
    assert result.returncode == 2
    assert (
        "  sinks.0: unknown sink type 'fault'; expected one of: virtualcam, file, null (line 1)"
        in result.stderr.splitlines()
    )
    result = run("check-config", str(config), env=TEST_SUPPORT)
    assert (result.returncode, result.stdout.strip()) == (0, f"{config}: valid"), result.stderr


def test_check_config_finds_a_fault_source_a_missing_file_without_the_switch(tmp_path):
    config = write_config(
        tmp_path / "c.yaml", 'capture: {source: "fault:clip.mp4"}\nsinks: [{type: null}]\n'
    )
    result = run("check-config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"talking-head-cam: {config}: invalid config",
        f"  capture.source: {tmp_path / 'fault:clip.mp4'} not found; "
        "fix the path, or use auto for a camera",
    ]
    result = run("check-config", str(config), env=TEST_SUPPORT)  # the support's own source
    assert (result.returncode, result.stdout.strip()) == (0, f"{config}: valid"), result.stderr


def test_check_config_names_each_missing_file(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        "capture: {source: clips/talk.mp4}\n"
        "avatar: {image: me.png}\n"
        "generator: {type: mesh, background: image, background_image: bg.jpg}\n"
        "sinks: [{type: null}]\n",
    )
    result = run("check-config", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[1:] == [
        f"  capture.source: {tmp_path / 'clips' / 'talk.mp4'} not found; "
        "fix the path, or use auto for a camera",
        f"  avatar.image: {tmp_path / 'me.png'} not found; fix the path or use 'default'",
        f"  generator.background_image: {tmp_path / 'bg.jpg'} not found; fix the path",
    ]
    (tmp_path / "clips").mkdir()
    for name in ("clips/talk.mp4", "me.png", "bg.jpg"):
        (tmp_path / name).write_bytes(b"there")  # only existence is checked up front
    result = run("check-config", "--config", str(config))
    assert (result.returncode, result.stdout.strip()) == (0, f"{config}: valid"), result.stderr


def test_file_checks_leave_cameras_and_defaults_alone_and_validation_pure(tmp_path):
    for source in ("auto", 0, "/dev/video7"):
        config = validate_config({"capture": {"source": source}, "avatar": {"image": "default"}})
        assert missing_files(config) == []
    folder = validate_config({"avatar": {"image": str(tmp_path)}})
    assert missing_files(folder) == [f"avatar.image: {tmp_path} is a folder; name a file in it"]
    # validation itself never looks at the disk: the daemon starts and reports at runtime
    absent = validate_config({"avatar": {"image": str(tmp_path / "nope.png")}})
    assert absent.avatar.image == str(tmp_path / "nope.png")
