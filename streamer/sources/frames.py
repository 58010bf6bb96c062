"""Turning a PyAV VideoFrame into a streamer Frame without copying pixels."""

from __future__ import annotations

import functools

import av
import cv2
import numpy as np

from streamer.types import U8, Frame, PixelFormat

_NATIVE: dict[str, PixelFormat] = {"yuv420p": "yuv420p", "gray": "gray"}
VIDEO_RANGE = 1  # FFmpeg's AVCOL_RANGE_MPEG: luma 16..235 ("limited", "tv")


@functools.lru_cache(maxsize=8)
def neutral_chroma(height: int, width: int) -> U8:
    """A read-only chroma plane of neutral 128 for a `width` x `height` I420 picture (shared by
    every frame of that size: at most 8 sizes, 0.5 MB each at 1080p, are kept)."""
    plane = np.full(((height + 1) // 2, (width + 1) // 2), 128, np.uint8)
    plane.flags.writeable = False
    return plane


def _view(plane: av.video.plane.VideoPlane) -> U8:
    rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * plane.height)
    return rows.reshape(plane.height, plane.line_size)[:, : plane.width]


def from_av(vf: av.VideoFrame, source_id: str, frame_id: int, captured_at: float) -> Frame:
    """Wrap a decoded frame's planes as numpy views (zero copy; the views keep the frame alive).

    Decoders that output another layout (yuv422p, nv12, yuvj420p, rgb, ...) are converted to
    yuv420p once here, in the decode thread.

    A gray frame is full range (0..255) unless its decoder says video range: H.264 and HEVC
    monochrome (4:0:0) streams, thermal cameras among them, usually are (8 to 16 bits deep;
    deeper ones are brought to 8 bits first). Such a frame is an I420
    picture whose chroma is neutral, and is wrapped as one (its luma as decoded, a shared neutral
    chroma plane), so its crops and its tap keep its luma's range and map it to BGR as video
    range. Its tap is then downscaled by OpenCV: FFmpeg's scaler takes any gray as full range.
    """
    name = vf.format.name
    if name.startswith("gray") and vf.color_range == VIDEO_RANGE:
        if name != "gray":
            vf = vf.reformat(format="gray")  # 10 to 16 bits to 8: the same range, rescaled
        (luma,) = vf.planes
        chroma = neutral_chroma(vf.height, vf.width)
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
        )
    fmt = _NATIVE.get(name)
    if fmt is None:
        vf = vf.reformat(format="yuv420p")
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
