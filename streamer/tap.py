"""Frame tap pictures: a frame, optionally downscaled, as I420, BGR or JPEG. Pure; the pipeline
runs it in worker threads.

Downscaling averages over each output pixel's area (anti-aliased, as detectors want):
- by whole factors (1080p or 720p to 640x360, 4K to 640x360), each plane's blocks are averaged
  by `streamer._box` (C, part of the package): 0.188 ms a 1080p frame against 0.966 ms for
  swscale's area filter on a frame out of cache (docs/benchmarks.md, "The tap's downscale in
  C"). Chroma samples are taken as centred in their block, as OpenCV's INTER_AREA takes them;
  swscale places them where the frame says (H.264: left), a third of a chroma sample (two
  thirds of a luma pixel) away at 3:1;
- other ratios: decoded frames through FFmpeg's swscale (all three planes in one call), other
  frames (webcams) through OpenCV.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from av.video.reformatter import ColorRange

from streamer._box import MAX_BLOCK, box_down
from streamer.crop.convert import gray_to_video_range
from streamer.swscale import THREADS, scaler
from streamer.types import U8, Frame


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


def _resized(plane: U8, size: tuple[int, int]) -> U8:
    if (plane.shape[1], plane.shape[0]) == size:
        return plane
    return np.asarray(cv2.resize(plane, size, interpolation=cv2.INTER_AREA), np.uint8)


def _whole_factors(frame: Frame, tw: int, th: int) -> bool:
    """Whether `frame` is I420 downscaled to `tw` x `th` (even) by whole factors that
    `box_down` takes (its chroma planes then divide too)."""
    if frame.pixel_format != "yuv420p" or (tw, th) == (frame.width, frame.height):
        return False
    if frame.width % tw or frame.height % th:
        return False
    return (frame.width // tw) * (frame.height // th) <= MAX_BLOCK


def _fill_box(buf: U8, frame: Frame, tw: int, th: int) -> None:
    """Average `frame`'s blocks into `buf` as `tw` x `th` I420 (its planes are video range;
    video-range gray wrapped as I420 has neutral chroma planes, whose mean is neutral)."""
    n_luma, n_chroma = tw * th, tw * th // 4
    box_down(frame.planes[0], buf[:n_luma].reshape(th, tw))
    for i, start in ((1, n_luma), (2, n_luma + n_chroma)):
        box_down(frame.planes[i], buf[start : start + n_chroma].reshape(th // 2, tw // 2))


def _fill_swscale(buf: U8, frame: Frame, tw: int, th: int) -> None:
    """Downscale `frame`'s decoder picture to `tw` x `th` I420, video range, into `buf`."""
    decoded = frame.decoded
    # Video-range gray, wrapped as I420 (sources/frames.py): its luma scaled as it is (gray to
    # gray converts no range), its chroma neutral. Anything else into video range (FFmpeg
    # keeps a full-range picture full range unless told).
    luma_only = frame.pixel_format == "yuv420p" and decoded.format.name == "gray"
    fmt = "gray" if luma_only else "yuv420p"
    out = scaler((decoded.format.name, decoded.width, decoded.height, tw, th, fmt)).reformat(
        decoded,
        width=tw,
        height=th,
        format=fmt,
        interpolation="AREA",
        dst_color_range=ColorRange.MPEG,
        threads=THREADS,
    )
    if luma_only:
        buf[tw * th :] = 128
    start = 0
    sizes = ((tw, th), (tw // 2, th // 2), (tw // 2, th // 2))
    for plane, (w, h) in zip(out.planes, sizes[: len(out.planes)], strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * h)
        buf[start : start + w * h].reshape(h, w)[:] = rows.reshape(h, plane.line_size)[:, :w]
        start += w * h


def scaled_i420(frame: Frame, width: int | None, height: int | None) -> tuple[U8, int, int]:
    """The frame downscaled to fit `width` x `height`, as one I420 buffer; with its size."""
    tw, th = tap_size(frame.width, frame.height, width, height)
    buf = np.empty(tw * th * 3 // 2, dtype=np.uint8)
    if _whole_factors(frame, tw, th):
        _fill_box(buf, frame, tw, th)
        return buf, tw, th
    if frame.decoded is not None and (tw, th) != (frame.width, frame.height):
        _fill_swscale(buf, frame, tw, th)
        return buf, tw, th
    n_luma, n_chroma = tw * th, tw * th // 4
    luma = buf[:n_luma].reshape(th, tw)
    if frame.pixel_format == "gray":
        # Gray is full range, I420 video range (swscale is told to convert it so, above).
        gray_to_video_range(_resized(frame.planes[0], (tw, th)), luma)
        buf[n_luma:] = 128
    else:
        luma[:] = _resized(frame.planes[0], (tw, th))
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
