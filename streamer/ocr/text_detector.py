"""A neural text detector process, ``streamer detect text``: PP-OCRv4's text detector (DBNet,
from the rapidocr-onnxruntime wheel, on ONNX Runtime's CPU) runs on every tapped frame and
sends each text region back as class ``text`` with its polygon (4 corners of a rotated box, an
instance mask streamer can cut the background with) and a tracker id (streamer.tracking).

The detector runs at the tap's own size (rounded to multiples of 32; frames larger than
MAX_DETECT_SIDE_PX are shrunk to it), so the tap's ``width`` sets its cost; see README
("Reading text with neural models") for its speed here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

from streamer.client import (
    Curve,
    DetectionSender,
    FrameSubscriber,
    MalformedMessageError,
    ProtocolVersionError,
    SubMode,
    parse_tap_frame,
)
from streamer.errors import StreamerError
from streamer.metrics import LogOnce
from streamer.ocr.recognizers import (
    DBNET_MODEL,
    DEFAULT_THREADS,
    not_installed,
    ort_session,
    rapidocr_model,
)
from streamer.tracking import IouTracker
from streamer.types import U8

log = logging.getLogger(__name__)

MAX_TEXT_BOXES = 100  # regions per frame
MAX_SOURCES = 1024  # trackers kept, least recently seen forgotten first
MAX_FRAME_SIDE_PX = 4096  # tapped frames larger than this are skipped
MAX_DETECT_SIDE_PX = 1280  # larger ones are shrunk to this long side before detection
POLL_S = 0.1
TEXT_CLASS = "text"
DETECT_BUCKETS_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# Why a received frame was not answered: not a valid tapped frame; the model raised; no room
# towards streamer (the client's queue was full); the send raised.
ERROR_KINDS = ("bad_frame", "detect_failed", "not_sent", "send_failed")


@dataclass(frozen=True)
class TextRegion:
    """A detected text region: `points` (4, 2) float32 corners clockwise from top-left, in
    the image's pixels, and the mean text probability inside them."""

    points: np.ndarray
    score: float


