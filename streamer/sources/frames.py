"""Turning a PyAV VideoFrame into a streamer Frame, without copying pixels where it can.

A streamer frame is I420 in video range (luma 16..235), what OpenCV's conversion and I420
consumers assume, or 8-bit gray in full range (0..255). What a decoder gives in another layout,
depth or range is brought to one of those here, once, in the decode thread. Only the range is
converted: the colour matrix stays the camera's (crops are read as BT.601).
"""

from __future__ import annotations

import functools
import re

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange

from streamer.swscale import THREADS, scaler
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
    """An 8-bit plane's pixels as a (height, width) view of its buffer, row padding left out."""
    rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * plane.height)
    return rows.reshape(plane.height, plane.line_size)[:, : plane.width]


def gray_to_8_bits(vf: av.VideoFrame) -> av.VideoFrame:
    """A 9- to 16-bit gray frame as 8-bit gray of the same range and pts, rounded: video range
    by dropping the extra bits (940 of 10 bits is 235), full range by scaling (1023 is 255).
    (FFmpeg's scaler takes any gray as full range, and dithers.)"""
    fmt = vf.format
    bits = fmt.components[0].bits
    plane = vf.planes[0]
    dtype = np.dtype(">u2" if fmt.is_big_endian else "<u2")
    rows = np.frombuffer(memoryview(plane), dtype, count=plane.line_size // 2 * plane.height)
    luma = rows.reshape(plane.height, plane.line_size // 2)[:, : plane.width]
    if vf.color_range == ColorRange.MPEG:
        # Half up, in 16 bits: ((v >> (shift - 1)) + 1) >> 1, at most 256 (saturated to 255).
        halves = np.right_shift(luma, np.uint16(bits - 9))
        halves += np.uint16(1)
        halves >>= np.uint16(1)
        rounded = np.asarray(cv2.convertScaleAbs(halves), np.uint8)
    else:
        top = (1 << bits) - 1
        rounded = ((luma.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8)
    out = av.VideoFrame.from_ndarray(rounded, format="gray")
    out.pts = vf.pts
    out.color_range = vf.color_range
    return out


def from_av(vf: av.VideoFrame, source_id: str, frame_id: int, captured_at: float) -> Frame:
    """Wrap a decoded frame's planes as numpy views (the views keep the frame alive).

    - yuv420p in video range (or unspecified, which is video range for YUV): as decoded.
    - Gray (9 to 16 bits first rounded to 8, `gray_to_8_bits`):
      - in video range, as HEVC monochrome (4:0:0) streams usually are (thermal cameras among
        them): an I420 picture with neutral chroma, wrapped as one (its luma as decoded, a
        shared neutral chroma plane), so that its crops and its tap keep the luma's range;
      - otherwise (full range: PNG, MJPEG; unspecified: FFV1, raw video): gray, full range
        (its crops and its tap map it to video range where they need I420).
    - Anything else (full-range YUV such as MJPEG's yuvj420p or a camera flagged full range;
      yuv422p, nv12, rgb, deeper YUV, ...): converted to yuv420p in video range.

    `decoded` is the picture the planes are of (the decoder's own, or its conversion).
    """
    name = vf.format.name
    if name.startswith("gray") and name != "gray" and _INTEGER_GRAY.fullmatch(name):
        vf = gray_to_8_bits(vf)
        name = "gray"
    fmt: PixelFormat = "gray" if name == "gray" else "yuv420p"
    planes: tuple[U8, ...]
    if fmt == "gray" and vf.color_range == ColorRange.MPEG:
        (luma,) = vf.planes
        chroma = _neutral_chroma(vf.height, vf.width)
        fmt, planes, nbytes = "yuv420p", (_view(luma), chroma, chroma), luma.buffer_size
    else:
        if fmt == "yuv420p" and (name != "yuv420p" or vf.color_range == ColorRange.JPEG):
            key = (name, vf.width, vf.height, "yuv420p", ColorRange.MPEG)
            vf = scaler(key).reformat(
                vf, format="yuv420p", dst_color_range=ColorRange.MPEG, threads=THREADS
            )
        planes = tuple(_view(p) for p in vf.planes)
        nbytes = sum(p.buffer_size for p in vf.planes)
    return Frame(
        source_id=source_id,
        frame_id=frame_id,
        pts=vf.pts,
        captured_at=captured_at,
        width=vf.width,
        height=vf.height,
        pixel_format=fmt,
        planes=planes,
        nbytes=nbytes,
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
