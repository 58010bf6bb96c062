"""Helpers for the processes around streamer: detectors (receive tapped frames, send detections)
and crop consumers (receive crops).

A detector in a few lines::

    from streamer.client import FrameSubscriber, DetectionSender

    frames = FrameSubscriber("tcp://127.0.0.1:5554")
    sender = DetectionSender("tcp://127.0.0.1:5555")
    for frame in frames:                    # TapFrame: .image (BGR numpy), .source_id, .frame_id
        boxes = [{"x": 50, "y": 40, "width": 30, "height": 20, "class": "car",
                  "class_id": 0, "confidence": 0.9}]
        sender.send(frame, boxes)           # coordinates in frame.image's pixel space

A crop consumer::

    from streamer.client import CropSubscriber

    for crop in CropSubscriber("tcp://127.0.0.1:5560", topics=["crop/demo/plate"]):
        print(crop.source_id, crop.frame_id, crop.header["class"], crop.image.shape)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self, cast

import cv2
import numpy as np
import zmq

from streamer.detections.codec import encode_detections

PROTOCOL_VERSION = 1
POLL_INTERVAL_MS = 100


class ProtocolVersionError(ValueError):
    """A message carries a protocol version this client does not know."""


@dataclass(frozen=True, slots=True)
class TapFrame:
    """A frame from the tap, as a BGR (h, w, 3) array (I420 is converted)."""

    header: dict[str, Any]
    image: np.ndarray

    @property
    def source_id(self) -> str:
        return str(self.header["source_id"])

    @property
    def frame_id(self) -> int:
        return int(self.header["frame_id"])


@dataclass(frozen=True, slots=True)
class Crop:
    """One received crop: its header and the decoded BGR (h, w, 3) image."""

    header: dict[str, Any]
    image: np.ndarray

    @property
    def source_id(self) -> str:
        return str(self.header["source_id"])

    @property
    def frame_id(self) -> int:
        return int(self.header["frame_id"])


def _header(part: bytes) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(part)
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"unsupported protocol version {header.get('v')!r}; this client knows 1"
        )
    return header


def decode_image(header: Mapping[str, Any], payload: bytes) -> np.ndarray:
    """Rebuild a BGR image from a crop or tap payload according to ``header['encoding']``."""
    enc, w, h = header["encoding"], int(header["width"]), int(header["height"])
    if enc == "raw-bgr24":
        return np.frombuffer(payload, np.uint8).reshape(h, w, 3)
    if enc == "raw-i420":
        yuv = np.frombuffer(payload, np.uint8).reshape(h * 3 // 2, w)
        return cast(np.ndarray, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
    if enc in ("png", "jpeg", "webp"):
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot decode {enc} payload of {len(payload)} bytes")
        return cast(np.ndarray, img)
    raise ValueError(f"unknown image encoding {enc!r}")


class _Subscriber:
    def __init__(self, endpoint: str, topics: Sequence[str], hwm: int) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sock.connect(endpoint)

    def recv_parts(self, timeout_s: float | None) -> list[bytes] | None:
        """Next message's parts, or None after `timeout_s` (None waits forever)."""
        if timeout_s is not None and not self.sock.poll(int(timeout_s * 1000)):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CropSubscriber(_Subscriber):
    """Subscribes to crops (``crop/<source_id>/<class>`` topics; prefixes match)."""

    def __init__(self, endpoint: str, topics: Sequence[str] = ("crop/",), hwm: int = 1000) -> None:
        super().__init__(endpoint, topics, hwm)

    def recv(self, timeout_s: float | None = None) -> Crop | None:
        parts = self.recv_parts(timeout_s)
        if parts is None:
            return None
        header = _header(parts[1])
        return Crop(header, decode_image(header, parts[2]))

    def __iter__(self) -> Iterator[Crop]:
        while True:
            crop = self.recv()
            if crop is not None:
                yield crop


class FrameSubscriber(_Subscriber):
    """Subscribes to the frame tap (``frame/<source_id>``)."""

    def __init__(self, endpoint: str, topics: Sequence[str] = ("frame/",), hwm: int = 2) -> None:
        super().__init__(endpoint, topics, hwm)

    def recv(self, timeout_s: float | None = None) -> TapFrame | None:
        parts = self.recv_parts(timeout_s)
        if parts is None:
            return None
        header = _header(parts[1])
        return TapFrame(header, decode_image(header, parts[2]))

    def __iter__(self) -> Iterator[TapFrame]:
        while True:
            frame = self.recv()
            if frame is not None:
                yield frame


class DetectionSender:
    """PUSHes detection messages to streamer's detections endpoint."""

    def __init__(self, endpoint: str, hwm: int = 100) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.connect(endpoint)

    def send(self, frame: TapFrame, predictions: Sequence[Mapping[str, Any]]) -> None:
        """Send predictions (Roboflow dicts, centre boxes in `frame.image` pixels) for `frame`."""
        h, w = frame.image.shape[:2]
        self.sock.send_multipart(
            encode_detections(frame.source_id, frame.frame_id, (w, h), predictions)
        )

    def close(self) -> None:
        self.sock.close()
