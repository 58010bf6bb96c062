"""The OCR worker behind ``streamer ocr``: reads crops from streamer (SUB, or PULL as one of a
pool behind a PUSH publisher), recognizes their text, votes per track, and publishes one result
per read crop on its own PUB socket (topic ``ocr/<source_id>``, JSON; see docs/protocol.md).

Crops arrive faster than a recognizer reads them, so between reads the worker takes everything
waiting (cheap: headers only) and keeps only the newest crop of each track; the others are
counted as skipped. A track whose reading is stable is not read any more. Crops cut by the
frame's edge are not read (their text may be partial). Every crop ends in exactly one outcome
counter, served on ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

from streamer.client import (
    DEFAULT_SHM_DIR,
    CropSubscriber,
    Curve,
    MalformedMessageError,
    ProtocolVersionError,
    RingCache,
    RingUnavailableError,
    StaleCropError,
    SubMode,
    parse_crop,
)
from streamer.metrics import LogOnce
from streamer.ocr.crops import MAX_CROP_PIXELS, BadCrop, CropInfo, decode_crop, parse_crop_header
from streamer.ocr.reader import CropReader
from streamer.ocr.tracks import TrackVotes
from streamer.zmq_heartbeat import set_heartbeat

log = logging.getLogger(__name__)

POLL_MS = 100  # how often the loop looks at the stop flag while idle
MAX_PENDING = 256  # tracks with a crop waiting to be read; the oldest is skipped beyond it
MAX_PENDING_BYTES = 64 << 20  # and their payloads' bytes (one raw crop may be 12 MB)
RECV_HWM = 64  # crops ZeroMQ queues for this worker (a PUSH publisher then serves the others)
MAX_PART_BYTES = MAX_CROP_PIXELS * 3 + 65536  # any one message part (ZMQ_MAXMSGSIZE)
MAX_DRAIN = 1000  # messages taken between two reads, so reads go on under a flood
READ_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
OUTCOMES = (
    "read",
    "skipped_class",
    "skipped_edge",
    "skipped_stable",
    "skipped_superseded",
    "skipped_overflow",
    "skipped_stopping",
    "skipped_stale",
    "skipped_unavailable",
    "malformed",
    "failed",
)


@dataclass(frozen=True)
class WorkerOptions:
    """What ``streamer ocr`` is told on its command line."""

    crops: Sequence[str] = ("tcp://127.0.0.1:5560",)  # every shard's crop endpoint
    results: str = "tcp://127.0.0.1:5570"
    mode: SubMode = "sub"
    topics: Sequence[str] = ("crop/",)
    classes: frozenset[str] = frozenset()  # empty: every class
    votes: int = 3
    read_edge: bool = False  # also read crops that touch the frame's border
    curve: Curve | None = None
    shm_dir: Path = Path(DEFAULT_SHM_DIR)  # streamer's shm.dir, for crops in a ring


class WorkerMetrics:
    """The worker's Prometheus counters, in a registry of their own."""

    def __init__(self, engine: str) -> None:
        self.registry = CollectorRegistry()
        self.crops = PromCounter(
            "streamer_ocr_crops",
            "crops received, by outcome (read, skipped_*, malformed, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.malformed = PromCounter(
            "streamer_ocr_malformed_crops",
            "crops that could not be read, by kind",
            ["kind"],
            registry=self.registry,
        )
        self.read_seconds = Histogram(
            "streamer_ocr_read_seconds",
            "time to decode, prepare and recognize one crop",
            ["engine"],
            buckets=READ_BUCKETS_S,
            registry=self.registry,
        ).labels(engine)
        self.counts: Counter[str] = Counter()  # the same outcomes, for the exit summary
        self.read_total_s = 0.0
        for outcome in OUTCOMES:
            self.crops.labels(outcome)

    def count(self, outcome: str) -> None:
        self.crops.labels(outcome).inc()
        self.counts[outcome] += 1


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def result_message(
    info: CropInfo, text: str, raw: str, confidence: float, reading: str, stable: bool, ms: float
) -> list[bytes]:
    """``[topic, json]`` of one read crop (fields in docs/protocol.md, "OCR results")."""
    out = {
        "v": 1,
        "source_id": info.source_id,
        "frame_id": info.frame_id,
        "pts": info.pts,
        "detection_id": info.detection_id,
        "tracker_id": info.tracker_id,
        "class": info.class_name,
        "box": info.box,
        "text": text,
        "raw_text": raw,
        "confidence": round(confidence, 3),
        "reading": reading,
        "stable": stable,
        "read_ms": round(ms, 2),
        "worker": WORKER_ID,
    }
    return [f"ocr/{info.source_id}".encode(), json.dumps(out).encode()]


