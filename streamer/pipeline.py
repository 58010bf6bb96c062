"""The only module that knows every stage: sources -> ring (+ tap) -> pairing with detections ->
crop stage (worker threads) -> publishers, wired with bounded queues.

Accounting, per source, whenever the loop is between steps:
    decoded = skipped_fps + dropped_handoff + in_handoff + in_tap + not_tapped + paired
              + expired + in_ring
and per publisher:
    offered = sent + dropped_no_subscriber + dropped_hwm + dropped_timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq.asyncio

from streamer.colors import parse_color_bgr
from streamer.config import PublishConfig, StreamerConfig, parse_patch
from streamer.crop.stage import CropResult, make_crops
from streamer.detections.codec import decode_detections
from streamer.detections.receiver import DetectionReceiver
from streamer.errors import EndOfStream, ProtocolError
from streamer.metrics import LogOnce, Metrics, SourceCounters
from streamer.pairing import Pairer
from streamer.preview.hub import PreviewHub
from streamer.preview.server import PreviewServer
from streamer.preview.server import start as start_preview
from streamer.publish.wire import crop_message, dumps, frame_topic
from streamer.publish.zmq_out import OutSocket
from streamer.security import load_server_keys, start_authenticator
from streamer.sources.base import Source
from streamer.sources.factory import make_source
from streamer.tap import tap_image
from streamer.types import CropParams, Detections, Frame

log = logging.getLogger(__name__)

UNHEALTHY_STATES = ("stalled", "failed", "stopped")
LOOP_LAG_UNHEALTHY_S = 1.0
LAG_WINDOW_S = 5.0
CPU_WORKERS = 2
TAP_QUEUE_FRAMES = 2  # per source: frames waiting to be encoded for the tap
CROP_QUEUE_JOBS = 8  # paired frames waiting for the crop stage; beyond this, stop reading
EXPIRY_INTERVAL_S = 0.1
DRAIN_TIMEOUT_S = 2.0  # after sources end or a stop: time given to pending detections and crops


@dataclasses.dataclass
class _Publisher:
    cfg: PublishConfig
    out: OutSocket
    classes: frozenset[str] | None
    offered: int = 0

    def wants(self, header: dict[str, Any]) -> bool:
        return (self.classes is None or header["class"] in self.classes) and header[
            "confidence"
        ] >= self.cfg.min_confidence


class Pipeline:
    """Runs a StreamerConfig until stopped or until every (finite) source has ended."""

    def __init__(self, cfg: StreamerConfig) -> None:
        self.cfg = cfg
        self.sources: dict[str, Source] = {s.id: make_source(s) for s in cfg.sources}
        self.counters = {sid: SourceCounters() for sid in self.sources}
        self.malformed: Counter[str] = Counter()
        self.unknown_source = 0
        self.pairer = Pairer(
            list(self.sources),
            max_frames=cfg.ring.max_frames,
            max_bytes=cfg.ring.max_bytes,
            max_age_s=cfg.ring.max_age_ms / 1000.0,
        )
        self._settings: dict[str, dict[str, Any]] = {}
        for s in cfg.sources:
            crop = cfg.crop_for(s.id)
            self._settings[s.id] = {
                "mask_opacity": crop.mask_opacity,
                "background_color": crop.background_color,
                "classes": s.classes,
                "max_fps": s.max_fps,
            }
        self._params = {sid: self._crop_params(sid) for sid in self.sources}
        self.loop_lag_s = 0.0  # the worst lag of the last LAG_WINDOW_S
        self._lags: deque[tuple[float, float]] = deque()
        self.metrics = Metrics(self.stats)
        for sid, src in self.sources.items():
            src.decode_observer = self.metrics.decode_seconds.labels(sid).observe
        self._encodings = tuple(sorted({p.encoding_key for p in cfg.publish}))
        self._warn = LogOnce(log)
        self._stop = asyncio.Event()
        self._executor = ThreadPoolExecutor(CPU_WORKERS, thread_name_prefix="streamer-cpu")
        self._publishers: list[_Publisher] = []
        self._tap: OutSocket | None = None
        self._tap_queue: asyncio.Queue[Frame] = asyncio.Queue(TAP_QUEUE_FRAMES * len(self.sources))
        self._crop_queue: asyncio.Queue[tuple[Frame, Detections]] = asyncio.Queue(CROP_QUEUE_JOBS)
        self.hub: PreviewHub | None = None
        self.preview_server: PreviewServer | None = None
        if cfg.preview is not None:
            self.hub = PreviewHub(
                list(self.sources), cfg.preview.max_width, cfg.preview.max_fps, self._executor
            )
        self.started_at = time.monotonic()

    def stop(self) -> None:
        """Ask `run()` to finish (thread-unsafe; call from the loop, e.g. a signal handler)."""
        self._stop.set()

    # -- control (the HTTP API calls these on the loop) -------------------------------------

    def _crop_params(self, sid: str) -> CropParams:
        s = self._settings[sid]
        return CropParams(s["mask_opacity"], parse_color_bgr(s["background_color"]))

    def source_settings(self, sid: str) -> dict[str, Any]:
        return dict(self._settings[sid])

    def patch_source(self, sid: str, data: Any) -> dict[str, Any]:
        """Change a source's crop settings, class filter or max_fps from the next frame on.
        Raises ConfigError (with config-style messages) on a bad value, KeyError on a bad id."""
        if sid not in self.sources:
            raise KeyError(sid)
        patch = parse_patch(data)
        changes = patch.model_dump(exclude_unset=True)
        self._settings[sid].update(changes)
        self._params[sid] = self._crop_params(sid)
        if "max_fps" in changes:
            self.sources[sid].max_fps = changes["max_fps"]
        log.info("source %s: settings changed: %s", sid, changes)
        return self.source_settings(sid)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the loop is responsive and no source is stalled, failed or stopped
        (streaming, connecting and deliberately backing off are all fine)."""
        problems = {
            sid: f"{src.stats.state}: {src.stats.last_error or ''}".rstrip(": ")
            for sid, src in self.sources.items()
            if src.stats.state in UNHEALTHY_STATES
        }
        if self.loop_lag_s > LOOP_LAG_UNHEALTHY_S:
            problems["event_loop"] = f"lagging {self.loop_lag_s:.2f} s"
        states = {sid: src.stats.state for sid, src in self.sources.items()}
        return not problems, {"ok": not problems, "problems": problems, "states": states}

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    # -- running ---------------------------------------------------------------------------

    async def run(self, duration_s: float | None = None) -> dict[str, Any]:
        """Run until `stop()`, `duration_s`, or the end of every source; return the final stats."""
        loop = asyncio.get_running_loop()
        zctx = zmq.asyncio.Context()
        receiver = None
        web_runners: list[Any] = []
        authenticator = None
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.cfg.preview is not None and self.hub is not None:
                self.preview_server = PreviewServer(self.cfg.preview, self.hub, self)
                web_runners = await start_preview(self.preview_server)
            keys = None
            curve = self.cfg.security.curve
            if curve is not None:
                server_keys = load_server_keys(curve)
                keys = (server_keys.public, server_keys.secret)
                authenticator = start_authenticator(zctx, curve)
            self._publishers = [
                _Publisher(
                    p,
                    OutSocket(zctx, p.bind, p.mode, p.hwm, p.send_timeout_ms, keys),
                    frozenset(p.classes) if p.classes is not None else None,
                )
                for p in self.cfg.publish
            ]
            if self.cfg.tap is not None:
                tap = self.cfg.tap
                self._tap = OutSocket(zctx, tap.bind, tap.mode, tap.hwm, curve_keys=keys)
            receiver = DetectionReceiver(zctx, self.cfg.detections, keys)
            self.started_at = time.monotonic()
            for src in self.sources.values():
                src.start(loop)
            feeders = [asyncio.create_task(self._feed(src)) for src in self.sources.values()]
            tasks = [
                asyncio.create_task(self._receive(receiver)),
                asyncio.create_task(self._crop_worker()),
                asyncio.create_task(self._expire()),
            ]
            outs = [p.out for p in self._publishers]
            if self._tap is not None:
                tasks.append(asyncio.create_task(self._tap_worker()))
                outs.append(self._tap)
            tasks += [asyncio.create_task(o.track_subscriptions()) for o in outs]
            waiters: list[asyncio.Future[Any]] = [
                # asyncio.wait, unlike gather, does not cancel the feeders when cancelled itself.
                asyncio.ensure_future(asyncio.wait(feeders)),
                asyncio.ensure_future(self._stop.wait()),
            ]
            if duration_s is not None:
                waiters.append(asyncio.ensure_future(asyncio.sleep(duration_s)))
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            await asyncio.gather(*(asyncio.to_thread(s.stop) for s in self.sources.values()))
            for f in feeders:
                f.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            await self._drain()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for src in self.sources.values():
                src.stop()
            for runner in web_runners:
                await runner.cleanup()
            if receiver is not None:
                receiver.close()
            for p in self._publishers:
                p.out.close()
            if self._tap is not None:
                self._tap.close(linger_ms=0)
            self._executor.shutdown(wait=True)
            if authenticator is not None:
                authenticator.stop()
            zctx.term()
        return self.stats()

    async def _drain(self) -> None:
        """Give detections for frames still in the ring, and queued crops, a bounded time."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and (
            any(self.pairer.stats(sid).in_ring for sid in self.sources)
            or any(c.in_tap for c in self.counters.values())
            or not self._crop_queue.empty()
        ):
            await asyncio.sleep(0.02)
        self.pairer.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._crop_queue.join(), max(0.0, deadline - time.monotonic()))

    async def _feed(self, src: Source) -> None:
        """Frames from one source into its ring, and to the tap when one is configured."""
        counters = self.counters[src.source_id]
        tap_period_s = 0.0
        if self.cfg.tap is not None and self.cfg.tap.max_fps is not None:
            tap_period_s = 1.0 / self.cfg.tap.max_fps
        next_tap_at = 0.0
        while True:
            try:
                frame = await src.recv()
            except EndOfStream:
                log.info("source %s: ended", src.source_id)
                return
            now = time.monotonic()
            if self.hub is not None:
                self.hub.sources[src.source_id].on_frame(frame, now)
            if self._tap is None:
                self.pairer.add_frame(frame, now)
                continue
            # Only frames a detector actually gets wait in the ring; the rest are not_tapped.
            if now + 1e-3 < next_tap_at or self._tap_queue.full():
                counters.not_tapped += 1
                continue
            next_tap_at = max(next_tap_at + tap_period_s, now) if tap_period_s else 0.0
            counters.in_tap += 1
            self._tap_queue.put_nowait(frame)

    async def _tap_worker(self) -> None:
        assert self._tap is not None and self.cfg.tap is not None
        tap_cfg = self.cfg.tap
        loop = asyncio.get_running_loop()
        while True:
            frame = await self._tap_queue.get()
            counters = self.counters[frame.source_id]
            try:
                fields, payload = await loop.run_in_executor(
                    self._executor,
                    tap_image,
                    frame,
                    tap_cfg.encoding,
                    tap_cfg.width,
                    tap_cfg.height,
                    tap_cfg.jpeg_quality,
                )
            except Exception:
                # A frame the tap cannot encode is not sent (and counted); the tap goes on.
                log.exception(
                    "frame tap: cannot encode %s frame %s", frame.source_id, frame.frame_id
                )
                counters.in_tap -= 1
                counters.not_tapped += 1
                continue
            header = {
                "v": 1,
                "source_id": frame.source_id,
                "frame_id": frame.frame_id,
                "pts": frame.pts,
                "captured_at": frame.captured_at,
                **fields,
            }
            counters.in_tap -= 1
            sent = self._tap.send_nowait([frame_topic(frame.source_id), dumps(header), payload])
            if sent == "sent":
                self.pairer.add_frame(frame, time.monotonic())
            else:
                counters.not_tapped += 1
                self._warn(f"tap-{sent}", "frame tap: frame not sent (%s)", sent)

    async def _receive(self, receiver: DetectionReceiver) -> None:
        limits = self.cfg.detections
        by_time = limits.pairing == "timestamp"
        tolerance_s = limits.tolerance_ms / 1000.0
        while True:
            parts = await receiver.recv()
            try:
                dets = decode_detections(
                    parts,
                    max_predictions=limits.max_predictions,
                    max_bytes=limits.max_message_bytes,
                )
                if by_time and dets.captured_at is None:
                    raise ProtocolError(
                        "missing_field", "captured_at: required for timestamp pairing"
                    )
                if not by_time and dets.frame_id is None:
                    raise ProtocolError("missing_field", "frame_id: required for frame_id pairing")
            except ProtocolError as e:
                self.malformed[e.kind] += 1
                self._warn(e.kind, "malformed detection message: %s", e)
                continue
            now = time.monotonic()
            if by_time:
                assert dets.captured_at is not None
                match = self.pairer.match_time(dets.source_id, dets.captured_at, tolerance_s, now)
            else:
                assert dets.frame_id is not None
                match = self.pairer.match(dets.source_id, dets.frame_id, now)
            if match.outcome == "unknown_source":
                self.unknown_source += 1
                self._warn("unknown_source", "detections for unknown source %r", dets.source_id)
                continue
            self.counters[dets.source_id].detections[match.outcome] += 1
            if match.frame is not None and self.hub is not None:
                self.hub.sources[dets.source_id].on_paired(match.frame, dets, now)
            if match.frame is None:
                self._warn(
                    f"det-{match.outcome}",
                    "source %s: detection for frame %s is %s",
                    dets.source_id,
                    dets.frame_id,
                    match.outcome,
                )
                continue
            await self._crop_queue.put((match.frame, dets))

    async def _crop_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            frame, dets = await self._crop_queue.get()
            try:
                params = self._params[frame.source_id]
                if dets.params:
                    params = dataclasses.replace(params, **dets.params)
                counters = self.counters[frame.source_id]
                classes = self._settings[frame.source_id]["classes"]
                if classes is not None:
                    kept = tuple(p for p in dets.predictions if p.class_name in classes)
                    counters.filtered_class += len(dets.predictions) - len(kept)
                    dets = dataclasses.replace(dets, predictions=kept)
                started = time.perf_counter()
                result: CropResult = await loop.run_in_executor(
                    self._executor, make_crops, frame, dets, params, self._encodings
                )
                self.metrics.crop_seconds.labels(frame.source_id).observe(
                    time.perf_counter() - started
                )
                counters.crops += len(result.crops)
                counters.empty_box += result.empty_box
                counters.no_mask += result.no_mask
                if result.empty_box:
                    self._warn(
                        "empty_box",
                        "source %s: %d box(es) empty after clamping",
                        frame.source_id,
                        result.empty_box,
                    )
                for crop in result.crops:
                    if self.hub is not None:
                        self.hub.on_crop(crop.header, crop.image)
                    for pub in self._publishers:
                        if pub.wants(crop.header):
                            pub.offered += 1
                            payload = crop.payloads[pub.cfg.encoding_key]
                            msg = crop_message(crop.header, pub.cfg.encoding, payload)
                            await pub.out.send(msg)
            except Exception:
                log.exception("crop stage failed for %s frame %s", frame.source_id, frame.frame_id)
                self.counters[frame.source_id].detections["crop_failed"] += 1
            finally:
                self._crop_queue.task_done()

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
            self.pairer.expire(now)
            for src in self.sources.values():
                src.check_stall(now)

    # -- reporting -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of every counter."""
        sources = {}
        for sid, src in self.sources.items():
            ring, c = self.pairer.stats(sid), self.counters[sid]
            sources[sid] = {
                "state": src.stats.state,
                "last_error": src.stats.last_error,
                "reconnects": src.stats.reconnects,
                "stalls": src.stats.stalls,
                "decoded": src.stats.decoded,
                "skipped_fps": src.stats.skipped_fps,
                "dropped_handoff": src.stats.dropped_handoff,
                "in_handoff": src.in_handoff,
                "in_tap": c.in_tap,
                "not_tapped": c.not_tapped,
                "paired": ring.paired,
                "expired": ring.expired,
                "in_ring": ring.in_ring,
                "ring_bytes": ring.ring_bytes,
                "detections": dict(c.detections),
                "crops": c.crops,
                "empty_box": c.empty_box,
                "no_mask": c.no_mask,
                "filtered_class": c.filtered_class,
            }
        return {
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "loop_lag_s": round(self.loop_lag_s, 4),
            "sources": sources,
            "malformed": dict(self.malformed),
            "unknown_source": self.unknown_source,
            "publishers": [
                {
                    "endpoint": p.cfg.bind,
                    "offered": p.offered,
                    "mode": p.cfg.mode,
                    "subscriptions": sum(p.out.subscriptions.values()),
                    **dataclasses.asdict(p.out.stats),
                }
                for p in self._publishers
            ],
            "tap": None if self._tap is None else dataclasses.asdict(self._tap.stats),
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
