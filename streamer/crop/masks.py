"""Instance masks cut to a crop rectangle: polygons, COCO RLE and raw bitmaps. Pure.

Every function returns a (h, w) uint8 mask for the crop (255 inside), built from the crop's
region only: an RLE is decoded just for the columns the crop covers, a bitmap is sampled just at
the crop's pixels, so the cost follows the crop's area, not the frame's.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from streamer.types import U8, BitmapMask, Prediction, RleMask

I64 = npt.NDArray[np.int64]

# Polygon vertices are clipped to this many pixels from the origin (OpenCV takes int32).
POLYGON_COORD_LIMIT = 1 << 20


def _sample_positions(start: int, stop: int, scale: float, offset: float, size: int) -> I64:
    """Source index for each destination pixel in [start, stop): nearest sample at the centre."""
    pos: I64 = np.floor((np.arange(start, stop) + 0.5) * scale - offset).astype(np.int64)
    np.clip(pos, 0, size - 1, out=pos)
    return pos


def _rle_columns(mask: RleMask, col0: int, col1: int) -> U8:
    """Columns [col0, col1) of an RLE mask as a (height, col1 - col0) uint8 array, 255 inside."""
    h = mask.height
    a, b = col0 * h, col1 * h
    ends = np.cumsum(mask.counts)
    starts = ends - mask.counts
    lo = int(np.searchsorted(ends, a, side="right"))
    hi = int(np.searchsorted(starts, b, side="left"))
    idx = np.arange(lo, hi)
    lengths = np.minimum(ends[lo:hi], b) - np.maximum(starts[lo:hi], a)
    values = np.where(idx % 2 == 1, 255, 0).astype(np.uint8)
    flat = np.repeat(values, lengths)
    return flat.reshape(col1 - col0, h).T


def crop_mask(
    pred: Prediction,
    scale_xy: tuple[float, float],
    frame_size: tuple[int, int],
    rect: tuple[int, int, int, int],
) -> U8 | None:
    """The prediction's mask over the crop rectangle ``rect = (x0, y0, x1, y1)`` in frame pixels.

    `scale_xy` maps detector-image pixels to frame pixels; `frame_size` is (width, height).
    Returns None when the prediction has no mask (a polygon needs at least 3 points).
    """
    x0, y0, x1, y1 = rect
    sx, sy = scale_xy
    fw, fh = frame_size
    m = pred.mask
    if isinstance(m, RleMask):
        cols = _sample_positions(x0, x1, m.width / fw, 0.0, m.width)
        rows = _sample_positions(y0, y1, m.height / fh, 0.0, m.height)
        c0 = int(cols[0])
        sub = _rle_columns(m, c0, int(cols[-1]) + 1)
        return np.ascontiguousarray(sub[rows[:, None], (cols - c0)[None, :]])
    if isinstance(m, BitmapMask):
        mh, mw = m.data.shape
        if m.layout == "image":
            cols = _sample_positions(x0, x1, mw / fw, 0.0, mw)
            rows = _sample_positions(y0, y1, mh / fh, 0.0, mh)
        else:
            bx0, by0 = (pred.x - pred.width / 2) * sx, (pred.y - pred.height / 2) * sy
            bw, bh = max(pred.width * sx, 1e-9), max(pred.height * sy, 1e-9)
            cols = _sample_positions(x0, x1, mw / bw, bx0 * mw / bw, mw)
            rows = _sample_positions(y0, y1, mh / bh, by0 * mh / bh, mh)
        sampled = m.data[rows[:, None], cols[None, :]]
        return np.where(sampled > 0, np.uint8(255), np.uint8(0))
    if pred.points is not None and len(pred.points) >= 3:
        return _polygon(pred.points * (sx, sy), frame_size, rect)
    return None


def _polygon(
    points: npt.NDArray[np.float64], frame_size: tuple[int, int], rect: tuple[int, int, int, int]
) -> U8:
    """Rasterise a polygon given in frame pixels, cut to `rect`.

    The canvas is the polygon's bounding box (within the frame) joined with the crop, so edges
    are clipped only where the frame clips them: the result equals rasterising on the whole frame
    (as dynamic_crop@v1 does) and slicing, at the cost of the polygon's area.
    """
    x0, y0, x1, y1 = rect
    fw, fh = frame_size
    pts = np.clip(np.rint(points), -POLYGON_COORD_LIMIT, POLYGON_COORD_LIMIT).astype(np.int64)
    lx = max(0, min(int(pts[:, 0].min()), x0))
    ly = max(0, min(int(pts[:, 1].min()), y0))
    hx = min(fw, max(int(pts[:, 0].max()) + 1, x1))
    hy = min(fh, max(int(pts[:, 1].max()) + 1, y1))
    canvas = np.zeros((hy - ly, hx - lx), dtype=np.uint8)
    cv2.fillPoly(canvas, [(pts - (lx, ly)).astype(np.int32)], 255)
    return np.ascontiguousarray(canvas[y0 - ly : y1 - ly, x0 - lx : x1 - lx])
