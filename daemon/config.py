"""The configuration: one pydantic model that is the single source of defaults, validation
and documentation (config.yaml and the README's reference are generated from it).

Loading is done in testable layers: find the file → parse YAML → validate. Validation is
pure; runtime facts (which /dev/videoN, whether a file exists) are resolved afterwards by
the stage that uses them.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tempfile
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from daemon import test_support
from daemon.errors import ConfigError, ConfigFileError
from engines.generator.config import GeneratorConfig, MeshGeneratorConfig, StillGeneratorConfig
from engines.landmarks.config import MediaPipeTrackingConfig, TrackingConfig
from engines.motion.config import MotionConfig
from engines.section import Section

DEFAULT_LABEL = "Talking Head Cam"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_DEVICE_RE = re.compile(r"^/dev/video\d+$")
_TOKEN_RE = re.compile(r"^[!-~]{16,}$")
_NOT_FOUND = "file not found; pass an existing file to --config"
_A_FOLDER = "is a folder; pass a config file (YAML) to --config"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class CaptureConfig(Section):
    """Where the driving video (the person in front of the camera) comes from."""

    source: int | str = Field(
        "auto",
        description="auto (first camera that is not our own virtual camera), a camera index "
        "(0), a device path (/dev/video0), a video file or a still image",
    )
    width: int = Field(1280, ge=16, le=7680, description="requested camera width, pixels")
    height: int = Field(720, ge=16, le=4320, description="requested camera height, pixels")
    fps: float = Field(30, gt=0, le=240, description="requested camera rate, frames per second")
    loop: bool = Field(
        True, description="video file source: start over at its end (false: play once, then idle)"
    )
    retry_max_s: float = Field(
        5.0, gt=0, le=300, description="longest wait between attempts to reopen a lost camera, s"
    )

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: int | str) -> int | str:
        if isinstance(value, bool):
            raise ValueError("expected auto, a camera index, /dev/videoN or a file path")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a camera index is 0 or more")
            return value
        text = value.strip()
        if not text:
            raise ValueError("empty; use auto, a camera index, /dev/videoN or a file path")
        if text.isdigit():
            return int(text)
        if text.startswith("/dev/") and not _DEVICE_RE.match(text):
            raise ValueError(f"{text!r} is not a video device; use /dev/videoN")
        return text


class AvatarConfig(Section):
    """The one image that is animated."""

    image: str = Field(
        "default",
        description="path to a PNG/JPEG avatar image, or 'default' for the embedded one "
        "(Grace Hopper, public domain)",
    )


class OutputConfig(Section):
    """The published video, identical for every sink."""

    width: int = Field(1280, ge=16, le=7680, multiple_of=2, description="output width, pixels")
    height: int = Field(720, ge=16, le=4320, multiple_of=2, description="output height, pixels")
    fps: float = Field(30, gt=0, le=120, description="output rate, frames per second")


class VirtualCamSinkConfig(Section):
    """Publishes to a v4l2loopback device that Zoom, Meet and Chrome can select."""

    type: Literal["virtualcam"]
    device: str = Field(
        "auto", description="auto (our v4l2loopback device, found by its label) or /dev/videoN"
    )
    label: str = Field(
        DEFAULT_LABEL, min_length=1, description="card_label of our v4l2loopback device"
    )
    pixel_format: Literal["I420", "YUYV"] = Field(
        "I420", description="I420 or YUYV (both accepted by Chrome, Zoom and Meet)"
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if value != "auto" and not _DEVICE_RE.match(value):
            raise ValueError(f"{value!r} is not a video device; use auto or /dev/videoN")
        return value


class FileSinkConfig(Section):
    """Records the published video to a file: H.264 in .mp4, lossless FFV1 in .mkv."""

    type: Literal["file"]
    path: str = Field(
        description="output file (.mp4, .mkv, .mov); relative paths are relative to the config file"
    )
    codec: Literal["auto", "h264", "ffv1"] = Field(
        "auto",
        description="auto (by the file's extension: ffv1 for .mkv, else h264), h264 "
        "(what every player plays) or ffv1 (lossless, .mkv)",
    )


class NullSinkConfig(Section):
    """Discards frames (for benchmarks and headless tests)."""

    type: Literal["null"]


SinkConfig = Annotated[
    VirtualCamSinkConfig | FileSinkConfig | NullSinkConfig,
    Field(discriminator="type"),
]
SINK_TYPES = ("virtualcam", "file", "null")


class RemoteConfig(Section):
    """Remote mode: a browser or thin client sends its camera over WebRTC, gets the avatar back."""

    enabled: bool = Field(True, description="accept remote peers (false: preview only)")
    max_peers: int = Field(
        2, ge=1, le=16, description="remote peers at once; one more is refused (503)"
    )
    width: int = Field(
        640, ge=16, le=1920, multiple_of=2, description="a remote peer's avatar video width, pixels"
    )
    height: int = Field(360, ge=16, le=1080, multiple_of=2, description="its height, pixels")
    publish: bool = Field(
        False,
        description="also publish the newest remote peer's avatar to the sinks (the virtual "
        "camera) while it is connected",
    )


class WebConfig(Section):
    """The control page and the WebRTC endpoint, served by the daemon (aiohttp + aiortc)."""

    enabled: bool = Field(True, description="serve the page, the JSON API and WebRTC")
    bind: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on; anything but loopback needs a token",
    )
    port: int = Field(8390, ge=0, le=65535, description="TCP port (0: any free port)")
    token: str | None = Field(
        None,
        description="secret every API and signalling request must carry "
        "(Authorization: Bearer TOKEN); open the page as http://HOST:PORT/#token=TOKEN",
    )
    avatars_dir: str | None = Field(
        None,
        description="the avatar gallery folder (null: $XDG_DATA_HOME/talking-head-cam/avatars)",
    )
    max_upload_mb: float = Field(20, gt=0, le=50, description="largest avatar upload, MiB")
    max_viewers: int = Field(4, ge=1, le=16, description="live previews at once")
    preview_width: int = Field(
        640,
        ge=16,
        le=7680,
        multiple_of=2,
        description="preview video width, pixels (at most the output's)",
    )
    remote: RemoteConfig = Field(default_factory=RemoteConfig)

    def is_loopback(self) -> bool:
        return is_loopback(self.bind)

    @field_validator("token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        # never echo the value: it is a secret and the message goes to the log
        if value is not None and not _TOKEN_RE.match(value):
            raise ValueError(
                "use at least 16 characters without spaces (printable ASCII), "
                "e.g. the output of `openssl rand -hex 24`"
            )
        return value

    @model_validator(mode="after")
    def _remote_needs_a_token(self) -> WebConfig:
        if self.enabled and not self.is_loopback() and not self.token:
            raise ValueError(
                f"bind {self.bind!r} is not a loopback address, so anyone who can reach it "
                "could watch and steer the camera: set web.token to a long random secret "
                "(e.g. `openssl rand -hex 24`) or bind 127.0.0.1"
            )
        return self


def connect_host(bind: str, bound: str | None = None) -> str:
    """The host part of a URL a local client uses to reach a server bound to `bind` (whose
    socket reports the address `bound`)."""
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    host = bound if bound and bind != "localhost" else bind
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1 (no name lookup: validation stays pure)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Config(Section):
    """Talking Head Cam configuration."""

    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    avatar: AvatarConfig = Field(default_factory=AvatarConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    tracking: TrackingConfig = Field(default_factory=MediaPipeTrackingConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    generator: GeneratorConfig = Field(default_factory=MeshGeneratorConfig)
    sinks: list[SinkConfig] = Field(
        default_factory=lambda: [VirtualCamSinkConfig(type="virtualcam")],
        description="where the avatar video goes; several at once, each picked by its type",
    )
    web: WebConfig = Field(default_factory=WebConfig)
    engines: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto",
        description="where the per-frame networks run: auto (cuda where torch sees an NVIDIA "
        "GPU, else cpu; never tensorrt, which has not yet run on real hardware; the choice "
        "and why are logged at start), cpu "
        "(MediaPipe + OpenCV), cuda (torch on an NVIDIA GPU) or tensorrt (engines built from "
        "ONNX on first use, then cached); `talking-head-cam doctor` shows what is available",
    )
    engine_cache_dir: str | None = Field(
        None,
        description="where built TensorRT engines are kept "
        "(null: $XDG_CACHE_HOME/talking-head-cam/engines)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="daemon log level (the log goes to stderr, i.e. journald)"
    )

    @field_validator("sinks", mode="before")
    @classmethod
    def _unquoted_null(cls, value: Any) -> Any:
        """`type: null` unquoted is YAML's null; the user obviously meant the null sink."""
        if isinstance(value, list):
            return [
                {**item, "type": "null"}
                if isinstance(item, Mapping) and "type" in item and item["type"] is None
                else item
                for item in value
            ]
        return value

    @model_validator(mode="after")
    def _unique_file_paths(self) -> Config:
        paths = [s.path for s in self.sinks if isinstance(s, FileSinkConfig)]
        for path in paths:
            if paths.count(path) > 1:
                raise ValueError(f"two file sinks write the same path {path!r}")
        return self


