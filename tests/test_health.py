from __future__ import annotations

import pytest

from streamer.health import ShedWatch


def test_share_over_the_window() -> None:
    w = ShedWatch(window_s=10.0)
    assert w.share() is None
    w.observe(0.0, 0, 0)
    w.observe(5.0, 150, 75)
    assert w.share() == (0.5, 150)
    for t in range(6, 40):
        w.observe(float(t), 150 + 30 * (t - 5), 75)  # no more shedding
    share, received = w.share()  # type: ignore[misc]
    assert share == pytest.approx(0.0) and received >= 300


def test_a_source_receiving_nothing_sheds_nothing() -> None:
    w = ShedWatch(window_s=10.0)
    w.observe(0.0, 10, 2)
    w.observe(1.0, 10, 2)
    assert w.share() == (0.0, 0)
