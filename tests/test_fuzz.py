"""Fuzzing with hypothesis: config documents, avatar images and landmark sidecars from the
wild always give a clear error (the project's own exception, naming the place and the fix)
or a valid result: never another exception, never a hang."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import re
import signal
import struct
import time
import typing
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel

from daemon.config import Config, load_config, parse_yaml, validate_config
from daemon.errors import AvatarError, ConfigError
from engines.generator.avatar import MAX_AVATAR_PIXELS, MIN_AVATAR_SIDE, decode_avatar, load_avatar
from engines.generator.avatar_prep import KEYPOINT_NAMES, load_sidecar, prepare_avatar

FUZZ = settings(
    database=None,  # no .hypothesis folder in the work tree
    derandomize=bool(os.environ.get("CI")),  # CI: the same examples every run
    deadline=None,  # time_limit below is the hang guard; the first examples load libraries
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail an example that runs too long: a Python-level hang raises TimeoutError here;
    one stuck in native code ends the test run with a traceback instead of hanging CI."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    faulthandler.dump_traceback_later(seconds * 4, exit=True)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------- config documents

PARSE_PROBLEM_RE = re.compile(r"^(line \d+: YAML syntax error|YAML|top level): \S")
DUPLICATE_KEY_RE = re.compile(r"^.+: written twice \((lines \d+ and|both on line) \d+\); ")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        [
            "auto",
            "/dev/video0",
            "/dev/sda",
            "0",
            "null",
            "file",
            "virtualcam",
            "mesh",
            "still",
            "mediapipe",
            "#30343c",
            "#zzzzzz",
            "default",
            "I420",
            "info",
            "yes",
            "",
            " ",
            "~",
            "fault:clip.mp4",
        ]
    ),
)
any_value = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), scalars), children, max_size=4),
    ),
    max_leaves=12,
)


def _models(annotation: object) -> list[type[BaseModel]]:
    """The section model(s) a field holds: one class, a tagged union's members, a list's."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def section(model: type[BaseModel]) -> st.SearchStrategy[dict]:
    """Mostly the model's own keys (so validation goes deep), with odd values and keys;
    a tagged member of a union gets its `type`."""
    fields: dict[str, st.SearchStrategy] = {}
    for name, info in model.model_fields.items():
        members = [st.deferred(lambda m=m: section(m)) for m in _models(info.annotation)]
        if typing.get_origin(info.annotation) is list:
            fields[name] = st.one_of(
                st.lists(st.one_of(*members, any_value), max_size=3), any_value
            )
        elif members:
            fields[name] = st.one_of(*members, any_value)
        else:
            fields[name] = st.one_of(scalars, any_value)
    known = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(st.text(min_size=1, max_size=10), any_value, max_size=2)
    tag = model.model_fields.get("type")
    fixed = {"type": typing.get_args(tag.annotation)[0]} if tag is not None else {}
    return st.builds(
        lambda a, b, keep_tag: {**b, **a, **(fixed if keep_tag else {})},
        known,
        st.one_of(st.just({}), extra),
        st.integers(0, 9).map(lambda n: n > 0),  # mostly the right tag
    )


config_documents = section(Config)


def yaml_text(doc: object, flow: bool) -> str:
    return yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True, sort_keys=False)


@st.composite
def mutated_yaml(draw: st.DrawFn) -> str:
    """A YAML text that a person or a half-finished write could leave behind."""
    text = yaml_text(draw(config_documents), draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["truncate", "insert", "duplicate", "anchor", "indent"]))
        at = draw(st.integers(0, len(text)))
        if kind == "truncate":
            text = text[:at]
        elif kind == "insert":
            junk = draw(
                st.one_of(
                    st.sampled_from(
                        [
                            "\t",
                            ":",
                            ": ",
                            "{",
                            "}",
                            "[",
                            "- ",
                            "&a ",
                            "*a",
                            "!!int ",
                            "!!python/x ",
                            "%YAML 1.1\n",
                            "---\n",
                            "...\n",
                            "\x00",
                            "\ufeff",
                            "? ",
                            "<<: *a\n",
                            "'",
                            '"',
                            "#",
                            "\r\n",
                            "@",
                            "`",
                            "|\n",
                            ">-\n",
                        ]
                    ),
                    st.text(max_size=5),
                )
            )
            text = text[:at] + junk + text[at:]
        elif kind == "duplicate":
            lines = text.splitlines(keepends=True)
            if lines:
                line = lines[draw(st.integers(0, len(lines) - 1))]
                text = text + line
        elif kind == "anchor":
            text = "base: &a {width: 64, fps: 5}\n" + text
        else:
            text = "".join("  " + line for line in text.splitlines(keepends=True))
    return text