# ---------------------------------------------------------------- finding the file


def packaged_default_path() -> Path:
    """The commented default config shipped inside the package (a copy of config.yaml)."""
    return Path(str(resources.files("daemon") / "default_config.yaml"))


def user_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/talking-head-cam/config.yaml (XDG default: ~/.config)."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "talking-head-cam" / "config.yaml"


def runtime_file_path(suffix: str, env: Mapping[str, str] = os.environ) -> Path:
    """$XDG_RUNTIME_DIR/talking-head-cam-UID{suffix}: where the running daemon leaves its
    PID (.pid) and the URL of its web API (.web.json) for the CLI."""
    runtime = env.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(runtime) / f"talking-head-cam-{os.getuid()}{suffix}"


def find_config_path(
    cli_path: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ
) -> Path:
    """Search order: --config, $XDG_CONFIG_HOME/talking-head-cam/config.yaml, packaged default."""
    if cli_path is not None:
        path = Path(cli_path)
        if path.is_dir():
            raise ConfigFileError(str(path), _A_FOLDER)
        if not path.exists():
            raise ConfigFileError(str(path), _NOT_FOUND)
        if not path.is_file():  # a FIFO or a device: reading it could block forever
            raise ConfigFileError(
                str(path), "is not a regular file; pass a config file (YAML) to --config"
            )
        return path
    user = user_config_path(env)
    return user if user.is_file() else packaged_default_path()


