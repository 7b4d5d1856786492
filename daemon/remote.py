"""WebRTC sessions (aiortc), one per peer: the live preview and remote mode.

- preview: the peer receives what the frame loop publishes (exactly what the virtual camera
  shows), scaled to `web.preview_width`. The frame loop posts to its FrameRelay; a bridge
  converts the newest frame once for all viewers; each viewer's encoder takes the newest.
- remote: the peer sends its own camera; a RemoteSession runs it through its own Pipeline
  (its own landmarks and motion state, its own avatar) on its own worker thread and sends
  the avatar back.

Nothing is queued anywhere: the newest camera frame waits for the worker (older ones are
dropped and counted), the newest avatar frame waits for the encoder. All methods run on
the web server's event loop unless they say otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from daemon import test_support
from daemon.config import AvatarConfig, Config, OutputConfig
from daemon.errors import TalkingHeadCamError
from daemon.frames import CapturedFrame, OutputFrame
from daemon.pipeline import FrameRelay, Pipeline
from daemon.stats import RollingStats

log = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
CONNECT_TIMEOUT_S = 20.0  # a peer that has not connected by then is closed
CAMERA_TIMEOUT_S = 5.0  # a remote peer whose camera sent nothing for this long is closed
MAX_SDP_BYTES = 64 * 1024
PeerKind = Literal["preview", "remote"]
T = TypeVar("T")


class PeerError(TalkingHeadCamError):
    """A peer cannot be opened; `status` is the HTTP status the web API answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- hand-offs


class Latest(Generic[T]):
    """The newest value on one event loop, for any number of awaiting readers: latest wins,
    a reader that missed versions just gets the newest."""

    def __init__(self) -> None:
        self._value: T | None = None
        self.version = 0
        self._changed = asyncio.Event()
        self.closed = False

    def post(self, value: T) -> None:
        self._value, self.version = value, self.version + 1
        self._changed.set()

    async def newer(self, version: int) -> tuple[int, T]:
        """The newest (version, value) once version > `version`; MediaStreamError when closed."""
        while self.version <= version and not self.closed:
            self._changed.clear()
            await self._changed.wait()
        if self.closed or self._value is None:
            raise MediaStreamError
        return self.version, self._value

    def close(self) -> None:
        self.closed = True
        self._changed.set()


def to_i420(image: np.ndarray) -> np.ndarray:
    """BGR → the planar 4:2:0 layout that av.VideoFrame.from_ndarray takes as yuv420p."""
    return cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)