def check_config_text(text: str) -> Config | None:
    """parse → validate; a ConfigError must list every problem on one line that starts at
    its place: the YAML line, or the key path the user wrote (or `top level`)."""
    with time_limit(5):
        try:
            data, node = parse_yaml(text, "fuzz.yaml")
        except ConfigError as exc:
            assert str(exc).startswith("fuzz.yaml: invalid config\n")
            if all(DUPLICATE_KEY_RE.match(p) for p in exc.problems):  # each key written twice
                assert all("\n" not in p for p in exc.problems), (exc.problems, text)
                return None
            (problem,) = exc.problems
            assert "\n" not in problem and PARSE_PROBLEM_RE.match(problem), (problem, text)
            return None
        try:
            return validate_config(data, "fuzz.yaml", node)
        except ConfigError as exc:
            assert str(exc).startswith("fuzz.yaml: invalid config\n")
            assert exc.problems
            keys = [re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m[0])[1:-1], str(k)) for k in data]
            places = tuple(f"{key}." for key in keys) + tuple(f"{key}: " for key in keys)
            for problem in exc.problems:
                assert "\n" not in problem, problem
                assert problem.startswith(places) or problem.startswith("top level: "), (
                    problem,
                    list(data),
                )
            return None


@settings(FUZZ, max_examples=300)
@given(doc=config_documents, flow=st.booleans())
def test_config_documents_validate_or_name_each_problem(doc: dict, flow: bool) -> None:
    config = check_config_text(yaml_text(doc, flow))
    if config is not None:
        assert isinstance(config, Config)
        assert config.output.width % 2 == 0 and 0 < config.output.fps <= 120


@settings(FUZZ, max_examples=300)
@given(text=mutated_yaml())
def test_mutated_config_text_validates_or_names_each_problem(text: str) -> None:
    check_config_text(text)


@settings(FUZZ, max_examples=60)
@given(data=st.binary(max_size=300))
def test_config_files_of_any_bytes_load_or_fail_clearly(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    try:
        with time_limit(5):
            load_config(path)
    except ConfigError as exc:
        assert exc.source == str(path) and exc.problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("sinks: " + "[" * 3000 + "]" * 3000, "YAML: nested too deeply to be a config"),
        ("a: " + "{a: " * 3000 + "1" + "}" * 3000, "YAML: nested too deeply to be a config"),
        ("capture: {width: 1" + "0" * 5000 + "}", "YAML: a value cannot be read: Exceeds"),
        ("output: {fps: .nan}", "output.fps: Input should be less than or equal to 120"),
        ("capture: {null: 1}", "capture.None: Keys should be strings (got None)"),
        ("capture: !!python/object:os.system {}", "line 1: YAML syntax error: could not"),
        ('capture: {source: "\x1f"}', "line 1: YAML syntax error: character #x001f"),
        ("tracking: {max_faces: 1}", "tracking: missing 'type'; expected one of: mediapipe"),
        ("generator: {map_scale: 1}", "generator: missing 'type'; expected one of: mesh, still"),
        ('capture: {"a\\nb": 1}', "capture.a\\nb: unknown key"),
    ],
)
def test_yaml_oddities_found_by_fuzzing(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info, time_limit(5):
        data, node = parse_yaml(text, "fuzz.yaml")
        validate_config(data, "fuzz.yaml", node)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_alias_bombs_are_refused_quickly() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(7)
    ]
    for target in ("sinks", "capture", "motion"):
        text = "\n".join([*levels, f"{target}: *h"]) + "\n"
        assert check_config_text(text) is None