# ---------------------------------------------------------------- parsing and validating


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], yaml.Node | None]:
    """YAML text → (mapping, node tree for line numbers); syntax errors name the line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (no mark)
        line = text[: exc.position].count("\n") + 1
        problem = f"character #x{exc.character:04x} ({exc.reason})"
        raise ConfigError(source, [f"line {line}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(source, [f"{where}: YAML syntax error: {problem}"]) from None
    except RecursionError:
        raise ConfigError(source, ["YAML: nested too deeply to be a config"]) from None
    except ValueError as exc:  # a value YAML parses but Python refuses (a 5000-digit number)
        raise ConfigError(source, [f"YAML: a value cannot be read: {exc}"]) from None
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(source, [f"top level: expected a mapping of sections, got {_kind(data)}"])
    duplicates = duplicate_keys(node)
    if duplicates:
        raise ConfigError(source, duplicates)
    return data, node


def duplicate_keys(root: yaml.Node | None) -> list[str]:
    """Keys written twice in one mapping, each as `key.path: written twice (lines A and B)`:
    PyYAML silently keeps the last, so what the first one set would be lost unseen."""
    found: list[tuple[int, str]] = []
    visited: set[int] = set()  # aliases share nodes: each is walked once (no alias bombs)
    stack: list[tuple[yaml.Node | None, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, (*path, str(i))) for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            found.extend(_twice_in_mapping(node, path))
            stack.extend(
                (value, (*path, key.value))
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode)
            )
    return [problem for _, problem in sorted(found)]


def _twice_in_mapping(node: yaml.MappingNode, path: tuple[str, ...]) -> list[tuple[int, str]]:
    """(line, problem) for each key of this mapping that an earlier key already set."""
    constructor = yaml.constructor.SafeConstructor()
    first_line: dict[Any, int] = {}
    found = []
    for key, value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue  # a merge (`<<: *base`) may be overridden: that is what it is for
        line = key.start_mark.line + 1
        name = constructor.construct_object(key)  # as PyYAML compares them: `1` is `01`
        if name not in first_line:
            first_line[name] = line
            continue
        where = _CONTROL_RE.sub(lambda m: repr(m[0])[1:-1], ".".join((*path, key.value)))
        first = first_line[name]
        lines = f"both on line {line}" if first == line else f"lines {first} and {line}"
        fix = "merge the two into one" if isinstance(value, yaml.MappingNode) else "keep one"
        found.append((line, f"{where}: written twice ({lines}); {fix}"))
    return found


def config_model() -> type[Config]:
    """Config, or with the test support on (daemon/test_support.py) a Config whose sinks
    also take the support's sink types; in normal use those types do not exist."""
    support = test_support.loaded()
    return _config_with_sinks(support.sink_configs if support is not None else ())


