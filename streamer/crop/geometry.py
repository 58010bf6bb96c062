"""Box geometry. Pure functions over numpy arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


def centre_to_corners(
    xywh: npt.NDArray[np.float64],
    scale_xy: tuple[float, float],
    frame_size: tuple[int, int],
) -> I64:
    """Turn centre boxes into integer corners clamped to the frame.

    `xywh` is (N, 4): centre x, centre y, width, height in the detector's pixel space;
    `scale_xy` maps that space to the frame's; `frame_size` is (width, height).
    Returns (N, 4) int64 ``x0, y0, x1, y1`` (x1/y1 exclusive), rounded half-to-even like numpy
    (as dynamic_crop@v1 does) and then clamped to the frame, which v1 does not do. A box empty
    after clamping has ``x1 <= x0`` or ``y1 <= y0``.
    """
    sx, sy = scale_xy
    fw, fh = frame_size
    cx, cy, w, h = xywh[:, 0], xywh[:, 1], xywh[:, 2], xywh[:, 3]
    corners = np.stack(
        [(cx - w / 2) * sx, (cy - h / 2) * sy, (cx + w / 2) * sx, (cy + h / 2) * sy], axis=1
    )
    out = np.rint(corners).astype(np.int64)
    np.clip(out[:, 0::2], 0, fw, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, fh, out=out[:, 1::2])
    return out


def is_empty(corners: I64) -> npt.NDArray[np.bool_]:
    """(N,) True where a clamped box has no pixels."""
    return (corners[:, 2] <= corners[:, 0]) | (corners[:, 3] <= corners[:, 1])
