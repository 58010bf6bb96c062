"""What a text recognizer needs done to a crop first: straighten it by its polygon, enlarge it
when it is small. Pure functions."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.types import U8

MIN_TEXT_HEIGHT_PX = 48  # smaller crops are enlarged to this height (PP-OCR reads 48 px lines)
MAX_UPSCALE = 4.0  # never enlarge more than this
# A text line wider than this many times its height is squeezed to it: the recognizer's input
# is 48 px high and as wide as the aspect ratio makes it (a 4096x1 crop would ask for a
# 48x196608 input, gigabytes). 64 characters of ~0.6 of the height fit in 40.
MAX_LINE_ASPECT = 40


def straighten(image: U8, points: np.ndarray) -> U8:
    """Warp the polygon's minimum-area rectangle upright: long side horizontal, left to right.

    `image` is (h, w, 3) uint8; `points` (N >= 3, 2) in its pixels. Returns a new (H, W, 3)
    image with W >= H, or `image` itself when the rectangle is degenerate (under 2 px a side).
    Points outside the image are moved onto its border first, so the result is at most about
    twice the image's area.
    """
    h_img, w_img = image.shape[:2]
    inside = np.clip(points.astype(np.float32), 0, [w_img - 1, h_img - 1]).astype(np.float32)
    rect = cv2.minAreaRect(inside)
    box = cv2.boxPoints(rect).astype(np.float32)  # 4 corners, consecutive
    sides = [float(np.linalg.norm(box[(i + 1) % 4] - box[i])) for i in range(4)]
    long_px, short_px = max(sides), min(sides)
    if short_px < 2:
        return image
    # The two long edges: (box[i], box[i+1]) and (box[i+2], box[i+3]).
    i = 0 if sides[0] >= sides[1] else 1
    edge_a = box[[i, (i + 1) % 4]]
    edge_b = box[[(i + 2) % 4, (i + 3) % 4]]
    top, bottom = (
        (edge_a, edge_b) if edge_a[:, 1].mean() <= edge_b[:, 1].mean() else (edge_b, edge_a)
    )
    direction = top[1] - top[0]
    if direction[0] < 0 or (direction[0] == 0 and direction[1] > 0):
        direction = -direction

    def left_right(edge: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (
            (edge[0], edge[1]) if edge[0] @ direction <= edge[1] @ direction else (edge[1], edge[0])
        )

    tl, tr = left_right(top)
    bl, br = left_right(bottom)
    w, h = round(long_px), round(short_px)
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    m = cv2.getPerspectiveTransform(np.array([tl, tr, br, bl], np.float32), dst)
    out = cv2.warpPerspective(
        image, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(out, np.uint8)


def upscale(image: U8, min_height_px: int = MIN_TEXT_HEIGHT_PX) -> U8:
    """Enlarge `image` (bicubic) so that it is at least `min_height_px` high, by at most
    MAX_UPSCALE; returns `image` itself when it is high enough."""
    h = image.shape[0]
    if h >= min_height_px:
        return image
    f = min(MAX_UPSCALE, min_height_px / h)
    return np.asarray(cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC), np.uint8)


def limit_aspect(image: U8, max_aspect: float = MAX_LINE_ASPECT) -> U8:
    """`image` squeezed horizontally to at most `max_aspect` times as wide as high (`image`
    itself when it is not wider)."""
    h, w = image.shape[:2]
    if w <= max_aspect * h:
        return image
    size = (max(1, int(max_aspect * h)), h)
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)


def prepare(image: U8, points: np.ndarray | None) -> U8:
    """Straighten by `points` when given, bound the aspect ratio, then enlarge if small."""
    if points is not None:
        image = straighten(image, points)
    return upscale(limit_aspect(image))
