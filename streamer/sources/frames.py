"""Turning a PyAV VideoFrame into a streamer Frame without copying pixels."""

from __future__ import annotations

import av
import cv2
import numpy as np

from streamer.types import U8, Frame, PixelFormat

_NATIVE: dict[str, PixelFormat] = {"yuv420p": "yuv420p", "gray": "gray"}


def from_av(vf: av.VideoFrame, source_id: str, frame_id: int, captured_at: float) -> Frame:
    """Wrap a decoded frame's planes as numpy views (zero copy; the views keep the frame alive).

    Decoders that output another layout (yuv422p, nv12, yuvj420p, rgb, ...) are converted to
    yuv420p once here, in the decode thread.
    """
    fmt = _NATIVE.get(vf.format.name)
    if fmt is None:
        vf = vf.reformat(format="yuv420p")
        fmt = "yuv420p"
    planes = tuple(
        np.frombuffer(memoryview(p), np.uint8, count=p.line_size * p.height).reshape(
            p.height, p.line_size
        )[:, : p.width]
        for p in vf.planes
    )
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
