"""Config: the exact messages of validation errors, the search order, the generated docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import (
    Config,
    ConfigError,
    FileSinkConfig,
    NullSinkConfig,
    find_config_path,
    load_config,
    packaged_default_path,
)
from daemon.config_doc import render_config_yaml, render_reference_markdown

REPO = Path(__file__).resolve().parents[1]


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_wrong_types_are_listed_with_path_value_and_line(tmp_path):
    assert problems(tmp_path, "capture:\n  width: wide\n  fps: 0\n") == [
        "capture.width: Input should be a valid integer, unable to parse string as an integer "
        "(got 'wide') (line 2)",
        "capture.fps: Input should be greater than 0 (got 0) (line 3)",
    ]


def test_unknown_keys_name_the_valid_ones(tmp_path):
    assert problems(tmp_path, "outptu: {}\ncapture: {sorce: 0}\n") == [
        "capture.sorce: unknown key; valid keys here: fps, height, loop, retry_max_s, source, "
        "width (line 2)",
        "outptu: unknown key; valid keys here: avatar, capture, engine_cache_dir, engines, "
        "generator, log_level, motion, output, sinks, tracking, web (line 1)",
    ]


def test_nested_sections_are_checked_too(tmp_path):
    text = "motion:\n  gains: {mouth: -1, nose: 2}\n  limits: {yaw_deg: 91}\n"
    assert problems(tmp_path, text) == [
        "motion.gains.mouth: Input should be greater than or equal to 0 (got -1) (line 2)",
        "motion.gains.nose: unknown key; valid keys here: expression, eyes, mouth, pose (line 2)",
        "motion.limits.yaw_deg: Input should be less than or equal to 90 (got 91) (line 3)",
    ]


def test_bad_enum_and_unknown_sink_type(tmp_path):
    text = (
        "log_level: loud\nsinks:\n  - {type: virtualcam, pixel_format: RGB24}\n"
        "  - {type: webcam}\n  - {path: x.mp4}\n"
    )
    assert problems(tmp_path, text) == [
        "sinks.0.pixel_format: 'RGB24' is not allowed; expected 'I420' or 'YUYV' (line 3)",
        "sinks.1: unknown sink type 'webcam'; expected one of: virtualcam, file, null (line 4)",
        "sinks.2: missing 'type'; expected one of: virtualcam, file, null (line 5)",
        "log_level: 'loud' is not allowed; expected 'debug', 'info', 'warning' or 'error' (line 1)",
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    found = problems(
        tmp_path,
        "output: {width: 641, height: -2}\nsinks: [{type: file}]\ncapture: {source: /dev/sda}\n",
    )
    assert found == [
        "capture.source: '/dev/sda' is not a video device; use /dev/videoN (line 3)",
        "output.width: Input should be a multiple of 2 (got 641) (line 1)",
        "output.height: Input should be greater than or equal to 16 (got -2) (line 1)",
        "sinks.0.path: required but missing (line 2)",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path):
    assert problems(tmp_path, "capture:\n  width: 1\n fps: [\n") == [
        "line 3: YAML syntax error: expected <block end>, but found '<block mapping start>'"
    ]


def test_top_level_must_be_a_mapping(tmp_path):
    assert problems(tmp_path, "- capture\n") == [
        "top level: expected a mapping of sections, got a list"
    ]


def test_missing_file_is_an_error_naming_the_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        find_config_path(tmp_path / "nope.yaml")
    assert info.value.problems == ["file not found; pass an existing file to --config"]
    assert str(tmp_path / "nope.yaml") in str(info.value)


def test_unquoted_null_sink_type_means_the_null_sink(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sinks:\n  - type: null\n")
    assert load_config(path).sinks == [NullSinkConfig(type="null")]


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text(
        "avatar: {image: me.png}\ncapture: {source: clip.mp4}\n"
        "sinks: [{type: file, path: out/live.mp4}]\n"
    )
    config = load_config(path)
    assert config.avatar.image == str(tmp_path / "sub" / "me.png")
    assert config.capture.source == str(tmp_path / "sub" / "clip.mp4")
    assert config.sinks == [FileSinkConfig(type="file", path=str(tmp_path / "sub/out/live.mp4"))]


def test_camera_sources_stay_as_written(tmp_path):
    for text, expected in (("0", 0), ("'2'", 2), ("/dev/video4", "/dev/video4"), ("auto", "auto")):
        path = tmp_path / "c.yaml"
        path.write_text(f"capture: {{source: {text}}}\n")
        assert load_config(path).capture.source == expected


def test_search_order_cli_then_xdg_then_packaged(tmp_path):
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path)}
    assert find_config_path(None, env) == packaged_default_path()
    user = xdg / "talking-head-cam" / "config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("log_level: debug\n")
    assert find_config_path(None, env) == user
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("")
    assert find_config_path(explicit, env) == explicit


def test_packaged_default_is_config_yaml_and_equals_the_model_defaults():
    assert packaged_default_path().read_text() == (REPO / "config.yaml").read_text()
    assert load_config(REPO / "config.yaml") == Config()


def test_config_yaml_and_readme_are_generated_from_the_model():
    assert (REPO / "config.yaml").read_text() == render_config_yaml(), "run `make config`"
    assert render_reference_markdown() in (REPO / "README.md").read_text(), (
        "paste `talking-head-cam config-doc --markdown` into README.md"
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_exit_codes_and_messages(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("capture: {fps: fast}\n")
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"talking-head-cam: {bad}: invalid config",
        "  capture.fps: Input should be a valid number, unable to parse string as a number "
        "(got 'fast') (line 1)",
    ]
    good = tmp_path / "good.yaml"
    good.write_text("output: {fps: 25}\n")
    result = run_cli("check-config", str(good))
    assert (result.returncode, result.stdout.strip()) == (0, f"{good}: valid")


def test_run_with_invalid_config_exits_2_without_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sinks: [{type: virtualcam, device: video0}]\n")
    result = run_cli("--config", str(bad), "run")
    assert result.returncode == 2
    assert (
        "sinks.0.device: 'video0' is not a video device; use auto or /dev/videoN (line 1)"
        in result.stderr
    )
    assert "starting" not in result.stderr
