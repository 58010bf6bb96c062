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

Several shards: give the subscriber every shard's tap endpoint and the sender no endpoint at
all. Each tapped frame says where its detections go (``reply_to``); the sender keeps one socket
per such endpoint (at most ``max_routes``) and sends each frame's detections back to the shard
that tapped it, so the detector needs no routing code::

    taps = ["tcp://streamer-0.streamer:5554", "tcp://streamer-1.streamer:5554"]
    with FrameSubscriber(taps) as frames, DetectionSender() as sender:
        for frame in frames:
            sender.send(frame, my_model(frame.image))

A frame without a usable ``reply_to`` (an older streamer, a wildcard bind without
``detections.advertise``) goes to the sender's `endpoint`; with neither, it is dropped and
counted in ``sender.stats``. ``reply_to`` is network input: only ``tcp://HOST:PORT`` is
followed, and ``ipc://PATH`` only with ``allow_ipc_reply_to=True`` (a single-host setup; else
a tapped frame could make the detector write into any local socket file). A host name is
resolved by ZeroMQ's I/O thread when the route is opened and on every reconnect: a slow DNS
server delays that route's connection (not the sender, nor other routes).

Sends never block: each route queues at most `hwm` messages; a route whose shard takes nothing
(dead, stalled, unreachable) fills its queue, then drops its messages (counted per route in
``sender.route_drops``, in total as ``stats["dropped_full"]``) while the other routes go on
at full rate. Every socket sends ZeroMQ heartbeats (streamer.zmq_heartbeat): a connection to a
peer that vanished without closing it (a lost node) is dropped within seconds and redialled,
name resolved again, so a shard rescheduled elsewhere is found.

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

import argparse
import json
import logging
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, Self, TypeVar, cast

import cv2
import numpy as np
import zmq
import zmq.asyncio

from streamer.config import MAX_PIXELS, SOURCE_ID_PATTERN, check_reply_to
from streamer.crop.convert import i420_crop_to_bgr, i420_size
from streamer.detections.codec import encode_detections
from streamer.image_size import declared_size
from streamer.metrics import LogOnce
from streamer.publish.shm import RingCache as RingCache
from streamer.publish.shm import RingUnavailableError as RingUnavailableError
from streamer.publish.shm import StaleCropError as StaleCropError
from streamer.publish.zmq_out import MAX_SUBSCRIPTION_BYTES
from streamer.security import make_client
from streamer.sharding import MAX_SHARDS
from streamer.zmq_heartbeat import set_heartbeat

log = logging.getLogger(__name__)
_log_once = LogOnce(log)

PROTOCOL_VERSION = 1
MAX_SIDE_PX = 32768  # a picture's width or height, as the detection codec bounds frames
ENCODINGS = ("raw-bgr24", "raw-i420", "png", "jpeg", "webp")
# One message part at most (ZMQ_MAXMSGSIZE: a peer sending more is disconnected): the largest
# picture streamer decodes (8192x4352, 8K) as BGR, the largest form a tapped frame or crop has.
MAX_MESSAGE_BYTES = 3 * MAX_PIXELS + (1 << 20)
_SOURCE_ID = re.compile(SOURCE_ID_PATTERN)
DEFAULT_SHM_DIR = "/dev/shm"  # where crops published with `shm` are (streamer's shm.dir)
IDLE_S = 1.0  # a subscriber with nothing to read looks after its rings this often
# Detection sockets a sender keeps open besides its default endpoint: one per shard it hears
# from, opened on first use, so every shard of the largest deployment has its own.
MAX_REPLY_ROUTES = MAX_SHARDS
T = TypeVar("T")
Endpoints = str | Sequence[str]


class MalformedMessageError(ValueError):
    """A received message is not a streamer message: wrong part count, a header that is not a
    JSON object, a field this client reads that is missing or out of its bounds, or a picture
    that is not what the header says."""

    def __init__(self, message: str, kind: str = "MalformedMessageError") -> None:
        super().__init__(message)
        self.kind = kind  # a counter's label: missing_field, wrong_type, bad_value, ...


