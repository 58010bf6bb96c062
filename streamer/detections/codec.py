"""Detection messages: wire bytes <-> Detections. Pure; see docs/protocol.md.

A message is multipart ``[b"det/<source_id>", header_json, *payload]``. Every way a message can
be wrong raises ProtocolError with a stable ``kind`` (a counter label) and a message that names the
offending field path; nothing else escapes, whatever the bytes.

Costs are bounded by the message's size: JSON nesting is capped by the parser (orjson, depth
1024), every integer fits an int64 and every number a float, strings are capped and clean, and
sizes declared inside the message (the ``image``, an RLE's ``size`` and ``counts``) are checked
against each other before anything is decoded. What a valid message makes later stages allocate
follows the frame and the crops, not numbers in the message (see streamer.crop.masks).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from streamer.colors import parse_color_bgr
from streamer.errors import ProtocolError
from streamer.types import BitmapMask, Detections, Prediction, RleMask

PROTOCOL_VERSION = 1
TOPIC_PREFIX = b"det/"

MAX_TEXT_CHARS = 256  # class names, detection ids, source ids, keypoint fields
MAX_IMAGE_SIDE_PX = 32_768  # `image`, RLE `size` and `mask_size` sides
MAX_COORDINATE_PX = 1e9  # |x|, |y|, width, height, polygon and keypoint coordinates
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
# A compressed RLE count takes 5 bits per character; counts are at most MAX_IMAGE_SIDE_PX**2 =
# 2**30, and deltas between counts need a sign bit more: 7 characters (35 bits) always suffice.
MAX_RLE_CHARS_PER_COUNT = 7
MAX_POLYGON_POINTS = 1_024  # vertices of one polygon (`points`; the OCR worker takes as many)
MAX_KEYPOINTS = 256  # keypoints of one prediction
MAX_KEYPOINT_FIELDS = 16  # fields of one keypoint, x and y included
# The header is refused before it is parsed if it is longer than this (payload parts, such as
# bitmap masks, count only towards max_message_bytes) ...
MAX_HEADER_BYTES = 4 * 1024 * 1024
# ... or if it opens more than one JSON array or object per this many bytes (plus a few): a valid
# header spends at least 13 bytes on each (`{"x":1,"y":2},`), while one of nested empty arrays
# (1 byte each) costs the parser ~30 times more per byte than a valid one.
HEADER_BYTES_PER_CONTAINER = 8
HEADER_CONTAINERS_SLACK = 64
MAX_QUOTE_CHARS = 64  # an error message quotes at most this much of a value

# Kinds a malformed message is counted under. Stable: they are metric labels.
MALFORMED_KINDS = (
    "bad_framing",
    "oversize",
    "too_many_parts",
    "bad_topic",
    "not_json",
    "too_deep",
    "non_finite",
    "out_of_range",
    "bad_header",
    "bad_version",
    "topic_mismatch",
    "missing_field",
    "wrong_type",
    "bad_value",
    "bad_string",
    "too_long",
    "negative_size",
    "too_many_predictions",
    "too_many_points",
    "too_many_keypoints",
    "too_complex",
)

# C0 and C1 control characters and UTF-16 surrogates (orjson already refuses the latter).
_BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Beyond ASCII, also format characters (bidi overrides such as U+202E, U+FEFF, zero-width ones)
# and line/paragraph separators (U+2028, U+2029), which can forge or hide log lines.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})
_NUMBER = (int, float)
_NUMBER_TYPES = frozenset(_NUMBER)
# Compressed RLE strings up to this long are decoded in plain Python (numpy's per-call overhead
# is larger than the work); longer ones vectorised.
RLE_PYTHON_MAX_CHARS = 256
RLE_CHUNK_CHARS = 1 << 16  # longer ones a chunk at a time (bounded scratch memory)


def _load_json(raw: bytes | memoryview) -> Any:
    """Parse the header; orjson refuses NaN/Infinity, numbers beyond a float, surrogates, invalid
    UTF-8 and nesting deeper than 1024, each as a JSONDecodeError."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        text = str(e)
        if "depth limit" in text:
            raise ProtocolError("too_deep", "header nests deeper than 1024") from None
        if "infinity" in text:
            raise ProtocolError(
                "non_finite", f"header has a number beyond a float: {_quote(text)}"
            ) from None
        # e.pos counts characters; this error path may pay a decode to look at them.
        near = bytes(raw).decode("utf-8", "replace")[e.pos : e.pos + 8]
        for token in ("NaN", "Infinity"):
            if near.startswith(token):
                raise ProtocolError(
                    "non_finite", f"header contains {token}, which JSON does not allow"
                ) from None
        raise ProtocolError("not_json", f"header is not UTF-8 JSON: {_quote(text)}") from None


