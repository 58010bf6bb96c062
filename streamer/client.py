"""Helpers for the processes around streamer: detectors (receive tapped frames, send detections
back) and crop consumers (receive crops). Sync and asyncio flavours of each; ZeroMQ reconnects
by itself, so streamer may start before or after the client.

A detector, synchronous::

    from streamer.client import DetectionSender, FrameSubscriber

    with FrameSubscriber("tcp://127.0.0.1:5554") as frames, \\
            DetectionSender("tcp://127.0.0.1:5555") as sender:
        for frame in frames:        # TapFrame: .image (BGR numpy), .width, .frame_id, ...
            boxes = [{"x": 50, "y": 40, "width": 30, "height": 20, "class": "car",
                      "class_id": 0, "confidence": 0.9}]
            sender.send(frame, boxes)   # centre boxes in frame.image's pixels; [] if none

The same with asyncio, and a ``supervision.Detections`` instead of dicts::

    import asyncio
    from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber

    async def main() -> None:
        async with AsyncFrameSubscriber("tcp://127.0.0.1:5554") as frames, \\
                AsyncDetectionSender("tcp://127.0.0.1:5555") as sender:
            async for frame in frames:
                detections = my_model(frame.image)      # -> sv.Detections
                await sender.send(frame, detections)

    asyncio.run(main())

With a PUSH tap (frames shared among several detector workers) pass ``mode="pull"``. When
streamer runs with CURVE, every class takes ``curve=(client_key_secret_file,
server_public_key_file)``, files made by ``streamer keygen``.

A crop consumer::

    from streamer.client import CropSubscriber

    with CropSubscriber("tcp://127.0.0.1:5560", topics=["crop/gate-1/plate"]) as crops:
        for crop in crops:
            print(crop.source_id, crop.frame_id, crop.header["class"], crop.image.shape)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, Self, TypeVar, cast

import cv2
import numpy as np
import zmq
import zmq.asyncio

from streamer.detections.codec import encode_detections
from streamer.security import make_client

PROTOCOL_VERSION = 1
T = TypeVar("T")


class MalformedMessageError(ValueError):
    """A received message is not a streamer message: wrong part count, or a header that is not
    a JSON object."""


class ProtocolVersionError(ValueError):
    """A message carries a protocol version this client does not know."""


class _Received:
    """A received message: its header, and its picture decoded to BGR on first use (a
    detector that only needs the size, or a consumer that forwards the bytes, pays nothing)."""

    __slots__ = ("_image", "header", "payload")

    def __init__(self, header: dict[str, Any], payload: bytes | memoryview) -> None:
        self.header = header
        self.payload = payload  # the picture as sent (see header["encoding"])
        self._image: np.ndarray | None = None

    @property
    def image(self) -> np.ndarray:
        """The picture as a BGR (h, w, 3) array (I420, JPEG, PNG, WebP are converted)."""
        if self._image is None:
            self._image = decode_image(self.header, self.payload)
        return self._image

    @property
    def width(self) -> int:
        return int(self.header["width"])

    @property
    def height(self) -> int:
        return int(self.header["height"])

    @property
    def source_id(self) -> str:
        return str(self.header["source_id"])

    @property
    def frame_id(self) -> int:
        return int(self.header["frame_id"])


class TapFrame(_Received):
    """A frame from the tap; detections for it are in its (`width`, `height`) pixels."""

    __slots__ = ()

    @property
    def captured_at(self) -> float:
        return float(self.header["captured_at"])


class Crop(_Received):
    """One received crop: its header (see docs/protocol.md) and its image."""

    __slots__ = ()


def _header(part: bytes) -> dict[str, Any]:
    try:
        header = json.loads(part)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested too deep
        raise MalformedMessageError(f"header is not JSON: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise MalformedMessageError(f"header is a JSON {type(header).__name__}, not an object")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"unsupported protocol version {header.get('v')!r}; this client knows 1"
        )
    return header


def decode_image(header: Mapping[str, Any], payload: bytes | memoryview) -> np.ndarray:
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


def _check_parts(parts: list[zmq.Frame]) -> None:
    if len(parts) != 3:
        raise MalformedMessageError(f"expected 3 parts [topic, header, image], got {len(parts)}")


def _tap_frame(parts: list[zmq.Frame]) -> TapFrame:
    _check_parts(parts)
    return TapFrame(_header(parts[1].bytes), parts[2].buffer)


def _crop(parts: list[zmq.Frame]) -> Crop:
    _check_parts(parts)
    return Crop(_header(parts[1].bytes), parts[2].buffer)


def parse_crop(parts: list[zmq.Frame]) -> Crop:
    """A received crop message's parts as a Crop (header parsed, image not yet decoded).

    Raises MalformedMessageError (wrong part count, header not a JSON object) or
    ProtocolVersionError; the header's fields are the caller's to check (see streamer.ocr).
    """
    return _crop(parts)


def to_predictions(detections: Any) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Predictions (and mask parts) from Roboflow-style dicts or a ``supervision.Detections``.

    A Detections' masks (image-sized, as supervision keeps them) go as raw bitmap parts
    (``mask_part``); class names come from ``data["class_name"]`` when present.
    """
    if isinstance(detections, Sequence):
        return [dict(p) for p in detections], []
    xyxy = np.asarray(detections.xyxy, dtype=np.float64)
    n = len(xyxy)
    names = detections.data.get("class_name") if hasattr(detections, "data") else None
    class_ids = detections.class_id if detections.class_id is not None else np.full(n, -1)
    conf = detections.confidence if detections.confidence is not None else np.ones(n)
    preds: list[dict[str, Any]] = []
    parts: list[bytes] = []
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in xyxy[i])
        pred: dict[str, Any] = {
            "x": (x0 + x1) / 2,
            "y": (y0 + y1) / 2,
            "width": x1 - x0,
            "height": y1 - y0,
            "confidence": float(conf[i]),
            "class_id": int(class_ids[i]),
            "class": str(names[i]) if names is not None else str(int(class_ids[i])),
        }
        if detections.tracker_id is not None:
            pred["tracker_id"] = int(detections.tracker_id[i])
        if detections.mask is not None:
            pred["mask_part"] = len(parts)
            parts.append(np.ascontiguousarray(detections.mask[i], dtype=np.uint8).tobytes())
        preds.append(pred)
    return preds, parts