def _kind(value: Any, wanted: type) -> str:
    """What is wrong with a received field's `value` (a counter's label)."""
    if value is None:
        return "missing_field"
    return "bad_value" if type(value) is wanted else "wrong_type"


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
        """The picture as a BGR (h, w, 3) array (I420, JPEG, PNG, WebP are converted).
        Raises MalformedMessageError when a JPEG, PNG or WebP does not decode."""
        if self._image is None:
            self._image = decode_image(self.header, self.payload)
        return self._image

    # Checked when the message was parsed (`_check_fields`).
    @property
    def width(self) -> int:
        return cast(int, self.header["width"])

    @property
    def height(self) -> int:
        return cast(int, self.header["height"])

    @property
    def source_id(self) -> str:
        return cast(str, self.header["source_id"])

    @property
    def frame_id(self) -> int:
        return cast(int, self.header["frame_id"])


class TapFrame(_Received):
    """A frame from the tap; detections for it are in its (`width`, `height`) pixels."""

    __slots__ = ()

    @property
    def captured_at(self) -> float:
        return float(self.header["captured_at"])  # (checked: a finite number)

    @property
    def reply_to(self) -> str | None:
        """Where this frame's detections go, as the shard that tapped it says (None when it
        does not say). Raises ValueError when it is not a tcp:// or ipc:// endpoint of at most
        REPLY_TO_MAX_CHARS characters: it is network input."""
        value = self.header.get("reply_to")
        return None if value is None else check_reply_to(value)

    def reply_route(self, allow_ipc: bool) -> str | None:
        """`reply_to` as a sender may follow it: as the property, and ValueError on an
        ``ipc://`` endpoint unless `allow_ipc`."""
        value = self.header.get("reply_to")
        return None if value is None else check_reply_to(value, allow_ipc=allow_ipc)


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


def _show(value: Any) -> str:
    """A received value, for an error message: short whatever it is."""
    if isinstance(value, str | int | float | bool) or value is None:
        return repr(value)[:40]
    return f"a {type(value).__name__}"


def _check_fields(header: dict[str, Any], tap: bool) -> dict[str, Any]:
    """`header` once the fields this client reads are what streamer sends (MalformedMessageError
    naming the first that is not)."""
    for key in ("width", "height"):
        value = header.get(key)
        if type(value) is not int or not 1 <= value <= MAX_SIDE_PX:
            raise MalformedMessageError(
                f"{key}: expected 1..{MAX_SIDE_PX}, got {_show(value)}", _kind(value, int)
            )
    source_id = header.get("source_id")
    if not isinstance(source_id, str) or _SOURCE_ID.match(source_id) is None:
        raise MalformedMessageError(
            f"source_id: not a camera id ({_show(source_id)})", _kind(source_id, str)
        )
    frame_id = header.get("frame_id")
    if type(frame_id) is not int or not 0 <= frame_id < 1 << 63:
        raise MalformedMessageError(
            f"frame_id: expected 0..2^63-1, got {_show(frame_id)}", _kind(frame_id, int)
        )
    captured_at = header.get("captured_at")
    a_time = (type(captured_at) is float and math.isfinite(captured_at)) or (
        type(captured_at) is int and abs(captured_at) <= 1 << 53  # (a float holds it exactly)
    )
    if tap and not a_time:
        raise MalformedMessageError(
            f"captured_at: expected a number, got {_show(captured_at)}", _kind(captured_at, float)
        )
    return header


def _check_picture(header: Mapping[str, Any], payload: bytes | memoryview) -> tuple[str, int, int]:
    """The picture's (encoding, width, height) once `payload` holds what `header` declares: a
    raw one's exact bytes, a compressed one's own header the same size (so that decoding
    allocates what the message says, not what a few hundred bytes of PNG or WebP can ask for).
    """
    encoding, w, h = header.get("encoding"), header.get("width"), header.get("height")
    if type(w) is not int or type(h) is not int or not 1 <= min(w, h) <= max(w, h) <= MAX_SIDE_PX:
        raise MalformedMessageError(f"a picture of {_show(w)} x {_show(h)}", "bad_value")
    if encoding == "raw-bgr24":
        want = w * h * 3
    elif encoding == "raw-i420" and header.get("origin") is None:  # a tapped frame: whole
        if w % 2 or h % 2:
            raise MalformedMessageError(
                f"a raw-i420 frame of {w}x{h}: sides must be even", "bad_value"
            )
        want = w * h * 3 // 2
    elif encoding == "raw-i420":  # a crop: its rectangle widened to even coordinates
        want = _raw_size(header)
    elif encoding in ("png", "jpeg", "webp"):
        size = declared_size(encoding, payload)
        if size != (w, h):
            raise MalformedMessageError(
                f"a {encoding} of {size} for a header of {w}x{h}", "bad_image"
            )
        return encoding, w, h
    else:
        raise MalformedMessageError(
            f"encoding: {_show(encoding)} is not one of {ENCODINGS}", _kind(encoding, str)
        )
    if len(payload) != want:
        raise MalformedMessageError(
            f"{encoding} picture of {len(payload)} bytes for {w}x{h}", "bad_image"
        )
    return encoding, w, h


