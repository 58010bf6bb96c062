"""The crop thread: detection messages in, paired with their frames, cropped and published.

It owns its ZeroMQ sockets (the detections input and every crop publisher), so a detection
message becomes crops on the wire without a trip through the event loop: one wake-up when the
message arrives, the crop work (OpenCV releases the GIL), the sends. The frame ring is shared
with the loop, which adds and expires frames, under `ring_lock`.

Backpressure: while this thread is busy, detection messages wait in the input socket's bounded
queue (and then in the detectors' send queues); PUSH publishers wait at most their send timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import zmq

from streamer.config import DetectionsConfig, PublishConfig
from streamer.crop.stage import CROP_BUDGET_FRAMES, CropResult, iter_crops, message_params
from streamer.detections.codec import decode_detections
from streamer.errors import ProtocolError
from streamer.metrics import LogOnce, SourceCounters
from streamer.pairing import Pairer
from streamer.publish.shm import RingWriter
from streamer.publish.wire import crop_message, crop_topic
from streamer.publish.zmq_out import OutSocket
from streamer.supervise import Supervisor
from streamer.types import U8, CropParams, Detections, Frame, Prediction

log = logging.getLogger(__name__)

POLL_MS = 100  # how often the thread looks at its stop flag when idle
BATCH_MESSAGES = 64  # detection messages handled per wake-up before looking at the publishers


@dataclasses.dataclass
class Publisher:
    cfg: PublishConfig
    out: OutSocket
    classes: frozenset[str] | None
    ring: RingWriter | None = None  # with `shm`: where this publisher's crops go
    offered: int = 0
    shm_inline: int = 0  # crops too big for the ring, sent in their message instead

    def wants(self, header: dict[str, Any]) -> bool:
        return self.takes(header["class"], header["confidence"])

    def receives(self, source_id: str, pred: Prediction) -> bool:
        """Whether this publisher would send `pred`'s crop: its filters take it and (PUB) a
        subscriber's topic asks for it."""
        if not self.takes(pred.class_name, pred.confidence):
            return False
        return self.out.mode != "pub" or self.out.has_subscriber(
            crop_topic(source_id, pred.class_name)
        )

    def send(self, header: dict[str, Any], payload: bytes | memoryview, pos: int | None) -> None:
        """Send one crop: inline, or (with a ring) as a handle to its bytes in the ring, copied
        there unless they already are (`pos`, where the crop stage wrote them)."""
        ring, encoding = self.ring, self.cfg.encoding
        if ring is None:
            self.out.send(crop_message(header, encoding, payload))
            return
        size = len(payload)
        if pos is None:
            if size > ring.max_item_bytes:
                self.shm_inline += 1
                self.out.send(crop_message(header, encoding, bytes(payload)))
                return
            pos = ring.put(payload)
        self.out.send(crop_message(header, encoding, b"", ring.handle(pos, size)))

    def takes(self, class_name: str, confidence: float) -> bool:
        """Whether this publisher's class filter and confidence floor let a crop through."""
        return (
            self.classes is None or class_name in self.classes
        ) and confidence >= self.cfg.min_confidence


class Target(Protocol):
    """What the crop thread needs of a camera (streamer.camera.Camera is one)."""

    #: Its counters, which this thread adds to.
    counters: SourceCounters
    #: Its crop parameters and class filter (None = all), read for every message.
    crop: tuple[CropParams, frozenset[str] | None]