class OutputTrack(MediaStreamTrack):
    """A video track that sends the newest I420 frame of a `Latest` (never a queue); frame
    timestamps come from the monotonic clock, so a stall shows as a stall, not a burst."""

    kind = "video"

    def __init__(self, source: Latest[np.ndarray], on_sent: Callable[[], None] | None = None):
        super().__init__()
        self._source, self._on_sent = source, on_sent
        self._version = 0
        self._t0: float | None = None
        self._last_pts = -1

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._version, i420 = await self._source.newer(self._version)
        frame = VideoFrame.from_ndarray(i420, format="yuv420p")
        now = time.monotonic()
        self._t0 = now if self._t0 is None else self._t0
        pts = max(int((now - self._t0) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        frame.pts, frame.time_base, self._last_pts = pts, VIDEO_TIME_BASE, pts
        if self._on_sent is not None:
            self._on_sent()
        return frame


class PreviewSource:
    """Bridges the frame loop's FrameRelay (another thread) to the preview tracks: each new
    frame is scaled and converted once, off the event loop, while anyone is watching."""

    def __init__(self, relay: FrameRelay, width: int, executor: Executor | None = None):
        self._relay, self._width, self._executor = relay, width, executor
        self.latest: Latest[np.ndarray] = Latest()
        self._loop = asyncio.get_running_loop()
        self._viewers = 0
        self._busy = False
        self._pending = False
        self._unlisten: Callable[[], None] | None = None

    def add_viewer(self) -> None:
        self._viewers += 1
        if self._unlisten is None:
            self._unlisten = self._relay.listen(self._notify)
            self._kick()

    def remove_viewer(self) -> None:
        self._viewers = max(0, self._viewers - 1)
        if not self._viewers and self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def _notify(self) -> None:  # on the frame loop's thread
        with contextlib.suppress(RuntimeError):  # the event loop is already closed
            self._loop.call_soon_threadsafe(self._kick)

    def _kick(self) -> None:
        if self._busy:
            self._pending = True  # convert the newest once the current one is done
            return
        frame = self._relay.latest()
        if frame is None or not self._viewers:
            return
        self._busy, self._pending = True, False
        future = self._loop.run_in_executor(self._executor, self._convert, frame)
        future.add_done_callback(self._converted)

    def _convert(self, frame: OutputFrame) -> np.ndarray:
        image = frame.image
        height, width = image.shape[:2]
        if width > self._width:
            size = (self._width, max(2, round(height * self._width / width / 2) * 2))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return to_i420(image)

    def _converted(self, future: asyncio.Future[np.ndarray]) -> None:
        self._busy = False
        if not future.cancelled() and future.exception() is None:
            self.latest.post(future.result())
        elif not future.cancelled():
            log.warning("preview: conversion failed: %s", future.exception())
        if self._pending:
            self._kick()

    def close(self) -> None:
        self._viewers = 1
        self.remove_viewer()
        self.latest.close()


# ---------------------------------------------------------------- peers


@dataclass
class PeerCounters:
    frames_in: int = 0
    frames_dropped: int = 0
    frames_out: int = 0
    frames_sent: int = 0


class Peer:
    """One RTCPeerConnection and what it owns; `close()` tears all of it down, once."""

    kind: PeerKind

    def __init__(self, peer_id: str, on_closed: Callable[[Peer], None]):
        self.id = peer_id
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # host candidates only
        self.created = time.monotonic()
        self.counters = PeerCounters()
        self._on_closed = on_closed
        self._closing: asyncio.Task[None] | None = None
        self._timeout = asyncio.get_running_loop().call_later(
            CONNECT_TIMEOUT_S, self._connect_timeout
        )
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def state(self) -> str:
        return self.pc.connectionState

    def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.info("peer %s (%s): %s", self.id, self.kind, state)
        if state == "connected":
            self._timeout.cancel()
        elif state in ("failed", "closed"):
            self.close_soon()

    def _connect_timeout(self) -> None:
        if self.pc.connectionState != "connected":
            log.warning("peer %s: not connected after %g s; closing", self.id, CONNECT_TIMEOUT_S)
            self.close_soon()

    def close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self._close())

    async def close(self) -> None:
        self.close_soon()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._timeout.cancel()
        try:
            await self._release()
            await self.pc.close()
        except Exception:
            log.exception("peer %s: error while closing", self.id)
        finally:
            self._on_closed(self)
            log.info("peer %s (%s) closed", self.id, self.kind)

    async def _release(self) -> None:
        """Stop what the peer owns (before its connection closes)."""

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the peer's offer, return our answer (host candidates included)."""
        try:
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:
            raise PeerError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
        if not any(t.kind == "video" for t in self.pc.getTransceivers()):
            raise PeerError("the offer has no video; offer a video transceiver")
        self._add_tracks()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        return self.pc.localDescription

    def _add_tracks(self) -> None:
        """Add what we send, once the offer is known."""

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "age_s": round(time.monotonic() - self.created, 1),
            **vars(self.counters),
        }


