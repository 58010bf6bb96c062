"""Crop messages as the OCR worker sees them: a header checked field by field into a typed
`CropInfo`, and the image decoded only after its declared size is checked against limits and
against the size the compressed bytes themselves declare (so a small PNG cannot unpack into
gigabytes). Pure: no sockets. Everything here raises only `BadCrop`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from streamer.crop.convert import i420_crop_to_bgr, i420_size
from streamer.image_size import declared_size
from streamer.types import U8

MAX_CROP_SIDE_PX = 4096  # a crop wider or higher than this is refused
MAX_CROP_PIXELS = 4_000_000  # and one with more pixels than this
MAX_ID_CHARS = 256  # source_id, detection_id, class
MAX_POINTS = 1024  # polygon vertices
ENCODINGS = ("raw-bgr24", "raw-i420", "png", "jpeg", "webp")


class BadCrop(ValueError):
    """A crop message that cannot be read; `kind` is its counter label."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class CropInfo:
    """The header fields the OCR worker uses, typed and bounded.

    `points` is the polygon in crop pixels, (N, 2) float32, or None. `x`, `y` are the crop's
    top-left corner in the frame of `frame_width` x `frame_height`.
    """

    source_id: str
    frame_id: int
    pts: int | None
    detection_id: str
    class_name: str
    tracker_id: int | None
    x: int
    y: int
    frame_width: int
    frame_height: int
    width: int
    height: int
    encoding: str
    points: np.ndarray | None

    @property
    def track_key(self) -> tuple[str, int | str]:
        """Who the crop belongs to: (source, tracker id), or (source, detection id) untracked."""
        return (
            self.source_id,
            self.tracker_id if self.tracker_id is not None else self.detection_id,
        )

    @property
    def box(self) -> list[int]:
        """[x0, y0, x1, y1] in the frame."""
        return [self.x, self.y, self.x + self.width, self.y + self.height]

    @property
    def cut_by_edge(self) -> bool:
        """Whether the crop touches the frame's border (the object may be only partly in view)."""
        return (
            self.x <= 0
            or self.y <= 0
            or self.x + self.width >= self.frame_width
            or self.y + self.height >= self.frame_height
        )


def _str(h: Mapping[str, Any], key: str) -> str:
    v = h.get(key)
    if v is None:
        raise BadCrop("missing_field", f"{key}: required")
    if not isinstance(v, str):
        raise BadCrop("wrong_type", f"{key}: expected a string, got {type(v).__name__}")
    if not 0 < len(v) <= MAX_ID_CHARS:
        raise BadCrop("bad_value", f"{key}: length {len(v)} not in 1..{MAX_ID_CHARS}")
    try:
        v.encode("utf-8")  # a lone surrogate cannot be encoded, so it cannot go out again
    except UnicodeEncodeError:
        raise BadCrop("bad_value", f"{key}: not valid Unicode") from None
    return v


def _int(h: Mapping[str, Any], key: str, lo: int, hi: int, optional: bool = False) -> int | None:
    v = h.get(key)
    if v is None:
        if optional:
            return None
        raise BadCrop("missing_field", f"{key}: required")
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadCrop("wrong_type", f"{key}: expected an integer, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise BadCrop("bad_value", f"{key}: {v} not in {lo}..{hi}")
    return v


def _req_int(h: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    v = _int(h, key, lo, hi)
    assert v is not None
    return v


def _points(raw: Any, width: int, height: int) -> np.ndarray | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadCrop("wrong_type", "points: expected a list")
    if len(raw) > MAX_POINTS:
        raise BadCrop("bad_value", f"points: {len(raw)} vertices exceed {MAX_POINTS}")
    out = np.empty((len(raw), 2), np.float32)
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise BadCrop("wrong_type", f"points[{i}]: expected an object")
        for j, k in enumerate(("x", "y")):
            v = p.get(k)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise BadCrop("wrong_type", f"points[{i}].{k}: expected a number")
            limit = 2 * (width if k == "x" else height)
            # (compared before isfinite: an integer of 400 digits overflows a float)
            if not (-limit <= v <= limit and math.isfinite(v)):
                raise BadCrop("bad_value", f"points[{i}].{k}: {v} far outside the crop")
            out[i, j] = v
    return out if len(out) >= 3 else None


def parse_crop_header(h: Mapping[str, Any]) -> CropInfo:
    """Check a crop header (already version-checked by streamer.client) into a CropInfo.

    Raises BadCrop (kinds: missing_field, wrong_type, bad_value, too_large).
    """
    width = _req_int(h, "width", 1, MAX_CROP_SIDE_PX)
    height = _req_int(h, "height", 1, MAX_CROP_SIDE_PX)
    if width * height > MAX_CROP_PIXELS:
        raise BadCrop("too_large", f"{width}x{height} exceeds {MAX_CROP_PIXELS} pixels")
    origin = h.get("origin")
    if not isinstance(origin, dict):
        raise BadCrop("missing_field" if origin is None else "wrong_type", "origin: an object")
    big = 1 << 20
    encoding = _str(h, "encoding")
    if encoding not in ENCODINGS:
        raise BadCrop("bad_value", f"encoding: {encoding[:32]!r} is not one of {ENCODINGS}")
    tracker_id = h.get("tracker_id")
    if tracker_id is not None and (isinstance(tracker_id, bool) or not isinstance(tracker_id, int)):
        raise BadCrop("wrong_type", "tracker_id: expected an integer or null")
    if tracker_id is not None and not -(1 << 63) <= tracker_id < (1 << 63):
        raise BadCrop("bad_value", "tracker_id: out of the int64 range")
    return CropInfo(
        source_id=_str(h, "source_id"),
        frame_id=_req_int(h, "frame_id", 0, 1 << 63),
        pts=_int(h, "pts", -(1 << 63), 1 << 63, optional=True),
        detection_id=_str(h, "detection_id"),
        class_name=_str(h, "class"),
        tracker_id=tracker_id,
        x=_req_int(origin, "x", 0, big),
        y=_req_int(origin, "y", 0, big),
        frame_width=_req_int(origin, "frame_width", 1, big),
        frame_height=_req_int(origin, "frame_height", 1, big),
        width=width,
        height=height,
        encoding=encoding,
        points=_points(h.get("points"), width, height),
    )


def decode_crop(info: CropInfo, payload: bytes | memoryview) -> U8:
    """The crop's BGR (height, width, 3) uint8 image; raises BadCrop (kind ``bad_image``) when
    the payload does not hold exactly the picture the header declares."""
    if info.encoding == "raw-bgr24":
        want = info.width * info.height * 3
        if len(payload) != want:
            raise BadCrop("bad_image", f"raw-bgr24 payload of {len(payload)} bytes, want {want}")
        return np.frombuffer(payload, np.uint8).reshape(info.height, info.width, 3)
    if info.encoding == "raw-i420":
        want = i420_size(info.x, info.y, info.x + info.width, info.y + info.height)
        if len(payload) != want:
            raise BadCrop("bad_image", f"raw-i420 payload of {len(payload)} bytes, want {want}")
        return i420_crop_to_bgr(payload, info.x, info.y, info.width, info.height)
    data = bytes(payload)
    size = declared_size(info.encoding, data)
    if size != (info.width, info.height):
        raise BadCrop(
            "bad_image",
            f"{info.encoding} payload declares {size}, header {info.width}x{info.height}",
        )
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.shape != (info.height, info.width, 3):
        raise BadCrop("bad_image", f"{info.encoding} payload of {len(data)} bytes does not decode")
    return np.asarray(img, np.uint8)
