"""The control page, its JSON API and WebRTC signalling, served by the daemon (aiohttp).

The server runs an asyncio event loop on its own thread ("web"), next to the supervising
main thread and the frame loop; blocking work (decoding uploads, preparing avatars,
rebuilding the generator) goes to a small thread pool so the loop stays responsive.

Routes (see README, "The web page and remote mode"):

    GET    /                         the page (static HTML/JS/CSS, no data in it)
    GET    /static/FILE
    GET    /api/status               state, fps, per-stage latency, camera, sinks, peers
    GET    /api/settings             live settings, with bounds from the config model
    PATCH  /api/settings             {"motion": {"gains": {"pose": 0.5}}, "generator": {...}}
    POST   /api/calibrate            the next tracked frame becomes the neutral face
    GET    /api/avatars              the gallery
    PUT    /api/avatars/NAME         upload (the image file as the body), then prepared
    GET    /api/avatars/NAME/image   a thumbnail (JPEG)
    POST   /api/avatars/NAME/use     the virtual camera's avatar
    DELETE /api/avatars/NAME
    POST   /api/preview              WebRTC offer → answer: the published video
    POST   /api/remote               WebRTC offer with a camera → answer: the avatar back
    PATCH  /api/peers/ID             {"avatar": NAME} for a remote peer
    DELETE /api/peers/ID

Security: with `web.token` set, every /api/ request needs `Authorization: Bearer TOKEN`
(compared in constant time); without one the server must be on loopback (enforced by
config validation) and only answers requests addressed to a loopback name (no DNS
rebinding). State-changing requests from another origin are refused either way (CSRF).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import os
import re
import threading
import time
import typing
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
from aiohttp import web
from pydantic import BaseModel

from daemon.config import Config, MeshGeneratorConfig, WebConfig, connect_host, is_loopback
from daemon.errors import AvatarError, ConfigError
from daemon.pipeline import FrameRelay
from engines.generator.avatar import MAX_AVATAR_PIXELS, decode_avatar, load_avatar

if TYPE_CHECKING:
    from daemon.remote import PeerManager
    from daemon.service import Daemon

log = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("daemon") / "static"))
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
NAME_RULE = "1-48 letters, digits, '-' or '_', starting with a letter or digit"
# what an upload may be labelled (curl --data-binary says x-www-form-urlencoded); the bytes
# are checked by decoding them whatever the label
UPLOAD_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")
THUMB_SIDE = 192
SLIDER_GROUPS = ("gains", "smoothing", "limits")
BACKGROUND_KEYS = ("background", "background_color", "background_image")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob: mediastream:; object-src 'none'; frame-ancestors 'none'",
}


class ApiError(Exception):
    """An API request cannot be served; answered as {"error": message} with `status`."""

    def __init__(self, status: int, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.problems = status, message, problems


# ---------------------------------------------------------------- the avatar gallery


def default_avatars_dir(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "talking-head-cam" / "avatars"


def check_name(name: str) -> str:
    """A gallery name, or ApiError: no path separators, no dots, a safe character set."""
    if not NAME_RE.match(name):
        raise ApiError(400, f"invalid avatar name {name[:64]!r}: use {NAME_RULE}")
    return name


@dataclass
class AvatarJob:
    """Where an upload is: preparing (with a stage), ready or failed (with the reason)."""

    state: str
    stage: str
    progress: float
    error: str | None = None


class AvatarGallery:
    """Avatar images in one folder, stored as NAME.png after a safe decode; each upload is
    prepared (landmarks, person, background, cached) in the background."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.jobs: dict[str, AvatarJob] = {}
        self._thumbs: dict[tuple[str, float], bytes] = {}

    def path(self, name: str) -> Path:
        path = self.folder / f"{check_name(name)}.png"
        if path.resolve().parent != self.folder.resolve():  # defence in depth
            raise ApiError(400, f"invalid avatar name {name!r}")
        return path

    def spec(self, name: str) -> str:
        """`avatar.image` for a gallery name ('default' is the embedded avatar)."""
        if name == "default":
            return "default"
        path = self.path(name)
        if not path.is_file():
            raise ApiError(404, f"no avatar named {name!r}; GET /api/avatars lists them")
        job = self.jobs.get(name)
        if job is not None and job.state == "preparing":
            raise ApiError(409, f"avatar {name!r} is still being prepared ({job.stage})")
        if job is not None and job.state == "failed":
            raise ApiError(409, f"avatar {name!r} cannot be used: {job.error}")
        return str(path)

    def name_of(self, spec: str) -> str | None:
        """The gallery name of an `avatar.image` value, None when it is not in the gallery."""
        if spec == "default":
            return "default"
        path = Path(spec)
        if path.parent.resolve() == self.folder.resolve() and NAME_RE.match(path.stem):
            return path.stem
        return None

    def names(self) -> list[str]:
        try:
            files = sorted(p.stem for p in self.folder.glob("*.png") if NAME_RE.match(p.stem))
        except OSError:
            files = []
        return ["default", *files]

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            job = self.jobs.get(name)
            entry: dict[str, Any] = {"name": name, "state": "ready", "stage": "", "progress": 1.0}
            if job is not None:
                entry.update(vars(job))
            out.append(entry)
        return out

    def store(self, name: str, data: bytes, content_type: str) -> None:
        """Check, decode and store an upload (blocking: run it on a worker thread). The
        image is decoded with engines.generator.avatar.decode_avatar and re-encoded as PNG: what is
        stored is pixels we produced, not the uploaded file."""
        path = self.path(name)
        if len(data) > self.max_bytes:
            raise ApiError(413, f"the image is over {self.max_bytes / 2**20:g} MiB")
        if (
            content_type
            and not content_type.startswith("image/")
            and content_type not in UPLOAD_TYPES
        ):
            raise ApiError(415, f"{content_type!r} is not an image type; upload PNG, JPEG or WebP")
        width, height = image_header_size(data)
        if width * height > MAX_AVATAR_PIXELS:
            raise ApiError(
                413,
                f"the image is {width}x{height}, over {MAX_AVATAR_PIXELS:,} pixels; scale it down",
            )
        try:
            image = decode_avatar(data, name)
        except AvatarError as exc:
            raise ApiError(422, str(exc).removeprefix("avatar.image: ")) from None
        ok, png = cv2.imencode(".png", image)
        if not ok:
            raise ApiError(422, f"cannot re-encode {name!r}")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.upload")
            tmp.write_bytes(png.tobytes())
            tmp.replace(path)
        except OSError as exc:
            raise ApiError(
                507,
                f"cannot store the avatar in {self.folder}: {exc.strerror}; check web.avatars_dir",
            ) from None
        self.jobs[name] = AvatarJob("preparing", "finding the face", 0.3)
        self._thumbs = {k: v for k, v in self._thumbs.items() if k[0] != name}

    def prepare(self, name: str) -> None:
        """Find the face, the person and the background (blocking; cached by content)."""
        from engines.generator.avatar_prep import prepare_avatar

        job = self.jobs[name]
        try:
            prepare_avatar(str(self.path(name)))
        except AvatarError as exc:
            job.state, job.stage, job.error = "failed", "", str(exc).removeprefix("avatar.image: ")
            log.warning("avatar %s: %s", name, job.error)
            return
        except Exception as exc:  # never leave a job "preparing" forever
            log.exception("avatar %s: preparation failed", name)
            job.state, job.stage, job.error = "failed", "", f"preparation failed: {exc}"
            return
        job.state, job.stage, job.progress = "ready", "", 1.0
        log.info("avatar %s: prepared", name)

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not path.is_file():
            raise ApiError(404, f"no avatar named {name!r}")
        path.unlink()
        self.jobs.pop(name, None)

    def thumbnail(self, name: str) -> bytes:
        """A small JPEG of the avatar (blocking)."""
        spec = self.spec(name) if name != "default" else "default"
        mtime = 0.0 if spec == "default" else Path(spec).stat().st_mtime
        cached = self._thumbs.get((name, mtime))
        if cached is not None:
            return cached
        image = load_avatar(spec)
        scale = THUMB_SIDE / max(image.shape[:2])
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise ApiError(500, f"cannot encode a thumbnail of {name!r}")
        self._thumbs[(name, mtime)] = data = jpeg.tobytes()
        return data


