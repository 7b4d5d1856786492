"""The web API of a real daemon process over real HTTP: the token, bad input of every kind
(4xx with a clear message, the daemon unaffected), the avatar gallery, live settings, and the
CLI commands that use the API (`status`, `calibrate`, `avatar use`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DaemonProcess
from webrtc_browser import poll, request, web_url

from daemon.config import ConfigError, validate_config

TOKEN = "s3cret-token-for-tests-0123456789"
CONFIG = """\
capture: {{source: /dev/video99, retry_max_s: 1}}
output: {{width: 320, height: 180, fps: 20}}
motion: {{idle_animation: false}}
sinks: [{{type: 'null'}}]
web: {{port: 0, avatars_dir: gallery, max_upload_mb: 1{extra}}}
"""


class WebDaemon:
    """A daemon process with its web server; `url`, `token`, `api(...)`, `cli(...)`."""

    def __init__(self, folder: Path, token: str | None):
        folder.mkdir()
        self.folder, self.token = folder, token
        self.runtime = folder / "run"
        self.runtime.mkdir()
        self.config = folder / "config.yaml"
        extra = f", token: {token}" if token else ""
        self.config.write_text(CONFIG.format(extra=extra))
        self.env = {
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CACHE_HOME": str(folder / "cache"),
            "XDG_CONFIG_HOME": str(folder / "xdg-config"),
        }
        self.process = DaemonProcess(self.config, None, self.env)
        self.url = web_url(self.runtime, daemon_log=self.process.log)

    def api(self, method: str, path: str, body=None, token: str | None = "", **kw):
        return request(
            self.url + path.lstrip("/"),
            method,
            body,
            token=self.token if token == "" else token,
            **kw,
        )

    def status(self) -> dict:
        code, status = self.api("GET", "/api/status")
        assert code == 200, status
        return status

    def cli(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon", "--config", str(config or self.config), *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env},
            timeout=60,
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    daemon = WebDaemon(tmp_path_factory.mktemp("web") / "secured", TOKEN)
    yield daemon
    assert daemon.process.stop() == 0


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    daemon = WebDaemon(tmp_path_factory.mktemp("web") / "local", None)
    yield daemon
    assert daemon.process.stop() == 0


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def bomb_png(side: int = 30000) -> bytes:
    """A valid, tiny PNG that would decode to side x side 8-bit grey pixels (900 MB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    rows = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(rows.compress(row) for _ in range(64)) + rows.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "::", "camera.local"])
def test_a_non_loopback_bind_without_a_token_is_refused(bind):
    with pytest.raises(ConfigError) as info:
        validate_config({"web": {"bind": bind}})
    (problem,) = info.value.problems
    assert problem.startswith(f"web: bind {bind!r} is not a loopback address")
    assert "set web.token" in problem and "or bind 127.0.0.1" in problem


def test_loopback_binds_need_no_token_and_other_binds_accept_one():
    for bind in ("127.0.0.1", "127.0.0.9", "::1", "localhost"):
        assert validate_config({"web": {"bind": bind}}).web.bind == bind
    assert validate_config({"web": {"bind": "0.0.0.0", "token": TOKEN}}).web.token == TOKEN
    assert validate_config({"web": {"bind": "0.0.0.0", "enabled": False}}).web.enabled is False


def test_a_short_token_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as info:
        validate_config({"web": {"bind": "0.0.0.0", "token": "hunter2"}})
    assert info.value.problems[0].startswith("web.token: use at least 16 characters")
    assert "hunter2" not in str(info.value)