# ---------------------------------------------------------------- avatar images


def _pil_can(mode: str, fmt: str) -> bool:
    try:
        Image.new(mode, (4, 4)).save(io.BytesIO(), fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


IMAGE_KINDS = [
    (mode, fmt)
    for mode in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1", "CMYK", "I", "F", "YCbCr")
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF", "PPM", "JPEG2000", "TGA", "ICO")
    if _pil_can(mode, fmt)
]


@pytest.fixture(scope="module")
def face_rgb(face_image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(face_image, cv2.COLOR_BGR2RGB)


def encode(face_rgb: np.ndarray, mode: str, fmt: str, size: tuple[int, int], noise: int) -> bytes:
    if noise:
        rgb = np.random.default_rng(noise).integers(0, 256, (size[1], size[0], 3), np.uint8)
    else:
        rgb = cv2.resize(face_rgb, size, interpolation=cv2.INTER_AREA)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def declare_size(data: bytes, width: int, height: int) -> bytes:
    """The same file claiming another size in its header (PNG with a valid CRC, JPEG)."""
    if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
        ihdr = struct.pack(">II", width, height) + data[24:29]
        crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
        return data[:16] + ihdr + crc + data[33:]
    sof = data.find(b"\xff\xc0")
    if data.startswith(b"\xff\xd8") and sof > 0:
        dims = struct.pack(">HH", min(height, 65535), min(width, 65535))
        return data[: sof + 5] + dims + data[sof + 9 :]
    return data


DAMAGES = ("none", "truncate", "flip", "huge", "junk", "cv2-16bit")


@st.composite
def image_bytes(
    draw: st.DrawFn, face_rgb: np.ndarray, min_side: int = 1, damages: tuple[str, ...] = DAMAGES
) -> bytes:
    """An encoded image (a face or noise, any mode and format), maybe damaged."""
    mode, fmt = draw(st.sampled_from(IMAGE_KINDS))
    size = (draw(st.integers(min_side, 260)), draw(st.integers(min_side, 260)))
    data = encode(face_rgb, mode, fmt, size, draw(st.sampled_from([0, 0, 1, 2])))
    damage = draw(st.sampled_from(damages))
    event(f"damage: {damage}")
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        flips = draw(
            st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), max_size=8)
        )
        buffer = bytearray(data)
        for at, bits in flips:
            buffer[at] ^= bits
        data = bytes(buffer)
    elif damage == "huge":
        side = draw(st.sampled_from([7000, 65535, 100_000, 2**31 - 1, 0]))
        data = declare_size(data, side, draw(st.sampled_from([side, 1, 40_000_001])))
    elif damage == "junk":
        data = draw(st.binary(max_size=64)) + data
    elif damage == "cv2-16bit":
        rgb = cv2.resize(face_rgb, size).astype(np.uint16) * 257
        channels = draw(st.sampled_from([1, 3, 4]))
        deep = (
            rgb[:, :, 0]
            if channels == 1
            else (
                rgb if channels == 3 else np.dstack([rgb, np.full(rgb.shape[:2], 40000, np.uint16)])
            )
        )
        data = cv2.imencode(draw(st.sampled_from([".png", ".tiff"])), deep)[1].tobytes()
    return data


def check_avatar(image: np.ndarray) -> None:
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    assert min(image.shape[:2]) >= MIN_AVATAR_SIDE
    assert image.shape[0] * image.shape[1] <= MAX_AVATAR_PIXELS


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_avatar_bytes_decode_or_fail_clearly(face_rgb: np.ndarray, data: st.DataObject) -> None:
    raw = data.draw(image_bytes(face_rgb))
    try:
        with time_limit(10):
            image = decode_avatar(raw, "fuzz.png")
    except AvatarError as exc:
        event("AvatarError")
        assert str(exc).startswith("avatar.image: fuzz.png "), exc
        return
    event("decoded")
    check_avatar(image)


