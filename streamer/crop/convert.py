"""Pixels of a crop rectangle, cut out of the frame's planar form: as I420 (no conversion) or
converted to BGR.

Only the rectangle, widened to even luma coordinates so that it starts and ends on whole chroma
samples (at most one pixel more on each side), is cut and converted, so the cost grows with the
crop's area, not the frame's. `i420_bounds` says how a rectangle is widened; a consumer of
raw-i420 crops works it out from the crop's header the same way (docs/protocol.md).
"""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from streamer.types import U8, Frame

_GRAY_TO_VIDEO_Y = np.round(16 + np.arange(256) * 219 / 255).astype(np.uint8)


def gray_to_video_range(gray: U8, out: U8) -> None:
    """Write `gray` (full range, 0..255) into `out` (same shape) as the luma of a video-range
    picture (16..235): how I420 consumers and OpenCV decode luma."""
    cv2.LUT(gray, _GRAY_TO_VIDEO_Y, dst=out)


def i420_bounds(x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
    """The rectangle (x0, y0, x1, y1) widened to even coordinates."""
    return x0 & ~1, y0 & ~1, x1 + (x1 & 1), y1 + (y1 & 1)


def i420_size(x0: int, y0: int, x1: int, y1: int) -> int:
    """Bytes of the I420 picture of the rectangle (x0, y0, x1, y1), widened."""
    ax0, ay0, ax1, ay1 = i420_bounds(x0, y0, x1, y1)
    return (ax1 - ax0) * (ay1 - ay0) * 3 // 2


def crop_i420(frame: Frame, x0: int, y0: int, x1: int, y1: int, out: U8 | None = None) -> U8:
    """The region of `frame` widened to even coordinates (`i420_bounds`), as one flat I420
    buffer (Y, then U, then V): `out` (a flat uint8 array of `i420_size` bytes, e.g. a slot of a
    shared-memory ring), filled, if given.

    The region must be non-empty and inside the frame (clamp first). Gray frames get neutral
    chroma.
    """
    ax0, ay0, ax1, ay1 = i420_bounds(x0, y0, x1, y1)
    aw, ah = ax1 - ax0, ay1 - ay0
    n_luma = aw * ah
    n_chroma = n_luma // 4
    buf = np.empty(n_luma + 2 * n_chroma, dtype=np.uint8) if out is None else out
    luma = buf[:n_luma].reshape(ah, aw)
    src = frame.planes[0][ay0:ay1, ax0:ax1]
    if src.shape != (ah, aw):
        # An odd-sized frame: the widened rectangle passes its last row/column; repeat the edge.
        src = np.pad(src, ((0, ah - src.shape[0]), (0, aw - src.shape[1])), mode="edge")
    if frame.pixel_format == "gray":
        # Gray is full range; I420 crops are decoded as video range: map 0..255 to 16..235.
        gray_to_video_range(src, luma)
        buf[n_luma:] = 128
        return buf
    luma[:] = src
    cy0, cy1, cx0, cx1 = ay0 // 2, ay1 // 2, ax0 // 2, ax1 // 2
    buf[n_luma : n_luma + n_chroma].reshape(ah // 2, aw // 2)[:] = frame.planes[1][cy0:cy1, cx0:cx1]
    buf[n_luma + n_chroma :].reshape(ah // 2, aw // 2)[:] = frame.planes[2][cy0:cy1, cx0:cx1]
    return buf


def crop_bgr(frame: Frame, x0: int, y0: int, x1: int, y1: int, out: U8 | None = None) -> U8:
    """Return a contiguous (y1-y0, x1-x0, 3) BGR copy of a region inside `frame`: `out` (a
    contiguous array of that shape, e.g. a slot of a shared-memory ring), filled, if given.

    The region must be non-empty and inside the frame (clamp first).
    """
    if frame.pixel_format == "gray":
        gray = np.ascontiguousarray(frame.planes[0][y0:y1, x0:x1])
        return cast(U8, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR, dst=out))
    ax0, ay0, ax1, ay1 = i420_bounds(x0, y0, x1, y1)
    yuv = crop_i420(frame, x0, y0, x1, y1).reshape((ay1 - ay0) * 3 // 2, ax1 - ax0)
    if (ax0, ay0, ax1, ay1) == (x0, y0, x1, y1):
        # Straight into `out` when given: OpenCV writes into a destination of the right shape.
        return cast(U8, cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420, dst=out))
    region = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
    if out is None:
        return np.ascontiguousarray(region)
    out[:] = region
    return out


def bgr_to_i420(image: U8, x0: int, y0: int, out: U8 | None = None) -> U8:
    """A BGR crop whose top-left corner is at (x0, y0) in its frame, as the flat I420 buffer
    `crop_i420` would give for its rectangle (edges repeated where it is widened); for crops
    whose pixels were changed after cutting (background removed)."""
    h, w = image.shape[:2]
    ax0, ay0, ax1, ay1 = i420_bounds(x0, y0, x0 + w, y0 + h)
    pads = ((y0 - ay0, ay1 - y0 - h), (x0 - ax0, ax1 - x0 - w), (0, 0))
    padded = np.pad(image, pads, mode="edge") if any(a or b for a, b in pads[:2]) else image
    yuv = cv2.cvtColor(padded, cv2.COLOR_BGR2YUV_I420)
    if out is None:
        return cast(U8, yuv.reshape(-1))
    out[:] = yuv.reshape(-1)
    return out


def i420_crop_to_bgr(payload: bytes | memoryview, x0: int, y0: int, width: int, height: int) -> U8:
    """A raw-i420 crop's payload (its rectangle at (x0, y0) of `width` x `height`, widened as
    `i420_bounds` says) as the BGR (height, width, 3) crop. The payload must be
    `i420_size(...)` bytes."""
    ax0, ay0, ax1, ay1 = i420_bounds(x0, y0, x0 + width, y0 + height)
    yuv = np.frombuffer(payload, np.uint8).reshape((ay1 - ay0) * 3 // 2, ax1 - ax0)
    bgr = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
    return np.ascontiguousarray(bgr[y0 - ay0 : y0 - ay0 + height, x0 - ax0 : x0 - ax0 + width])