class PreviewPeer(Peer):
    """Receives the published output, scaled for the page."""

    kind: PeerKind = "preview"

    def __init__(self, peer_id: str, on_closed: Callable[[Peer], None], source: PreviewSource):
        super().__init__(peer_id, on_closed)
        self._source = source
        self._track = OutputTrack(source.latest, self._sent)
        source.add_viewer()

    def _sent(self) -> None:
        self.counters.frames_sent += 1

    def _add_tracks(self) -> None:
        self.pc.addTrack(self._track)

    async def _release(self) -> None:
        self._track.stop()
        self._source.remove_viewer()


class RemoteSession(Peer):
    """Remote mode: the peer's camera in, its avatar out, through a Pipeline of its own.

    The pipeline is built (avatar preparation, MediaPipe) on the session's own worker thread
    while the connection is negotiated; camera frames that arrive before it is ready, or while
    the worker is busy, are dropped (only the newest one waits)."""

    kind: PeerKind = "remote"

    def __init__(
        self,
        peer_id: str,
        on_closed: Callable[[Peer], None],
        config: Config,
        avatar: tuple[str, str],
        *,
        build_pipeline: Callable[..., Pipeline],
        publish: Callable[[RemoteSession], FrameRelay | None],
        engine: str = "cpu",
    ):
        super().__init__(peer_id, on_closed)
        self.avatar_name, avatar_path = avatar
        self.engine = engine  # the daemon's engines when the peer came: its pipeline's
        self.config = self._peer_config(config, avatar_path)
        self.stats = RollingStats(window=120)
        self._build_pipeline, self._publish = build_pipeline, publish
        self._test_support = test_support.loaded()  # None in normal use
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"peer-{peer_id}")
        self._loop = asyncio.get_running_loop()
        self.output: Latest[np.ndarray] = Latest()
        self._track_out = OutputTrack(self.output, self._sent)
        self._pending: tuple[VideoFrame, float] | None = None
        self._kick = asyncio.Event()
        self._t_last_frame: float | None = None
        self.pipeline: Pipeline | None = None
        self._building: asyncio.Future[Pipeline] | None = None
        self.error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    @staticmethod
    def _peer_config(config: Config, avatar_path: str) -> Config:
        remote = config.web.remote
        output = OutputConfig(width=remote.width, height=remote.height, fps=config.output.fps)
        return config.model_copy(
            update={"output": output, "avatar": AvatarConfig(image=avatar_path)}
        )

    def _sent(self) -> None:
        self.counters.frames_sent += 1

    def _add_tracks(self) -> None:
        """The offer is good: send the avatar track, build the pipeline meanwhile."""
        self.pc.addTrack(self._track_out)
        self._tasks += [self._loop.create_task(self._work()), self._loop.create_task(self._watch())]

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(self._loop.create_task(self._pump(track)))

    async def _pump(self, track: MediaStreamTrack) -> None:
        """Take every decoded camera frame as it comes; keep only the newest."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.counters.frames_in += 1
            if self._pending is not None:
                self.counters.frames_dropped += 1
            self._t_last_frame = time.monotonic()
            self._pending = (frame, self._t_last_frame)
            self._kick.set()

    async def _watch(self) -> None:
        """Close the session once the peer's camera has stopped sending (a browser that
        vanished without closing; ICE consent alone takes about 30 s to notice), or never
        started to."""
        started = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            last = self._t_last_frame
            now = time.monotonic()
            if last is None and now - started > CONNECT_TIMEOUT_S:
                log.warning("remote peer %s: no camera frame arrived; closing", self.id)
            elif last is not None and now - last > CAMERA_TIMEOUT_S:
                log.warning(
                    "remote peer %s: no camera frame for %g s; closing", self.id, CAMERA_TIMEOUT_S
                )
            else:
                continue
            self.close_soon()
            return

    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        if not sends_video(offer.sdp):
            raise PeerError("remote mode needs a camera: the offer must send video")
        return await super().answer(offer)

    async def _work(self) -> None:
        build = functools.partial(self._build_pipeline, engine=self.engine)
        self._building = self._loop.run_in_executor(self._executor, build, self.config, self.stats)
        try:
            self.pipeline = pipeline = await asyncio.shield(self._building)
        except Exception as exc:
            self.error = str(exc)
            log.error("remote peer %s: cannot start its pipeline: %s", self.id, exc)
            self.close_soon()
            return
        log.info(
            "remote peer %s: pipeline ready (avatar %s, engines %s)",
            self.id,
            self.avatar_name,
            self.engine,
        )
        index = 0
        while True:
            await self._kick.wait()
            self._kick.clear()
            if self._pending is None:
                continue
            (frame, t_received), self._pending = self._pending, None
            try:
                i420 = await self._run(self._process, pipeline, frame, t_received, index)
            except Exception:
                log.exception("remote peer %s: frame %d failed", self.id, index)
                continue
            index += 1
            self.counters.frames_out += 1
            self.output.post(i420)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def _process(
        self, pipeline: Pipeline, frame: VideoFrame, t_received: float, index: int
    ) -> np.ndarray:
        """On the worker thread: decode → pipeline → I420 (and the virtual camera, if asked)."""
        image = frame.to_ndarray(format="bgr24")
        out = pipeline.process(CapturedFrame(image, t_received, index), time.monotonic())
        if self._test_support is not None:
            out = self._test_support.remote_frame(image, out)
        relay = self._publish(self)
        if relay is not None:
            relay.post(OutputFrame(out, t_received, index))
        i420 = to_i420(out)
        self.stats.record("in_daemon", (time.monotonic() - t_received) * 1e3)
        return i420

    def reconfigure(self, config: Config, changed: list[str]) -> None:
        """The daemon's motion or generator settings changed: follow them (own avatar kept)."""
        new = config.model_copy(update={"output": self.config.output, "avatar": self.config.avatar})
        old, self.config = self.config, new
        if self.pipeline is None:
            return
        pipeline = self.pipeline

        def apply() -> None:
            if new.motion != old.motion:
                pipeline.reconfigure_motion(new.motion)
            if new.generator != old.generator:
                self._swap_generator(new)

        with contextlib.suppress(RuntimeError):  # the session is closing
            self._loop.run_in_executor(self._executor, apply)

    def use_avatar(self, name: str, path: str) -> asyncio.Future[None]:
        """Switch this peer's avatar (built on its worker; errors are the future's)."""
        new = self.config.model_copy(update={"avatar": AvatarConfig(image=path)})

        def apply() -> None:
            self._swap_generator(new)
            self.config, self.avatar_name = new, name

        return self._loop.run_in_executor(self._executor, apply)

    def _swap_generator(self, config: Config) -> None:
        from daemon.pipeline import make_generator

        if self.pipeline is not None:
            out = config.output
            generator = make_generator(config, engine=self.engine)
            self.pipeline.set_generator(generator, out.width, out.height)

    async def _release(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._track_out.stop()
        self.output.close()
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:  # after any frame still on the worker
            self._executor.submit(pipeline.close)
        elif self._building is not None and not self._building.done():
            # closed while its pipeline was being built: close that once it exists
            self._building.add_done_callback(
                lambda f: f.result().close() if not f.cancelled() and not f.exception() else None
            )
        self._executor.shutdown(wait=False, cancel_futures=False)

    def status(self) -> dict[str, Any]:
        stages = self.stats.summary()
        trip = stages.get("in_daemon")
        return {
            **super().status(),
            "avatar": self.avatar_name,
            "engine": self.engine,
            "size": [self.config.output.width, self.config.output.height],
            "face": self.pipeline.motion.state if self.pipeline else "starting",
            "error": self.error,
            "server_ms": {"median": round(trip.median_ms, 1), "p95": round(trip.p95_ms, 1)}
            if trip
            else None,
            "stages_ms": {
                name: {"median": round(v.median_ms, 2), "p95": round(v.p95_ms, 2)}
                for name, v in stages.items()
            },
        }


class PeerManager:
    """All peers of one web server: opens them within the configured caps, lists them, tears
    them down (on disconnect, on request, at shutdown)."""

    def __init__(
        self,
        config: Config,
        relay: FrameRelay,
        publish_relay: FrameRelay,
        *,
        build_pipeline: Callable[..., Pipeline],
        engine: Callable[[], str] = lambda: "cpu",
    ):
        self.config = config
        self._engine = engine  # the engines the daemon runs on now (they follow reloads)
        self.preview = PreviewSource(relay, config.web.preview_width)
        self.publish_relay = publish_relay
        self._build_pipeline = build_pipeline
        self.peers: dict[str, Peer] = {}

    def count(self, kind: PeerKind) -> int:
        return sum(1 for p in self.peers.values() if p.kind == kind)

    async def open_preview(
        self, offer: RTCSessionDescription
    ) -> tuple[Peer, RTCSessionDescription]:
        limit = self.config.web.max_viewers
        if self.count("preview") >= limit:
            raise PeerError(f"too many previews open (web.max_viewers: {limit})", 503)
        return await self._open(PreviewPeer(self._new_id(), self._forget, self.preview), offer)

    async def open_remote(
        self, offer: RTCSessionDescription, avatar: tuple[str, str]
    ) -> tuple[RemoteSession, RTCSessionDescription]:
        remote = self.config.web.remote
        if not remote.enabled:
            raise PeerError("remote mode is off (web.remote.enabled: false)", 403)
        if self.count("remote") >= remote.max_peers:
            raise PeerError(
                f"too many remote peers (web.remote.max_peers: {remote.max_peers}); "
                "try again when one has left",
                503,
            )
        session = RemoteSession(
            self._new_id(),
            self._forget,
            self.config,
            avatar,
            build_pipeline=self._build_pipeline,
            publish=self._publisher,
            engine=self._engine(),
        )
        _, answer = await self._open(session, offer)
        return session, answer

    async def _open(
        self, peer: Peer, offer: RTCSessionDescription
    ) -> tuple[Peer, RTCSessionDescription]:
        self.peers[peer.id] = peer
        try:
            answer = await peer.answer(offer)
        except BaseException:
            await peer.close()
            raise
        log.info("peer %s (%s) opened", peer.id, peer.kind)
        return peer, answer

    def _new_id(self) -> str:
        return secrets.token_hex(6)

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        if peer.kind == "remote" and self._newest_remote() is None:
            self.publish_relay.clear()

    def _newest_remote(self) -> RemoteSession | None:
        remotes = [p for p in self.peers.values() if isinstance(p, RemoteSession)]
        return max(remotes, key=lambda p: p.created) if remotes else None

    def _publisher(self, session: RemoteSession) -> FrameRelay | None:
        """Where `session` publishes its avatar: the frame loop's external input, for the
        newest remote peer when web.remote.publish is on (called on a worker thread)."""
        if not self.config.web.remote.publish or self._newest_remote() is not session:
            return None
        return self.publish_relay

    async def close(self, peer_id: str) -> bool:
        peer = self.peers.get(peer_id)
        if peer is None:
            return False
        await peer.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(p.close() for p in list(self.peers.values())))
        self.preview.close()

    def config_changed(self, config: Config, changed: list[str]) -> None:
        self.config = config
        if {"motion", "generator"} & set(changed):
            for peer in self.peers.values():
                if isinstance(peer, RemoteSession):
                    peer.reconfigure(config, changed)

    def statuses(self) -> list[dict[str, Any]]:
        return [p.status() for p in self.peers.values()]


def sends_video(sdp: str) -> bool:
    """True when a video section of the offer sends media (sendrecv, the default, or
    sendonly)."""
    for section in sdp.replace("\r\n", "\n").split("\nm=")[1:]:
        if not section.startswith("video"):
            continue
        lines = set(section.split("\n"))
        if "a=recvonly" not in lines and "a=inactive" not in lines:
            return True
    return False
