"""Counters shared by the pipeline's stages, their Prometheus export, and logging a repeated
failure once per kind."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.health import shed_by_reason

REPEAT_LOG_INTERVAL_S = 60.0
SOURCE_STATES = (
    "starting",
    "connecting",
    "streaming",
    "stalled",
    "backing_off",
    "ended",
    "stopped",
    "failed",
)
FRAME_OUTCOMES = ("paired", "expired", "not_tapped", "dropped_handoff", "skipped_fps")
GAUGES = {
    "in_ring": "frames waiting in the ring",
    "ring_bytes": "bytes held by the ring",
    "in_tap": "frames being tapped",
    "in_handoff": "frames in the decode hand-off",
}
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass
class SourceCounters:
    """Counters of one source, beside its decoder's own (SourceStats): the frames' fates,
    changed by its decode thread under its camera's `feed_lock` (a live camera) or by the loop
    (a lossless one), and the detections' and crops', changed by the crop thread."""

    in_tap: int = 0  # gauge: frames queued or being encoded for the tap
    not_tapped: int = 0  # = the sum of not_tapped_by
    not_tapped_by: Counter[str] = field(default_factory=Counter)  # reason -> frames
    in_feed: int = 0  # gauge: a frame taken from the hand-off, waiting for room (lossless)
    crop_failed: int = 0  # paired messages whose cropping failed (a bug: logged)
    detections: Counter[str] = field(default_factory=Counter)  # outcome -> messages
    crops: int = 0
    empty_box: int = 0
    no_mask: int = 0
    filtered_class: int = 0
    crop_budget: int = 0  # predictions not cropped: their message's crop pixel budget was spent
    unwanted: int = 0  # boxes not cut: no publisher or viewer would have received the crop

    def shed(self, reason: str) -> None:
        """Count a frame that was not tapped, and why: ``rate`` (tap.max_fps), ``busy`` (its
        in-flight frames are full), ``budget`` (the memory budget is spent), ``no_subscriber``,
        ``full`` (the tap socket's queue, or no detector connected), ``encode_failed``,
        ``stopping``, ``error`` (a bug while it was handed on: logged; the next goes on)."""
        self.not_tapped += 1
        self.not_tapped_by[reason] += 1


class LogOnce:
    """Log the first occurrence of each kind of failure, then at most one summary per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = REPEAT_LOG_INTERVAL_S) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()
        self._lock = threading.Lock()  # (called from the decode threads, the loop, the crops')

    def __call__(
        self, kind: str, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """Log `msg % args` as a warning, the first time for `kind` with `exc_info`'s traceback
        (if given); later ones within the interval are only counted."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval_s:
                self._since[kind] += 1
                return
            repeats = self._since.pop(kind, 0)
            self._last[kind] = now
        suffix = f" ({repeats} more since last report)" if repeats else ""
        self._log.warning(msg + suffix, *args, exc_info=exc_info if last is None else None)


class _StatsCollector(Collector):
    """Turns the pipeline's stats snapshot into Prometheus families at scrape time."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        decoded = CounterMetricFamily(
            "streamer_frames_decoded", "frames decoded", labels=["source"]
        )
        frames = CounterMetricFamily(
            "streamer_frames", "where decoded frames went", labels=["source", "outcome"]
        )
        dets = CounterMetricFamily(
            "streamer_detection_messages",
            "detection messages by outcome",
            labels=["source", "outcome"],
        )
        crops = CounterMetricFamily(
            "streamer_crops", "crops produced, and boxes without a crop", labels=["source", "kind"]
        )
        shed = CounterMetricFamily(
            "streamer_frames_shed",
            "frames not served, by why: not_tapped/<reason> (never sent to a detector), "
            "expired/<reason> (age, full, budget, shutdown: left the ring unmatched), "
            "decoder/skipped (never decoded: the decoder shed them), handoff (dropped between "
            "the decoder and the pipeline) and max_fps (skipped by the source's max_fps)",
            labels=["source", "reason"],
        )
        reconnects = CounterMetricFamily(
            "streamer_source_reconnects", "reconnect attempts", labels=["source"]
        )
        stalls = CounterMetricFamily("streamer_source_stalls", "stalls detected", labels=["source"])
        missing = CounterMetricFamily(
            "streamer_source_missing_frames",
            "frames missing from the input, by the gaps in its timestamps (lost by the camera "
            "or the network; HLS: segments the server failed to deliver); never decoded, so not "
            "in streamer_frames",
            labels=["source"],
        )
        state = GaugeMetricFamily(
            "streamer_source_state", "1 for the current state", labels=["source", "state"]
        )
        gauges = {
            k: GaugeMetricFamily(f"streamer_{k}", d, labels=["source"]) for k, d in GAUGES.items()
        }
        behind = GaugeMetricFamily(
            "streamer_source_behind_seconds",
            "how far behind its schedule the decoder's last frame came (a file played in real "
            "time: against its presentation time; a network stream: the larger of the stream's "
            "lag to the wall clock and the decoder's backlog, as its shedder reads them); "
            "absent where nothing says, and while the source is down or its file has ended",
            labels=["source"],
        )
        for sid, s in st["sources"].items():
            decoded.add_metric([sid], s["decoded"])
            if s["behind_s"] is not None:
                behind.add_metric([sid], s["behind_s"])
            for o in FRAME_OUTCOMES:
                frames.add_metric([sid, o], s[o])
            for o, n in s["detections"].items():
                dets.add_metric([sid, o], n)
            for reason, n in shed_by_reason(s).items():  # the status line's reasons too
                shed.add_metric([sid, reason], n)
            crops.add_metric([sid, "produced"], s["crops"])
            crops.add_metric([sid, "empty_box"], s["empty_box"])
            crops.add_metric([sid, "no_mask"], s["no_mask"])
            crops.add_metric([sid, "failed"], s["crop_failed"])
            reconnects.add_metric([sid], s["reconnects"])
            stalls.add_metric([sid], s["stalls"])
            missing.add_metric([sid], s["missing_frames"])
            for name in SOURCE_STATES:
                state.add_metric([sid, name], 1.0 if s["state"] == name else 0.0)
            for k, g in gauges.items():
                g.add_metric([sid], s[k])
        malformed = CounterMetricFamily(
            "streamer_detection_messages_malformed",
            "malformed detection messages by kind",
            labels=["kind"],
        )
        for kind, n in st["malformed"].items():
            malformed.add_metric([kind], n)
        failed = CounterMetricFamily(
            "streamer_detection_messages_handler_failed",
            "detection messages lost to an unexpected error while handled, by exception type",
            labels=["kind"],
        )
        for kind, n in st.get("handler_failed", {}).items():
            failed.add_metric([kind], n)
        restarts = CounterMetricFamily(
            "streamer_restarts",
            "restarts of a supervised worker (crop thread, frame tap, a camera's feeder, expiry, "
            "tap subscriptions, preview renderers) after a failure",
            labels=["component"],
        )
        for name, n in st.get("restarts", {}).items():
            restarts.add_metric([name], n)
        unknown = CounterMetricFamily(
            "streamer_detection_messages_unknown_source",
            "detection messages for sources not configured",
        )
        unknown.add_metric([], st["unknown_source"])
        publish = CounterMetricFamily(
            "streamer_publish_messages", "crop messages by outcome", labels=["endpoint", "outcome"]
        )
        for p in st["publishers"]:
            for o in ("sent", "dropped_no_subscriber", "dropped_hwm", "dropped_timeout"):
                publish.add_metric([p["endpoint"], o], p[o])
        refused = CounterMetricFamily(
            "streamer_http_refused",
            "HTTP requests answered 4xx or 5xx: 'host' (not a served Host), 'origin'"
            " (cross-origin change), or the status code (bad input, no token, 503 too many"
            " viewers, 500 a fault of ours, ...); and connections closed: 'connections' (too"
            " many open), 'slow_headers' (no request's headers in 10 s)",
            labels=["reason"],
        )
        for reason, n in st.get("http_refused", {}).items():
            refused.add_metric([reason], n)
        stopped = CounterMetricFamily(
            "streamer_preview_video_stopped",
            "preview viewers closed because their video stopped while their connection stayed"
            " up (their encoder failed)",
        )
        stopped.add_metric([], st.get("preview_video_stopped", 0))
        webrtc = CounterMetricFamily(
            "streamer_preview_webrtc_task_failed",
            "tasks of aiortc or aioice that failed (a peer's hostile traffic, or their bugs), by"
            " exception type",
            labels=["kind"],
        )
        for kind, n in st.get("webrtc_failed", {}).items():
            webrtc.add_metric([kind], n)
        lag = GaugeMetricFamily("streamer_loop_lag_seconds", "event loop lag, last measured")
        lag.add_metric([], st.get("loop_lag_s", 0.0))
        budget = GaugeMetricFamily(
            "streamer_ring_budget_bytes", "the memory budget of all rings, and what is held"
        )
        budget.add_metric([], st["ring_budget_bytes"])
        held = GaugeMetricFamily("streamer_ring_total_bytes", "bytes held by every ring together")
        held.add_metric([], st["ring_bytes"])
        yield from (
            decoded,
            frames,
            dets,
            shed,
            crops,
            reconnects,
            missing,
            stalls,
            state,
            *gauges.values(),
            behind,
            malformed,
            failed,
            restarts,
            unknown,
            publish,
            refused,
            stopped,
            webrtc,
            lag,
            budget,
            held,
        )


class Metrics:
    """A registry per pipeline: the stats collector plus latency histograms."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats))
        self.crop_seconds = Histogram(
            "streamer_crop_seconds",
            "crop stage time per paired frame",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.decode_seconds = Histogram(
            "streamer_decode_seconds",
            "decoder time per packet",
            ["source"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