@settings(FUZZ, max_examples=40)
@given(data=st.data(), suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".gif", ".txt", ""]))
def test_avatar_files_with_any_extension_load_or_fail_clearly(
    tmp_path: Path, face_rgb: np.ndarray, data: st.DataObject, suffix: str
) -> None:
    path = tmp_path / f"avatar{suffix}"
    path.write_bytes(data.draw(image_bytes(face_rgb)))
    try:
        with time_limit(10):
            image = load_avatar(str(path))
    except AvatarError as exc:
        assert str(path) in str(exc)
        return
    check_avatar(image)


@settings(FUZZ, max_examples=12)
@given(data=st.data(), suffix=st.sampled_from([".png", ".jpg", ".webp"]))
def test_prepare_avatar_finds_a_face_or_says_what_to_do(
    tmp_path: Path, face_rgb: np.ndarray, data: st.DataObject, suffix: str
) -> None:
    """The whole preparation (FaceMesh with retries, segmentation, plate) on fuzzed files."""
    path = tmp_path / f"avatar{suffix}"
    mostly_whole = image_bytes(face_rgb, 64, ("none", "none", "truncate", "flip", "cv2-16bit"))
    path.write_bytes(data.draw(mostly_whole))
    try:
        with time_limit(30):
            prepared = prepare_avatar(str(path), cache=tmp_path / "cache")
    except AvatarError as exc:
        event("AvatarError: " + str(exc).split(str(path))[-1][:30])
        assert str(path) in str(exc)
        assert "use" in str(exc) or "add" in str(exc) or "scale" in str(exc), exc
        return
    event(f"prepared: {prepared.found_by}")
    check_avatar(prepared.image)
    assert prepared.points.shape == (478, 3) and np.isfinite(prepared.points).all()
    assert prepared.person.shape == prepared.image.shape[:2]
    assert prepared.plate.shape == prepared.image.shape


def test_avatar_path_with_a_nul_character_is_an_avatar_error(tmp_path: Path) -> None:
    """Found by fuzzing: a NUL in `avatar.image` raised ValueError, which a reload did not
    catch (the daemon died); now it is a clear AvatarError."""
    with pytest.raises(AvatarError, match="not a usable path"):
        load_avatar(f"{tmp_path}/a\0b.png")
    with pytest.raises(AvatarError, match="not a usable path"):
        prepare_avatar(f"{tmp_path}/a\0b.png", cache=tmp_path)


# ---------------------------------------------------------------- landmark sidecars

SHAPE = (480, 640, 3)
coordinate = st.one_of(
    st.floats(-50, 700),
    st.integers(-50, 700),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
point = st.lists(coordinate, min_size=0, max_size=4)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=15,
)
README_KEYPOINTS = [[182, 240], [298, 238], [240, 300], [196, 362], [284, 360]]
near_face = st.lists(st.tuples(st.floats(-40, 40), st.floats(-40, 40)), min_size=5, max_size=5).map(
    lambda jitter: [
        [x + dx, y + dy] for (x, y), (dx, dy) in zip(README_KEYPOINTS, jitter, strict=True)
    ]
)
plausible = st.one_of(
    near_face.map(lambda pts: {"points": pts}),
    near_face.map(lambda pts: dict(zip(KEYPOINT_NAMES, pts, strict=True))),
    st.lists(st.tuples(st.floats(0, 639), st.floats(0, 479)), min_size=5, max_size=5).map(
        lambda pts: {"points": [list(p) for p in pts]}
    ),
    st.integers(0, 2**32).map(  # all 478 points, somewhere in the image
        lambda seed: {
            "points": (np.random.default_rng(seed).random((478, 3)) * [639, 479, 50])
            .round(2)
            .tolist()
        }
    ),
)
sidecar_docs = st.one_of(
    plausible,
    plausible,
    st.fixed_dictionaries(
        {
            "points": st.one_of(
                st.lists(point, min_size=4, max_size=6),
                st.lists(point, max_size=3),
                st.just([[320.0, 240.0, 0.0]] * 478),
                json_values,
            )
        }
    ),
    st.fixed_dictionaries(
        {}, optional={name: st.one_of(point, json_values) for name in KEYPOINT_NAMES}
    ),
    st.lists(point, min_size=5, max_size=5),
    json_values,
)