class CropThread:
    """Runs in its own thread from `start()` until `stop()` (then `join`); the loop reads its
    counters."""

    def __init__(
        self,
        receiver: zmq.Socket[bytes],
        publishers: list[Publisher],
        pairer: Pairer,
        ring_lock: threading.Lock,
        cameras: Mapping[str, Target],
        limits: DetectionsConfig,
        encodings: tuple[str, ...],
        observe_crop_seconds: Callable[[str, float], None],
        on_paired: Callable[[Frame, Detections, float], None] | None = None,
        on_crop: Callable[[dict[str, Any], np.ndarray], None] | None = None,
        preview_watches: Callable[[str], bool] | None = None,
    ) -> None:
        self.receiver = receiver
        self.publishers = publishers
        self.pairer = pairer
        self.ring_lock = ring_lock
        self.cameras = cameras  # the pipeline's: cameras come and go while this thread runs
        self.limits = limits
        self.encodings = encodings
        self.observe_crop_seconds = observe_crop_seconds
        self.on_paired = on_paired
        self.on_crop = on_crop
        self.preview_watches = preview_watches  # a viewer of that source wants every crop
        self.malformed: Counter[str] = Counter()
        self.unknown_source = 0
        self.handled = 0  # detection messages taken off the socket
        self.handler_failed: Counter[str] = Counter()  # exception type -> messages lost to a bug
        self.supervisor = Supervisor("crop thread")
        self._warn = LogOnce(log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="streamer-crops", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end after the message at hand."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for the thread to end; True once ended (or never started)."""
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _main(self) -> None:
        self.supervisor.run(self._loop, self._stop)

    def _loop(self) -> None:
        """Wait for detection messages and subscription changes until stopped. Runs under the
        supervisor: if it raises (a bug), it is run again, with fresh poller state."""
        poller = zmq.Poller()
        poller.register(self.receiver, zmq.POLLIN)
        by_socket = {p.out.sock: p.out for p in self.publishers if p.out.mode == "pub"}
        for sock in by_socket:
            poller.register(sock, zmq.POLLIN)  # (un)subscriptions
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(POLL_MS):
                    if sock is self.receiver:
                        self._drain_detections()
                    else:
                        by_socket[sock].read_subscriptions()
        except zmq.ContextTerminated:
            pass  # shutting down

    def _drain_detections(self) -> None:
        for _ in range(BATCH_MESSAGES):
            if self._stop.is_set():
                return
            try:
                parts = self._recv_bounded()
            except zmq.Again:
                return
            self.handled += 1
            try:
                if isinstance(parts, ProtocolError):
                    raise parts
                self._handle(parts)
            except ProtocolError as e:
                self.malformed[e.kind] += 1
                self._warn(e.kind, "malformed detection message: %s", e)
            except zmq.ContextTerminated:
                raise
            except Exception as e:  # a bug: this message is lost (counted), the next is handled
                kind = type(e).__name__
                self.handler_failed[kind] += 1
                self._warn(
                    f"handler-{kind}",
                    "handling a detection message failed (%s: %s); going on with the next",
                    kind,
                    e,
                    exc_info=e,
                )

    def _recv_bounded(self) -> list[bytes] | ProtocolError:
        """Take the next message off the socket, part by part, keeping at most
        `max_message_bytes` and 2 + `max_predictions` parts (a header and one mask part per
        prediction): the rest of a bigger message is read and dropped, never copied. Returns
        the parts, or the ProtocolError to count; raises zmq.Again when there is none.

        (libzmq itself hands a message over only once all of it has arrived, so it has
        buffered it whole by now: ZMQ_MAXMSGSIZE bounds each part, nothing bounds the count of
        parts. Untrusted networks need CURVE; see docs/protocol.md.)"""
        limits = self.limits
        max_parts = 2 + limits.max_predictions
        parts: list[bytes] = []
        size, count = 0, 0
        frame = self.receiver.recv(zmq.NOBLOCK, copy=False)
        while True:
            count += 1
            size += len(frame.buffer)
            if count <= max_parts and size <= limits.max_message_bytes:
                parts.append(frame.bytes)
            if not frame.more:
                break
            frame = self.receiver.recv(copy=False)  # the whole message has arrived already
        if size > limits.max_message_bytes:
            return ProtocolError(
                "oversize", f"message is {size} bytes, limit {limits.max_message_bytes}"
            )
        if count > max_parts:
            return ProtocolError("too_many_parts", f"message has {count} parts, limit {max_parts}")
        return parts

    def _unknown_source(self, source_id: str) -> None:
        self.unknown_source += 1
        self._warn("unknown_source", "detections for unknown source %r", source_id)

    def _handle(self, parts: list[bytes]) -> None:
        """Decode, pair, crop and publish one message; raises ProtocolError if it is malformed."""
        limits = self.limits
        by_time = limits.pairing == "timestamp"
        dets = decode_detections(
            parts, max_predictions=limits.max_predictions, max_bytes=limits.max_message_bytes
        )
        if by_time and dets.captured_at is None:
            raise ProtocolError("missing_field", "captured_at: required for timestamp pairing")
        if not by_time and dets.frame_id is None:
            raise ProtocolError("missing_field", "frame_id: required for frame_id pairing")
        # A camera being removed is out of `cameras` before its ring is gone: its frames are not
        # paired any more (they expire with the ring, as shutdown), rather than counted paired
        # and never cropped.
        camera = self.cameras.get(dets.source_id)
        if camera is None:
            self._unknown_source(dets.source_id)
            return
        now = time.monotonic()
        with self.ring_lock:
            if by_time:
                assert dets.captured_at is not None
                tolerance_s = limits.tolerance_ms / 1000.0
                match = self.pairer.match_time(dets.source_id, dets.captured_at, tolerance_s, now)
            else:
                assert dets.frame_id is not None
                match = self.pairer.match(dets.source_id, dets.frame_id, now)
        if match.outcome == "unknown_source":
            self._unknown_source(dets.source_id)
            return
        counters = camera.counters
        counters.detections[match.outcome] += 1
        if match.frame is None:
            self._warn(
                f"det-{match.outcome}",
                "source %s: detection for frame %s is %s",
                dets.source_id,
                dets.frame_id,
                match.outcome,
            )
            return
        try:
            if self.on_paired is not None:
                self.on_paired(match.frame, dets, now)
            self._crop_and_publish(match.frame, dets, camera)
        except (ProtocolError, zmq.ContextTerminated):
            raise
        except Exception as e:  # a bug; the message keeps its one outcome, paired
            kind = type(e).__name__
            counters.crop_failed += 1
            self._warn(
                f"crop-{kind}",
                "cropping source %s frame %s failed (%s: %s); going on with the next",
                match.frame.source_id,
                match.frame.frame_id,
                kind,
                e,
                exc_info=e,
            )

    def _wanted(self, source_id: str) -> Callable[[Prediction], bool]:
        """Whether any publisher would send a prediction's crop: a PUSH publisher whose filters
        take it, or a PUB publisher whose filters take it and with a subscriber to its topic
        (known from the XPUB's subscriptions). Crops nobody would get are not cut."""

        def wanted(pred: Prediction) -> bool:
            return any(pub.receives(source_id, pred) for pub in self.publishers)

        return wanted

    def _placer(
        self, source_id: str
    ) -> tuple[
        Callable[[Prediction, str, int], U8 | None] | None, dict[str, tuple[Publisher, int]]
    ]:
        """Where the crop stage writes a crop's raw bytes: straight into the ring of the first
        shm publisher of that encoding that will send it (no copy afterwards). Returns the
        stage's `dest` (None if no publisher has a ring) and a dict that holds, after each
        crop, encoding -> (publisher, position) for the bytes placed so."""
        placed: dict[str, tuple[Publisher, int]] = {}
        direct = [p for p in self.publishers if p.ring is not None]
        if not direct:
            return None, placed

        def dest(pred: Prediction, encoding: str, size: int) -> U8 | None:
            placed.pop(encoding, None)
            for pub in direct:
                ring = pub.ring
                assert ring is not None
                if (
                    pub.cfg.encoding == encoding
                    and size <= ring.max_item_bytes
                    and pub.receives(source_id, pred)
                ):
                    pos, view = ring.reserve(size)
                    placed[encoding] = (pub, pos)
                    return view
            return None

        return dest, placed

    def _crop_and_publish(self, frame: Frame, dets: Detections, camera: Target) -> None:
        counters = camera.counters
        params, classes = camera.crop
        params = message_params(params, dets)
        if classes is not None:
            kept = tuple(p for p in dets.predictions if p.class_name in classes)
            counters.filtered_class += len(dets.predictions) - len(kept)
            dets = dataclasses.replace(dets, predictions=kept)
        started = time.perf_counter()
        result = CropResult()
        watched = self.preview_watches is not None and self.preview_watches(frame.source_id)
        wanted = None if watched else self._wanted(frame.source_id)
        dest, placed = self._placer(frame.source_id)
        crops = iter_crops(frame, dets, params, self.encodings, result, wanted, dest, watched)
        # Each crop goes out as soon as it is cut: the first does not wait for the last.
        for crop in crops:
            counters.crops += 1
            if self.on_crop is not None and crop.image is not None:
                # The preview keeps its crops a while: not a view of a ring that moves on.
                in_ring = "raw-bgr24" in placed
                self.on_crop(crop.header, crop.image.copy() if in_ring else crop.image)
            for pub in self.publishers:
                if pub.wants(crop.header):
                    pub.offered += 1
                    key = pub.cfg.encoding_key
                    payload = crop.payloads[key]
                    owner, pos = placed.get(key, (None, None))
                    if owner is not None and owner is not pub and pub.ring is None:
                        payload = bytes(payload)  # a socket may send it after the ring moved on
                    pub.send(crop.header, payload, pos if owner is pub else None)
            placed.clear()
        self.observe_crop_seconds(frame.source_id, time.perf_counter() - started)
        counters.empty_box += result.empty_box
        counters.no_mask += result.no_mask
        counters.crop_budget += result.crop_budget
        if result.crop_budget:
            self._warn(
                "crop_budget",
                "source %s: %d prediction(s) not cropped: the message's crops exceed %d frames",
                frame.source_id,
                result.crop_budget,
                CROP_BUDGET_FRAMES,
            )
        counters.unwanted += result.unwanted
        if result.empty_box:
            self._warn(
                "empty_box",
                "source %s: %d box(es) empty after clamping",
                frame.source_id,
                result.empty_box,
            )
