"""Background removal outside an instance mask, on the crop only. Pure."""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from streamer.types import U8


def polygon_mask(points_xy: np.ndarray, size_wh: tuple[int, int]) -> U8:
    """Rasterise a (K, 2) polygon in crop coordinates into a (h, w) uint8 mask, 255 inside."""
    w, h = size_wh
    mask = np.zeros((h, w), dtype=np.uint8)
    if len(points_xy) >= 3:
        cv2.fillPoly(mask, [np.rint(points_xy).astype(np.int32)], 255)
    return mask


def remove_background(crop: U8, mask: U8, opacity: float, bgr: tuple[int, int, int]) -> U8:
    """Blend pixels outside `mask` towards `bgr`: ``round(opacity*bg + (1-opacity)*pixel)``.

    `crop` is (h, w, 3) BGR, `mask` (h, w) uint8 with non-zero inside. Returns a new array;
    pixels inside the mask are unchanged.
    """
    tile = np.empty_like(crop)
    tile[:] = bgr
    out = cast(U8, cv2.addWeighted(tile, opacity, crop, 1.0 - opacity, 0.0))
    cv2.copyTo(crop, mask, out)
    return out
