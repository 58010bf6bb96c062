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
    # cv2 fills a 3-channel image ~20x faster than numpy broadcasting a colour tuple.
    cv2.rectangle(tile, (0, 0), (crop.shape[1], crop.shape[0]), bgr, cv2.FILLED)
    out = cast(U8, cv2.addWeighted(tile, opacity, crop, 1.0 - opacity, 0.0))
    cv2.copyTo(crop, mask, out)
    return out
