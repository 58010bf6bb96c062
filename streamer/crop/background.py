"""Background removal outside an instance mask, on the crop only. Pure."""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from streamer.types import U8


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