def test_check_config_rejects_an_open_bind(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("web:\n  bind: 0.0.0.0\n")
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "web: bind '0.0.0.0' is not a loopback address" in result.stderr
    assert "(line 1)" in result.stderr


# ---------------------------------------------------------------- the token

ROUTES = [
    ("GET", "/api/status", None),
    ("GET", "/api/settings", None),
    ("PATCH", "/api/settings", {"motion": {"gains": {"pose": 1.0}}}),
    ("POST", "/api/calibrate", None),
    ("GET", "/api/avatars", None),
    ("PUT", "/api/avatars/someone", b"\x89PNG"),
    ("GET", "/api/avatars/default/image", None),
    ("POST", "/api/avatars/default/use", None),
    ("DELETE", "/api/avatars/someone", None),
    ("POST", "/api/preview", {"sdp": "v=0", "type": "offer"}),
    ("POST", "/api/remote", {"sdp": "v=0", "type": "offer"}),
    ("PATCH", "/api/peers/abc", {"avatar": "default"}),
    ("DELETE", "/api/peers/abc", None),
]


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_api_request_without_the_right_token_gets_401(secured, method, path, body):
    for token, scheme in ((None, None), ("wrong-token-0123456789", None), (TOKEN, "Basic")):
        headers = {"Authorization": f"{scheme} {token}"} if scheme else None
        code, answer = secured.api(
            method, path, body, token=None if scheme else token, headers=headers
        )
        assert code == 401, (token, scheme, answer)
        assert answer["error"].startswith("missing or wrong token")
    code, _ = secured.api(method, path, body)  # with the token: past the check
    assert code != 401


def test_the_page_itself_loads_without_the_token_and_holds_no_data(secured):
    code, page = secured.api("GET", "/", token=None)
    assert code == 200 and b"<title>Talking Head Cam</title>" in page
    code, script = secured.api("GET", "/static/app.js", token=None)
    assert code == 200 and b"#token=" in script
    assert TOKEN.encode() not in page + script
    code, _ = secured.api("GET", "/static/../config.yaml", token=None)
    assert code in (403, 404)


# ---------------------------------------------------------------- avatar names and uploads

BAD_NAMES = ["..", ".hidden", "a.png", "-dash", "a%20b", "%2e%2e", "x" * 49, "caf%C3%A9"]
TRAVERSALS = ["..%2F..%2Fescaped", "%2E%2E%2Fescaped", "..%5Cescaped", "a%2Fb"]


@pytest.mark.parametrize("name", BAD_NAMES + TRAVERSALS)
def test_bad_and_traversing_avatar_names_are_refused(secured, name, face_image):
    before = sorted(p.name for p in secured.folder.rglob("*") if "cache" not in p.parts)
    for method, path, body in (
        ("PUT", f"/api/avatars/{name}", png(face_image)),
        ("POST", f"/api/avatars/{name}/use", None),
        ("GET", f"/api/avatars/{name}/image", None),
        ("DELETE", f"/api/avatars/{name}", None),
    ):
        code, answer = secured.api(method, path, body)
        assert code in (400, 404, 405), (method, name, code, answer)
        if code == 400:
            assert "invalid avatar name" in answer["error"]
            assert "letters, digits" in answer["error"]
    code, answer = secured.api("PATCH", "/api/settings", {"generator": {"background_image": name}})
    assert code in (400, 404)
    after = sorted(p.name for p in secured.folder.rglob("*") if "cache" not in p.parts)
    assert after == before  # nothing written anywhere


def test_an_unknown_avatar_is_404(secured):
    code, answer = secured.api("POST", "/api/avatars/nobody/use")
    assert code == 404
    assert answer["error"] == "no avatar named 'nobody'; GET /api/avatars lists them"


@pytest.mark.parametrize(
    "body,content_type,status,message",
    [
        (b"hello, not an image", "image/png", 415, "not a readable image"),
        (b"<html><script>alert(1)</script></html>", "text/html", 415, "is not an image type"),
        ("bomb", "image/png", 413, "over 40,000,000 pixels"),
        ("huge-bomb", "image/png", 413, "over 40,000,000 pixels"),
        ("tiny", "image/png", 422, "at least 64 pixels"),
        ("truncated", "image/png", 422, "not a readable image"),
        ("big", "image/png", 413, "over 1 MiB"),
        (b"", "image/png", 400, "empty upload"),
    ],
)
def test_bad_uploads_get_4xx_with_a_clear_message(
    secured, face_image, body, content_type, status, message
):
    if body == "bomb":
        body = bomb_png(8000)  # 64 megapixels: over our limit
    elif body == "huge-bomb":
        body = bomb_png(30000)  # 900 megapixels: over Pillow's own limit too
    elif body == "tiny":
        body = png(face_image[:32, :32])
    elif body == "truncated":
        body = png(face_image)[:2000]
    elif body == "big":
        body = np.random.default_rng(0).integers(0, 255, 1_200_000, np.uint8).tobytes()
    code, answer = secured.api(
        "PUT", "/api/avatars/upload-test", body, headers={"Content-Type": content_type}
    )
    assert code == status, answer
    assert message in answer["error"]
    assert not (secured.folder / "gallery" / "upload-test.png").exists()


def test_an_upload_is_decoded_stored_prepared_and_used(secured, other_face):
    # a JPEG with metadata comes in; a PNG of its pixels is stored
    _, jpeg = cv2.imencode(".jpg", cv2.resize(other_face, (400, 400)))
    code, answer = secured.api(
        "PUT", "/api/avatars/guest", jpeg.tobytes(), headers={"Content-Type": "image/jpeg"}
    )
    assert code == 202, answer
    assert answer["name"] == "guest" and answer["state"] in ("preparing", "ready")

    def ready():
        entry = {a["name"]: a for a in secured.api("GET", "/api/avatars")[1]["avatars"]}["guest"]
        return entry if entry["state"] != "preparing" else None

    assert poll(ready, 60, "the avatar's preparation")["state"] == "ready"
    stored = secured.folder / "gallery" / "guest.png"
    assert stored.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, thumb = secured.api("GET", "/api/avatars/guest/image")
    assert code == 200 and thumb[:2] == b"\xff\xd8"
    assert max(cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR).shape[:2]) == 192

    code, answer = secured.api("POST", "/api/avatars/guest/use")
    assert (code, answer) == (200, {"avatar": "guest"})
    assert secured.status()["avatar_name"] == "guest"
    code, answer = secured.api("DELETE", "/api/avatars/guest")
    assert code == 409 and "in use" in answer["error"]
    assert secured.api("POST", "/api/avatars/default/use")[0] == 200
    assert secured.api("DELETE", "/api/avatars/guest") == (200, {"deleted": "guest"})
    assert not stored.exists()


