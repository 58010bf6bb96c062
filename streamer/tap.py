"""Frame tap pictures: a frame, optionally downscaled, as I420, BGR or JPEG. Pure; the pipeline
runs it in a worker thread."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from streamer.types import Frame


def tap_size(
    frame_w: int, frame_h: int, width: int | None, height: int | None = None
) -> tuple[int, int]:
    """Output (width, height): within `width` x `height` (either may be None), never upscaled,
    aspect kept, both even (I420 needs it)."""
    scale = 1.0
    if width is not None:
        scale = min(scale, width / frame_w)
    if height is not None:
        scale = min(scale, height / frame_h)
    tw, th = round(frame_w * scale), round(frame_h * scale)
    return max(2, tw & ~1), max(2, th & ~1)


def _resized(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    return cv2.resize(plane, size, interpolation=cv2.INTER_AREA)


def scaled_i420(frame: Frame, width: int | None, height: int | None) -> tuple[np.ndarray, int, int]:
    """The frame downscaled to fit `width` x `height`, as one I420 buffer; with its size."""
    tw, th = tap_size(frame.width, frame.height, width, height)
    buf = np.empty(tw * th * 3 // 2, dtype=np.uint8)
    n_luma, n_chroma = tw * th, tw * th // 4
    buf[:n_luma].reshape(th, tw)[:] = _resized(frame.planes[0], (tw, th))
    if frame.pixel_format == "gray":
        buf[n_luma:] = 128
    else:
        half = (tw // 2, th // 2)
        # Odd-sized frames have one chroma sample more than half the even size: resize handles it.
        buf[n_luma : n_luma + n_chroma].reshape(th // 2, tw // 2)[:] = _resized(
            frame.planes[1], half
        )
        buf[n_luma + n_chroma :].reshape(th // 2, tw // 2)[:] = _resized(frame.planes[2], half)
    return buf, tw, th


def scaled_bgr(frame: Frame, width: int | None, height: int | None) -> np.ndarray:
    """The frame downscaled to fit `width` x `height`, as a BGR (h, w, 3) array."""
    buf, tw, th = scaled_i420(frame, width, height)
    return np.asarray(cv2.cvtColor(buf.reshape(th * 3 // 2, tw), cv2.COLOR_YUV2BGR_I420))


def tap_image(
    frame: Frame, encoding: str, width: int | None, height: int | None, jpeg_quality: int
) -> tuple[dict[str, Any], bytes | memoryview]:
    """Return the header fields (``width``, ``height``, ``encoding``) and the picture bytes."""
    buf, tw, th = scaled_i420(frame, width, height)
    fields: dict[str, Any] = {"width": tw, "height": th, "encoding": encoding}
    if encoding == "raw-i420":
        return fields, buf.data
    bgr = cv2.cvtColor(buf.reshape(th * 3 // 2, tw), cv2.COLOR_YUV2BGR_I420)
    if encoding == "raw-bgr24":
        return fields, bgr.data.cast("B")
    if encoding == "jpeg":
        ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a tap frame as JPEG")
        return fields, jpg.tobytes()
    raise ValueError(f"unknown tap encoding {encoding!r}")
