"""Turning a PyAV VideoFrame into a streamer Frame without copying pixels."""

from __future__ import annotations

import av
import numpy as np

from streamer.types import Frame, PixelFormat

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
    )