def test_an_image_without_a_face_uploads_but_cannot_be_used(secured):
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (200, 1))
    code, _ = secured.api("PUT", "/api/avatars/no-face", png(cv2.merge([ramp] * 3)))
    assert code == 202

    def done():
        entry = {a["name"]: a for a in secured.api("GET", "/api/avatars")[1]["avatars"]}["no-face"]
        return entry if entry["state"] != "preparing" else None

    entry = poll(done, 60, "the preparation to finish")
    assert entry["state"] == "failed" and "no face found" in entry["error"]
    code, answer = secured.api("POST", "/api/avatars/no-face/use")
    assert code == 409 and "cannot be used: " in answer["error"]
    assert secured.api("DELETE", "/api/avatars/no-face")[0] == 200


# ---------------------------------------------------------------- signalling and settings

GARBAGE_SDP = (
    "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
)


@pytest.mark.parametrize("path", ["/api/preview", "/api/remote"])
def test_malformed_offers_get_400(secured, path):
    cases = [
        (b"not json", 400, "the body must be JSON"),
        ({"sdp": GARBAGE_SDP, "type": "answer"}, 400, "expected {"),
        ({"type": "offer"}, 400, "expected {"),
        ({"sdp": "hello", "type": "offer"}, 400, "malformed SDP offer"),
        ({"sdp": "v=0\r\nm=audio 9 RTP/AVP 0\r\n", "type": "offer"}, 400, "malformed SDP offer"),
        ({"sdp": GARBAGE_SDP, "type": "offer"}, 400, "malformed SDP offer: ICE username"),
        ({"sdp": "v=0\r\nm=video" + "x" * 70000, "type": "offer"}, 400, "malformed SDP"),
    ]
    for body, status, message in cases:
        headers = {"Content-Type": "application/json"} if isinstance(body, bytes) else None
        code, answer = secured.api("POST", path, body, headers=headers)
        assert code == status, (body, answer)
        assert message in answer["error"], answer
    assert secured.status()["peers"] == []  # nothing half-open is left behind


def test_a_remote_offer_without_a_camera_is_refused(secured):
    receive_only = GARBAGE_SDP + "a=recvonly\r\n"
    code, answer = secured.api("POST", "/api/remote", {"sdp": receive_only, "type": "offer"})
    assert code == 400
    assert answer["error"] == "remote mode needs a camera: the offer must send video"


def test_a_remote_offer_for_an_unknown_or_bad_avatar_is_refused(secured):
    offer = {"sdp": GARBAGE_SDP, "type": "offer"}
    code, answer = secured.api("POST", "/api/remote", {**offer, "avatar": "nobody"})
    assert code == 404 and "no avatar named 'nobody'" in answer["error"]
    code, answer = secured.api("POST", "/api/remote", {**offer, "avatar": "../../etc/passwd"})
    assert code == 400 and "invalid avatar name" in answer["error"]
    assert secured.api("DELETE", "/api/peers/nope")[0] == 404
    assert secured.api("PATCH", "/api/peers/nope", {"avatar": "default"})[0] == 404