def image_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header alone, or ApiError 415 when it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.size
    except Image.DecompressionBombError:
        raise ApiError(
            413, f"the image is over {MAX_AVATAR_PIXELS:,} pixels (a decompression bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ApiError(415, "not a readable image; upload a PNG, JPEG or WebP file") from None


# ---------------------------------------------------------------- live settings


def _section(path: str) -> type[BaseModel]:
    """The config model of a dotted section path (motion.gains)."""
    model: type[BaseModel] = Config
    for section in path.split("."):
        annotation = model.model_fields[section].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation
    return model


def _field(key: str) -> tuple[type[BaseModel], str]:
    """The config model and field name of a dotted key (motion.gains.pose)."""
    section, name = key.rsplit(".", 1)
    return _section(section), name


def _bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    low = high = None
    for item in model.model_fields[name].metadata:
        low = getattr(item, "ge", getattr(item, "gt", low))
        high = getattr(item, "le", getattr(item, "lt", high))
    assert low is not None and high is not None, f"{model.__name__}.{name} has no bounds"
    return float(low), float(high)


def slider_keys() -> list[str]:
    """motion.gains.*, motion.smoothing.*, motion.limits.*: the page's sliders."""
    keys = []
    for group in SLIDER_GROUPS:
        keys += [f"motion.{group}.{name}" for name in _section(f"motion.{group}").model_fields]
    return keys


def settings_view(config: Config, gallery: AvatarGallery) -> dict[str, Any]:
    """Current values of the live settings, with bounds and descriptions from the model."""
    sliders = []
    for key in slider_keys():
        model, name = _field(key)
        low, high = _bounds(model, name)
        _, group, _ = key.split(".")
        value = getattr(getattr(config.motion, group), name)
        sliders.append(
            {
                "key": key,
                "group": group,
                "name": name,
                "description": model.model_fields[name].description,
                "min": low,
                "max": high,
                "step": 0.05 if high <= 3 else 0.5 if high <= 90 else 1.0,
                "value": value,
            }
        )
    generator = config.generator
    background = None
    if isinstance(generator, MeshGeneratorConfig):
        choices = typing.get_args(MeshGeneratorConfig.model_fields["background"].annotation)
        background = {
            "value": generator.background,
            "choices": list(choices),
            "color": generator.background_color,
            "image": gallery.name_of(generator.background_image)
            if generator.background_image
            else None,
            "image_path": generator.background_image,
        }
    return {
        "sliders": sliders,
        "background": background,
        "generator": generator.type,
        "note": "changes last until the daemon reloads its config file or restarts",
    }


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *sections, name = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return out


def settings_patch(body: Any, gallery: AvatarGallery) -> dict[str, Any]:
    """The request body → a partial config of what the page may change live, or ApiError."""
    if not isinstance(body, Mapping) or not body:
        raise ApiError(400, 'expected a JSON object like {"motion": {"gains": {"pose": 1}}}')
    allowed = {*slider_keys(), *(f"generator.{k}" for k in BACKGROUND_KEYS)}
    flat = flatten(body)
    unknown = sorted(set(flat) - allowed)
    if unknown:
        raise ApiError(
            400,
            f"cannot be changed live: {', '.join(unknown)}; live settings are "
            "motion.gains.*, motion.smoothing.*, motion.limits.* and generator.background*",
        )
    image = flat.get("generator.background_image")
    if image is not None:  # a gallery name, never a path on this machine
        if not isinstance(image, str):
            raise ApiError(400, "generator.background_image: expected a gallery avatar name")
        flat["generator.background_image"] = gallery.spec(check_name(image))
    return nest(flat)


# ---------------------------------------------------------------- the server


class WebServer:
    """The aiohttp application on its own thread and event loop, for one Daemon."""

    def __init__(self, daemon: Daemon, config: WebConfig):
        self.daemon, self.config = daemon, config
        self.url = ""
        self.gallery = AvatarGallery(
            Path(config.avatars_dir) if config.avatars_dir else default_avatars_dir(),
            int(config.max_upload_mb * 2**20),
        )
        self.peers: PeerManager | None = None  # on the first WebRTC request (imports aiortc)
        self.publish_relay = FrameRelay()  # web.remote.publish: the frame loop's external input
        self._token = config.token.encode() if config.token else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._executor = ThreadPoolExecutor(2, thread_name_prefix="web-worker")
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 15.0) -> None:
        """Listen (raises OSError when the address is taken) and serve on a new thread."""
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise OSError(f"the web server did not start within {timeout_s:g} s")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _serve(self) -> None:
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            for name in ("aioice", "aiortc"):  # one INFO line per ICE check otherwise
                logging.getLogger(name).setLevel(logging.WARNING)
        loop = self.daemon.loop
        assert loop is not None
        loop.external = self.publish_relay
        self._runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.bind, self.config.port, shutdown_timeout=0.2)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{connect_host(self.config.bind, host)}:{port}/"
        log.info(
            "web: serving %s%s", self.url, " (token required)" if self._token else " (loopback)"
        )

    def stop(self, timeout_s: float = 0.3) -> None:
        """Close every peer and the listener; never blocks longer than about `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not loop.is_running():
            return
        daemon_loop = self.daemon.loop
        if daemon_loop is not None and daemon_loop.external is self.publish_relay:
            daemon_loop.external = None
        future = asyncio.run_coroutine_threadsafe(self._shutdown(timeout_s * 0.6), loop)
        try:
            future.result(timeout_s)
        except Exception as exc:
            log.warning("web: shutdown incomplete after %.1f s (%r)", timeout_s, exc)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(max(0.0, deadline - time.monotonic()))

    async def _shutdown(self, peers_timeout_s: float) -> None:
        if self.peers is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.peers.close_all(), peers_timeout_s)
        if self._runner is not None:
            await self._runner.cleanup()

    def config_changed(self, config: Config, changed: list[str]) -> None:
        """The daemon applied a new config (any thread): remote peers follow motion and
        generator settings."""
        loop, peers = self._loop, self.peers
        if loop is not None and peers is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(peers.config_changed, config, changed)

    def _peer_manager(self) -> PeerManager:
        """The WebRTC side, made on first use (on the event loop)."""
        if self.peers is None:
            from daemon.pipeline import build_pipeline
            from daemon.remote import PeerManager

            loop = self.daemon.loop
            assert loop is not None
            self.peers = PeerManager(
                self.daemon.config,
                loop.relay,
                self.publish_relay,
                build_pipeline=build_pipeline,
                engine=self._engine_name,
            )
        return self.peers

    def _engine_name(self) -> str:
        """The engines the daemon runs on now: a new remote peer's pipeline runs there too."""
        choice = self.daemon.engine
        return choice.name if choice is not None else "cpu"

    # ------------------------------------------------------------ the application

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._guard], client_max_size=2**20)
        app.router.add_get("/", self.index)
        app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)
        routes = (
            ("GET", "/api/status", self.status),
            ("GET", "/api/settings", self.get_settings),
            ("PATCH", "/api/settings", self.patch_settings),
            ("POST", "/api/calibrate", self.calibrate),
            ("GET", "/api/avatars", self.avatars),
            ("PUT", "/api/avatars/{name}", self.upload_avatar),
            ("GET", "/api/avatars/{name}/image", self.avatar_image),
            ("POST", "/api/avatars/{name}/use", self.use_avatar),
            ("DELETE", "/api/avatars/{name}", self.delete_avatar),
            ("POST", "/api/preview", self.preview_offer),
            ("POST", "/api/remote", self.remote_offer),
            ("PATCH", "/api/peers/{peer_id}", self.patch_peer),
            ("DELETE", "/api/peers/{peer_id}", self.delete_peer),
        )
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.on_response_prepare.append(self._headers)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every error as {"error": message} with its status; the daemon is never affected."""
        try:
            return await handler(request)
        except ApiError as exc:
            body: dict[str, Any] = {"error": exc.message}
            if exc.problems:
                body["problems"] = exc.problems
            return web.json_response(body, status=exc.status)
        except web.HTTPException as exc:
            if exc.status < 400 or not request.path.startswith("/api/"):
                raise
            return web.json_response({"error": exc.reason}, status=exc.status)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:  # the client went away mid-request
            log.debug("web: %s %s: the client disconnected", request.method, request.path)
            return web.json_response({"error": "connection lost"}, status=400)
        except Exception:
            log.exception("web: %s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error (see the daemon's log)"}, status=500)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Host (no DNS rebinding without a token), origin (no CSRF) and token checks."""
        host = hostname(request.host)
        if self._token is None and not is_loopback(host):
            raise ApiError(403, f"this server only answers requests for localhost, not {host!r}")
        origin = request.headers.get("Origin")
        if (
            request.method not in ("GET", "HEAD", "OPTIONS")
            and origin is not None
            and origin != f"{request.scheme}://{request.host}"
        ):
            raise ApiError(403, f"cross-origin request from {origin} refused")
        if self._token is not None and request.path.startswith("/api/"):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), self._token
            ):
                response = web.json_response(
                    {
                        "error": "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                        "(the page takes it from its address: http://HOST:PORT/#token=TOKEN)"
                    },
                    status=401,
                )
                response.headers["WWW-Authenticate"] = 'Bearer realm="talking-head-cam"'
                return response
        return await handler(request)

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        if request.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"

    async def _blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            raise ApiError(400, "the body must be JSON") from None

    # ------------------------------------------------------------ page and status

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def status(self, request: web.Request) -> web.Response:
        status = self.daemon.status()
        peers = self.peers.statuses() if self.peers is not None else []
        status["avatar_name"] = self.gallery.name_of(self.daemon.config.avatar.image)
        status["web"] = {
            "url": self.url,
            "token_required": self._token is not None,
            "remote": self.daemon.config.web.remote.model_dump(),
            "viewers": sum(1 for p in peers if p["kind"] == "preview"),
        }
        status["peers"] = peers
        return web.json_response(status)

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(settings_view(self.daemon.config, self.gallery))

    async def patch_settings(self, request: web.Request) -> web.Response:
        patch = settings_patch(await self._json(request), self.gallery)
        try:
            changed = await self._blocking(self.daemon.update_settings, patch)
        except ConfigError as exc:
            raise ApiError(400, "invalid settings", exc.problems) from None
        except AvatarError as exc:
            raise ApiError(422, str(exc)) from None
        return web.json_response(
            {"changed": changed, **settings_view(self.daemon.config, self.gallery)}
        )

    async def calibrate(self, request: web.Request) -> web.Response:
        self.daemon.request_calibration()
        return web.json_response(
            {
                "pid": os.getpid(),
                "message": "the next tracked frame becomes the neutral face: "
                "look at the camera with a relaxed face",
            },
            status=202,
        )

    # ------------------------------------------------------------ avatars

    async def avatars(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "avatars": self.gallery.listing(),
                "current": self.gallery.name_of(self.daemon.config.avatar.image),
                "folder": str(self.gallery.folder),
                "max_upload_mb": self.config.max_upload_mb,
            }
        )

    async def upload_avatar(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        if name == "default":
            raise ApiError(400, "'default' is the embedded avatar; choose another name")
        limit = self.gallery.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the image is over {limit / 2**20:g} MiB (web.max_upload_mb)")
        data = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                raise ApiError(413, f"the image is over {limit / 2**20:g} MiB (web.max_upload_mb)")
        if not data:
            raise ApiError(400, "empty upload; send the image file as the request body")
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        await self._blocking(self.gallery.store, name, bytes(data), content_type)
        asyncio.get_running_loop().run_in_executor(self._executor, self.gallery.prepare, name)
        return web.json_response({"name": name, **vars(self.gallery.jobs[name])}, status=202)

    async def avatar_image(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        try:
            data = await self._blocking(self.gallery.thumbnail, name)
        except AvatarError as exc:
            raise ApiError(422, str(exc)) from None
        return web.Response(body=data, content_type="image/jpeg")

    async def use_avatar(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        spec = self.gallery.spec(name)
        try:
            await self._blocking(self.daemon.update_settings, {"avatar": {"image": spec}})
        except AvatarError as exc:
            raise ApiError(422, str(exc)) from None
        log.info("web: the virtual camera's avatar is now %s", name)
        return web.json_response({"avatar": name})

    async def delete_avatar(self, request: web.Request) -> web.Response:
        name = check_name(request.match_info["name"])
        if name == "default":
            raise ApiError(400, "the embedded default avatar cannot be deleted")
        if self.gallery.name_of(self.daemon.config.avatar.image) == name:
            raise ApiError(409, f"{name!r} is in use; switch to another avatar first")
        self.gallery.delete(name)
        return web.json_response({"deleted": name})

    # ------------------------------------------------------------ WebRTC

    async def _offer(self, request: web.Request) -> tuple[Any, Any]:
        from aiortc import RTCSessionDescription

        body = await self._json(request)
        if not isinstance(body, Mapping):
            raise ApiError(400, 'expected {"sdp": ..., "type": "offer"}')
        sdp, kind = body.get("sdp"), body.get("type")
        if kind != "offer" or not isinstance(sdp, str):
            raise ApiError(400, 'expected {"sdp": ..., "type": "offer"}')
        from daemon.remote import MAX_SDP_BYTES

        if len(sdp) > MAX_SDP_BYTES or not sdp.startswith("v=0") or "\nm=video" not in sdp:
            raise ApiError(400, "malformed SDP offer: expected an SDP with a video section")
        return body, RTCSessionDescription(sdp=sdp, type="offer")

    async def preview_offer(self, request: web.Request) -> web.Response:
        from daemon.remote import PeerError

        _, offer = await self._offer(request)
        try:
            peer, answer = await self._peer_manager().open_preview(offer)
        except PeerError as exc:
            raise ApiError(exc.status, str(exc)) from None
        return web.json_response({"id": peer.id, "sdp": answer.sdp, "type": answer.type})

    async def remote_offer(self, request: web.Request) -> web.Response:
        from daemon.remote import PeerError

        body, offer = await self._offer(request)
        name = body.get("avatar")
        if name is None:
            spec = self.daemon.config.avatar.image
            name = self.gallery.name_of(spec) or Path(spec).stem
        elif isinstance(name, str):
            spec = self.gallery.spec(check_name(name))
        else:
            raise ApiError(400, "avatar: expected a gallery avatar name")
        try:
            session, answer = await self._peer_manager().open_remote(offer, (name, spec))
        except PeerError as exc:
            raise ApiError(exc.status, str(exc)) from None
        return web.json_response(
            {
                "id": session.id,
                "sdp": answer.sdp,
                "type": answer.type,
                "avatar": name,
                "size": [session.config.output.width, session.config.output.height],
            }
        )

    async def patch_peer(self, request: web.Request) -> web.Response:
        from daemon.remote import RemoteSession

        peers = self.peers.peers if self.peers is not None else {}
        peer = peers.get(request.match_info["peer_id"])
        if not isinstance(peer, RemoteSession):
            raise ApiError(404, "no such remote peer; GET /api/status lists them")
        body = await self._json(request)
        name = body.get("avatar") if isinstance(body, Mapping) else None
        if not isinstance(name, str):
            raise ApiError(400, 'expected {"avatar": NAME}')
        spec = self.gallery.spec(check_name(name))
        try:
            await peer.use_avatar(name, spec)
        except AvatarError as exc:
            raise ApiError(422, str(exc)) from None
        return web.json_response(peer.status())

    async def delete_peer(self, request: web.Request) -> web.Response:
        if self.peers is None or not await self.peers.close(request.match_info["peer_id"]):
            raise ApiError(404, "no such peer")
        return web.json_response({"closed": request.match_info["peer_id"]})


def hostname(host: str) -> str:
    """The name part of a Host header: 'localhost:8390' → 'localhost', '[::1]:80' → '::1'."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