def _detection_message(frame: TapFrame, detections: Any) -> list[bytes]:
    preds, parts = to_predictions(detections)
    return encode_detections(
        frame.source_id, frame.frame_id, (frame.width, frame.height), preds, payload=parts
    )


SubMode = Literal["sub", "pull"]


Curve = tuple[str, str]  # (client .key_secret file, server public .key file)


def _input_socket(
    ctx: Any, endpoint: str, topics: Sequence[str], hwm: int, mode: SubMode, curve: Curve | None
) -> Any:
    sock = ctx.socket(zmq.SUB if mode == "sub" else zmq.PULL)
    if curve is not None:
        make_client(sock, *curve)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, 0)
    if mode == "sub":
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    sock.connect(endpoint)
    return sock


def _output_socket(ctx: Any, endpoint: str, hwm: int, curve: Curve | None) -> Any:
    """A PUSH socket to streamer's detections endpoint (linger 1 s so the last sends go out)."""
    sock = ctx.socket(zmq.PUSH)
    if curve is not None:
        make_client(sock, *curve)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(endpoint)
    return sock


class _Subscriber(Generic[T]):
    def __init__(
        self,
        decode: Callable[[list[zmq.Frame]], T],
        endpoint: str,
        topics: Sequence[str],
        hwm: int,
        mode: SubMode,
        curve: Curve | None,
    ) -> None:
        self._decode = decode
        self.sock: zmq.Socket[bytes] = _input_socket(
            zmq.Context.instance(), endpoint, topics, hwm, mode, curve
        )

    def recv_parts(self, timeout_s: float | None) -> list[zmq.Frame] | None:
        """Next message's parts (uncopied), or None after `timeout_s` (None waits forever)."""
        if timeout_s is not None and not self.sock.poll(int(timeout_s * 1000)):
            return None
        return self.sock.recv_multipart(copy=False)

    def recv(self, timeout_s: float | None = None) -> T | None:
        """The next message, decoded; None after `timeout_s` (None waits forever)."""
        parts = self.recv_parts(timeout_s)
        return None if parts is None else self._decode(parts)

    def __iter__(self) -> Iterator[T]:
        while True:
            yield self._decode(self.sock.recv_multipart(copy=False))

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CropSubscriber(_Subscriber[Crop]):
    """Receives crops; `topics` are prefixes of ``crop/<source_id>/<class>``.

    ``mode="pull"`` joins a PUSH publisher's worker pool (each crop to one worker).
    Raises ProtocolVersionError on a message of a protocol version it does not know and
    MalformedMessageError on one that is not a crop message at all.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("crop/",),
        hwm: int = 1000,
        mode: SubMode = "sub",
        curve: Curve | None = None,
    ) -> None:
        super().__init__(_crop, endpoint, topics, hwm, mode, curve)


class FrameSubscriber(_Subscriber[TapFrame]):
    """Receives tapped frames (``frame/<source_id>``); ``mode="pull"`` for a PUSH tap."""

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("frame/",),
        hwm: int = 2,
        mode: SubMode = "sub",
        curve: Curve | None = None,
    ) -> None:
        super().__init__(_tap_frame, endpoint, topics, hwm, mode, curve)


class DetectionSender:
    """PUSHes detection messages to streamer's detections endpoint."""

    def __init__(self, endpoint: str, hwm: int = 100, curve: Curve | None = None) -> None:
        self.sock: zmq.Socket[bytes] = _output_socket(zmq.Context.instance(), endpoint, hwm, curve)

    def send(self, frame: TapFrame, detections: Any) -> None:
        """Send the detections for `frame`: Roboflow-style dicts (centre boxes in
        `frame.image` pixels) or a ``supervision.Detections`` (xyxy in those pixels)."""
        self.sock.send_multipart(_detection_message(frame, detections))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncSubscriber(Generic[T]):
    def __init__(
        self,
        decode: Callable[[list[zmq.Frame]], T],
        endpoint: str,
        topics: Sequence[str],
        hwm: int,
        mode: SubMode,
        curve: Curve | None,
    ) -> None:
        self._decode = decode
        self.sock: zmq.asyncio.Socket = _input_socket(
            zmq.asyncio.Context.instance(), endpoint, topics, hwm, mode, curve
        )

    async def recv(self) -> T:
        parts: list[zmq.Frame] = await self.sock.recv_multipart(copy=False)
        return self._decode(parts)

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            yield await self.recv()

    def close(self) -> None:
        self.sock.close(linger=0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncFrameSubscriber(_AsyncSubscriber[TapFrame]):
    """asyncio twin of FrameSubscriber: ``async for frame in AsyncFrameSubscriber(...)``."""

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("frame/",),
        hwm: int = 2,
        mode: SubMode = "sub",
        curve: Curve | None = None,
    ) -> None:
        super().__init__(_tap_frame, endpoint, topics, hwm, mode, curve)


class AsyncCropSubscriber(_AsyncSubscriber[Crop]):
    """asyncio twin of CropSubscriber: ``async for crop in AsyncCropSubscriber(...)``."""

    def __init__(
        self,
        endpoint: str,
        topics: Sequence[str] = ("crop/",),
        hwm: int = 1000,
        mode: SubMode = "sub",
        curve: Curve | None = None,
    ) -> None:
        super().__init__(_crop, endpoint, topics, hwm, mode, curve)


class AsyncDetectionSender:
    """asyncio twin of DetectionSender."""

    def __init__(self, endpoint: str, hwm: int = 100, curve: Curve | None = None) -> None:
        self.sock: zmq.asyncio.Socket = _output_socket(
            zmq.asyncio.Context.instance(), endpoint, hwm, curve
        )

    async def send(self, frame: TapFrame, detections: Any) -> None:
        await self.sock.send_multipart(_detection_message(frame, detections))

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
