"""Colour parsing for the config and per-message parameters. Pure; imports nothing of streamer."""

from __future__ import annotations

import re
from collections.abc import Sequence

_HEX6 = re.compile(r"^#([0-9a-fA-F]{6})$")
_HEX3 = re.compile(r"^#([0-9a-fA-F]{3})$")
_TUPLE = re.compile(r"^\(\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\)$")


def parse_color_bgr(value: object) -> tuple[int, int, int]:
    """Parse a colour given in RGB and return it as a BGR tuple.

    Accepts ``#RRGGBB``, ``#RGB``, ``"(r, g, b)"`` and a sequence ``[r, g, b]`` of ints, like
    Roboflow's dynamic_crop@v1. Raises ValueError quoting the value for anything else or for a
    channel outside 0..255.
    """
    rgb: tuple[int, ...]
    if isinstance(value, str):
        text = value.strip()
        if m := _HEX6.match(text):
            h = m.group(1)
            rgb = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        elif m := _HEX3.match(text):
            rgb = tuple(int(c * 2, 16) for c in m.group(1))
        elif m := _TUPLE.match(text):
            rgb = tuple(int(g) for g in m.groups())
        else:
            raise ValueError(
                f"invalid colour {value!r}: expected '#RRGGBB', '#RGB', '(r, g, b)' or [r, g, b]"
            )
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        items = list(value)
        if len(items) != 3 or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in items
        ):
            raise ValueError(f"invalid colour {value!r}: expected three integers [r, g, b]")
        rgb = tuple(items)
    else:
        raise ValueError(f"invalid colour {value!r}: expected a string or [r, g, b]")
    if any(not 0 <= c <= 255 for c in rgb):
        raise ValueError(f"invalid colour {value!r}: channels must be in 0..255")
    r, g, b = rgb
    return (b, g, r)