@st.composite
def sidecar_text(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(sidecar_docs), allow_nan=True).encode()
    kind = draw(st.sampled_from(["as is", "as is", "truncate", "deep", "bytes"]))
    if kind == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif kind == "deep":
        depth = draw(st.integers(10, 200_000))
        text = b'{"points": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "bytes":
        text = draw(st.binary(max_size=40))
    return text


@settings(FUZZ, max_examples=200)
@given(text=sidecar_text())
def test_sidecars_give_points_or_a_clear_error(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "avatar.png.landmarks.json"
    path.write_bytes(text)
    try:
        with time_limit(10):
            points, how = load_sidecar(path, SHAPE)
    except AvatarError as exc:
        event("AvatarError")
        assert str(exc).startswith(f"{path}: "), exc
        return
    event(how)
    assert points.shape == (478, 3) and points.dtype == np.float32
    assert np.isfinite(points).all()
    assert how.startswith("sidecar (")


def test_a_good_five_point_sidecar_is_fitted(tmp_path: Path) -> None:
    """The fuzzers' success path exists: the README's example fits."""
    path = tmp_path / "avatar.png.landmarks.json"
    doc = {
        "right_eye": [182, 240],
        "left_eye": [298, 238],
        "nose_tip": [240, 300],
        "mouth_right": [196, 362],
        "mouth_left": [284, 360],
    }
    path.write_text(json.dumps(doc))
    points, how = load_sidecar(path, SHAPE)
    assert how == "sidecar (5 key points, template fitted)"
    assert np.abs(points[468, :2] - [182, 240]).max() < 15


# ---------------------------------------------------------------- HTTP API payloads


class WebDaemon:
    """A daemon process with its web API on a free port (gallery and caches in tmp)."""

    def __init__(self, folder: Path):
        from conftest import DaemonProcess, NotifySocket

        self.runtime = folder / "run"
        self.runtime.mkdir(parents=True)
        config = folder / "config.yaml"
        config.write_text(
            "capture: {source: /dev/video99, retry_max_s: 1}\n"
            "output: {width: 160, height: 120, fps: 15}\n"
            "sinks: [{type: 'null'}]\n"
            "web: {port: 0, avatars_dir: gallery, max_upload_mb: 1}\n"
        )
        env = {
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CACHE_HOME": str(folder / "cache"),
            "XDG_DATA_HOME": str(folder / "data"),
            "XDG_CONFIG_HOME": str(folder / "xdg-config"),
            "WATCHDOG_USEC": "1000000",
        }
        self.notify = NotifySocket(folder / "notify.sock")
        self.process = DaemonProcess(config, self.notify, env)
        self.notify.wait_for("READY=1", timeout_s=60)
        web_file = self.runtime / f"talking-head-cam-{os.getuid()}.web.json"
        deadline = time.monotonic() + 30
        while not web_file.is_file():
            assert time.monotonic() < deadline, self.process.log()
            time.sleep(0.05)
        self.url = json.loads(web_file.read_text())["url"].rstrip("/")

    def request(self, method: str, path: str, body: bytes | None, content_type: str):
        headers = {"Content-Type": content_type} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=20) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()

    def close(self) -> int:
        code = self.process.stop()
        self.notify.close()
        return code


@pytest.fixture(scope="module")
def web_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    pytest.importorskip("aiohttp")
    daemon = WebDaemon(tmp_path_factory.mktemp("web-fuzz"))
    yield daemon
    assert daemon.close() == 0, daemon.process.log()