@functools.cache
def _config_with_sinks(extra: tuple[type[BaseModel], ...]) -> type[Config]:
    if not extra:
        return Config
    members = (VirtualCamSinkConfig, FileSinkConfig, NullSinkConfig, *extra)
    sinks = Annotated[typing.Union[members], Field(discriminator="type")]  # noqa: UP007
    field = Config.model_fields["sinks"]
    return create_model(
        "Config",
        __base__=Config,
        sinks=(list[sinks], Field(default_factory=field.default_factory)),
    )


def validate_config(
    data: Mapping[str, Any], source: str = "config", node: yaml.Node | None = None
) -> Config:
    """Mapping → Config, or ConfigError listing every problem as `field.path: message`."""
    try:
        return config_model().model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, [_describe(err, data, node) for err in exc.errors()]) from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate one file; relative paths inside it become relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(str(path), _NOT_FOUND) from None
    except IsADirectoryError:
        raise ConfigFileError(str(path), _A_FOLDER) from None
    except OSError as exc:
        raise ConfigFileError(
            str(path), f"cannot read the file ({exc.strerror}); pass a readable file to --config"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            str(path), f"cannot read the file: not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    data, node = parse_yaml(text, str(path))
    return resolve_paths(validate_config(data, str(path), node), path.resolve().parent)


def resolve_paths(config: Config, base: Path) -> Config:
    """Make file paths in the config absolute, relative to `base` (the config's folder)."""

    def absolute(value: str) -> str:
        return value if Path(value).is_absolute() else str((base / value).resolve())

    support = test_support.loaded()
    capture = config.capture
    if (
        support is not None
        and isinstance(capture.source, str)
        and support.claims_source(capture.source)
    ):
        source = support.resolve_source(capture.source, absolute)
        capture = capture.model_copy(update={"source": source})
    elif (
        isinstance(capture.source, str)
        and capture.source != "auto"
        and not capture.source.startswith("/dev/")
    ):
        capture = capture.model_copy(update={"source": absolute(capture.source)})
    avatar = config.avatar
    if avatar.image != "default":
        avatar = avatar.model_copy(update={"image": absolute(avatar.image)})
    sinks = [
        s.model_copy(update={"path": absolute(s.path)}) if isinstance(s, FileSinkConfig) else s
        for s in config.sinks
    ]
    if support is not None:
        sinks = [support.resolve_sink(s, absolute) for s in sinks]
    generator = config.generator
    if isinstance(generator, MeshGeneratorConfig) and generator.background_image:
        generator = generator.model_copy(
            update={"background_image": absolute(generator.background_image)}
        )
    web = config.web
    if web.avatars_dir:
        web = web.model_copy(update={"avatars_dir": absolute(web.avatars_dir)})
    engine_cache = absolute(config.engine_cache_dir) if config.engine_cache_dir else None
    return config.model_copy(
        update={
            "capture": capture,
            "avatar": avatar,
            "sinks": sinks,
            "generator": generator,
            "web": web,
            "engine_cache_dir": engine_cache,
        }
    )


def missing_files(config: Config) -> list[str]:
    """The files a loaded config names that are not there, one problem per field. Not part of
    validation (which stays pure): `check-config` asks for it, while `run` starts anyway and
    reports a missing camera or avatar as it runs."""
    named = [("capture.source", _source_file(config.capture.source))]
    if config.avatar.image != "default":
        named.append(("avatar.image", config.avatar.image))
    generator = config.generator
    if isinstance(generator, MeshGeneratorConfig) and generator.background == "image":
        named.append(("generator.background_image", generator.background_image))
    return [
        f"{field}: {problem}" for field, path in named if (problem := _file_problem(field, path))
    ]


def _source_file(source: int | str) -> str | None:
    """capture.source when it names a file (not a camera, nor a test support source)."""
    if isinstance(source, int) or source == "auto" or source.startswith("/dev/"):
        return None
    support = test_support.loaded()
    return None if support is not None and support.claims_source(source) else source


_MISSING_FILE_FIX = {
    "capture.source": "fix the path, or use auto for a camera",
    "avatar.image": "fix the path or use 'default'",
}


def _file_problem(field: str, path: str | None) -> str | None:
    if path is None or Path(path).is_file():
        return None
    if Path(path).is_dir():
        return f"{path} is a folder; name a file in it"
    return f"{path} not found; {_MISSING_FILE_FIX.get(field, 'fix the path')}"


# ---------------------------------------------------------------- error wording


def _kind(value: Any) -> str:
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true/false",
    }.get(type(value), type(value).__name__)


