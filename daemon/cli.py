"""`talking-head-cam`: run | status | render | demo | calibrate | avatar | doctor | ...

Exit codes: 0 fine, 1 a runtime problem (message on stderr), 2 a config or usage error
(systemd's RestartPreventExitStatus=2 keeps a hopeless config from restart-looping).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from daemon import test_support
from daemon.cli_args import (
    OneLineParser,
    add_config_after,
    merge_config_after,
    seconds,
    whole_number,
)
from daemon.config import (
    Config,
    connect_host,
    find_config_path,
    load_config,
    missing_files,
    runtime_file_path,
    validate_config,
)
from daemon.errors import (
    AvatarError,
    ConfigError,
    DaemonNotRunning,
    TalkingHeadCamError,
    UsageError,
)
from daemon.native_stderr import filter_native_stderr
from engines import progress

log = logging.getLogger(__name__)

MAX_DEMO_S = 3600.0  # --seconds: an hour of demo is plenty (and seconds × fps stays finite)


def setup_logging(level: str = "info", progress_lines: bool = False) -> None:
    """Log to stderr; under systemd (JOURNAL_STREAM set) journald adds the timestamps. With
    `progress_lines` a long command's progress shows off a terminal (engines.progress logs it
    at info) even when the level is higher."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    if progress_lines:
        logging.getLogger(progress.__name__).setLevel(logging.INFO)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: errors only
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_config_arg(config_arg: str | None) -> Config:
    return load_config(find_config_path(config_arg))


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.service import Daemon

    config = load_config_arg(args.config)
    setup_logging(config.log_level)
    code = Daemon(config, args.config).run()
    # Everything is closed by now: skip the interpreter's teardown (native graphs' destructors
    # and finalizers), so a SIGTERM ends the process well within systemd's second.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the file, and check that the files it names are there (`run` would start
    without them and report them as it runs)."""
    if args.file and args.config and args.file != args.config:
        raise UsageError(
            f"check-config: two files ({args.file} and --config {args.config}); give one"
        )
    path = find_config_path(args.file or args.config)
    problems = missing_files(load_config(path))
    if problems:
        raise ConfigError(str(path), problems)
    print(f"{path}: valid")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from daemon.render import at_avatar_size, render_video

    config = override_output(load_config_arg(args.config), args)
    if args.width is None and args.height is None:  # the avatar back, one pixel per pixel
        config = at_avatar_size(config)
    print(render_video(config, args.driver, Path(args.out), args.neutral_frame))
    return 0


def cmd_avatar_prepare(args: argparse.Namespace) -> int:
    """Prepare an avatar (landmarks, person mask, background plate) and draw what was found."""
    import cv2

    from engines.generator.avatar_prep import overlay, prepare_avatar
    from engines.generator.mesh import build_mesh

    out = Path(args.out) if args.out else Path(args.image).with_suffix(".prepared.png")
    check_image_out(out)
    prepared = prepare_avatar(args.image)
    height, width = prepared.image.shape[:2]
    mesh = build_mesh(prepared.points, width, height, prepared.person)
    try:
        written = cv2.imwrite(str(out), overlay(prepared, mesh.triangles, mesh.vertices))
    except cv2.error:
        written = False
    if not written:
        raise AvatarError(f"cannot write {out}; choose another --out")
    person = float((prepared.person > 127).mean())
    print(
        f"{args.image}: {width}x{height}, face {prepared.found_by}, person {person:.0%} of the "
        f"image, mesh {len(mesh.vertices)} vertices / {len(mesh.triangles)} triangles, mouth "
        f"{'open' if mesh.mouth_open_at_rest else 'closed'} at rest; overlay: {out}"
    )
    return 0


def check_image_out(out: Path) -> None:
    """--out before the slow preparation: a type OpenCV can write, in a folder that exists."""
    import cv2

    if out.is_dir():
        raise UsageError(f"--out {out}: is a folder; name a .png file in it")
    if not cv2.haveImageWriter(str(out)):
        kind = f"{out.suffix} files" if out.suffix else "a file without an extension"
        raise UsageError(f"--out {out}: OpenCV cannot write {kind}; use .png (or .jpg)")
    if not out.parent.is_dir():
        raise UsageError(
            f"--out {out}: the folder {out.parent} does not exist; "
            "create it or choose another --out"
        )


# ---------------------------------------------------------------- the running daemon's API


class WebClient:
    """The running daemon's JSON API: its address from the file the daemon leaves in
    $XDG_RUNTIME_DIR (exact, even with web.port 0), else from the config; the token from the
    config (web.token)."""

    def __init__(self, config_arg: str | None, timeout_s: float = 60.0):
        config = load_config_arg(config_arg)
        self.token, self.timeout_s = config.web.token, timeout_s
        self.url = _live_web_url(runtime_file_path(".web.json"))
        if self.url is None:
            if not config.web.enabled:
                raise DaemonNotRunning("the daemon's web API is off (web.enabled: false)")
            host = connect_host(config.web.bind)
            self.url = f"http://{host}:{config.web.port}/"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.url + path.lstrip("/"), data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            if exc.code == 401:
                message += "; pass --config with the daemon's config file (its web.token)"
            raise TalkingHeadCamError(f"the daemon answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DaemonNotRunning(
                f"the daemon's web API is not reachable at {self.url} ({reason}); is it "
                "running? systemctl --user start talking-head-cam"
            ) from None


def _live_web_url(path: Path) -> str | None:
    """The URL in the daemon's runtime file, when the daemon that wrote it is alive."""
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        return str(info["url"])
    except PermissionError:  # alive, another user's
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    status = WebClient(args.config, timeout_s=10).call("GET", "/api/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    camera, output = status.get("camera") or {}, status["output"]
    lines = [
        f"{status['state']}: {status['line']}",
        f"camera: {camera.get('source', '?')} {camera.get('state', '?')} "
        f"{camera.get('detail', '')}",
        f"avatar: {status.get('avatar_name') or status['avatar']}",
        f"output: {output['width']}x{output['height']} @ {output['fps']:g} fps, "
        f"{status['frames_published']} frames published",
    ]
    for sink in status["sinks"]:
        lines.append(
            f"sink {sink['name']}: {sink['state']} ({sink['detail']}); "
            f"{sink['frames_written']} written, {sink['frames_dropped']} dropped"
        )
    stages = ", ".join(
        f"{name} {s['median']:.1f}/{s['p95']:.1f}" for name, s in status["stages_ms"].items()
    )
    lines.append(f"stages (median/p95 ms): {stages or 'none yet'}")
    for peer in status.get("peers", []):
        extra = (
            f", avatar {peer['avatar']}, face {peer['face']}" if peer["kind"] == "remote" else ""
        )
        lines.append(
            f"peer {peer['id']}: {peer['kind']} {peer['state']}{extra}, "
            f"{peer['frames_sent']} frames sent"
        )
    web = status.get("web") or {}
    if web.get("url"):
        lines.append(f"page: {web['url']}" + (" (#token=...)" if web.get("token_required") else ""))
    return "\n".join(lines)


def cmd_avatar_use(args: argparse.Namespace) -> int:
    """Switch the running daemon's avatar to a gallery avatar."""
    from urllib.parse import quote

    WebClient(args.config).call("POST", f"/api/avatars/{quote(args.name, safe='')}/use")
    print(f"the daemon's avatar is now {args.name}")
    return 0


def cmd_avatar_list(args: argparse.Namespace) -> int:
    listing = WebClient(args.config, timeout_s=10).call("GET", "/api/avatars")
    for entry in listing["avatars"]:
        mark = "*" if entry["name"] == listing["current"] else " "
        state = "" if entry["state"] == "ready" else f"  ({entry['state']} {entry['stage']})"
        print(f"{mark} {entry['name']}{state}")
    print(f"(gallery: {listing['folder']})")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Ask the running daemon to take the next tracked frame as the neutral face: through its
    web API when reachable, else with SIGUSR1 to the PID in its PID file."""
    try:
        answer = WebClient(args.config, timeout_s=5).call("POST", "/api/calibrate")
    except (DaemonNotRunning, ConfigError):
        pass
    else:
        print(f"asked the daemon (pid {answer['pid']}) to calibrate: {answer['message']}")
        return 0
    path = runtime_file_path(".pid")
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError):
        raise DaemonNotRunning(
            f"the daemon is not running (no live PID in {path}); start it: "
            "systemctl --user start talking-head-cam"
        ) from None
    print(f"asked the daemon (pid {pid}) to calibrate: look at the camera with a relaxed face")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from daemon.render import render_demo, render_video

    config = override_output(load_config_arg(args.config), args)
    out = Path(args.out)
    result = (
        render_video(config, args.driver, out, side_by_side=True)
        if args.driver
        else render_demo(config, out, args.seconds)
    )
    print(result)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from daemon.doctor import run_checks
    from daemon.v4l2 import SYSFS_ROOT

    support = test_support.loaded()  # the tests' fake /sys, only with the test support on
    sysfs = support.sysfs_root if support is not None and support.sysfs_root else SYSFS_ROOT
    checks = run_checks(args.config, sysfs)
    for check in checks:
        print(check.format())
    failed = [c.name for c in checks if c.status == "fail"]
    print(f"\n{len(failed)} problem(s): {', '.join(failed)}" if failed else "\nall good")
    return 1 if failed else 0


def cmd_engines(args: argparse.Namespace) -> int:
    """Export the landmark networks to ONNX, check them with onnxruntime against torch, and
    build the TensorRT engines where TensorRT and a GPU are there (`make engines`)."""
    from daemon.errors import EngineUnavailable
    from engines.landmarks.onnx_export import check_onnx, export_onnx
    from engines.runtime.select import choose_engines
    from engines.runtime.tensorrt_runtime import engine_cache_dir

    config = load_config_arg(args.config)
    cache = Path(args.out) if args.out else engine_cache_dir(config.engine_cache_dir)
    paths = export_onnx(cache / "onnx", progress=True)
    for name, diff in check_onnx(cache / "onnx").items():
        print(f"{name}: onnxruntime vs torch, max abs difference {diff:.2e}")
    print(f"ONNX: {len(paths)} networks in {cache / 'onnx'}")
    try:
        choose_engines("tensorrt")
    except EngineUnavailable as exc:
        print(f"TensorRT engines: not built here ({str(exc).split(' but ', 1)[-1]})")
        return 0
    from engines.landmarks.tensorrt import tensorrt_networks

    built = tensorrt_networks(cache, config.tracking.max_faces, progress=True)
    print(f"TensorRT engines: {', '.join(built)} in {cache}")
    return 0


def cmd_config_doc(args: argparse.Namespace) -> int:
    from daemon.config_doc import render_config_yaml, render_reference_markdown

    print(render_reference_markdown() if args.markdown else render_config_yaml(), end="")
    return 0


def override_output(config: Config, args: argparse.Namespace) -> Config:
    """--avatar/--width/--height on render and demo, validated like the file itself, each
    problem named as the argument that caused it."""
    from engines.generator.avatar import load_avatar

    data = config.model_dump()
    avatar = getattr(args, "avatar", None)
    if avatar:
        if avatar != "default":
            avatar = str(Path(avatar).resolve())
            load_avatar(avatar, "--avatar")  # fails naming the argument, not avatar.image
        data["avatar"]["image"] = avatar
    for key in ("width", "height"):
        if getattr(args, key, None) is not None:
            data["output"][key] = getattr(args, key)
    try:
        return validate_config(data, "command line")
    except ConfigError as exc:
        problems = [re.sub(r"^output\.(width|height):", r"--\1:", p) for p in exc.problems]
        raise UsageError("; ".join(problems)) from None


def build_parser() -> argparse.ArgumentParser:
    """The CLI; every command that reads the config takes --config before or after it."""
    parser = OneLineParser(prog="talking-head-cam", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $XDG_CONFIG_HOME/"
        "talking-head-cam/config.yaml, else the packaged default)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon (foreground; systemd runs this)")
    add_config_after(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser(
        "check-config",
        help="validate a config file without starting, and check the files it names exist",
    )
    check.add_argument("file", nargs="?", help="the file (default: the one `run` would use)")
    add_config_after(check)
    check.set_defaults(func=cmd_check_config)

    render = sub.add_parser(
        "render", help="render a driver video offline, one output frame per driver frame"
    )
    render.add_argument("--avatar", help="avatar image (default: the config's)")
    render.add_argument("--driver", required=True, help="driving video file")
    render.add_argument(
        "--out",
        required=True,
        help="output video: .mp4 (H.264) or .mkv (lossless FFV1)",
    )
    render.add_argument(
        "--neutral-frame",
        type=whole_number(0),
        default=0,
        metavar="N",
        help="driver frame (0-based) with the neutral face (default: the first tracked one)",
    )
    _size_args(render, "the avatar's own size, one output pixel per avatar pixel")
    add_config_after(render)
    render.set_defaults(func=cmd_render)

    demo = sub.add_parser("demo", help="render a demo video; needs no camera, GPU or v4l2loopback")
    demo.add_argument("--out", default="out/demo.mp4", help="output video (default: %(default)s)")
    demo.add_argument(
        "--seconds",
        type=seconds(zero_ok=False, maximum=MAX_DEMO_S),
        default=8.0,
        help="length (default: %(default)s)",
    )
    demo.add_argument("--driver", help="render this driving video instead, shown side by side")
    demo.add_argument("--avatar", help="avatar image (default: the embedded one)")
    _size_args(demo)
    add_config_after(demo)
    demo.set_defaults(func=cmd_demo)

    avatar = sub.add_parser("avatar", help="avatar images").add_subparsers(
        dest="avatar_command", required=True
    )
    prepare = avatar.add_parser(
        "prepare",
        help="find the face, the person and the background "
        "of an image, and write an overlay PNG of what was found",
    )
    prepare.add_argument("image", help="the avatar image")
    prepare.add_argument("--out", help="overlay PNG (default: IMAGE.prepared.png)")
    prepare.set_defaults(func=cmd_avatar_prepare)
    use = avatar.add_parser("use", help="switch the running daemon to a gallery avatar")
    use.add_argument("name", help="the avatar's gallery name ('default': the embedded one)")
    add_config_after(use)
    use.set_defaults(func=cmd_avatar_use)
    listing = avatar.add_parser(
        "list", help="the running daemon's avatar gallery (* marks the one in use)"
    )
    add_config_after(listing)
    listing.set_defaults(func=cmd_avatar_list)

    status = sub.add_parser(
        "status", help="the running daemon's state, fps, per-stage latency, sinks and peers"
    )
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    add_config_after(status)
    status.set_defaults(func=cmd_status)

    calibrate = sub.add_parser(
        "calibrate", help="tell the running daemon to take your current face as the neutral"
    )
    add_config_after(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    doctor = sub.add_parser("doctor", help="check the machine and explain what is wrong")
    add_config_after(doctor)
    doctor.set_defaults(func=cmd_doctor)

    engines = sub.add_parser(
        "engines",
        help="export the landmark networks to ONNX (checked with onnxruntime) and build "
        "TensorRT engines where TensorRT and an NVIDIA GPU are present",
    )
    engines.add_argument("--out", help="engine cache folder (default: engine_cache_dir)")
    add_config_after(engines)
    engines.set_defaults(func=cmd_engines)

    doc = sub.add_parser(
        "config-doc",
        help="print the commented default config (or --markdown "
        "reference) generated from the config model",
    )
    doc.add_argument("--markdown", action="store_true")
    doc.set_defaults(func=cmd_config_doc)
    return parser


def _size_args(parser: argparse.ArgumentParser, default: str = "the config's") -> None:
    parser.add_argument("--width", type=int, help=f"output width (default: {default})")
    parser.add_argument("--height", type=int, help=f"output height (default: {default})")


def main(argv: Sequence[str] | None = None) -> int:
    filter_native_stderr()
    parser = build_parser()
    args = parser.parse_args(argv)
    merge_config_after(parser, args)
    if args.command != "run":
        setup_logging("warning", progress_lines=True)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"talking-head-cam: {exc}", file=sys.stderr)
        return exc.exit_code
    except TalkingHeadCamError as exc:
        print(f"talking-head-cam: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
