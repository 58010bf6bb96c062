from __future__ import annotations

import pytest

from streamer.colors import parse_color_bgr


@pytest.mark.parametrize(
    ("value", "bgr"),
    [
        ((255, 0, 0), (0, 0, 255)),
        ([255, 0, 0], (0, 0, 255)),
        ("#ff000A", (10, 0, 255)),
        ("#f0A", (170, 0, 255)),
        ("(255, 0, 128)", (128, 0, 255)),
        ("(255,0,128)", (128, 0, 255)),
        ("  #000000 ", (0, 0, 0)),
    ],
)
def test_valid_colours(value: object, bgr: tuple[int, int, int]) -> None:
    assert parse_color_bgr(value) == bgr


@pytest.mark.parametrize(
    "value",
    [
        "#invalid",
        "(255, 0, a)",
        (1, 2, 3, 4),
        "#ff00",
        "red",
        (256, 0, 0),
        "(-1, 0, 0)",
        [1.5, 2, 3],
        (True, 0, 0),
        None,
        7,
    ],
)
def test_invalid_colours_quote_the_value(value: object) -> None:
    with pytest.raises(ValueError, match="invalid colour"):
        parse_color_bgr(value)