def _check_complexity(raw: bytes | memoryview) -> None:
    """Refuse a header that opens more JSON arrays and objects than its length allows, before
    parsing it (a count of two byte values, at memory speed; brackets inside strings count too)."""
    data = raw if isinstance(raw, bytes) else raw.tobytes()
    containers = data.count(b"[") + data.count(b"{")
    limit = HEADER_CONTAINERS_SLACK + len(data) // HEADER_BYTES_PER_CONTAINER
    if containers > limit:
        raise ProtocolError(
            "too_complex",
            f"header opens {containers} arrays and objects in {len(data)} bytes, limit {limit}"
            f" (one per {HEADER_BYTES_PER_CONTAINER} bytes + {HEADER_CONTAINERS_SLACK})",
        )


def _number(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> float | None:
    if key not in obj:
        if required:
            raise ProtocolError("missing_field", f"{path}.{key}: required")
        return None
    return _float(obj[key], f"{path}.{key}")


def _float(v: Any, path: str, limit: float = math.inf) -> float:
    """A JSON number as a finite float with ``|v| <= limit``."""
    if type(v) not in _NUMBER:  # bool is a subclass of int: excluded
        raise ProtocolError("wrong_type", f"{path}: expected a number, got {_show(v)}")
    try:
        f = float(v)
    except OverflowError:
        raise ProtocolError("out_of_range", f"{path}: {_show(v)} does not fit a float") from None
    if not math.isfinite(f):
        raise ProtocolError("non_finite", f"{path}: must be finite, got {_show(v)}")
    if abs(f) > limit:
        raise ProtocolError("out_of_range", f"{path}: |{f}| exceeds {limit:g}")
    return f


def _coordinate(obj: Mapping[str, Any], key: str, path: str) -> float:
    if key not in obj:
        raise ProtocolError("missing_field", f"{path}.{key}: required")
    return _float(obj[key], f"{path}.{key}", MAX_COORDINATE_PX)


def _int(obj: Mapping[str, Any], key: str, path: str, *, required: bool = True) -> int | None:
    if key not in obj or (not required and obj[key] is None):
        if required:
            raise ProtocolError("missing_field", f"{path}.{key}: required")
        return None
    return _int64(obj[key], f"{path}.{key}")


def _int64(v: Any, path: str) -> int:
    if type(v) is not int:
        raise ProtocolError("wrong_type", f"{path}: expected an integer, got {_show(v)}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise ProtocolError("out_of_range", f"{path}: {_show(v)} does not fit an int64")
    return v


def _text(v: Any, path: str) -> str:
    """A string of at most MAX_TEXT_CHARS characters, none of them a control character or a
    surrogate (OpenCV's text drawing crashes the process on a lone surrogate)."""
    if not isinstance(v, str):
        raise ProtocolError("wrong_type", f"{path}: expected a string, got {_show(v)}")
    if len(v) > MAX_TEXT_CHARS:
        raise ProtocolError("too_long", f"{path}: {len(v)} characters, limit {MAX_TEXT_CHARS}")
    bad = _BAD_CHARS.search(v)
    if bad is not None:
        raise ProtocolError(
            "bad_string",
            f"{path}: control character or surrogate {bad.group()!a} at {bad.start()}",
        )
    if not v.isascii():
        for i, c in enumerate(v):
            if unicodedata.category(c) in _BAD_CATEGORIES:
                raise ProtocolError(
                    "bad_string", f"{path}: format or separator character {c!a} at {i}"
                )
    return v


def _quote(text: str) -> str:
    """`text` for an error message: ASCII only (escapes for the rest, so no character can
    forge a log line) and at most MAX_QUOTE_CHARS characters of it."""
    escaped = ascii(text[:MAX_QUOTE_CHARS])[1:-1]
    cut = len(text) > MAX_QUOTE_CHARS or len(escaped) > MAX_QUOTE_CHARS
    return escaped[:MAX_QUOTE_CHARS] + ("..." if cut else "")


def _show(v: Any) -> str:
    """A short description of a value for an error message (never the whole of a huge one)."""
    if isinstance(v, int | float | bool) or v is None:
        text = repr(v) if type(v) is not int or abs(v) < 10**40 else "an integer of over 40 digits"
        return text
    if isinstance(v, str):
        return "'" + _quote(v) + "'"
    return type(v).__name__


def _points(raw: Any, path: str) -> npt.NDArray[np.float64]:
    """A polygon as an (N, 2) float64 array; every point a ``{x, y}`` object."""
    if not isinstance(raw, list):
        raise ProtocolError("wrong_type", f"{path}: expected a list of {{x, y}}")
    if len(raw) > MAX_POLYGON_POINTS:
        raise ProtocolError(
            "too_many_points", f"{path}: {len(raw)} points, limit {MAX_POLYGON_POINTS}"
        )
    try:  # the common case in bulk; any defect is found again below, with its path
        xs = [p["x"] for p in raw]
        ys = [p["y"] for p in raw]
        if {*map(type, xs), *map(type, ys)} <= _NUMBER_TYPES:
            out = np.empty((len(xs), 2), dtype=np.float64)
            out[:, 0] = xs
            out[:, 1] = ys
            if np.all(np.abs(out) <= MAX_COORDINATE_PX):
                return out
    except (TypeError, KeyError, OverflowError):
        pass
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise ProtocolError("wrong_type", f"{path}[{i}]: expected {{x, y}}, got {_show(p)}")
        _coordinate(p, "x", f"{path}[{i}]")
        _coordinate(p, "y", f"{path}[{i}]")
    raise ProtocolError("bad_value", f"{path}: not a list of {{x, y}} coordinates")


def _scalar(v: Any, path: str) -> Any:
    """A keypoint's extra field: a clean string, an int64, a finite float, a bool or null."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, str):
        return _text(v, path)
    if type(v) is int:
        return _int64(v, path)
    if type(v) is float:
        return _float(v, path)
    raise ProtocolError("wrong_type", f"{path}: expected a string, number, bool or null")


def _keypoints(raw: Any, path: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise ProtocolError("wrong_type", f"{path}: expected a list of keypoints")
    if len(raw) > MAX_KEYPOINTS:
        raise ProtocolError(
            "too_many_keypoints", f"{path}: {len(raw)} keypoints, limit {MAX_KEYPOINTS}"
        )
    out = []
    for i, kp in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(kp, dict):
            raise ProtocolError("wrong_type", f"{p}: expected an object, got {_show(kp)}")
        if len(kp) > MAX_KEYPOINT_FIELDS:
            raise ProtocolError(
                "too_many_keypoints", f"{p}: {len(kp)} fields, limit {MAX_KEYPOINT_FIELDS}"
            )
        clean = {_text(k, f"{p} key"): _scalar(v, f"{p}.{k}") for k, v in kp.items()}
        clean["x"] = _coordinate(kp, "x", p)
        clean["y"] = _coordinate(kp, "y", p)
        out.append(clean)
    return tuple(out)


def rle_string_to_counts(text: str, area: int | None = None) -> npt.NDArray[np.int64]:
    """Decode COCO's compressed RLE string (pycocotools' LEB128-like form) into run lengths.

    Linear in the string's length, and decoded in chunks of RLE_CHUNK_CHARS characters so that
    memory beyond the result (8 bytes per run) stays small. Raises ValueError for a count longer
    than MAX_RLE_CHARS_PER_COUNT characters, a character outside ``0``-``o``, a truncated count,
    a negative run, a zero-length run after the first (pycocotools never writes one), or runs
    adding up to more than `area` (when given; checked as it goes, so it stops early).
    """
    if len(text) <= RLE_PYTHON_MAX_CHARS:
        return np.array(_rle_string_short(text, area), dtype=np.int64)
    return _rle_string_vectorised(text, area)


def _check_runs(x: npt.NDArray[np.int64], first: int, total: int, area: int | None) -> int:
    """Check decoded runs `x` (the first of them run number `first`): none negative, none empty
    but the very first, together with `total` (the sum of the runs before them) no more than
    `area`. Returns `total` plus their sum."""
    if x.size == 0:
        return total
    later = x[1:] if first == 0 else x
    if int(x[0]) < 0 or (later.size and int(later.min()) <= 0):
        raise ValueError("a negative run, or a zero-length run after the first")
    if area is not None:
        if int(x.max()) > area:
            raise ValueError(f"a run longer than {area}")
        total += int(x.sum())  # fewer than 2**17 runs of at most 2**30 here: no overflow
        if total > area:
            raise ValueError(f"runs add up to more than {area}")
    return total


def _rle_string_vectorised(
    text: str, area: int | None = None, chunk_chars: int = 0
) -> npt.NDArray[np.int64]:
    """`rle_string_to_counts` for a long string, with numpy, `chunk_chars` (default
    RLE_CHUNK_CHARS) characters at a time."""
    if not text.isascii():
        raise ValueError("non-ASCII character in RLE string")
    chunk_chars = max(chunk_chars or RLE_CHUNK_CHARS, 3 * MAX_RLE_CHARS_PER_COUNT)
    data = np.frombuffer(text.encode("ascii"), np.uint8)
    out: list[npt.NDArray[np.int64]] = []
    done = total = 0  # characters and runs decoded so far
    runs = 0
    while done < data.size:
        c = data[done : done + chunk_chars].astype(np.int64) - 48
        bad = (c < 0) | (c >= 64)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"invalid character {text[done + i]!a} at {done + i} in RLE string")
        more = (c & 0x20) != 0
        ends = np.flatnonzero(~more)  # the last character of each count
        if ends.size == 0:
            raise ValueError(
                "truncated RLE string" if done + c.size == data.size else "an RLE count too long"
            )
        c = c[: int(ends[-1]) + 1]  # whole counts only; the rest starts the next chunk
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if int(lengths.max()) > MAX_RLE_CHARS_PER_COUNT:
            raise ValueError(f"an RLE count longer than {MAX_RLE_CHARS_PER_COUNT} characters")
        shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
        x = np.add.reduceat((c & 0x1F) << shift, starts)
        negative = (c[ends] & 0x10) != 0  # sign-extend: x | (-1 << 5k) == x - 2**(5k)
        x[negative] -= np.left_shift(1, 5 * lengths[negative])
        # From the fourth count on, each is a delta to the count two before it. A first chunk
        # of a string longer than one chunk holds at least 3 counts (each <= 7 characters).
        if runs == 0:
            x[1::2] = np.cumsum(x[1::2])
            x[2::2] = np.cumsum(x[2::2])
        else:
            x[0::2] = np.cumsum(x[0::2]) + out[-1][-2]
            x[1::2] = np.cumsum(x[1::2]) + out[-1][-1]
        total = _check_runs(x, runs, total, area)
        out.append(x)
        runs += x.size
        done += c.size
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _rle_string_short(text: str, area: int | None = None) -> list[int]:
    """`rle_string_to_counts` for a short string, one character at a time."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("non-ASCII character in RLE string") from None
    counts: list[int] = []
    x = k = n = 0
    for i, byte in enumerate(data):
        c = byte - 48
        if not 0 <= c < 64:
            raise ValueError(f"invalid character {chr(byte)!a} at {i} in RLE string")
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            if k >= MAX_RLE_CHARS_PER_COUNT:
                raise ValueError(f"an RLE count longer than {MAX_RLE_CHARS_PER_COUNT} characters")
            continue
        if c & 0x10:
            x |= -1 << (5 * k)
        if n > 2:
            x += counts[-2]
        counts.append(x)
        n += 1
        x = k = 0
    if k:
        raise ValueError("truncated RLE string")
    # (at most 256 counts: checked once at the end, by C loops)
    if counts and (counts[0] < 0 or min(counts[1:], default=1) <= 0):
        raise ValueError("a negative run, or a zero-length run after the first")
    if area is not None and sum(counts) > area:
        raise ValueError(f"runs add up to more than {area}")
    return counts


def _size_hw(size: Any, path: str) -> tuple[int, int]:
    if (
        not isinstance(size, list)
        or len(size) != 2
        or not all(type(v) is int and 0 < v <= MAX_IMAGE_SIDE_PX for v in size)
    ):
        raise ProtocolError(
            "bad_value", f"{path}: expected [H, W] positive integers <= {MAX_IMAGE_SIDE_PX}"
        )
    return size[0], size[1]


def _rle(raw: Any, path: str, image: tuple[int, int]) -> RleMask:
    """A COCO RLE no larger than the message's image (W, H), its counts checked against its
    size before anything is decoded."""
    if not isinstance(raw, dict):
        raise ProtocolError("wrong_type", f"{path}: expected {{size: [H, W], counts}}")
    h, w = _size_hw(raw.get("size"), f"{path}.size")
    if h > image[1] or w > image[0]:
        raise ProtocolError(
            "bad_value",
            f"{path}.size: [{h}, {w}] is larger than the image [{image[1]}, {image[0]}]",
        )
    counts = raw.get("counts")
    if isinstance(counts, str):
        try:
            arr = rle_string_to_counts(counts, h * w)
        except ValueError as e:
            raise ProtocolError("bad_value", f"{path}.counts: {_quote(str(e))}") from None
    elif isinstance(counts, list):
        if not all(type(c) is int for c in counts):
            raise ProtocolError("wrong_type", f"{path}.counts: expected a list of ints")
        try:
            arr = np.array(counts, dtype=np.int64)
        except OverflowError:
            raise ProtocolError("out_of_range", f"{path}.counts: a count beyond int64") from None
    else:
        raise ProtocolError("wrong_type", f"{path}.counts: expected a string or a list of ints")
    area = h * w
    if isinstance(counts, list) and arr.size:  # (a string's runs were checked as decoded)
        if arr[0] < 0 or (arr.size > 1 and arr[1:].min() <= 0):
            raise ProtocolError(
                "bad_value", f"{path}.counts: a negative run, or a zero-length run after the first"
            )
        if arr.max() > area:
            raise ProtocolError("bad_value", f"{path}.counts: a run longer than {h}x{w}={area}")
    # Each run <= 2**30 and fewer than 2**31 of them: the sum cannot overflow an int64.
    total = int(arr.sum())
    if total != area:
        raise ProtocolError(
            "bad_value", f"{path}.counts: runs add up to {total}, expected {h}x{w}={area}"
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
            "bad_value", f"{path}.mask_layout: expected 'image' or 'box', got {_show(layout)}"
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
    x = _coordinate(raw, "x", path)
    y = _coordinate(raw, "y", path)
    w = _coordinate(raw, "width", path)
    h = _coordinate(raw, "height", path)
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
        raise ProtocolError(
            "wrong_type", f"{path}.class: expected a non-empty string, got {_show(cls)}"
        )
    _text(cls, f"{path}.class")
    class_id = _int(raw, "class_id", path, required=False)
    det_id = raw.get("detection_id")
    det_id = str(uuid.uuid4()) if det_id is None else _text(det_id, f"{path}.detection_id")
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
                mask = _rle(raw[key], f"{path}.{key}", image)
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
            # Checked here (three ints, or a short clean string) so that parse_color_bgr never
            # sees, nor quotes in its error, anything unbounded.
            if isinstance(value, str):
                _text(value, "params.background_color")
            elif not (
                isinstance(value, list)
                and len(value) == 3
                and all(type(c) is int and 0 <= c <= 255 for c in value)
            ):
                raise ProtocolError(
                    "bad_value",
                    "params.background_color: expected a colour string or [r, g, b] ints in 0..255",
                )
            try:
                out["background_bgr"] = parse_color_bgr(value)
            except ValueError as e:
                raise ProtocolError(
                    "bad_value", f"params.background_color: {_quote(str(e))}"
                ) from None
        else:
            raise ProtocolError("bad_value", f"params.{_quote(key)}: unknown parameter")
    return out


def decode_detections(
    parts: Sequence[bytes | memoryview],
    *,
    max_predictions: int = 1_000,
    max_bytes: int = 16 * 1024 * 1024,
) -> Detections:
    """Decode and validate one detection message.

    Takes the multipart frames as received; returns Detections with predictions in the
    message's ``image`` pixel space. Raises ProtocolError on any defect, and nothing else.
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
    raw_header = parts[1]
    if len(raw_header) > MAX_HEADER_BYTES:
        raise ProtocolError(
            "oversize", f"header is {len(raw_header)} bytes, limit {MAX_HEADER_BYTES}"
        )
    _check_complexity(raw_header)
    header = _load_json(raw_header)
    if not isinstance(header, dict):
        raise ProtocolError(
            "bad_header", f"header must be a JSON object, got {type(header).__name__}"
        )
    if "v" not in header:
        raise ProtocolError("missing_field", "v: required (protocol version)")
    if header["v"] != PROTOCOL_VERSION or type(header["v"]) is not int:
        raise ProtocolError(
            "bad_version", f"v: unsupported version {_show(header['v'])}, expected 1"
        )
    source_id = header.get("source_id")
    if not isinstance(source_id, str) or not source_id:
        raise ProtocolError("missing_field", "source_id: required non-empty string")
    _text(source_id, "source_id")
    if topic[len(TOPIC_PREFIX) :] != source_id.encode():
        raise ProtocolError(
            "topic_mismatch",
            f"topic {topic[:MAX_QUOTE_CHARS]!r} does not match source_id {_show(source_id)}",
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
    if not (0 < iw <= MAX_IMAGE_SIDE_PX and 0 < ih <= MAX_IMAGE_SIDE_PX):
        raise ProtocolError(
            "bad_value",
            f"image: width and height must be in 1..{MAX_IMAGE_SIDE_PX}, got {iw}x{ih}",
        )
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
