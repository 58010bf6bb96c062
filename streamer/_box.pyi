"""streamer/_box.c: area downscale of an 8-bit plane by whole factors."""

from typing import Any

MAX_BLOCK: int  # pixels averaged into one at most

def box_down(src: Any, dst: Any, /) -> None:
    """dst = the mean of each block of src (2-D uint8, contiguous pixels), rounded half up;
    dst's shape gives the factors, which must divide src's shape, at most 255 pixels a block."""