def test_settings_change_live_and_are_validated_like_the_file(secured):
    code, answer = secured.api("PATCH", "/api/settings", {"motion": {"gains": {"pose": 9}}})
    assert code == 400
    assert answer["problems"] == [
        "motion.gains.pose: Input should be less than or equal to 3 (got 9)"
    ]
    code, answer = secured.api("PATCH", "/api/settings", {"capture": {"source": "/etc/passwd"}})
    assert code == 400 and answer["error"].startswith("cannot be changed live: capture.source")
    code, answer = secured.api("PATCH", "/api/settings", ["not", "an", "object"])
    assert code == 400
    code, answer = secured.api(
        "PATCH",
        "/api/settings",
        {"motion": {"gains": {"pose": 0.5}, "limits": {"yaw_deg": 10}}},
    )
    assert code == 200 and answer["changed"] == ["motion"]
    values = {s["key"]: s["value"] for s in secured.api("GET", "/api/settings")[1]["sliders"]}
    assert values["motion.gains.pose"] == 0.5 and values["motion.limits.yaw_deg"] == 10
    code, answer = secured.api(
        "PATCH", "/api/settings", {"generator": {"background": "color", "background_color": "red"}}
    )
    assert code == 400 and "background_color" in answer["problems"][0]
    code, answer = secured.api(
        "PATCH",
        "/api/settings",
        {"generator": {"background": "color", "background_color": "#00ff00"}},
    )
    assert code == 200 and answer["background"]["value"] == "color"
    code, answer = secured.api(
        "PATCH",
        "/api/settings",
        {
            "motion": {"gains": {"pose": 1.0}, "limits": {"yaw_deg": 35}},
            "generator": {"background": "avatar"},
        },
    )
    assert code == 200 and answer["changed"] == ["motion", "generator"]


def test_the_secured_daemon_kept_publishing_throughout(secured):
    """After all of the above (this module's last test on it): still live and publishing."""
    first = secured.status()["frames_published"]
    poll(lambda: secured.status()["frames_published"] > first + 10, 10, "more frames")
    status = secured.status()
    print(f"publishing at {status['fps']} fps")  # how fast is the machine's (and its load's)
    assert status["state"] == "idle" and status["fps"] > 0  # no camera: the idle avatar
    assert secured.process.proc.poll() is None
    assert "Traceback" not in secured.process.log()


# ---------------------------------------------------------------- loopback without a token


def test_a_tokenless_server_answers_only_loopback_names_and_same_origin_writes(local):
    assert local.api("GET", "/api/status", token=None)[0] == 200
    port = local.url.rsplit(":", 1)[1].rstrip("/")
    code, answer = local.api("GET", "/api/status", headers={"Host": f"attacker.example:{port}"})
    assert code == 403 and "only answers requests for localhost" in answer["error"]
    code, answer = local.api(
        "POST", "/api/calibrate", headers={"Origin": "http://attacker.example"}
    )
    assert code == 403 and "cross-origin request from http://attacker.example" in answer["error"]
    code, _ = local.api("POST", "/api/calibrate", headers={"Origin": local.url.rstrip("/")})
    assert code == 202


def test_cli_status_calibrate_and_avatar_use_go_through_the_api(local):
    result = local.cli("status")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("idle: idle (capture ")
    assert f"page: {local.url}" in result.stdout
    assert "sink null: ok" in result.stdout
    status = json.loads(local.cli("status", "--json").stdout)
    assert status["pid"] == local.process.proc.pid
    engines = status["engines"]  # what the daemon logged at start, and why
    assert f"engines: {engines['name']} ({engines['reason']})" in local.process.log()

    result = local.cli("calibrate")
    assert result.returncode == 0, result.stderr
    assert f"asked the daemon (pid {local.process.proc.pid}) to calibrate" in result.stdout
    poll(lambda: "calibration requested" in local.process.log(), 10, "the calibration")

    result = local.cli("avatar", "use", "nobody")
    assert result.returncode == 1
    assert "the daemon answered 404: no avatar named 'nobody'" in result.stderr
    result = local.cli("avatar", "use", "default")
    assert (result.returncode, result.stdout) == (0, "the daemon's avatar is now default\n")
    assert local.cli("avatar", "list").stdout.startswith("* default\n")


def test_cli_with_a_token_from_the_config(secured, tmp_path):
    assert secured.cli("status").returncode == 0
    other = tmp_path / "no-token.yaml"
    other.write_text("web: {port: 1}\n")
    result = secured.cli("status", config=other)  # the URL from the runtime file, no token
    assert result.returncode == 1
    assert "answered 401" in result.stderr and "pass --config" in result.stderr


def test_cli_without_a_daemon_says_so(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("web: {port: 1}\n")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    run = [sys.executable, "-m", "daemon", "--config", str(config)]
    result = subprocess.run([*run, "status"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "web API is not reachable at http://127.0.0.1:1/" in result.stderr
    result = subprocess.run(
        [*run, "calibrate"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1 and "the daemon is not running" in result.stderr
