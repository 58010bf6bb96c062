"""The only module that knows every stage: a live source's frames -> ring (+ tap) in its own
decode thread, a lossless source's on the event loop (where they wait for room); detections ->
pairing -> crop stage -> publishers in the crop thread; wired with bounded queues.

Accounting, per source, in every snapshot `stats` takes:
    decoded = skipped_fps + dropped_handoff + in_handoff + in_tap + not_tapped + paired
              + expired + in_ring
and per publisher:
    offered = sent + dropped_no_subscriber + dropped_hwm + dropped_timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import cv2
import numpy as np
import zmq
import zmq.asyncio

from streamer.camera import Camera
from streamer.config import (
    MAX_SOURCES,
    PublishConfig,
    SourceConfig,
    StreamerConfig,
    parse_patch,
    parse_source,
)
from streamer.crop_thread import CropThread, Publisher
from streamer.detections.receiver import DetectionReceiver
from streamer.errors import ConfigError, EndOfStream
from streamer.health import overload_shed
from streamer.http_metrics import metrics_app
from streamer.http_metrics import serve as serve_http
from streamer.metrics import LogOnce, Metrics
from streamer.pairing import Pairer, RingStats
from streamer.preview.hub import PreviewHub
from streamer.preview.server import PreviewServer
from streamer.preview.server import start as start_preview
from streamer.publish.shm import RingWriter
from streamer.publish.wire import dumps, frame_topic
from streamer.publish.zmq_out import OutSocket
from streamer.security import load_public_key, load_server_keys, start_authenticator
from streamer.sharding import SINGLE, Shard, shard_of
from streamer.sources.base import JOIN_MARGIN_S, Source
from streamer.supervise import Supervisor
from streamer.tap import tap_image
from streamer.types import Detections, Frame

log = logging.getLogger(__name__)

UNHEALTHY_STATES = ("stalled", "failed", "stopped")
LOOP_LAG_UNHEALTHY_S = 1.0
LAG_WINDOW_S = 5.0
CPU_WORKERS = 2
TAP_QUEUE_FRAMES = 2  # per lossless source: frames waiting to be encoded and sent to the tap
EXPIRY_INTERVAL_S = 0.1
TAP_RETRY_MIN_S = 0.0005  # a lossless frame the tap cannot take yet: first pause, doubling
TAP_RETRY_MAX_S = 0.01  # ... up to this
RING_ROOM_POLL_S = 0.001  # a lossless source waiting for its ring to have room looks this often
SUBSCRIBER_POLL_S = 0.01  # a lossless source waiting for a crop subscriber looks this often
SHED_SAMPLE_INTERVAL_S = 1.0  # how often each source's shed share is sampled for /healthz
SHED_HINT_S = 0.5  # a source whose frame was turned away: its decoder skips what it can this long
DRAIN_TIMEOUT_S = 2.0  # after sources end or a stop: time given to pending detections and crops
CROP_THREAD_JOIN_S = 5.0  # beyond the longest PUSH send timeout
UNTAKEN_RECENT_S = 2.0  # frames refused this recently, none tapped since: no detector takes them
TapOutcome = Literal["sent", "no_subscriber", "full", "stopping", "encode_failed"]
REMOVED_KEPT = 64  # final counters of this many removed cameras stay in the stats
TAP_SUBSCRIPTIONS_POLL_S = 0.1  # the tap's subscriptions are read at least this often
REMOVE_TAP_WAIT_S = 2.0  # a removed camera's frames still in the tap: time to leave it
RELOAD_WAIT_S = 10.0  # a reload's camera being removed through the API: time to wait, beyond
# what its removal may take


class Pipeline:
    """Runs a StreamerConfig until stopped or until every (finite) source has ended."""

    def __init__(self, cfg: StreamerConfig, shard: Shard = SINGLE) -> None:
        self.cfg = cfg
        self.shard = shard  # cameras added live must belong to it
        #: One object per camera; cameras are added and removed while running (add_source,
        #: remove_source, reload). The crop thread reads this dict.
        self.cameras: dict[str, Camera] = {s.id: Camera.build(s, cfg) for s in cfg.sources}
        self.pairer = Pairer(
            list(self.cameras),
            max_frames=cfg.ring.max_frames,
            max_bytes=cfg.ring.max_bytes,
            max_age_s=cfg.ring.max_age_ms / 1000.0,
            max_total_bytes=cfg.ring.max_total_bytes,
            lossless=frozenset(c.id for c in self.cameras.values() if c.source.lossless),
        )
        self._ring_lock = threading.Lock()  # the loop adds and expires, the crop thread matches
        self._shed_sampled_at = 0.0
        self.loop_lag_s = 0.0  # the worst lag of the last LAG_WINDOW_S
        self._lags: deque[tuple[float, float]] = deque()
        self.metrics = Metrics(self.stats)
        for camera in self.cameras.values():
            camera.source.decode_observer = self.metrics.decode_seconds.labels(camera.id).observe
        self._encodings = tuple(sorted({p.encoding_key for p in cfg.publish}))
        self._warn = LogOnce(log)
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(CPU_WORKERS, thread_name_prefix="streamer-cpu")
        self._http_refused: Counter[str] = Counter()  # the metrics listener's (the preview's own)
        self._publishers: list[Publisher] = []
        self._crops: CropThread | None = None
        self._tap: OutSocket | None = None
        # The tap's socket is used from every live camera's decode thread and from the loop:
        # one at a time, under this lock. Set (from any thread) when it may have subscriptions
        # to read.
        self._tap_lock = threading.Lock()
        self._tap_open = False  # under the lock: the socket may be used
        self._tap_readable = asyncio.Event()
        # Lossless cameras' frames; each has at most TAP_QUEUE_FRAMES in it (`_room_for`).
        self._tap_queue: asyncio.Queue[tuple[Camera, Frame]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None  # while running
        self._ended = asyncio.Event()  # every camera's source has ended by itself
        # Final counters of the most recently removed cameras (all of them are logged).
        self._removed: deque[dict[str, Any]] = deque(maxlen=REMOVED_KEPT)
        # ... and the sum of every removed camera's counters, for running totals.
        self._removed_totals: dict[str, Any] = {"detections": Counter()}
        self._changing: set[str] = set()  # ids being removed: not to be added meanwhile
        self._reloading = False  # a reload is removing and adding cameras
        self._stopping = False  # run() is shutting down: no camera is added any more
        # Frame ids of a camera added while running start past every removed camera's: a
        # late detection for a removed camera's frame must not pair a new camera's of its id.
        self._frame_id_floor = 0
        self._lingering: list[Source] = []  # removed, their decode thread still in a read
        self._tap_supervisor = Supervisor("frame tap")
        self._expiry_supervisor = Supervisor("expiry")
        self._subscriptions_supervisor = Supervisor("tap subscriptions")
        self.hub: PreviewHub | None = None
        self.preview_server: PreviewServer | None = None
        if cfg.preview is not None:
            self.hub = PreviewHub(
                list(self.cameras), cfg.preview.max_width, cfg.preview.max_fps, self._executor
            )
        self.started_at = time.monotonic()

    def stop(self) -> None:
        """Ask `run()` to finish (thread-unsafe; call from the loop, e.g. a signal handler)."""
        self._stop.set()

    # -- control (the HTTP API calls these on the loop) -------------------------------------

    @property
    def sources(self) -> dict[str, Source]:
        """Each camera's source, by id (a snapshot)."""
        return {sid: c.source for sid, c in self.cameras.items()}

    def source_settings(self, sid: str) -> dict[str, Any]:
        return dict(self.cameras[sid].settings)

    def patch_source(self, sid: str, data: Any) -> dict[str, Any]:
        """Change a source's crop settings, class filter or max_fps from the next frame on.
        Raises ConfigError (with config-style messages) on a bad value, KeyError on a bad id."""
        camera = self.cameras[sid]
        changes = parse_patch(data).model_dump(exclude_unset=True)
        camera.patch(changes)
        log.info("source %s: settings changed: %s", sid, changes)
        return self.source_settings(sid)

    async def add_source(self, data: Any, first_frame_id: int = 0) -> dict[str, Any]:
        """Start a camera given in the config's `sources` schema, while running, leaving the
        others untouched. Raises ConfigError (check-config's messages) on a bad source or a
        taken id. Returns its settings."""
        src = data if isinstance(data, SourceConfig) else parse_source(data)
        if src.id in self.cameras:
            raise ConfigError(f"id: source {src.id!r} already exists")
        if src.id in self._changing:
            raise ConfigError(f"id: source {src.id!r} is being removed; try again")
        if not self.shard.serves(src.id):
            raise ConfigError(
                f"id: source {src.id!r} belongs to shard {shard_of(src.id, self.shard.count)}"
                f" of {self.shard.count}, not to this one ({self.shard})"
            )
        self._lingering = [s for s in self._lingering if s.alive]
        if len(self.cameras) + len(self._lingering) >= MAX_SOURCES:
            raise ConfigError(
                f"(top level): this process serves at most {MAX_SOURCES} sources (with "
                f"{len(self._lingering)} removed ones whose decode threads are still in a read)"
            )
        if self._loop is None or self._stopping:
            raise ConfigError("(top level): the pipeline is not running")
        sources = [*(c.cfg for c in self.cameras.values()), src]
        try:
            camera = Camera.build(src, self.cfg.model_copy(update={"sources": sources}))
        except (ValueError, OSError) as e:  # a source that cannot even be set up
            raise ConfigError(f"url: {str(e)[:200]}") from None
        first_frame_id = max(first_frame_id, self._frame_id_floor)
        with self._ring_lock:
            self.pairer.add_source(src.id, camera.source.lossless, first_frame_id)
        if self.hub is not None:
            self.hub.add_source(src.id)
        camera.source.decode_observer = self.metrics.decode_seconds.labels(src.id).observe
        camera.source.continue_ids(first_frame_id)
        self.cameras[src.id] = camera
        self._ended.clear()
        self._start(camera)
        log.info("source %s: added", src.id)
        return self.source_settings(src.id)

    async def remove_source(self, sid: str) -> dict[str, Any]:
        """Stop a camera and forget it, while running; its frames still waiting expire
        (`shutdown`). Returns its final counters (also logged, once). KeyError on a bad id."""
        camera = self.cameras.pop(sid)  # from now on its detections are unknown_source
        with self._ring_lock:
            self.pairer.forget_turn(sid)  # (while it stops, it asks for no room)
        self._changing.add(sid)
        try:
            if self.preview_server is not None:
                await self.preview_server.close_viewers(sid, "source removed")
            await asyncio.to_thread(camera.source.stop)  # off the loop: a stalled read may block
            self._frame_id_floor = max(self._frame_id_floor, camera.source.next_frame_id)
            if camera.source.alive:
                self._lingering.append(camera.source)  # (counted against MAX_SOURCES)
            if camera.feeder is not None:
                camera.feeder.cancel()
                await asyncio.gather(camera.feeder, return_exceptions=True)
            await self._end_tap_later(camera)  # (its frames could not be sent any more)
            for _ in range(camera.source.discard_handoff()):
                camera.counters.shed("stopping")  # decoded, never to be tapped
            deadline = time.monotonic() + REMOVE_TAP_WAIT_S
            while camera.counters.in_tap and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the tap worker lets its frames go (not_tapped)
            self._fence(camera)
            with self._ring_lock:
                ring = self.pairer.remove_source(sid)
            if self.hub is not None:
                await self.hub.remove_source(sid)
            for histogram in (self.metrics.decode_seconds, self.metrics.crop_seconds):
                with contextlib.suppress(KeyError):
                    histogram.remove(sid)
            final = self._camera_stats(camera, ring=ring)
            self._removed.append({"id": sid, **final})
            self._add_removed(final)
            log.info("source %s: removed; final counters: %s", sid, json.dumps(final, default=str))
            return final
        finally:
            self._changing.discard(sid)
            self._check_ended()  # what is left may have ended by itself

    async def reload(self, cfg: StreamerConfig) -> dict[str, list[str]]:
        """Apply a re-read config's sources: new ones start, removed ones stop, changed ones
        restart; the others are untouched. Other sections need a restart (logged)."""
        old = {sid: c.cfg for sid, c in self.cameras.items()}
        new = {s.id: s for s in cfg.sources}
        if cfg.model_copy(update={"sources": []}) != self.cfg.model_copy(update={"sources": []}):
            log.warning("config reload: only sources are applied; restart for other changes")
        removed = [sid for sid in old if sid not in new]
        changed = [sid for sid in old if sid in new and new[sid] != old[sid]]
        added = [sid for sid in new if sid not in old]
        # What PATCH could change (crop settings, classes, max_fps) is applied live, without a
        # restart; any other change restarts the camera.
        live = {sid: _live_patch(old[sid], new[sid], cfg) for sid in changed}
        patched = [sid for sid, changes in live.items() if changes is not None]
        for sid in patched:
            camera, changes = self.cameras.get(sid), live[sid]
            if camera is not None and changes is not None:
                camera.cfg = new[sid]
                camera.patch(changes)
        changed = [sid for sid in changed if sid not in patched]
        restarting = {sid: self.cameras[sid] for sid in changed}
        self._reloading = True
        try:
            await self._apply_reload(new, removed + changed, changed + added, restarting)
        finally:
            self._reloading = False
            self._check_ended()
        log.info(
            "config reload: added %s, removed %s, restarted %s, changed live %s",
            added,
            removed,
            changed,
            patched,
        )
        return {"added": added, "removed": removed, "restarted": changed, "patched": patched}

    async def _apply_reload(
        self,
        new: dict[str, SourceConfig],
        stopping: list[str],
        starting: list[str],
        restarting: dict[str, Camera],
    ) -> None:
        for sid in stopping:
            with contextlib.suppress(KeyError):  # removed meanwhile (the API)
                await self.remove_source(sid)
        for sid in starting:
            old_camera = restarting.get(sid)
            next_id = old_camera.source.next_frame_id if old_camera is not None else 0
            # (a removal takes at most its decode thread's stop and the tap's wait)
            wait_s = new[sid].stall_timeout_s + JOIN_MARGIN_S + REMOVE_TAP_WAIT_S + RELOAD_WAIT_S
            deadline = time.monotonic() + wait_s
            while sid in self._changing and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # being removed through the API: then added here
            try:
                await self.add_source(new[sid], first_frame_id=next_id)
            except ConfigError as e:  # added meanwhile (the API), or no room: the rest go on
                log.error("config reload: source %s not started: %s", sid, e)

    def _check_ended(self) -> None:
        """Let run() end once every camera it serves has ended by itself (finite files), and
        only then: not while a camera is being removed or a reload swaps cameras."""
        if (
            self.cameras
            and not self._changing
            and not self._reloading
            and all(c.ended for c in self.cameras.values())
        ):
            self._ended.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the loop is responsive and no source is stalled, failed or stopped
        (streaming, connecting and deliberately backing off are all fine)."""
        cameras = list(self.cameras.values())
        problems = {
            c.id: f"{c.source.stats.state}: {c.source.stats.last_error or ''}".rstrip(": ")
            for c in cameras
            if c.source.stats.state in UNHEALTHY_STATES
        }
        unpaired_after_s = self.cfg.health.unpaired_after_s
        now = time.monotonic()
        for c in cameras:
            if c.id in problems or c.ended:  # (an ended file's last shares say nothing now)
                continue
            if c.oversized:
                ring = self.cfg.ring
                problems[c.id] = (
                    f"its frames ({c.oversized} bytes) are larger than the whole memory budget "
                    f"or a ring (ring.max_total_bytes: {ring.max_total_bytes}, ring.max_bytes: "
                    f"{ring.max_bytes}): none is taken"
                )
                continue
            if unpaired_after_s is not None:
                problem = c.pairing_watch.problem(now, unpaired_after_s)
                if problem is not None:
                    problems[c.id] = problem
                    continue
            seen = c.shed_watch.share()
            # Frames refused by the tap's socket while no detector takes any (PUSH without a
            # peer) are not overload: the pairing verdict names that after unpaired_after_s.
            untaken = c.pairing_watch.untaken_for(now, UNTAKEN_RECENT_S)
            if c.shed_watch.overloaded and seen is not None and untaken is None:
                problems[c.id] = (
                    f"overloaded: {seen[0]:.0%} of its last {seen[1]} frames shed "
                    f"(this box, or the detector, cannot keep up with them)"
                )
        for name, supervisor in self._supervisors().items():
            problem = supervisor.problem()
            if problem is not None:
                problems[name] = problem
        if self.loop_lag_s > LOOP_LAG_UNHEALTHY_S:
            problems["event_loop"] = f"lagging {self.loop_lag_s:.2f} s"
        states = {c.id: c.source.stats.state for c in cameras}
        restarts = {name: s.restarts for name, s in self._supervisors().items()}
        body = {"ok": not problems, "problems": problems, "states": states, "restarts": restarts}
        return not problems, body

    def _supervisors(self) -> dict[str, Supervisor]:
        """Every supervised worker, by the name /healthz and /metrics give it."""
        out = {"expiry": self._expiry_supervisor}
        if self._crops is not None:
            out["crop_thread"] = self._crops.supervisor
        if self._tap is not None:
            out["frame_tap"] = self._tap_supervisor
            out["tap_subscriptions"] = self._subscriptions_supervisor
        for c in list(self.cameras.values()):
            if c.feed_supervisor is not None:
                out[f"feeder/{c.id}"] = c.feed_supervisor
        if self.hub is not None:
            for sid, preview in list(self.hub.sources.items()):
                out[f"preview/{sid}"] = preview.supervisor
        return out

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    # -- running ---------------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run until `stop()`, `duration_s`, or the end of every source; return the final stats."""
        loop = asyncio.get_running_loop()
        _start_opencv_pool()
        zctx = zmq.asyncio.Context()
        plain_ctx: zmq.Context[Any] = zmq.Context.shadow(zctx.underlying)  # crop thread's sockets
        receiver = None
        web_runners: list[Any] = []
        authenticator = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.cfg.preview is not None and self.hub is not None:
                self.preview_server = PreviewServer(self.cfg.preview, self.hub, self)
                web_runners = await start_preview(self.preview_server)
            if self.cfg.metrics is not None:
                m = self.cfg.metrics
                web_runners.append(
                    await serve_http(
                        metrics_app(self), m.host, m.port, "metrics", "/metrics", self._http_refused
                    )
                )
            keys = None
            detector_key = None
            curve = self.cfg.security.curve
            if curve is not None:
                server_keys = load_server_keys(curve)
                keys = (server_keys.public, server_keys.secret)
                if curve.detector_server_key is not None:
                    detector_key = load_public_key(curve.detector_server_key)
                authenticator = start_authenticator(zctx, curve)
            self._publishers = []
            for pc in self.cfg.publish:  # one by one: what was made is closed if one fails
                out = OutSocket(plain_ctx, pc.bind, pc.mode, pc.hwm, pc.send_timeout_ms, keys)
                classes = frozenset(pc.classes) if pc.classes is not None else None
                self._publishers.append(Publisher(pc, out, classes))
                self._publishers[-1].ring = _ring(pc)
            if self.cfg.tap is not None:
                tap = self.cfg.tap
                # (a plain socket: used from the decode threads under `_tap_lock`, never awaited)
                self._tap = OutSocket(plain_ctx, tap.bind, tap.mode, tap.hwm, curve_keys=keys)
                self._tap_open = True
            receiver = DetectionReceiver(plain_ctx, self.cfg.detections, keys, detector_key)
            self._crops = CropThread(
                receiver.sock,
                self._publishers,
                self.pairer,
                self._ring_lock,
                self.cameras,
                self.cfg.detections,
                self._encodings,
                self._observe_crop_seconds,
                self._preview_paired(loop),
                self.hub.on_crop if self.hub is not None else None,
                self.hub.watched if self.hub is not None else None,
            )
            self._crops.start()
            self.started_at = time.monotonic()
            self._loop = loop
            for camera in self.cameras.values():
                self._start(camera)
            tasks = [asyncio.create_task(self._expiry_supervisor.run_async(self._expire))]
            if self._tap is not None:
                tasks.append(asyncio.create_task(self._tap_supervisor.run_async(self._tap_worker)))
                tasks.append(
                    asyncio.create_task(
                        self._subscriptions_supervisor.run_async(self._track_tap_subscriptions)
                    )
                )
            # Until stopped, or every camera's source has ended by itself (finite files); a
            # shard that serves no camera runs until stopped.
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._stop.wait()),
                asyncio.ensure_future(self._ended.wait()),
            ]
            if duration_s is not None:
                waiters.append(asyncio.ensure_future(asyncio.sleep(duration_s)))
            while True:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if any(w.done() for w in waiters if w is not waiters[1]):
                    break  # stopped, or its duration is over
                self._ended.clear()
                self._check_ended()  # still so? (a camera may have been added since)
                if self._ended.is_set():
                    break
                waiters[1] = asyncio.ensure_future(self._ended.wait())
            self._stopping = True
            for w in waiters:
                w.cancel()
            cameras = list(self.cameras.values())
            await asyncio.gather(*(asyncio.to_thread(c.source.stop) for c in cameras))
            feeders = [c.feeder for c in cameras if c.feeder is not None]
            for f in feeders:
                f.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            await self._drain()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Lossless frames still waiting for a detector after the drain (the tap worker,
            # which could start another wait, has ended): given back, counted.
            for c in list(self.cameras.values()):
                await self._end_tap_later(c)
            # Off the loop: a decode thread blocked in a stalled read takes up to its stall
            # timeout to end, and the loop must keep serving (/healthz, the signal handler).
            await asyncio.gather(
                *(asyncio.to_thread(c.source.stop) for c in list(self.cameras.values()))
            )
            # A decode thread still in a stalled read hands on nothing from now on.
            for c in list(self.cameras.values()):
                self._fence(c)
            self._loop = None
            for runner in web_runners:
                await runner.cleanup()
            crops_ended = True
            if self._crops is not None:
                self._crops.stop()
                crops_ended = await asyncio.to_thread(self._crops.join, self._crop_join_s())
                if not crops_ended:
                    log.error("crop thread still busy %.1f s after stop", self._crop_join_s())
            if crops_ended:  # else its sockets are still in use: leave them (and the context)
                if receiver is not None:
                    receiver.close()
                for p in self._publishers:
                    p.out.close()
                    if p.ring is not None:
                        p.ring.close()
            if self._tap is not None:
                with self._tap_lock:
                    self._tap_open = False
                    self._tap.close(linger_ms=0)
            await asyncio.to_thread(self._executor.shutdown, True)
            if authenticator is not None:
                authenticator.stop()
            if crops_ended:
                zctx.term()
        return self.stats()

    def _observe_crop_seconds(self, sid: str, seconds: float) -> None:
        """From the crop thread (a removed camera's series is not created again)."""
        if sid in self.cameras:
            self.metrics.crop_seconds.labels(sid).observe(seconds)

    def _start(self, camera: Camera) -> None:
        """Start a camera's decode thread and its feeder task (on the loop: a lossless
        camera's frames, and every camera's end)."""
        assert self._loop is not None
        if not camera.source.lossless:
            camera.source.sink = lambda frame: self._take(camera, frame)
        camera.source.start(self._loop)
        camera.feed_supervisor = supervisor = Supervisor(f"feeder of {camera.id}")
        camera.feeder = asyncio.create_task(
            supervisor.run_async(lambda: self._feed(camera)), name=f"feed-{camera.id}"
        )

    def _crop_join_s(self) -> float:
        timeouts = [p.send_timeout_ms / 1000.0 for p in self.cfg.publish if p.mode == "push"]
        return CROP_THREAD_JOIN_S + max(timeouts, default=0.0)

    def _preview_paired(
        self, loop: asyncio.AbstractEventLoop
    ) -> Callable[[Frame, Detections, float], None] | None:
        """For the crop thread: hand a paired frame to the preview, on the loop, when watched."""
        hub = self.hub
        if hub is None:
            return None

        def on_paired(frame: Frame, dets: Detections, now: float) -> None:
            preview = hub.sources.get(frame.source_id)
            if preview is not None and preview.viewers:
                loop.call_soon_threadsafe(preview.on_paired, frame, dets, now)

        return on_paired

    async def _drain(self) -> None:
        """Give detections for frames still in the ring, and the crops being made, a bounded
        time; then the frames left in the ring expire."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        cameras = list(self.cameras.values())
        while time.monotonic() < deadline and (
            any(self.pairer.stats(c.id).in_ring for c in cameras)
            or any(c.counters.in_tap for c in cameras)
        ):
            await asyncio.sleep(0.02)
        # A live camera's decode thread still in a stalled read puts nothing into the flushed
        # ring (a lossless camera's frames come through the loop, which is here).
        for c in cameras:
            if not c.source.lossless:
                self._fence(c)
        with self._ring_lock:
            self.pairer.flush()
        if self._crops is not None:
            # Detections for frames paired just now may still be on their way through it.
            self._crops.stop()
            await asyncio.to_thread(self._crops.join, max(0.1, deadline - time.monotonic()))

    async def _feed(self, camera: Camera) -> None:
        """A lossless camera's frames into its ring, and to the tap when one is configured (a
        live camera's are handed on in its decode thread: this only waits for its end). Run
        by the camera's supervisor: should handing a frame on raise (a bug), that frame is
        counted (``error``) and the feeder starts again."""
        src = camera.source
        if src.lossless:
            await self._crop_subscribers(src.source_id)
        while True:
            try:
                frame = await src.recv()
            except EndOfStream:
                log.info("source %s: ended", src.source_id)
                camera.ended = True
                if self.cameras.get(camera.id) is camera:  # (not one being removed)
                    self._check_ended()
                return
            try:
                await self._feed_one(camera, frame)
            except Exception:
                camera.counters.shed("error")
                raise

    async def _feed_one(self, camera: Camera, frame: Frame) -> None:
        """One frame of a lossless camera (a live camera's go through `_take`): it waits for
        room (its decoder waits meanwhile), then goes into the ring, to the tap first when
        there is one."""
        counters = camera.counters
        now = time.monotonic()
        if self.hub is not None:
            self.hub.sources[camera.id].on_frame(frame, now)
        if not self._fits_at_all(camera, frame.nbytes):
            counters.shed("budget")  # (it would wait for ever)
            with self._ring_lock:
                self.pairer.forget_turn(camera.id)  # (kept for a smaller frame: never used)
            return
        counters.in_feed = 1  # (accounted as in the hand-off while it waits)
        try:
            if now < camera.next_tap_at:  # tap.max_fps: it waits, as it waits for room
                await asyncio.sleep(camera.next_tap_at - now)
            await self._room_for(camera, frame.nbytes)
        except asyncio.CancelledError:
            counters.shed("stopping")  # stopping with this frame in hand
            raise
        finally:
            counters.in_feed = 0
        now = time.monotonic()
        if self._tap is None:
            with self._ring_lock:
                self.pairer.add_frame(frame, now)
            return
        self._next_tap(camera, now)
        counters.in_tap += 1
        with self._ring_lock:  # (it fits: looked at just now, with no await since)
            self.pairer.reserve(camera.id, frame.nbytes)
        self._tap_queue.put_nowait((camera, frame))

    def _take(self, camera: Camera, frame: Frame) -> None:
        """(In a live camera's decode thread) One frame: into the ring, through the tap first
        when there is one, or counted as shed, all decided and done here: no hand-off to the
        loop or to a worker. Its counters change under the camera's `feed_lock`, with the
        frame always counted somewhere. Never raises: a bug is counted (``error``) and
        logged, and the next frame goes on."""
        try:
            if self._place_counted(camera, frame):
                self._tap_live(camera, frame)
        except Exception as e:  # a bug in the counting itself: logged, the decoder goes on
            self._bug(camera, e)

    def _place_counted(self, camera: Camera, frame: Frame) -> bool:
        """Count a live frame as decoded and `_place` it, under the camera's lock; True when
        it is to be tapped."""
        with camera.feed_lock:
            if camera.removed:
                return False  # decoded after its final counters were taken (a read outlived
                # the stop)
            camera.source.count_decoded()
            try:
                return self._place(camera, frame)
            except Exception as e:
                camera.counters.shed("error")  # (`_place` commits nothing before its end)
                failed = e
        self._bug(camera, failed)
        return False

    def _tap_live(self, camera: Camera, frame: Frame) -> None:
        """Make an admitted live frame's tap message (outside the camera's lock: /metrics may
        read its counters meanwhile), then send it and put the frame into the ring in the same
        step as it leaves the tap, so that it is never counted twice."""
        counters = camera.counters
        outcome: str = "error"
        message: list[Any] | None = None
        failed: list[Exception] = []
        try:
            refused = self._tap_refuses(frame_topic(camera.id))
            if refused is not None:
                outcome = refused
            else:
                message = self._tap_encode(frame)
                outcome = "sent" if message is not None else "encode_failed"
        except Exception as e:
            failed.append(e)
        with camera.feed_lock:
            if camera.removed:  # (its fence counted it: stopping)
                if self.cameras.get(camera.id) is camera:  # (the end of a run: its ring is kept)
                    with self._ring_lock:
                        self.pairer.release(camera.id, frame.nbytes)
                return
            try:
                if message is not None:
                    outcome = self._send_tapped(camera, frame, message)
            except Exception as e:
                outcome = "error"
                failed.append(e)
            counters.in_tap -= 1
            if outcome != "sent":
                counters.shed(outcome)
            try:
                if self.cameras.get(camera.id) is camera:
                    with self._ring_lock:
                        self.pairer.release(camera.id, frame.nbytes)
            except Exception as e:
                failed.append(e)
        for bug in failed:
            self._bug(camera, bug)
        self._tap_refused(outcome)

    def _place(self, camera: Camera, frame: Frame) -> bool:
        """(`_take`, under the camera's `feed_lock`) Put a live frame into the ring when there
        is no tap, or count it as shed; True when it is to be tapped (counted in the tap, its
        room in the memory budget reserved). Only frames a detector actually gets wait in the
        ring; the rest are decided here, before any work is spent on them. What it commits
        (into the ring, the tap, a count) it commits last: if it raises, nothing was."""
        src, counters, sid = camera.source, camera.counters, camera.id
        now = time.monotonic()
        self._show(camera, frame, now)
        if self.cameras.get(sid) is not camera:
            counters.shed("stopping")  # being removed
            return False
        if not self._fits_at_all(camera, frame.nbytes):
            with self._ring_lock:
                self.pairer.forget_turn(sid)  # (kept for a smaller frame: never used)
            counters.shed("budget")
            return False
        if self._tap is None:
            with self._ring_lock:  # (the oldest of the fullest ring makes room)
                self.pairer.add_frame(frame, now, bound=False)
                self._bound(camera, turns=True)  # (in the ring for good: never raises)
            return False
        if now + 1e-3 < camera.next_tap_at:
            counters.shed("rate")
            return False
        reason = self._admit(camera, frame.nbytes)
        if reason is not None:
            # Decode less of what would be turned away (sources/shedding.py).
            src.shed_downstream_until = now + SHED_HINT_S
            counters.shed(reason)
            return False
        self._next_tap(camera, now)
        with self._ring_lock:  # (admitted just now, under the same lock)
            self.pairer.reserve(sid, frame.nbytes)
        counters.in_tap += 1
        return True

    def _fence(self, camera: Camera) -> None:
        """Take a camera's last counters: its frames still in the tap count as ``stopping``,
        and a frame its decode thread hands on later (a read that outlived the stop) changes
        nothing."""
        with camera.feed_lock:
            for _ in range(camera.counters.in_tap):  # still in the tap: counted here
                camera.counters.shed("stopping")
            camera.counters.in_tap = 0  # (whatever is done with them later is not)
            camera.removed = True

    def _next_tap(self, camera: Camera, now: float) -> None:
        """A frame of the camera's is tapped now: when the next may be (tap.max_fps)."""
        if self.cfg.tap is not None and self.cfg.tap.max_fps is not None:
            camera.next_tap_at = max(camera.next_tap_at + 1.0 / self.cfg.tap.max_fps, now)

    def _show(self, camera: Camera, frame: Frame, now: float) -> None:
        """(A decode thread) Hand a live frame to the preview, on the loop, while watched."""
        preview = None if self.hub is None else self.hub.sources.get(camera.id)
        loop = self._loop  # (None once run() has ended)
        if preview is not None and preview.viewers and loop is not None:
            with contextlib.suppress(RuntimeError):  # (the loop has closed: nobody watches)
                loop.call_soon_threadsafe(preview.on_frame, frame, now)

    def _bug(self, camera: Camera, e: Exception) -> None:
        self._warn(
            f"take-{camera.id}-{type(e).__name__}",
            "source %s: handing a frame on failed (%s: %s); going on with the next",
            camera.id,
            type(e).__name__,
            e,
            exc_info=e,
        )

    def _left_tap(self, camera: Camera, frame: Frame) -> None:
        """A lossless camera's frame has left the tap (sent into the ring, or shed): its place
        in the tap and in the memory budget are given back (a removed camera's were, at once)."""
        camera.counters.in_tap -= 1
        camera.tap_room.set()
        if self.cameras.get(camera.id) is camera:
            with self._ring_lock:
                self.pairer.release(camera.id, frame.nbytes)

    async def _crop_subscribers(self, sid: str) -> None:
        """A lossless source starts once every `wait_for_subscriber` publisher has a subscriber:
        PUB sends nothing to a subscriber whose subscription has not arrived yet."""
        waiting = [p for p in self._publishers if p.cfg.wait_for_subscriber and p.cfg.mode == "pub"]
        while not all(p.out.subscribed for p in waiting):
            self._warn(
                f"crop-wait-{sid}",
                "crop publisher: no subscriber yet; source %s waits (wait_for_subscriber)",
                sid,
            )
            await asyncio.sleep(SUBSCRIBER_POLL_S)

    def _admit(self, camera: Camera, nbytes: int) -> str | None:
        """Whether a live frame may be tapped now, or why not: the source's in-flight frames
        are full (``busy``: the detector or the crop stage is behind, so the frame could not be
        served in time), or the memory budget has no room (``budget``)."""
        sid, counters = camera.id, camera.counters
        assert self.cfg.tap is not None
        with self._ring_lock:
            in_ring = self.pairer.stats(sid).in_ring
            # (no more than the ring holds, in frames and bytes: a frame tapped beyond it would
            # evict one sent before its detections came)
            if counters.in_tap + in_ring >= min(
                self.cfg.tap.max_in_flight, self.cfg.ring.max_frames
            ) or not self.pairer.room_for(sid, nbytes, counters.in_tap + 1):
                self.pairer.forget_turn(sid)  # (it wants no room in the budget now)
                return "busy"
            if not self.pairer.budget_fits(sid, nbytes):
                return "budget"
        return None

    def _fits_at_all(self, camera: Camera, nbytes: int) -> bool:
        """Whether a frame of `nbytes` fits the whole memory budget; if not, say so, in the
        log and in /healthz (none of the camera's frames is taken until it is raised)."""
        ring = self.cfg.ring
        camera.oversized = 0 if nbytes <= min(ring.max_total_bytes, ring.max_bytes) else nbytes
        if not camera.oversized:
            return True
        self._warn(
            f"budget-{camera.id}",
            "source %s: its frames (%d bytes) are larger than the whole memory budget "
            "(ring.max_total_bytes: %d) or a ring (ring.max_bytes: %d): none is taken until "
            "it is raised",
            camera.id,
            nbytes,
            ring.max_total_bytes,
            ring.max_bytes,
        )
        return False

    async def _room_for(self, camera: Camera, nbytes: int) -> None:
        """A lossless source's frame waits here until it fits the tap queue, the ring and the
        memory budget, counting the frames already on their way to the ring (instead of one being
        dropped or evicted). Without a tap, until it fits the ring and the budget. It keeps its
        turn for the budget only while it waits for the budget alone."""
        sid, counters = camera.id, camera.counters
        while True:
            if self._tap is not None and self._tap_refuses(frame_topic(sid)) is not None:
                # No detector takes its frames yet: it waits here, not in the tap worker that
                # every camera shares (one lossless camera's frames held it, and the live
                # cameras' frames were all turned away as busy).
                self._warn(
                    f"tap-wait-{sid}",
                    "frame tap: no detector takes source %s's frames (none subscribed; a PUSH "
                    "tap: none connected with room); it waits (realtime: false)",
                    sid,
                )
                with self._ring_lock:
                    self.pairer.forget_turn(sid)
                await asyncio.sleep(SUBSCRIBER_POLL_S)
                continue
            if counters.in_tap >= TAP_QUEUE_FRAMES:
                with self._ring_lock:
                    self.pairer.forget_turn(sid)
                camera.tap_room.clear()
                await camera.tap_room.wait()
                continue
            most = self.cfg.tap.max_in_flight if self.cfg.tap is not None else None
            with self._ring_lock:
                in_flight = counters.in_tap + self.pairer.stats(sid).in_ring
                if (most is None or in_flight < most) and self.pairer.room_for(
                    sid, nbytes, counters.in_tap + 1
                ):
                    if self.pairer.budget_fits(sid, nbytes):
                        return
                else:
                    self.pairer.forget_turn(sid)
            await asyncio.sleep(RING_ROOM_POLL_S)  # the crop thread pairs frames out of the ring

    async def _tap_worker(self) -> None:
        assert self._tap is not None
        while True:
            camera, frame = await self._tap_queue.get()
            outcome: TapOutcome | Literal["waiting"] | None = None
            try:
                outcome = await self._tap_one(camera, frame)
            except asyncio.CancelledError:
                camera.counters.shed("stopping")
                raise
            except Exception:
                camera.counters.shed("error")  # a bug: counted, and the supervisor restarts us
                raise
            finally:
                if outcome != "waiting":  # (else still in the tap: its camera's `tap_later`)
                    self._left_tap(camera, frame)  # whatever happened, its place is given back
            if outcome == "waiting":
                continue
            if outcome != "sent":
                camera.counters.shed(outcome)
                self._tap_refused(outcome)

    def _tap_refused(self, outcome: str) -> None:
        """Count (on the tap) and log a frame the tap's socket did not take."""
        if outcome in ("no_subscriber", "full"):
            assert self._tap is not None
            with self._tap_lock:
                self._tap.count_drop("full" if outcome == "full" else "no_subscriber")
            self._warn(f"tap-{outcome}", "frame tap: frame not sent (%s)", outcome)

    async def _tap_one(self, camera: Camera, frame: Frame) -> TapOutcome | Literal["waiting"]:
        """Make one lossless frame's tap picture (in a worker thread) and send it; put it in
        the ring once sent. Returns ``sent``, ``stopping`` (its camera was removed) or
        ``encode_failed``; a frame that no detector takes yet waits for one in its camera's
        `tap_later` task, after any of its frames waiting there already (``waiting``): not
        here, in the worker every lossless camera shares."""
        if self.cameras.get(camera.id) is not camera:  # removed while its frame waited
            return "stopping"
        message = await asyncio.get_running_loop().run_in_executor(
            self._executor, self._tap_encode, frame
        )
        if message is None:
            return "encode_failed"
        if not camera.tap_waiting:  # its frames go in order: behind those waiting
            outcome = self._send_tapped(camera, frame, message)
            if outcome == "sent" or outcome == "stopping":
                return outcome
        camera.tap_waiting.append((frame, message))
        if camera.tap_later is None or camera.tap_later.done():
            camera.tap_later = asyncio.create_task(self._tap_later(camera))
        return "waiting"

    def _tap_encode(self, frame: Frame) -> list[Any] | None:
        """(Any thread) A frame's tap message; None (logged) if it cannot be encoded: it is
        not sent (and counted), and the tap goes on."""
        tap_cfg = self.cfg.tap
        assert tap_cfg is not None
        try:
            fields, payload = tap_image(
                frame, tap_cfg.encoding, tap_cfg.width, tap_cfg.height, tap_cfg.jpeg_quality
            )
            header = {
                "v": 1,
                "source_id": frame.source_id,
                "frame_id": frame.frame_id,
                "pts": frame.pts,
                "captured_at": frame.captured_at,
                **fields,
            }
            if self.cfg.detections.reply_to is not None:
                header["reply_to"] = self.cfg.detections.reply_to  # where detections go
            return [frame_topic(frame.source_id), dumps(header), payload]
        except Exception:
            log.exception("frame tap: cannot encode %s frame %s", frame.source_id, frame.frame_id)
            return None

    def _tap_refuses(self, topic: bytes) -> TapOutcome | None:
        """(Any thread) `OutSocket.refuses`, under the tap's lock; and when the socket has
        (un)subscriptions waiting, their tracker is woken (every live frame looks)."""
        assert self._tap is not None
        with self._tap_lock:
            if not self._tap_open:
                return "stopping"
            refused = self._tap.refuses(topic)
            waiting = self._tap.subscriptions_waiting()
        loop = self._loop  # (None once run() has ended)
        if waiting and loop is not None:
            with contextlib.suppress(RuntimeError):  # (the loop has closed)
                loop.call_soon_threadsafe(self._tap_readable.set)
        return refused

    async def _track_tap_subscriptions(self) -> None:
        """Keep the tap's subscriptions current: read them whenever a thread that used the
        socket saw some waiting (each live frame looks, in `_tap_refuses`), and at least every
        TAP_SUBSCRIPTIONS_POLL_S (while no frame comes). Not on the socket's file descriptor:
        it signals every change, each frame's sends too (a loop wake-up per frame), and
        whichever thread uses the socket may take its signal."""
        tap = self._tap
        assert tap is not None
        if tap.mode != "pub":
            return  # (a PUSH socket has no subscriptions)
        while True:
            self._tap_readable.clear()
            with self._tap_lock:
                if self._tap_open:
                    tap.read_subscriptions()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tap_readable.wait(), TAP_SUBSCRIPTIONS_POLL_S)

    def _send_tapped(self, camera: Camera, frame: Frame, message: list[Any]) -> TapOutcome:
        """Put a tapped frame in the ring and send its message: ``sent``, ``stopping`` (its
        camera was removed, or the tap closed), ``no_subscriber`` or ``full``. Once sent, the
        frame stays in the ring whatever follows (the detector has it)."""
        assert self._tap is not None
        # Into the ring before the send: the crop thread may get the detections for it before
        # the send returns. Nothing is evicted for it until it is sent. The lock is held across
        # the (non-blocking) send so that the crop thread cannot pair a frame that is then
        # withdrawn (timestamp pairing needs no tap).
        with self._ring_lock:
            if self.cameras.get(camera.id) is not camera:
                return "stopping"  # removed while this frame waited (its ring is gone)
            self.pairer.add_frame(frame, time.monotonic(), bound=False)
            outcome: TapOutcome = "stopping"
            try:
                with self._tap_lock:
                    if self._tap_open:
                        outcome = self._tap.attempt(message)
            finally:
                if outcome != "sent":
                    self.pairer.withdraw(frame)
            if outcome != "sent":
                return outcome
            self._bound(camera, turns=False)
        return "sent"

    def _bound(self, camera: Camera, turns: bool) -> None:
        """(Under the ring's lock) `Pairer.bound` for a frame of the camera's that was just put
        into its ring for good: a bug there is logged, the frame stays (it is not counted
        again as shed)."""
        try:
            self.pairer.bound(camera.id, time.monotonic(), turns=turns)
        except Exception as e:
            self._warn("bound", "ring: cannot bound %s's ring", camera.id, exc_info=e)

    async def _tap_later(self, camera: Camera) -> None:
        """A lossless source's tapped frames that no detector took, sent in order as soon as
        one does (an XPUB polls writable even when full: retried), backing off. A frame its
        send fails on (a bug) is counted (``error``), logged, and the next goes on."""
        pause_s = TAP_RETRY_MIN_S
        while camera.tap_waiting:
            frame, message = camera.tap_waiting[0]
            try:
                outcome: str = self._send_tapped(camera, frame, message)
            except Exception as e:
                self._warn(f"tap-later-{camera.id}", "frame tap: cannot send a frame", exc_info=e)
                outcome = "error"
            if outcome in ("sent", "stopping", "error"):
                camera.tap_waiting.popleft()
                self._left_tap(camera, frame)
                if outcome != "sent":
                    camera.counters.shed(outcome)
                pause_s = TAP_RETRY_MIN_S
                continue
            if outcome == "no_subscriber":
                self._warn(
                    f"tap-later-wait-{camera.id}",
                    "frame tap: no detector subscribed; source %s's frames wait (realtime: false)",
                    camera.id,
                )
            await asyncio.sleep(pause_s)
            pause_s = min(2 * pause_s, TAP_RETRY_MAX_S)

    async def _end_tap_later(self, camera: Camera) -> None:
        """Stop a camera's `_tap_later` and count what still waits (``stopping``): here, not
        in the task, which a cancel before its first step never runs."""
        task, camera.tap_later = camera.tap_later, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while camera.tap_waiting:
            frame, _ = camera.tap_waiting.popleft()
            self._left_tap(camera, frame)
            camera.counters.shed("stopping")
        camera.tap_room.set()

    async def _expire(self) -> None:
        """Age-based ring expiry and the sources' stall watchdogs, also when no frame comes;
        and how late the loop wakes up (its lag, for /healthz)."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(EXPIRY_INTERVAL_S)
            now = time.monotonic()
            lag = max(0.0, now - before - EXPIRY_INTERVAL_S)
            self._lags.append((now, lag))
            while self._lags and self._lags[0][0] < now - LAG_WINDOW_S:
                self._lags.popleft()
            self.loop_lag_s = max(lag for _, lag in self._lags)
            cameras = list(self.cameras.values())
            with self._ring_lock:
                self.pairer.expire(now)
                for c in cameras:
                    if c.ended or c.source.stats.state != "streaming":
                        self.pairer.forget_turn(c.id)  # (it asks for no room now)
                    ring = self.pairer.stats(c.id)
                    c.pairing_watch.observe(
                        ring.added,
                        ring.paired,
                        now,
                        received=c.source.counts()[0],
                        untaken=c.counters.not_tapped_by["no_subscriber"]
                        + c.counters.not_tapped_by["full"],
                    )
            for c in cameras:
                c.source.check_stall(now)
            if now - self._shed_sampled_at >= SHED_SAMPLE_INTERVAL_S:
                self._shed_sampled_at = now
                for c in cameras:
                    s = self._camera_stats(c)
                    c.shed_watch.observe(now, *overload_shed(s, tapped=self._tap is not None))

    # -- reporting -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of every counter."""
        sources = {c.id: self._camera_stats(c) for c in list(self.cameras.values())}
        return {
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "loop_lag_s": round(self.loop_lag_s, 4),
            "ring_bytes": self.pairer.total_bytes,
            "ring_budget_bytes": self.cfg.ring.max_total_bytes,
            "sources": sources,
            "removed_sources": list(self._removed),
            "removed_totals": {
                **self._removed_totals,
                "detections": dict(self._removed_totals["detections"]),
            },
            "malformed": dict(self._crops.malformed) if self._crops else {},
            "handler_failed": dict(self._crops.handler_failed) if self._crops else {},
            "restarts": {name: s.restarts for name, s in self._supervisors().items()},
            "unknown_source": self._crops.unknown_source if self._crops else 0,
            "publishers": [
                {
                    "endpoint": p.cfg.bind,
                    "offered": p.offered,
                    "mode": p.cfg.mode,
                    "subscriptions": p.out.subscriptions.total,
                    "shm_inline": p.shm_inline,
                    **dataclasses.asdict(p.out.stats),
                }
                for p in self._publishers
            ],
            "tap": None if self._tap is None else dataclasses.asdict(self._tap.stats),
            **self._preview_stats(),
        }

    def _preview_stats(self) -> dict[str, Any]:
        server = self.preview_server
        return {
            "http_refused": dict(self._http_refused + (server.refused if server else Counter())),
            "preview_video_stopped": server.video_stopped if server else 0,
            "webrtc_failed": dict(server.webrtc_failed) if server else {},
        }

    def _add_removed(self, final: dict[str, Any]) -> None:
        """Add a removed camera's final counters to the running totals of removed cameras (its
        own stay listed among the last REMOVED_KEPT)."""
        totals = self._removed_totals
        for key, value in final.items():
            running = key not in ("in_handoff", "in_tap", "in_ring", "ring_bytes")  # not levels
            if running and isinstance(value, int) and not isinstance(value, bool):
                totals[key] = totals.get(key, 0) + value
        totals["detections"].update(final["detections"])

    def _camera_stats(self, camera: Camera, ring: RingStats | None = None) -> dict[str, Any]:
        """One camera's counters, JSON-ready (`ring`: its ring's, if no longer in the pairer)."""
        with camera.feed_lock:  # (a live camera's decode thread changes them under it)
            return self._camera_counts(camera, ring)

    def _camera_counts(self, camera: Camera, ring: RingStats | None) -> dict[str, Any]:
        src, c = camera.source, camera.counters
        if ring is None:
            with self._ring_lock:
                ring = dataclasses.replace(self.pairer.stats(camera.id))
        decoded, skipped_fps, dropped_handoff, in_handoff = src.counts()
        behind = src.stats.behind_s
        return {
            "state": src.stats.state,
            "last_error": src.stats.last_error,
            "reconnects": src.stats.reconnects,
            "stalls": src.stats.stalls,
            "decoded": decoded,
            "skipped_fps": skipped_fps,
            "skipped_decode": src.stats.skipped_decode,
            "skip_level": src.stats.skip_level,
            "behind_s": None if behind is None else round(behind, 3),
            "bad_packets": src.stats.bad_packets,
            "too_large": src.stats.too_large,
            "missing_frames": src.stats.missing_frames,
            "dropped_handoff": dropped_handoff,
            "in_handoff": in_handoff + c.in_feed,
            "in_tap": c.in_tap,
            "not_tapped": c.not_tapped,
            "not_tapped_by": dict(c.not_tapped_by),
            "paired": ring.paired,
            "expired": ring.expired,
            "expired_by": {
                "age": ring.expired_age,
                "full": ring.expired_full,
                "budget": ring.expired_budget,
                "shutdown": ring.expired_shutdown,
            },
            "in_ring": ring.in_ring,
            "ring_bytes": ring.ring_bytes,
            "detections": dict(c.detections),
            "crops": c.crops,
            "crop_failed": c.crop_failed,
            "empty_box": c.empty_box,
            "no_mask": c.no_mask,
            "filtered_class": c.filtered_class,
            "unwanted": c.unwanted,
            "crop_budget": c.crop_budget,
        }


LIVE_FIELDS = ("crop", "classes", "max_fps")  # what a reload applies without a restart


def _ring(cfg: PublishConfig) -> RingWriter | None:
    """The shared-memory ring of a publisher with ``shm`` (None without)."""
    if cfg.shm is None:
        return None
    name = cfg.shm_name
    assert name is not None
    try:
        return RingWriter(cfg.shm.dir, name, cfg.shm.bytes)
    except OSError as e:
        raise OSError(
            f"publisher {cfg.bind}: cannot create its shm ring {cfg.shm.dir / name}: "
            f"{e.strerror or e}"
        ) from None


def _live_patch(old: SourceConfig, new: SourceConfig, cfg: StreamerConfig) -> dict[str, Any] | None:
    """The live settings that turn `old` into `new`, or None if anything else differs."""
    if old.model_copy(update=dict.fromkeys(LIVE_FIELDS)) != new.model_copy(
        update=dict.fromkeys(LIVE_FIELDS)
    ):
        return None
    crop = new.crop or cfg.crop
    return {
        "mask_opacity": crop.mask_opacity,
        "background_color": crop.background_color,
        "classes": new.classes,
        "max_fps": new.max_fps,
    }


def accounting_balance(source_stats: dict[str, Any]) -> int:
    """decoded minus every place a frame can be; 0 when the accounting invariant holds."""
    s = source_stats
    return int(s["decoded"]) - sum(
        int(s[k])
        for k in (
            "skipped_fps",
            "dropped_handoff",
            "in_handoff",
            "in_tap",
            "not_tapped",
            "paired",
            "expired",
            "in_ring",
        )
    )


def _start_opencv_pool() -> None:
    """Start OpenCV's worker threads from this (the loop's) thread. They take the priority of
    the thread whose call first needs them: were that a decode thread (a BGR or JPEG tap, a
    webcam), the crop thread's conversions would run at the decoders' lower priority too.
    Best effort: on a busy machine OpenCV was seen to start one more worker, for a while, from
    a decode thread's call even so."""
    cv2.cvtColor(np.zeros((1080 * 3 // 2, 1920), np.uint8), cv2.COLOR_YUV2BGR_I420)