class OcrWorker:
    """One worker: a crop socket in, a recognizer, per-track votes, a result socket out."""

    def __init__(self, reader: CropReader, opts: WorkerOptions, metrics: WorkerMetrics) -> None:
        self.reader = reader
        self.opts = opts
        self.metrics = metrics
        self.votes = TrackVotes(opts.votes)
        self._pending: OrderedDict[Hashable, tuple[CropInfo, bytes | memoryview]] = OrderedDict()
        self._pending_bytes = 0  # payload bytes in _pending
        self._log_once = LogOnce(log)
        self._rings = RingCache(opts.shm_dir)  # crops published with shm

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set; sockets are closed on the way out."""
        sub = CropSubscriber(
            self.opts.crops,
            topics=self.opts.topics,
            hwm=RECV_HWM,
            mode=self.opts.mode,
            curve=self.opts.curve,
            max_message_bytes=MAX_PART_BYTES,
        )
        pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 10_000)
        set_heartbeat(pub)
        try:
            pub.bind(self.opts.results)
            while not stop.is_set():
                self._drain(sub)
                if self._pending:
                    key, (info, payload) = self._pop_oldest()
                    msg = self._read(key, info, payload)
                    if msg is not None:
                        pub.send_multipart(msg)
        finally:
            while self._pending:  # taken but not read: counted, not lost silently
                self._pop_oldest()
                self.metrics.count("skipped_stopping")
            sub.close()
            pub.close(linger=500)
            self._rings.close()

    def _drain(self, sub: CropSubscriber) -> None:
        """Take what is waiting (waiting up to POLL_MS when nothing is pending)."""
        timeout_s = 0.0 if self._pending else POLL_MS / 1000
        for _ in range(MAX_DRAIN):
            parts = sub.recv_parts(timeout_s)
            if parts is None:
                self._rings.prune()  # a stopped streamer's ring is let go, its memory freed
                return
            timeout_s = 0.0
            self._take(parts)

    def _take(self, parts: list[zmq.Frame]) -> None:
        try:
            crop = parse_crop(parts, self._rings, max_pixels=MAX_CROP_PIXELS)
            info = parse_crop_header(crop.header)
        except StaleCropError as e:
            self.metrics.count("skipped_stale")
            self._log_once("stale", "crop(s) overwritten in the shm ring before read: %s", e)
            return
        except RingUnavailableError as e:
            self.metrics.count("skipped_unavailable")
            self._log_once("unavailable", "crop(s) skipped: %s", e)
            return
        except (MalformedMessageError, ProtocolVersionError, BadCrop) as e:
            kind = e.kind if isinstance(e, BadCrop | MalformedMessageError) else type(e).__name__
            self.metrics.count("malformed")
            self.metrics.malformed.labels(kind).inc()
            self._log_once(f"malformed:{kind}", "malformed crop message: %s", e)
            return
        except Exception as e:  # a bug in the checks above: this crop is lost, counted
            self.metrics.count("malformed")
            self.metrics.malformed.labels("internal").inc()
            self._log_once("malformed:internal", "crop message not checked: %r", e, exc_info=e)
            return
        if self.opts.classes and info.class_name not in self.opts.classes:
            self.metrics.count("skipped_class")
            return
        if not self.opts.read_edge and info.cut_by_edge:
            self.metrics.count("skipped_edge")
            return
        key = info.track_key
        if self.votes.stable(key):
            self.metrics.count("skipped_stable")
            return
        old = self._pending.pop(key, None)
        if old is not None:
            self._pending_bytes -= len(old[1])
            self.metrics.count("skipped_superseded")
        self._pending[key] = (info, crop.payload)
        self._pending_bytes += len(crop.payload)
        while len(self._pending) > 1 and (
            len(self._pending) > MAX_PENDING or self._pending_bytes > MAX_PENDING_BYTES
        ):
            self._pop_oldest()
            self.metrics.count("skipped_overflow")

    def _pop_oldest(self) -> tuple[Hashable, tuple[CropInfo, bytes | memoryview]]:
        key, item = self._pending.popitem(last=False)
        self._pending_bytes -= len(item[1])
        return key, item

    def _read(
        self, key: Hashable, info: CropInfo, payload: bytes | memoryview
    ) -> list[bytes] | None:
        t0 = time.perf_counter()
        try:
            got = self.reader.read(decode_crop(info, payload), info.points)
        except BadCrop as e:
            self.metrics.count("malformed")
            self.metrics.malformed.labels(e.kind).inc()
            self._log_once(f"malformed:{e.kind}", "unreadable crop image: %s", e)
            return None
        except Exception as e:  # a recognizer failure on one crop must not stop the worker
            self.metrics.count("failed")
            self._log_once(f"failed:{type(e).__name__}", "recognizer failed: %r", e)
            return None
        elapsed_s = time.perf_counter() - t0
        self.metrics.read_seconds.observe(elapsed_s)
        self.metrics.read_total_s += elapsed_s
        self.metrics.count("read")
        reading, stable = self.votes.add(key, got.text, got.confidence)
        return result_message(
            info, got.text, got.raw, got.confidence, reading, stable, elapsed_s * 1000
        )


def summary(metrics: WorkerMetrics) -> str:
    """One line for the log at exit: outcomes and the mean read time."""
    n = metrics.counts["read"]
    mean_ms = 1000 * metrics.read_total_s / n if n else 0.0
    return f"ocr worker: {dict(sorted(metrics.counts.items()))}, {mean_ms:.1f} ms per read"


def _result_fields(r: Any) -> tuple[tuple[str, int | str], str, bool]:
    """(track key, reading, stable) of a result message; raises ValueError, KeyError or
    TypeError when it is not one (the key must be hashable: ids are ints or strings)."""
    tid = r["tracker_id"] if r["tracker_id"] is not None else r["detection_id"]
    if isinstance(tid, bool) or not isinstance(tid, int | str):
        raise TypeError(f"tracker_id/detection_id: {type(tid).__name__}")
    source, reading, stable = r["source_id"], r["reading"], r["stable"]
    if not (isinstance(source, str) and isinstance(reading, str) and isinstance(stable, bool)):
        raise TypeError("source_id and reading must be strings, stable a boolean")
    return (source[:256], tid if isinstance(tid, int) else tid[:256]), reading[:256], stable


def listen(endpoints: Sequence[str], stop: threading.Event, out: Any) -> None:
    """Print each track's stable reading once (and again if it changes) from the workers'
    result endpoints, until `stop` is set; `out` is a text stream."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"ocr/")
    sock.setsockopt(zmq.MAXMSGSIZE, 65536)
    set_heartbeat(sock)  # a vanished worker's connection is redialled
    shown: OrderedDict[tuple[str, int | str], str] = OrderedDict()
    log_once = LogOnce(log)
    try:
        for endpoint in endpoints:
            sock.connect(endpoint)
        while not stop.is_set():
            if not sock.poll(POLL_MS):
                continue
            try:
                key, reading, stable = _result_fields(json.loads(sock.recv_multipart()[1]))
            except (ValueError, RecursionError, KeyError, TypeError, IndexError) as e:
                log_once(f"bad:{type(e).__name__}", "bad result message: %r", e)
                continue
            if stable and shown.get(key) != reading:
                shown[key] = reading
                if len(shown) > 4096:
                    shown.popitem(last=False)
                print(f"{time.strftime('%H:%M:%S')} {key[0]} track {key[1]}: {reading}", file=out)
                out.flush()
    finally:
        sock.close(linger=0)
