"""Turning a PyAV VideoFrame into a streamer Frame, without copying pixels where it can.

A streamer frame is I420 in video range (luma 16..235), what OpenCV's conversion and I420
consumers assume, or gray in full range (0..255). What a decoder gives in another layout or range
is brought to one of those here, once, in the decode thread.
"""

from __future__ import annotations

import functools
import re

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange

from streamer.types import U8, Frame, PixelFormat

# Gray of 8 to 16 bits, either byte order (not the float ones).
_INTEGER_GRAY = re.compile(r"gray(9|1[0-6])?(le|be)?")


@functools.lru_cache(maxsize=8)
def _neutral_chroma(height: int, width: int) -> U8:
    """A read-only chroma plane of neutral 128 for a `width` x `height` I420 picture, shared by
    every frame of that size (the last 8 sizes are kept; 0.5 MB at 1080p)."""
    plane = np.full(((height + 1) // 2, (width + 1) // 2), 128, np.uint8)
    plane.flags.writeable = False
    return plane


def _view(plane: av.video.plane.VideoPlane) -> U8:
    rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * plane.height)
    return rows.reshape(plane.height, plane.line_size)[:, : plane.width]


def _to_8_bits(vf: av.VideoFrame) -> av.VideoFrame:
    """A deeper gray frame's luma rounded to 8 bits, the same range (FFmpeg's scaler would
    rescale it as full range: 940 of 10 bits to 234, not 235)."""
    fmt = vf.format
    shift = fmt.components[0].bits - 8
    plane = vf.planes[0]
    dtype = np.dtype(">u2" if fmt.is_big_endian else "<u2")
    rows = np.frombuffer(memoryview(plane), dtype, count=plane.line_size // 2 * plane.height)
    luma = rows.reshape(plane.height, plane.line_size // 2)[:, : plane.width]
    rounded = np.minimum((luma.astype(np.uint32) + (1 << (shift - 1))) >> shift, 255)
    out = av.VideoFrame.from_ndarray(rounded.astype(np.uint8), format="gray")
    out.pts = vf.pts
    out.color_range = ColorRange.MPEG
    return out


def from_av(vf: av.VideoFrame, source_id: str, frame_id: int, captured_at: float) -> Frame:
    """Wrap a decoded frame's planes as numpy views (the views keep the frame alive).

    - yuv420p in video range (or unspecified, which is video range for YUV): as decoded.
    - Gray in video range, as HEVC and AV1 monochrome (4:0:0) streams usually are (thermal
      cameras among them; 9 to 16 bits are rounded to 8): an I420 picture with neutral chroma,
      wrapped as one (its luma as decoded, a shared neutral chroma plane), so that its crops
      and its tap keep the luma's range.
    - Other gray (full range, or unspecified: PNG, FFV1, raw): as decoded, full range (its
      crops and its tap map it to video range where they need I420).
    - Anything else (full-range YUV such as MJPEG's yuvj420p or a camera flagged full range;
      yuv422p, nv12, rgb, deeper YUV, ...): converted to yuv420p in video range.
    """
    name = vf.format.name
    if _INTEGER_GRAY.fullmatch(name) and vf.color_range == ColorRange.MPEG:
        if name != "gray":
            vf = _to_8_bits(vf)
        (luma,) = vf.planes
        chroma = _neutral_chroma(vf.height, vf.width)
        return Frame(
            source_id=source_id,
            frame_id=frame_id,
            pts=vf.pts,
            captured_at=captured_at,
            width=vf.width,
            height=vf.height,
            pixel_format="yuv420p",
            planes=(_view(luma), chroma, chroma),
            nbytes=luma.buffer_size,
            decoded=vf,
        )
    if name == "gray":
        fmt: PixelFormat = "gray"
    elif name == "yuv420p" and vf.color_range != ColorRange.JPEG:
        fmt = "yuv420p"
    else:
        vf = vf.reformat(format="yuv420p", dst_color_range=ColorRange.MPEG)
        fmt = "yuv420p"
    planes = tuple(_view(p) for p in vf.planes)
    return Frame(
        source_id=source_id,
        frame_id=frame_id,
        pts=vf.pts,
        captured_at=captured_at,
        width=vf.width,
        height=vf.height,
        pixel_format=fmt,
        planes=planes,
        nbytes=sum(p.buffer_size for p in vf.planes),
        decoded=vf,
    )


def from_bgr(image: U8, source_id: str, frame_id: int, captured_at: float) -> Frame:
    """Convert a BGR (h, w, 3) picture (OpenCV capture) to a yuv420p Frame.

    I420 needs even sizes: an odd last row or column is dropped.
    """
    h, w = image.shape[0] & ~1, image.shape[1] & ~1
    yuv: U8 = np.asarray(cv2.cvtColor(image[:h, :w], cv2.COLOR_BGR2YUV_I420), np.uint8).reshape(-1)
    n_luma = w * h
    y = yuv[:n_luma].reshape(h, w)
    u = yuv[n_luma : n_luma + n_luma // 4].reshape(h // 2, w // 2)
    v = yuv[n_luma + n_luma // 4 :].reshape(h // 2, w // 2)
    return Frame(source_id, frame_id, None, captured_at, w, h, "yuv420p", (y, u, v), yuv.nbytes)