class TextDetector:
    """PP-OCRv4 DBNet: BGR image -> text regions. The model (from rapidocr-onnxruntime, checked
    against its recorded sha256, streamer.ocr.recognizers.RAPIDOCR_SHA256) runs on our own ONNX
    Runtime session; rapidocr's DBNet pre- and post-processing turn images into its input and
    its probability map into boxes. `root`: a folder laid out as the wheel's models/."""

    def __init__(
        self,
        threads: int = DEFAULT_THREADS,
        box_threshold: float = 0.5,
        root: Path | None = None,
    ) -> None:
        try:
            from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess, DetPreProcess
        except ImportError as e:
            raise not_installed("rapidocr-onnxruntime") from e

        self._session = ort_session(rapidocr_model(DBNET_MODEL, root), threads)
        self._input = self._session.get_inputs()[0].name
        # limit_type "min" with a tiny limit: never resized, only rounded to 32 px.
        self._pre = DetPreProcess(32, "min", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
        self._post = DBPostProcess(
            thresh=0.3,
            box_thresh=box_threshold,
            max_candidates=MAX_TEXT_BOXES,
            unclip_ratio=1.6,
            score_mode="fast",
            use_dilation=True,
        )

    def detect(self, image: U8) -> list[TextRegion]:
        """Text regions in a BGR (h, w, 3) uint8 image, at most MAX_TEXT_BOXES; an image
        larger than MAX_DETECT_SIDE_PX is detected on shrunk (the cost grows with the area),
        the regions given in `image`'s pixels either way."""
        h, w = image.shape[:2]
        f = MAX_DETECT_SIDE_PX / max(h, w)
        if f < 1.0:
            small = np.asarray(cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
            return [
                TextRegion(r.points / np.float32(f), r.score)
                for r in self.detect(np.asarray(small, np.uint8))
            ]
        pre = self._pre(image)
        if pre is None:
            return []
        probs = self._session.run(None, {self._input: pre})[0]
        boxes, scores = self._post(probs, (h, w))
        out = []
        for box, score in zip(boxes, scores, strict=True):
            pts = clockwise_in(np.asarray(box, np.float32), w, h)
            if np.linalg.norm(pts[0] - pts[1]) > 3 and np.linalg.norm(pts[0] - pts[3]) > 3:
                out.append(TextRegion(pts, float(score)))
        return out


def clockwise_in(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """A (4, 2) box's corners ordered top-left, top-right, bottom-right, bottom-left (the two
    leftmost are the left side), each moved onto the nearest whole pixel inside a `width` x
    `height` image; float32."""
    by_x = box[np.argsort(box[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    pts = np.array([left[0], right[0], right[1], left[1]], np.float32)
    pts[:, 0] = np.clip(pts[:, 0], 0, width - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, height - 1)
    return np.trunc(pts).astype(np.float32)


LOCATE_MIN_SIDE_PX = 96  # crops are enlarged to this short side before text is located in them
LOCATE_MAX_SIDE_PX = 960  # and shrunk to at most this long side
LOCATE_MIN_LINE_PX = 8  # a crop thinner than this after that holds no line to locate


def locate_text(detector: TextDetector, image: U8) -> np.ndarray | None:
    """Where the text is in a crop that came without a polygon: the corners of every text
    region DBNet finds, as one (4k, 2) float32 array in `image`'s pixels (their minimum-area
    rectangle is the text line to straighten), or None when it finds none, or when the crop
    is too thin to hold a line once shrunk to LOCATE_MAX_SIDE_PX."""
    h, w = image.shape[:2]
    f = max(1.0, LOCATE_MIN_SIDE_PX / min(h, w))
    f = min(f, LOCATE_MAX_SIDE_PX / max(h, w))  # the cost grows with the area: bound it
    if min(h, w) * f < LOCATE_MIN_LINE_PX:
        return None
    if f != 1.0:
        image = np.asarray(cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC))
    regions = detector.detect(image)
    if not regions:
        return None
    return np.vstack([r.points for r in regions]).astype(np.float32) / np.float32(f)


def to_predictions(regions: list[TextRegion]) -> list[dict[str, Any]]:
    """Roboflow-style predictions (centre box around the polygon, `points`) of class text."""
    preds = []
    for r in regions:
        x0, y0 = r.points.min(axis=0)
        x1, y1 = r.points.max(axis=0)
        preds.append(
            {
                "x": float(x0 + x1) / 2,
                "y": float(y0 + y1) / 2,
                "width": float(x1 - x0),
                "height": float(y1 - y0),
                "class": TEXT_CLASS,
                "class_id": 0,
                "confidence": round(min(1.0, max(0.0, r.score)), 4),
                "points": [{"x": float(x), "y": float(y)} for x, y in r.points],
            }
        )
    return preds


@dataclass(frozen=True)
class DetectorOptions:
    tap: Sequence[str] = ("tcp://127.0.0.1:5554",)  # every shard's tap
    detections: str = "tcp://127.0.0.1:5555"
    mode: SubMode = "sub"
    threads: int = DEFAULT_THREADS
    box_threshold: float = 0.5
    curve: Curve | None = None
    allow_ipc_reply_to: bool = False


class DetectorMetrics:
    """The detector's Prometheus counters, in a registry of their own (``/metrics``), and the
    same numbers as plain counts for the exit summary."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = PromCounter(
            "streamer_text_detector_frames_received",
            "tapped frames received, bad ones included",
            registry=self.registry,
        )
        self.answered = PromCounter(
            "streamer_text_detector_frames_answered",
            "frames whose detections were sent back to streamer",
            registry=self.registry,
        )
        self.regions = PromCounter(
            "streamer_text_detector_regions",
            "text regions sent",
            registry=self.registry,
        )
        self.errors = PromCounter(
            "streamer_text_detector_errors",
            "received frames not answered, by kind (" + ", ".join(ERROR_KINDS) + ")",
            ["kind"],
            registry=self.registry,
        )
        self.detect_seconds = Histogram(
            "streamer_text_detector_detect_seconds",
            "time to detect the text of one frame",
            buckets=DETECT_BUCKETS_S,
            registry=self.registry,
        )
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.counts: Counter[str] = Counter()  # received, answered, regions, errors by kind
        self.detect_total_s = 0.0

    def count(self, what: str, n: int = 1) -> None:
        """Count `n` of `what`: received, answered, regions, or one of ERROR_KINDS."""
        if what == "received":
            self.received.inc(n)
        elif what == "answered":
            self.answered.inc(n)
        elif what == "regions":
            self.regions.inc(n)
        else:
            self.errors.labels(what).inc(n)
        self.counts[what] += n

    def detected(self, elapsed_s: float) -> None:
        self.detect_seconds.observe(elapsed_s)
        self.detect_total_s += elapsed_s

    def summary(self) -> str:
        """One line for the exit: frames answered, regions, errors, ms per frame."""
        c = self.counts
        n = c["answered"]
        timed = n + c["not_sent"] + c["send_failed"]
        return (
            f"text detector: {n} frames, {c['regions']} regions, {c['bad_frame']} bad frames, "
            f"{c['detect_failed']} failed, {c['not_sent'] + c['send_failed']} not sent, "
            f"{1000 * self.detect_total_s / timed if timed else 0:.1f} ms per frame"
        )


def run_text_detector(
    opts: DetectorOptions, stop: threading.Event, metrics: DetectorMetrics
) -> None:
    """Detect text on every tapped frame and send it back until `stop` is set, counting
    into `metrics`. A frame that cannot be parsed, detected or sent is counted and skipped."""
    detector = TextDetector(opts.threads, opts.box_threshold)
    trackers: OrderedDict[str, IouTracker] = OrderedDict()
    log_once = LogOnce(log)
    frames = FrameSubscriber(opts.tap, mode=opts.mode, curve=opts.curve)
    sender = DetectionSender(
        opts.detections, curve=opts.curve, allow_ipc_reply_to=opts.allow_ipc_reply_to
    )
    try:
        while not stop.is_set():
            try:
                parts = frames.recv_parts(timeout_s=POLL_S)
                if parts is None:
                    continue
                metrics.count("received")
                frame = parse_tap_frame(parts)
                if (
                    not 0 < frame.width <= MAX_FRAME_SIDE_PX
                    or not 0 < frame.height <= MAX_FRAME_SIDE_PX
                ):
                    raise ValueError(f"frame {frame.width}x{frame.height} out of bounds")
                image = frame.image
                if image.shape != (frame.height, frame.width, 3):
                    raise ValueError(f"picture {image.shape} is not the header's size")
                source = frame.source_id[:256]
                _ = frame.frame_id  # an integer, or the frame is bad
            except (
                MalformedMessageError,
                ProtocolVersionError,
                ValueError,
                KeyError,
                TypeError,
            ) as e:
                metrics.count("bad_frame")
                log_once(f"bad_frame:{type(e).__name__}", "bad tapped frame: %s", e)
                continue
            t0 = time.perf_counter()
            try:
                preds = to_predictions(detector.detect(image))
            except Exception as e:  # a model failure on one frame must not stop the detector
                metrics.count("detect_failed")
                log_once(f"detect_failed:{type(e).__name__}", "text detection failed: %r", e)
                continue
            metrics.detected(time.perf_counter() - t0)
            tracker = trackers.pop(source, None) or IouTracker()
            trackers[source] = tracker
            if len(trackers) > MAX_SOURCES:
                trackers.popitem(last=False)
            tracker.update(preds)
            try:
                if not sender.send(frame, preds):
                    metrics.count("not_sent")  # no room towards streamer (the client counts it)
                    continue
            except (ValueError, StreamerError) as e:
                metrics.count("send_failed")
                log_once(f"send_failed:{type(e).__name__}", "cannot send detections: %s", e)
                continue
            metrics.count("answered")
            metrics.count("regions", len(preds))
    finally:
        frames.close()
        sender.close()
