from __future__ import annotations

import pytest

from streamer.health import PairingWatch, ShedWatch


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


def test_pairing_watch_notices_frames_that_never_pair() -> None:
    w = PairingWatch()
    assert w.unpaired_for(0.0, 5.0) is None  # nothing yet
    w.observe(3, 0, 1.0)
    w.observe(9, 0, 4.0)
    assert w.unpaired_for(4.0, 5.0) == 3.0  # frames since 1.0, none paired
    w.observe(10, 1, 4.5)  # a pairing (an empty list counts) resets it
    assert w.unpaired_for(4.5, 5.0) == 0.0
    w.observe(10, 1, 6.0)
    w.observe(12, 1, 7.0)
    assert w.unpaired_for(7.0, 5.0) == 2.5  # since the frame added by 4.5
    # Frames stopped coming (a stalled source is reported by its own state): no verdict.
    assert w.unpaired_for(12.5, 5.0) is None
