"""Instance masks cut to a crop rectangle: polygons, COCO RLE and raw bitmaps. Pure.

Every function returns a (h, w) uint8 mask for the crop (255 inside), built from the crop's
region only: an RLE is looked up just at the pixels the crop samples, a bitmap is sampled just at
the crop's pixels, so the cost follows the crop's area, not the frame's nor the mask's declared
size.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from streamer.types import U8, BitmapMask, Prediction, RleMask

I64 = npt.NDArray[np.int64]

# A polygon whose vertices all lie within this many pixels of its canvas is rasterised as given
# (exactly as on the whole frame); one reaching further is first clipped to the crop grown by
# this margin, so that OpenCV's cost (each edge walked over its vertical extent) follows the
# crop, not the coordinates. Pixels within a pixel of an edge cut by the clip may differ.
POLYGON_CLIP_MARGIN_PX = 64
# Sub-pixel bits for the vertices the clip creates (cv2.fillPoly's `shift`).
POLYGON_SUBPIXEL_BITS = 8
# An RLE's columns under a crop are decoded whole when they hold at most this many times the
# mask pixels the crop samples; beyond that the sampled pixels are looked up one by one.
RLE_DECODE_SPAN_FACTOR = 4


def _sample_positions(start: int, stop: int, scale: float, offset: float, size: int) -> I64:
    """Source index for each destination pixel in [start, stop): nearest sample at the centre."""
    pos: I64 = np.floor((np.arange(start, stop) + 0.5) * scale - offset).astype(np.int64)
    np.clip(pos, 0, size - 1, out=pos)
    return pos


def _unique_sorted(values: I64) -> tuple[I64, I64]:
    """(unique values, index of each input in them) for a non-decreasing array."""
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return values[first], np.cumsum(first) - 1


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


def _rle_sample(mask: RleMask, rows: I64, cols: I64) -> U8:
    """The RLE mask at ``(rows[i], cols[j])`` as a (len(rows), len(cols)) uint8 array, 255 inside.

    `rows` and `cols` are non-decreasing. When the columns the crop spans hold not many more
    mask pixels than the crop samples, those columns are decoded whole (fastest); otherwise (a
    mask much finer than the frame) only the distinct pixels sampled are looked up, a binary
    search in the run ends each. Either way time and memory follow the crop's area (and the
    number of runs), never the mask's declared size.
    """
    urows, rinv = _unique_sorted(rows)
    ucols, cinv = _unique_sorted(cols)
    c0, c1 = int(ucols[0]), int(ucols[-1]) + 1
    if (c1 - c0) * mask.height <= RLE_DECODE_SPAN_FACTOR * len(urows) * len(ucols):
        sub = _rle_columns(mask, c0, c1)
        return sub.take(rows, axis=0).take(cols - c0, axis=1)
    ends = np.cumsum(mask.counts)
    flat = ucols[:, None] * mask.height + urows[None, :]  # column-major, ascending
    run = np.searchsorted(ends, flat.ravel(), side="right")
    inside = (run & 1).astype(np.uint8) * np.uint8(255)
    grid = inside.reshape(len(ucols), len(urows)).T
    return grid.take(rinv, axis=0).take(cinv, axis=1)


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
        return _rle_sample(m, rows, cols)
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


def clip_polygon(
    points: npt.NDArray[np.float64], lo: tuple[float, float], hi: tuple[float, float]
) -> npt.NDArray[np.float64]:
    """The polygon `points` ((N, 2) x, y) clipped to the rectangle ``lo <= (x, y) <= hi``
    (Sutherland-Hodgman, one vectorised pass per side). Returns (M, 2) float64, M <= 2N + 4;
    fewer than 3 points when nothing is left."""
    pts = points
    for axis, bound, below in (
        (0, lo[0], False),
        (0, hi[0], True),
        (1, lo[1], False),
        (1, hi[1], True),
    ):
        if len(pts) == 0:
            break
        v = pts[:, axis]
        inside = v <= bound if below else v >= bound
        nxt = np.roll(pts, -1, axis=0)
        cross = inside != np.roll(inside, -1)
        # Each edge p -> q emits p if p is inside, then the crossing point if it crosses.
        out = np.empty((len(pts), 2, 2), dtype=np.float64)
        out[:, 0] = pts
        p, q = pts[cross], nxt[cross]
        t = (bound - p[:, axis]) / (q[:, axis] - p[:, axis])
        out[cross, 1] = p + t[:, None] * (q - p)
        out[cross, 1, axis] = bound
        pts = out[np.stack([inside, cross], axis=1)]
    return pts


def _polygon(
    points: npt.NDArray[np.float64], frame_size: tuple[int, int], rect: tuple[int, int, int, int]
) -> U8:
    """Rasterise a polygon given in frame pixels, cut to `rect`.

    The canvas is the polygon's bounding box (within the frame) joined with the crop, so edges
    are clipped only where the frame clips them: the result equals rasterising on the whole frame
    (as dynamic_crop@v1 does) and slicing, at the cost of the polygon's area. A polygon reaching
    further than POLYGON_CLIP_MARGIN_PX beyond that canvas is instead clipped to the crop (plus
    the margin) and rasterised on the crop: the cost is then the number of vertices times the
    crop's height, whatever the coordinates.
    """
    x0, y0, x1, y1 = rect
    fw, fh = frame_size
    pts = np.rint(points)
    m = POLYGON_CLIP_MARGIN_PX
    lx = max(0, min(int(max(pts[:, 0].min(), -1.0)), x0))
    ly = max(0, min(int(max(pts[:, 1].min(), -1.0)), y0))
    hx = min(fw, max(int(min(pts[:, 0].max(), fw)) + 1, x1))
    hy = min(fh, max(int(min(pts[:, 1].max(), fh)) + 1, y1))
    if np.all((pts >= (lx - m, ly - m)) & (pts <= (hx + m, hy + m))):
        canvas = np.zeros((hy - ly, hx - lx), dtype=np.uint8)
        cv2.fillPoly(canvas, [(pts - (lx, ly)).astype(np.int32)], 255)
        return np.ascontiguousarray(canvas[y0 - ly : y1 - ly, x0 - lx : x1 - lx])
    # Reaching far out: clipped to the crop (plus the margin), rasterised on the crop alone.
    out = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    clipped = clip_polygon(pts, (x0 - m, y0 - m), (x1 + m, y1 + m))
    if len(clipped) >= 3:
        one = 1 << POLYGON_SUBPIXEL_BITS
        fixed = np.rint((clipped - (x0, y0)) * one).astype(np.int32)
        cv2.fillPoly(out, [fixed], 255, cv2.LINE_8, POLYGON_SUBPIXEL_BITS)
    return out
