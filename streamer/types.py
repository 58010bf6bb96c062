"""Plain data passed between stages. Imports nothing else of streamer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F64 = npt.NDArray[np.float64]

PixelFormat = Literal["yuv420p", "gray"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded picture, kept in the decoder's planar form until a crop needs pixels.

    `planes` is ``(Y, U, V)`` for ``yuv420p`` (Y is (H, W); U and V are (ceil(H/2), ceil(W/2)))
    or ``(Y,)`` for ``gray``. The arrays may be views into decoder buffers: treat them as
    read-only. `nbytes` is what the frame holds in memory, for the ring's byte bound.
    `decoded` is the PyAV VideoFrame the planes are of, when there is one (the decoder's own,
    or its conversion to 8 bits or video range; a video-range gray picture under a yuv420p
    frame): FFmpeg's scaler can then downscale it for the tap and the preview without a copy.
    """

    source_id: str
    frame_id: int
    pts: int | None
    captured_at: float
    width: int
    height: int
    pixel_format: PixelFormat
    planes: tuple[U8, ...]
    nbytes: int
    decoded: Any = None


@dataclass(frozen=True, slots=True)
class RleMask:
    """A COCO run-length mask covering the whole detector image, column-major.

    `counts` alternate runs of 0 and 1, starting with 0; they add up to ``height * width``.
    """

    height: int
    width: int
    counts: npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class BitmapMask:
    """A raw (h, w) uint8 mask, non-zero inside. ``layout`` says what it covers: the whole
    detector image (``image``) or just the prediction's box (``box``), stretched to fit."""

    data: U8
    layout: Literal["image", "box"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One detection in the pixel space of its message's ``image`` size (centre box)."""

    x: float
    y: float
    width: float
    height: float
    confidence: float
    class_name: str
    class_id: int
    detection_id: str
    tracker_id: int | None = None
    points: F64 | None = None  # (K, 2) polygon, x then y
    keypoints: tuple[dict[str, Any], ...] | None = None
    mask: RleMask | BitmapMask | None = None  # when absent, `points` (if any) is the mask


@dataclass(frozen=True, slots=True)
class CropParams:
    """Background removal settings; ``mask_opacity`` 0 means crops are plain rectangles."""

    mask_opacity: float = 0.0
    background_bgr: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True, slots=True)
class Detections:
    """One decoded detection message for one frame."""

    source_id: str
    frame_id: int | None
    captured_at: float | None
    image_width: int
    image_height: int
    predictions: tuple[Prediction, ...]
    params: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Crop:
    """One crop of one detection: a BGR image (h, w, 3), unless only raw-i420 was asked for
    (None), and its header fields."""

    header: dict[str, Any]
    image: U8 | None
    payloads: dict[str, bytes | memoryview] = field(default_factory=dict)
