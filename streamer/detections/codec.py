"""Detection messages: wire bytes <-> Detections. Pure; see docs/protocol.md.

A message is multipart ``[b"det/<source_id>", header_json, *payload]``. Every way a message can
be wrong raises ProtocolError with a stable ``kind`` (a counter label) and a message that names the
offending field path.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streamer.colors import parse_color_bgr
from streamer.errors import ProtocolError
from streamer.types import BitmapMask, Detections, Prediction, RleMask

PROTOCOL_VERSION = 1
TOPIC_PREFIX = b"det/"

# Kinds a malformed message is counted under. Stable: they are metric labels.
MALFORMED_KINDS = (
    "bad_framing",
    "oversize",
    "bad_topic",
    "not_json",
    "non_finite",
    "bad_header",
    "bad_version",
    "topic_mismatch",
    "missing_field",
    "wrong_type",
    "bad_value",
    "negative_size",
    "too_many_predictions",
)


def _reject_constant(name: str) -> Any:
    raise ProtocolError("non_finite", f"header contains {name}, which JSON does not allow")


def _number(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> float | None:
    if key not in obj:
        if required:
            raise ProtocolError("missing_field", f"{path}.{key}: required")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProtocolError("wrong_type", f"{path}.{key}: expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ProtocolError("non_finite", f"{path}.{key}: must be finite, got {v!r}")
    return f


def _int(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> int | None:
    if key not in obj or (not required and obj[key] is None):
        if required:
            raise ProtocolError("missing_field", f"{path}.{key}: required")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("wrong_type", f"{path}.{key}: expected an integer, got {v!r}")
    return v


def _points(raw: Any, path: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    if not isinstance(raw, list):
        raise ProtocolError("wrong_type", f"{path}: expected a list of {{x, y}}")
    out = np.empty((len(raw), 2), dtype=np.float64)
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise ProtocolError("wrong_type", f"{path}[{i}]: expected {{x, y}}, got {p!r}")
        out[i, 0] = _number(p, "x", f"{path}[{i}]")
        out[i, 1] = _number(p, "y", f"{path}[{i}]")
    return out


def _keypoints(raw: Any, path: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise ProtocolError("wrong_type", f"{path}: expected a list of keypoints")
    out = []
    for i, kp in enumerate(raw):
        if not isinstance(kp, dict):
            raise ProtocolError("wrong_type", f"{path}[{i}]: expected an object, got {kp!r}")
        _number(kp, "x", f"{path}[{i}]")
        _number(kp, "y", f"{path}[{i}]")
        out.append(dict(kp))
    return tuple(out)


def rle_string_to_counts(text: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' LEB128-like form) into run lengths."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated RLE string")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {text[p]!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _size_hw(size: Any, path: str) -> tuple[int, int]:
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise ProtocolError("bad_value", f"{path}: expected [H, W] positive integers")
    return size[0], size[1]


def _rle(raw: Any, path: str) -> RleMask:
    if not isinstance(raw, dict):
        raise ProtocolError("wrong_type", f"{path}: expected {{size: [H, W], counts}}")
    h, w = _size_hw(raw.get("size"), f"{path}.size")
    counts = raw.get("counts")
    if isinstance(counts, str):
        try:
            runs = rle_string_to_counts(counts)
        except ValueError as e:
            raise ProtocolError("bad_value", f"{path}.counts: {e}") from None
    elif isinstance(counts, list) and all(
        isinstance(c, int) and not isinstance(c, bool) for c in counts
    ):
        runs = counts
    else:
        raise ProtocolError("wrong_type", f"{path}.counts: expected a string or a list of ints")
    arr = np.asarray(runs, dtype=np.int64)
    if arr.size and arr.min() < 0:
        raise ProtocolError("bad_value", f"{path}.counts: negative run length")
    if int(arr.sum()) != h * w:
        raise ProtocolError(
            "bad_value", f"{path}.counts: runs add up to {int(arr.sum())}, expected {h}x{w}={h * w}"
        )
    return RleMask(h, w, arr)


def _bitmap(
    raw: Mapping[str, Any], path: str, payload: Sequence[bytes | memoryview], image: tuple[int, int]
) -> BitmapMask:
    index = _int(raw, "mask_part", path)
    assert index is not None
    if not 0 <= index < len(payload):
        raise ProtocolError(
            "bad_value",
            f"{path}.mask_part: {index} but the message has {len(payload)} payload part(s)",
        )
    layout = raw.get("mask_layout", "image")
    if layout not in ("image", "box"):
        raise ProtocolError(
            "bad_value", f"{path}.mask_layout: expected 'image' or 'box', got {layout!r}"
        )
    size = raw.get("mask_size")
    if size is None and layout == "image":
        h, w = image[1], image[0]
    else:
        h, w = _size_hw(size, f"{path}.mask_size")
    data = payload[index]
    if len(data) != h * w:
        raise ProtocolError(
            "bad_value", f"{path}.mask_part: {len(data)} bytes, expected {h}x{w}={h * w}"
        )
    return BitmapMask(np.frombuffer(data, np.uint8).reshape(h, w), layout)


def _prediction(
    raw: Any, path: str, payload: Sequence[bytes | memoryview], image: tuple[int, int]
) -> Prediction:
    if not isinstance(raw, dict):
        raise ProtocolError("wrong_type", f"{path}: expected an object, got {type(raw).__name__}")
    x = _number(raw, "x", path)
    y = _number(raw, "y", path)
    w = _number(raw, "width", path)
    h = _number(raw, "height", path)
    assert x is not None and y is not None and w is not None and h is not None
    if w < 0 or h < 0:
        raise ProtocolError("negative_size", f"{path}: width and height must be >= 0, got {w}x{h}")
    conf = _number(raw, "confidence", path, required=False)
    conf = 1.0 if conf is None else conf
    if not 0.0 <= conf <= 1.0:
        raise ProtocolError("bad_value", f"{path}.confidence: must be in [0, 1], got {conf}")
    cls = raw.get("class")
    if cls is None:
        raise ProtocolError("missing_field", f"{path}.class: required")
    if not isinstance(cls, str) or not cls:
        raise ProtocolError("wrong_type", f"{path}.class: expected a non-empty string, got {cls!r}")
    class_id = _int(raw, "class_id", path, required=False)
    det_id = raw.get("detection_id")
    if det_id is None:
        det_id = str(uuid.uuid4())
    elif not isinstance(det_id, str):
        raise ProtocolError("wrong_type", f"{path}.detection_id: expected a string, got {det_id!r}")
    tracker_id = _int(raw, "tracker_id", path, required=False)
    points = _points(raw["points"], f"{path}.points") if raw.get("points") is not None else None
    kps = raw.get("keypoints")
    keypoints = _keypoints(kps, f"{path}.keypoints") if kps is not None else None
    mask: RleMask | BitmapMask | None = None
    if raw.get("mask_part") is not None:
        mask = _bitmap(raw, path, payload, image)
    else:
        for key in ("rle", "rle_mask"):
            if raw.get(key) is not None:
                mask = _rle(raw[key], f"{path}.{key}")
                break
    return Prediction(
        x=x,
        y=y,
        width=w,
        height=h,
        confidence=conf,
        class_name=cls,
        class_id=-1 if class_id is None else class_id,
        detection_id=det_id,
        tracker_id=tracker_id,
        points=points,
        keypoints=keypoints,
        mask=mask,
    )


def _params(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError("wrong_type", "params: expected an object")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "mask_opacity":
            op = _number(raw, key, "params")
            assert op is not None
            if not 0.0 <= op <= 1.0:
                raise ProtocolError(
                    "bad_value", f"params.mask_opacity: must be in [0, 1], got {op}"
                )
            out[key] = op
        elif key == "background_color":
            try:
                out["background_bgr"] = parse_color_bgr(value)
            except ValueError as e:
                raise ProtocolError("bad_value", f"params.background_color: {e}") from None
        else:
            raise ProtocolError("bad_value", f"params.{key}: unknown parameter")
    return out


def decode_detections(
    parts: Sequence[bytes | memoryview],
    *,
    max_predictions: int = 1_000,
    max_bytes: int = 16 * 1024 * 1024,
) -> Detections:
    """Decode and validate one detection message.

    Takes the multipart frames as received; returns Detections with predictions in the
    message's ``image`` pixel space. Raises ProtocolError on any defect.
    """
    if len(parts) < 2:
        raise ProtocolError(
            "bad_framing", f"expected [topic, header, ...], got {len(parts)} part(s)"
        )
    size = sum(len(p) for p in parts)
    if size > max_bytes:
        raise ProtocolError("oversize", f"message is {size} bytes, limit {max_bytes}")
    topic = bytes(parts[0])
    if not topic.startswith(TOPIC_PREFIX) or len(topic) == len(TOPIC_PREFIX):
        raise ProtocolError("bad_topic", f"topic must be 'det/<source_id>', got {topic[:64]!r}")
    try:
        header = json.loads(bytes(parts[1]), parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("not_json", f"header is not UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(
            "bad_header", f"header must be a JSON object, got {type(header).__name__}"
        )
    if "v" not in header:
        raise ProtocolError("missing_field", "v: required (protocol version)")
    if header["v"] != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"v: unsupported version {header['v']!r}, expected 1")
    source_id = header.get("source_id")
    if not isinstance(source_id, str) or not source_id:
        raise ProtocolError("missing_field", "source_id: required non-empty string")
    if topic[len(TOPIC_PREFIX) :].decode("utf-8", "replace") != source_id:
        raise ProtocolError(
            "topic_mismatch", f"topic {topic!r} does not match source_id {source_id!r}"
        )
    frame_id = _int(header, "frame_id", "(header)", required=False)
    if frame_id is not None and frame_id < 0:
        raise ProtocolError("bad_value", f"frame_id: must be >= 0, got {frame_id}")
    captured_at = _number(header, "captured_at", "(header)", required=False)
    if frame_id is None and captured_at is None:
        raise ProtocolError("missing_field", "frame_id: required (or captured_at)")
    image = header.get("image")
    if not isinstance(image, dict):
        raise ProtocolError("missing_field", "image: required {width, height}")
    iw = _int(image, "width", "image")
    ih = _int(image, "height", "image")
    assert iw is not None and ih is not None
    if iw <= 0 or ih <= 0:
        raise ProtocolError("bad_value", f"image: width and height must be > 0, got {iw}x{ih}")
    raw_preds = header.get("predictions")
    if raw_preds is None:
        raise ProtocolError("missing_field", "predictions: required (may be empty)")
    if not isinstance(raw_preds, list):
        raise ProtocolError("wrong_type", "predictions: expected a list")
    if len(raw_preds) > max_predictions:
        raise ProtocolError(
            "too_many_predictions", f"predictions: {len(raw_preds)} exceeds limit {max_predictions}"
        )
    payload = parts[2:]
    preds = tuple(
        _prediction(p, f"predictions[{i}]", payload, (iw, ih)) for i, p in enumerate(raw_preds)
    )
    params = _params(header["params"]) if header.get("params") is not None else None
    return Detections(
        source_id=source_id,
        frame_id=frame_id,
        captured_at=captured_at,
        image_width=iw,
        image_height=ih,
        predictions=preds,
        params=params,
    )


def encode_detections(
    source_id: str,
    frame_id: int | None,
    image_size: tuple[int, int],
    predictions: Sequence[Mapping[str, Any]],
    *,
    captured_at: float | None = None,
    params: Mapping[str, Any] | None = None,
    payload: Sequence[bytes] = (),
) -> list[bytes]:
    """Build a detection message.

    `image_size` is (width, height) of the detector's input; `predictions` are Roboflow-style
    dicts (``x, y, width, height, confidence, class, class_id``); `payload` holds extra parts,
    such as raw mask bitmaps that predictions name by ``mask_part`` index.
    """
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "source_id": source_id,
        "image": {"width": image_size[0], "height": image_size[1]},
        "predictions": list(predictions),
    }
    if frame_id is not None:
        header["frame_id"] = frame_id
    if captured_at is not None:
        header["captured_at"] = captured_at
    if params is not None:
        header["params"] = dict(params)
    body = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return [TOPIC_PREFIX + source_id.encode(), body, *payload]