def _int_field(value: Any, name: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SIDE_PX * 8:
        raise MalformedMessageError(
            f"{name}: expected an integer in [0, {MAX_SIDE_PX * 8}]", _kind(value, int)
        )
    return value


def _crop_origin(header: Mapping[str, Any]) -> tuple[int, int]:
    origin = header.get("origin")
    if not isinstance(origin, dict):
        raise MalformedMessageError("origin: expected an object", _kind(origin, dict))
    return _int_field(origin.get("x"), "origin.x"), _int_field(origin.get("y"), "origin.y")


def _raw_size(header: Mapping[str, Any]) -> int:
    """The bytes of a raw crop's picture as its header declares it (MalformedMessageError for
    another encoding or bad fields)."""
    w, h = _int_field(header.get("width"), "width"), _int_field(header.get("height"), "height")
    if not (1 <= w <= MAX_SIDE_PX and 1 <= h <= MAX_SIDE_PX):
        raise MalformedMessageError(f"a crop of {w}x{h}: sides must be 1..{MAX_SIDE_PX} px")
    encoding = header.get("encoding")
    if encoding == "raw-bgr24":
        return w * h * 3
    if encoding == "raw-i420":
        x0, y0 = _crop_origin(header)
        return i420_size(x0, y0, x0 + w, y0 + h)
    raise MalformedMessageError(f"encoding {str(encoding)[:32]!r} is not a raw one (shm)")


def decode_image(header: Mapping[str, Any], payload: bytes | memoryview) -> np.ndarray:
    """Rebuild a BGR image from a crop or tap payload according to ``header['encoding']``.
    Raises MalformedMessageError when the payload is not the picture the header declares."""
    encoding, w, h = _check_picture(header, payload)
    try:
        if encoding == "raw-bgr24":
            return np.frombuffer(payload, np.uint8).reshape(h, w, 3)
        if encoding == "raw-i420":
            if header.get("origin") is None:  # a tapped frame
                yuv = np.frombuffer(payload, np.uint8).reshape(h * 3 // 2, w)
                return cast(np.ndarray, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
            x0, y0 = _crop_origin(header)
            return i420_crop_to_bgr(payload, x0, y0, w, h)
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise MalformedMessageError(
            f"{encoding} picture does not decode: {str(e)[:200]}", "bad_image"
        ) from None
    if img is None or img.shape != (h, w, 3):
        raise MalformedMessageError(
            f"{encoding} payload of {len(payload)} bytes does not decode", "bad_image"
        )
    return cast(np.ndarray, img)


def _check_parts(parts: list[zmq.Frame]) -> None:
    if len(parts) != 3:
        raise MalformedMessageError(f"expected 3 parts [topic, header, image], got {len(parts)}")


def _tap_frame(parts: list[zmq.Frame]) -> TapFrame:
    _check_parts(parts)
    header = _check_fields(_header(parts[1].bytes), tap=True)
    _check_picture(header, parts[2].buffer)
    return TapFrame(header, parts[2].buffer)


def parse_tap_frame(parts: list[zmq.Frame]) -> TapFrame:
    """A received tapped frame's parts as a TapFrame (header parsed, picture not yet viewed).

    Raises MalformedMessageError (wrong part count, header not a JSON object, a field the
    TapFrame reads missing or out of bounds, a picture of another size than the header's) or
    ProtocolVersionError. The header's other fields are the caller's to check.
    """
    return _tap_frame(parts)


def parse_crop(
    parts: list[zmq.Frame], rings: RingCache | None = None, max_pixels: int | None = None
) -> Crop:
    """A received crop message's parts as a Crop (header parsed, image not yet decoded).

    A crop in a shared-memory ring (the header's ``shm``) is copied out of it through `rings`
    (the rings this consumer has mapped). A crop of more than `max_pixels` pixels is refused
    before its picture is looked at (nor copied out of a ring). Raises MalformedMessageError
    (wrong part count, header not a JSON object, a field the Crop reads missing or out of
    bounds, a picture of another size than the header's, too many pixels, a bad ``shm``
    handle, or one without `rings`), ProtocolVersionError, RingUnavailableError (the ring is
    not on this host) or StaleCropError (the crop was overwritten before it was read: the
    consumer is behind by more than the ring holds); the header's other fields are the
    caller's to check (see streamer.ocr).
    """
    _check_parts(parts)
    header = _check_fields(_header(parts[1].bytes), tap=False)
    if max_pixels is not None and header["width"] * header["height"] > max_pixels:
        raise MalformedMessageError(
            f"a crop of {header['width']}x{header['height']}: more than {max_pixels} pixels",
            "too_large",
        )
    handle = header.get("shm")
    payload: bytes | memoryview
    if handle is None:
        payload = parts[2].buffer
    elif rings is None:
        raise MalformedMessageError("the crop is in shared memory (shm) and no ring cache given")
    else:
        size = handle.get("size") if isinstance(handle, dict) else None
        if size != _raw_size(header):  # never copy more than the header's picture
            raise MalformedMessageError(f"shm.size {_show(size)} is not the size declared")
        try:
            payload = rings.read(handle)
        except (StaleCropError, RingUnavailableError):
            raise
        except ValueError as e:
            raise MalformedMessageError(str(e)) from None
    _check_picture(header, payload)
    return Crop(header, payload)


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


def check_topic(topic: str) -> str:
    """`topic` if it can be subscribed to; ValueError if it is longer than streamer's publishers
    take (they drop a subscriber that sends a longer one)."""
    if len(topic.encode()) >= MAX_SUBSCRIPTION_BYTES:
        raise ValueError(f"a topic is at most {MAX_SUBSCRIPTION_BYTES - 1} bytes long")
    return topic


def topic_arg(value: str) -> str:
    """`check_topic` as an argparse type."""
    try:
        return check_topic(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def endpoint_list(endpoints: Endpoints) -> list[str]:
    """One endpoint or several as a non-empty list; raises ValueError on none."""
    out = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not out or not all(isinstance(e, str) and e for e in out):
        raise ValueError(f"expected one or more endpoints, got {endpoints!r}")
    return out


def _input_socket(
    ctx: Any,
    endpoints: Endpoints,
    topics: Sequence[str],
    hwm: int,
    mode: SubMode,
    curve: Curve | None,
    max_message_bytes: int,
) -> Any:
    """A SUB (or PULL) socket connected to every endpoint: messages from all of them are
    fair-queued into one stream (several shards' taps or crop publishers)."""
    targets = endpoint_list(endpoints)
    for t in topics:
        check_topic(t)
    sock = ctx.socket(zmq.SUB if mode == "sub" else zmq.PULL)
    if curve is not None:
        make_client(sock, *curve)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    set_heartbeat(sock)
    if mode == "sub":
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t.encode())
    for e in targets:
        sock.connect(e)
    return sock


def _output_socket(ctx: Any, endpoint: str, hwm: int, curve: Curve | None) -> Any:
    """A PUSH socket to a detections endpoint, queueing at most `hwm` messages (linger 1 s so
    the last sends go out)."""
    sock = ctx.socket(zmq.PUSH)
    if curve is not None:
        make_client(sock, *curve)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 1000)
    set_heartbeat(sock)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError:
        sock.close(linger=0)
        raise
    return sock


class _Routes:
    """The sockets a detection sender sends on: one per detections endpoint that tapped frames
    name in ``reply_to``, least recently used closed beyond `max_routes`, plus the default
    endpoint's (kept). Counts in `stats`: ``sent``, ``dropped_full`` (a route's queue full),
    ``bad_reply_to`` (unusable or refused, so the default was used), ``no_route`` (neither:
    dropped), ``route_failed`` (its socket could not be opened, out of descriptors say:
    dropped, not sent to another shard), ``routes_opened``, ``routes_closed``; in `drops`,
    ``dropped_full`` per open route's endpoint."""

    def __init__(
        self,
        open_socket: Callable[[str], Any],
        default: str | None,
        follow_reply_to: bool,
        max_routes: int,
        allow_ipc: bool,
    ) -> None:
        if max_routes < 1:
            raise ValueError(f"max_routes must be >= 1, got {max_routes}")
        self._open = open_socket
        self.default = None if default is None else open_socket(default)
        self._default_endpoint = default
        self._follow = follow_reply_to
        self._allow_ipc = allow_ipc
        self._max = max_routes
        self._routes: OrderedDict[str, Any] = OrderedDict()
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()  # endpoint -> dropped_full, open routes only
        self._warn = LogOnce(log)

    def route_for(self, frame: TapFrame) -> tuple[str, Any] | None:
        """The endpoint and socket for `frame`'s detections; None (counted) when none."""
        if self._follow and frame.header.get("reply_to") != self._default_endpoint:
            try:
                target = frame.reply_route(self._allow_ipc)
                if target is not None:
                    return target, self._route(target)
            except ValueError as e:
                self.stats["bad_reply_to"] += 1
                self._warn("bad_reply_to", "tapped frame with an unusable reply_to: %s", e)
            except zmq.ZMQError as e:
                if e.errno != zmq.EINVAL:  # (out of sockets or descriptors: not the address's
                    self.stats["route_failed"] += 1  # fault, and not another shard's frames)
                    self._warn("route_failed", "cannot open a route for detections: %s", e)
                    return None
                self.stats["bad_reply_to"] += 1  # an address libzmq refuses
                self._warn("bad_reply_to", "tapped frame with an unusable reply_to: %s", e)
        if self.default is None or self._default_endpoint is None:
            self.stats["no_route"] += 1
            self._warn(
                "no_route",
                "frame %s/%s says no reply_to and the sender has no endpoint: detections dropped",
                frame.header.get("source_id"),
                frame.header.get("frame_id"),
            )
            return None
        return self._default_endpoint, self.default

    def _route(self, target: str) -> Any:
        """The socket to `target`, opened if it is not yet (the least recently used closed)."""
        sock = self._routes.get(target)
        if sock is not None:
            self._routes.move_to_end(target)
            return sock
        sock = self._open(target)
        if len(self._routes) >= self._max:
            old_endpoint, old = self._routes.popitem(last=False)
            old.close()
            self.drops.pop(old_endpoint, None)
            self.stats["routes_closed"] += 1
            self._warn(
                "routes_full", "more than %s detections endpoints: closing the oldest", self._max
            )
        self._routes[target] = sock
        self.stats["routes_opened"] += 1
        if self.stats["routes_opened"] <= self._max:  # past that, "routes_full" says it, rarely
            log.info("detections for frames tapped by %s go there", target)
        return sock

    def sent(self) -> None:
        self.stats["sent"] += 1

    def dropped(self, endpoint: str) -> None:
        self.stats["dropped_full"] += 1
        self.drops[endpoint] += 1
        self._warn(
            f"dropped_full:{endpoint}",
            "detections for %s dropped: its queue is full (the shard takes nothing)",
            endpoint,
        )

    def close(self) -> None:
        for sock in self._routes.values():
            sock.close()
        self._routes.clear()
        if self.default is not None:
            self.default.close()


class _Counts(Protocol):
    stale: int
    unavailable: int
    malformed: int


def _take(
    counts: _Counts, decode: Callable[[list[zmq.Frame]], T], parts: list[zmq.Frame]
) -> T | None:
    """The message decoded, or None for a crop overwritten in its ring or whose ring cannot be
    opened (counted in `stale` / `unavailable`, logged once: a consumer that falls behind, or
    outlives its streamer, loses those crops and goes on), or for a message that is not a
    streamer message (`malformed`, logged once per minute: one bad message does not end the
    consumer's loop). A protocol version this client does not know is raised: every message
    of that publisher would be one."""
    try:
        return decode(parts)
    except MalformedMessageError as e:
        counts.malformed += 1
        _log_once("malformed", "message(s) skipped, not streamer messages: %s", e)
    except StaleCropError as e:
        counts.stale += 1
        _log_once("stale", "crop(s) overwritten in the shm ring before read (%s)", e)
    except RingUnavailableError as e:
        counts.unavailable += 1
        _log_once("unavailable", "crop(s) skipped: %s", e)
    return None


class _CropRings:
    """What a crop subscriber (sync or asyncio) does with its shm rings."""

    rings: RingCache

    def _parse(self, parts: list[zmq.Frame]) -> Crop:
        return parse_crop(parts, self.rings)

    def _idle(self) -> None:
        self.rings.prune()  # a stopped streamer's ring is let go, its memory freed


class _Subscriber(Generic[T]):
    def __init__(
        self,
        decode: Callable[[list[zmq.Frame]], T],
        endpoint: Endpoints,
        topics: Sequence[str],
        hwm: int,
        mode: SubMode,
        curve: Curve | None,
        max_message_bytes: int,
    ) -> None:
        self._decode = decode
        self.stale = 0  # crops overwritten in their shm ring before they were read
        self.unavailable = 0  # crops whose shm ring could not be opened here
        self.malformed = 0  # messages skipped: not streamer messages (see MalformedMessageError)
        self.sock: zmq.Socket[bytes] = _input_socket(
            zmq.Context.instance(), endpoint, topics, hwm, mode, curve, max_message_bytes
        )

    def recv_parts(self, timeout_s: float | None) -> list[zmq.Frame] | None:
        """Next message's parts (uncopied), or None after `timeout_s` (None waits forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = IDLE_S if deadline is None else min(IDLE_S, deadline - time.monotonic())
            if self.sock.poll(max(0, int(left * 1000))):
                return self.sock.recv_multipart(copy=False)
            self._idle()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def recv(self, timeout_s: float | None = None) -> T | None:
        """The next message, decoded; None after `timeout_s` (None waits forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            parts = self.recv_parts(left)
            if parts is None:
                return None
            item = _take(self, self._decode, parts)
            if item is not None:
                return item

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self.recv()
            if item is not None:
                yield item

    def _idle(self) -> None:
        """Called about every IDLE_S while nothing arrives."""

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CropSubscriber(_CropRings, _Subscriber[Crop]):
    """Receives crops; `topics` are prefixes of ``crop/<source_id>/<class>``.

    ``mode="pull"`` joins a PUSH publisher's worker pool (each crop to one worker). A message
    part over `max_message_bytes` makes ZeroMQ drop the connection (redialled).
    Raises ProtocolVersionError on a message of a protocol version it does not know; skips a
    message that is not a crop message at all, counted in `malformed` and logged.
    """

    def __init__(
        self,
        endpoint: Endpoints,
        topics: Sequence[str] = ("crop/",),
        hwm: int = 1000,
        mode: SubMode = "sub",
        curve: Curve | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        shm_dir: str | Path = DEFAULT_SHM_DIR,
    ) -> None:
        self.rings = RingCache(Path(shm_dir))
        super().__init__(self._parse, endpoint, topics, hwm, mode, curve, max_message_bytes)

    def close(self) -> None:
        super().close()
        self.rings.close()


class FrameSubscriber(_Subscriber[TapFrame]):
    """Receives tapped frames (``frame/<source_id>``); ``mode="pull"`` for a PUSH tap. A message
    that is not a tapped frame is skipped, counted in `malformed` and logged; a message part
    over `max_message_bytes` makes ZeroMQ drop the connection (redialled)."""

    def __init__(
        self,
        endpoint: Endpoints,
        topics: Sequence[str] = ("frame/",),
        hwm: int = 2,
        mode: SubMode = "sub",
        curve: Curve | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(_tap_frame, endpoint, topics, hwm, mode, curve, max_message_bytes)


class DetectionSender:
    """PUSHes detection messages where each frame came from: the frame's ``reply_to``, else
    `endpoint` (streamer's detections endpoint; None: frames must say where).

    A send never waits: each endpoint queues at most `hwm` messages, and a message that does
    not fit is dropped and counted (``stats["dropped_full"]``, and per endpoint in
    `route_drops`), so a dead or stalled shard never slows the detections of the others.
    ``follow_reply_to=False`` always uses `endpoint`; ``allow_ipc_reply_to=True`` follows
    ``ipc://`` reply_to endpoints too (a single-host setup; refused and counted by default).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        hwm: int = 100,
        curve: Curve | None = None,
        follow_reply_to: bool = True,
        max_routes: int = MAX_REPLY_ROUTES,
        allow_ipc_reply_to: bool = False,
    ) -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        self._routes = _Routes(
            lambda e: _output_socket(ctx, e, hwm, curve),
            endpoint,
            follow_reply_to,
            max_routes,
            allow_ipc_reply_to,
        )
        self.sock: zmq.Socket[bytes] | None = self._routes.default  # the default endpoint's

    @property
    def stats(self) -> Counter[str]:
        """``sent``, ``dropped_full``, ``bad_reply_to``, ``no_route``, ``routes_opened``, ..."""
        return self._routes.stats

    @property
    def route_drops(self) -> Counter[str]:
        """Messages dropped for a full queue, by endpoint (the routes open now)."""
        return self._routes.drops

    def send(self, frame: TapFrame, detections: Any) -> bool:
        """Send the detections for `frame`: Roboflow-style dicts (centre boxes in
        `frame.image` pixels) or a ``supervision.Detections`` (xyxy in those pixels).
        Returns False when they were dropped (counted in `stats`)."""
        return self.send_message(frame, _detection_message(frame, detections))

    def send_message(self, frame: TapFrame, message: list[bytes]) -> bool:
        """Queue an encoded detection message where `frame`'s detections go, without waiting;
        False if dropped (counted)."""
        route = self._routes.route_for(frame)
        if route is None:
            return False
        try:
            route[1].send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._routes.dropped(route[0])
            return False
        self._routes.sent()
        return True

    def close(self) -> None:
        self._routes.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncSubscriber(Generic[T]):
    def __init__(
        self,
        decode: Callable[[list[zmq.Frame]], T],
        endpoint: Endpoints,
        topics: Sequence[str],
        hwm: int,
        mode: SubMode,
        curve: Curve | None,
        max_message_bytes: int,
    ) -> None:
        self._decode = decode
        self.stale = 0  # crops overwritten in their shm ring before they were read
        self.unavailable = 0  # crops whose shm ring could not be opened here
        self.malformed = 0  # messages skipped: not streamer messages (see MalformedMessageError)
        self.sock: zmq.asyncio.Socket = _input_socket(
            zmq.asyncio.Context.instance(), endpoint, topics, hwm, mode, curve, max_message_bytes
        )

    async def recv(self) -> T:
        """The next message, decoded (crops overwritten in their shm ring, or whose ring is
        gone, are skipped and counted in `stale` / `unavailable`)."""
        while True:
            if not await self.sock.poll(int(IDLE_S * 1000)):
                self._idle()
                continue
            parts: list[zmq.Frame] = await self.sock.recv_multipart(copy=False)
            item = _take(self, self._decode, parts)
            if item is not None:
                return item

    def _idle(self) -> None:
        """Called about every IDLE_S while nothing arrives."""

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
        endpoint: Endpoints,
        topics: Sequence[str] = ("frame/",),
        hwm: int = 2,
        mode: SubMode = "sub",
        curve: Curve | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        super().__init__(_tap_frame, endpoint, topics, hwm, mode, curve, max_message_bytes)


class AsyncCropSubscriber(_CropRings, _AsyncSubscriber[Crop]):
    """asyncio twin of CropSubscriber: ``async for crop in AsyncCropSubscriber(...)``."""

    def __init__(
        self,
        endpoint: Endpoints,
        topics: Sequence[str] = ("crop/",),
        hwm: int = 1000,
        mode: SubMode = "sub",
        curve: Curve | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        shm_dir: str | Path = DEFAULT_SHM_DIR,
    ) -> None:
        self.rings = RingCache(Path(shm_dir))
        super().__init__(self._parse, endpoint, topics, hwm, mode, curve, max_message_bytes)

    def close(self) -> None:
        super().close()
        self.rings.close()


class AsyncDetectionSender:
    """asyncio twin of DetectionSender (same routing, non-blocking sends and counters)."""

    def __init__(
        self,
        endpoint: str | None = None,
        hwm: int = 100,
        curve: Curve | None = None,
        follow_reply_to: bool = True,
        max_routes: int = MAX_REPLY_ROUTES,
        allow_ipc_reply_to: bool = False,
    ) -> None:
        ctx: zmq.asyncio.Context = zmq.asyncio.Context.instance()
        self._routes = _Routes(
            lambda e: _output_socket(ctx, e, hwm, curve),
            endpoint,
            follow_reply_to,
            max_routes,
            allow_ipc_reply_to,
        )
        self.sock: zmq.asyncio.Socket | None = self._routes.default

    @property
    def stats(self) -> Counter[str]:
        return self._routes.stats

    @property
    def route_drops(self) -> Counter[str]:
        return self._routes.drops

    async def send(self, frame: TapFrame, detections: Any) -> bool:
        return await self.send_message(frame, _detection_message(frame, detections))

    async def send_message(self, frame: TapFrame, message: list[bytes]) -> bool:
        route = self._routes.route_for(frame)
        if route is None:
            return False
        try:
            await route[1].send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self._routes.dropped(route[0])
            return False
        self._routes.sent()
        return True

    def close(self) -> None:
        self._routes.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