names = st.one_of(
    st.sampled_from(["a", "me", "default", "x" * 70, "..", ".hidden", "a.png", "a/b", "%00"]),
    st.text(min_size=1, max_size=12),
)
settings_bodies = st.one_of(
    st.builds(
        lambda motion, generator, extra: {**extra, "motion": motion, "generator": generator},
        any_value,
        any_value,
        st.dictionaries(st.text(max_size=8), any_value, max_size=2),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "motion": st.fixed_dictionaries(
                {},
                optional={
                    "gains": st.dictionaries(
                        st.sampled_from(["pose", "mouth", "x"]), scalars, max_size=3
                    )
                },
            ),
            "generator": st.dictionaries(
                st.sampled_from(["background", "background_color", "type", "map_scale"]),
                scalars,
                max_size=3,
            ),
            "avatar": any_value,
        },
    ),
    any_value,
)
sdp = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda a, b: f"v=0\r\n{a}\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n{b}",
        st.text(max_size=30),
        st.text(max_size=30),
    ),
)
offers = st.one_of(
    st.fixed_dictionaries(
        {"sdp": sdp, "type": st.sampled_from(["offer", "answer", 1, None])},
        optional={"avatar": st.one_of(names, any_value)},
    ),
    any_value,
)


@st.composite
def api_requests(draw: st.DrawFn, face_rgb: np.ndarray) -> tuple[str, str, bytes | None, str]:
    """(method, path, body, content type) of one request a page, a script or a fuzzer sends."""
    quote = lambda text: urllib.parse.quote(text, safe="")  # noqa: E731
    kind = draw(st.sampled_from(["settings", "upload", "use", "delete", "offer", "peer", "any"]))
    as_json = lambda value: json.dumps(value, allow_nan=True).encode()  # noqa: E731
    if kind == "settings":
        return "PATCH", "/api/settings", as_json(draw(settings_bodies)), "application/json"
    if kind == "upload":
        body = draw(st.one_of(image_bytes(face_rgb), st.binary(max_size=200)))
        kind_header = draw(st.sampled_from(["image/png", "image/jpeg", "text/plain", ""]))
        return "PUT", f"/api/avatars/{quote(draw(names))}", body, kind_header
    if kind == "use":
        return "POST", f"/api/avatars/{quote(draw(names))}/use", None, ""
    if kind == "delete":
        return "DELETE", f"/api/avatars/{quote(draw(names))}", None, ""
    if kind == "offer":
        path = draw(st.sampled_from(["/api/preview", "/api/remote"]))
        return "POST", path, as_json(draw(offers)), "application/json"
    if kind == "peer":
        method = draw(st.sampled_from(["PATCH", "DELETE"]))
        return (
            method,
            f"/api/peers/{quote(draw(names))}",
            as_json(draw(any_value)),
            "application/json",
        )
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
    path = draw(
        st.sampled_from(
            [
                "/api/status",
                "/api/settings",
                "/api/calibrate",
                "/api/avatars",
                "/api/nothing",
                "/api/avatars/a/image",
            ]
        )
    )
    body = draw(st.one_of(st.none(), st.binary(max_size=50), st.just(b"{"), st.just(b"[]")))
    return method, path, body, draw(st.sampled_from(["application/json", "text/plain", ""]))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_http_api_payloads_get_a_clear_answer(
    web_daemon: WebDaemon, face_rgb: np.ndarray, data: st.DataObject
) -> None:
    """Whatever arrives, the answer comes in time, is never a server error, and an error is
    JSON {"error": message}; the daemon keeps running."""
    method, path, body, content_type = data.draw(api_requests(face_rgb))
    event(f"{method} {path.split('/')[2]}")
    with time_limit(25):
        status, kind, payload = web_daemon.request(method, path, body, content_type)
    event(f"status {status // 100}xx")
    assert status < 500, (method, path, body[:200] if body else body, status, payload[:300])
    if status >= 400:
        assert "json" in kind and json.loads(payload).get("error"), (status, payload[:300])
    assert web_daemon.process.proc.poll() is None, web_daemon.process.log()


def test_the_web_daemon_kept_publishing_through_the_fuzzing(web_daemon: WebDaemon) -> None:
    status, _, payload = web_daemon.request("GET", "/api/status", None, "")
    assert status == 200 and json.loads(payload)["frames_published"] > 0
    at = len(web_daemon.notify.texts())
    web_daemon.notify.wait_for("WATCHDOG=1", after=at, timeout_s=5)  # frames still flow
    assert "Traceback" not in web_daemon.process.log()