def _field_path(loc: tuple[Any, ...], data: Mapping[str, Any]) -> tuple[list[str | int], str]:
    """Pydantic's loc minus union tags (e.g. sinks.0.virtualcam.device → sinks.0.device)."""
    parts: list[str | int] = []
    node: Any = data
    for item in loc:
        if (isinstance(node, Mapping) and item in node) or (
            isinstance(node, list) and isinstance(item, int) and item < len(node)
        ):
            node = node[item]
            parts.append(item)
        elif isinstance(node, Mapping) and item in _TAGGED:
            continue  # the discriminator's branch name, not a key the user wrote
        else:
            parts.append(item)
            node = None
    return parts, ".".join(str(p) for p in parts) or "top level"


def _line_of(node: yaml.Node | None, parts: list[str | int]) -> int | None:
    """1-based line of the deepest YAML node on the path (None when unknown)."""
    line = None
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            key, node = match[0]
            line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe(err: Mapping[str, Any], data: Mapping[str, Any], node: yaml.Node | None) -> str:
    parts, where = _field_path(tuple(err["loc"]), data)
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent = parts[:-1]
        allowed = _allowed_keys(parent, data)
        hint = f"; valid keys here: {', '.join(allowed)}" if allowed else ""
        message = f"unknown key{hint}"
    elif kind == "union_tag_invalid":
        message = (
            f"unknown sink type {ctx.get('tag')!r}; expected one of: {', '.join(SINK_TYPES)}"
            if parts and parts[0] == "sinks"
            else f"unknown type {ctx.get('tag')!r}; expected {ctx.get('expected_tags')}"
        )
    elif kind == "union_tag_not_found":
        tags = SINK_TYPES if parts and parts[0] == "sinks" else _section_tags(parts)
        message = f"missing 'type'; expected one of: {', '.join(tags)}"
    elif kind == "missing":
        message = "required but missing"
    elif kind == "literal_error":
        message = f"{value!r} is not allowed; expected {ctx.get('expected')}"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if kind not in {"value_error"} and not isinstance(value, Mapping | list):
            message += f" (got {value!r})"
    line = _line_of(node, parts)
    problem = f"{where}: {message}" + (f" (line {line})" if line else "")
    return _CONTROL_RE.sub(lambda m: repr(m[0])[1:-1], problem)  # one problem, one line


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _section_tags(parts: list[str | int]) -> tuple[str, ...]:
    """The `type` values a tagged section (tracking, generator) accepts."""
    info = Config.model_fields.get(str(parts[0])) if parts else None
    annotation = info.annotation if info is not None else None
    members = typing.get_args(annotation) or (annotation,)
    return tuple(
        typing.get_args(m.model_fields["type"].annotation)[0]
        for m in members
        if isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields
    )


_TAGGED: dict[str, type[BaseModel]] = {
    "virtualcam": VirtualCamSinkConfig,
    "file": FileSinkConfig,
    "null": NullSinkConfig,
    "still": StillGeneratorConfig,
    "mesh": MeshGeneratorConfig,
    "mediapipe": MediaPipeTrackingConfig,
}


def _tagged() -> dict[str, type[BaseModel]]:
    """_TAGGED, plus the test support's sink types when it is on."""
    support = test_support.loaded()
    extra = support.sink_configs if support is not None else ()
    return _TAGGED | {
        m.model_fields["type"].default or typing.get_args(m.model_fields["type"].annotation)[0]: m
        for m in extra
    }


def _allowed_keys(parent: list[str | int], data: Mapping[str, Any]) -> list[str]:
    """Field names of the section at `parent`, to list next to an unknown key."""
    model: type[BaseModel] | None = Config
    value: Any = data
    for part in parent:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return []
        tagged = _tagged()
        if isinstance(value, Mapping) and str(value.get("type")) in tagged:
            model = tagged[str(value["type"])]
        elif model is not None and isinstance(part, str) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            model = annotation if is_section else None
        else:
            model = None
    return sorted(model.model_fields) if model is not None else []
