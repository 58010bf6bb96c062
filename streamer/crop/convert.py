"""Pixels of a crop rectangle in BGR, converted from the frame's planar form.

Only the rectangle (widened to even luma coordinates so it starts and ends on whole chroma
samples) is converted, so the cost grows with the crop's area, not the frame's.
"""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from streamer.types import U8, Frame


def crop_bgr(frame: Frame, x0: int, y0: int, x1: int, y1: int) -> U8:
    """Return a contiguous (y1-y0, x1-x0, 3) BGR copy of a region inside `frame`.

    The region must be non-empty and inside the frame (clamp first).
    """
    if frame.pixel_format == "gray":
        gray = np.ascontiguousarray(frame.planes[0][y0:y1, x0:x1])
        return cast(U8, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    y_plane, u_plane, v_plane = frame.planes
    ax0, ay0 = x0 & ~1, y0 & ~1
    ax1, ay1 = x1 + (x1 & 1), y1 + (y1 & 1)
    aw, ah = ax1 - ax0, ay1 - ay0
    n_luma = aw * ah
    n_chroma = n_luma // 4
    buf = np.empty(n_luma + 2 * n_chroma, dtype=np.uint8)
    luma = buf[:n_luma].reshape(ah, aw)
    src = y_plane[ay0:ay1, ax0:ax1]
    if src.shape != (ah, aw):
        # An odd-sized frame: the widened rectangle passes its last row/column; repeat the edge.
        src = np.pad(src, ((0, ah - src.shape[0]), (0, aw - src.shape[1])), mode="edge")
    luma[:] = src
    cy0, cy1, cx0, cx1 = ay0 // 2, ay1 // 2, ax0 // 2, ax1 // 2
    buf[n_luma : n_luma + n_chroma].reshape(ah // 2, aw // 2)[:] = u_plane[cy0:cy1, cx0:cx1]
    buf[n_luma + n_chroma :].reshape(ah // 2, aw // 2)[:] = v_plane[cy0:cy1, cx0:cx1]
    bgr = cast(U8, cv2.cvtColor(buf.reshape(ah * 3 // 2, aw), cv2.COLOR_YUV2BGR_I420))
    if (ax0, ay0, ax1, ay1) == (x0, y0, x1, y1):
        return bgr
    return np.ascontiguousarray(bgr[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0])
