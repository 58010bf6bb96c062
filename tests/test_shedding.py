"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

import pytest

from streamer.sources.shedding import BEHIND_S, CALM_S, FAR_BEHIND_S, DecodeShedder


@pytest.mark.parametrize(
    ("lag_s", "downstream", "level"),
    [
        (0.0, False, "DEFAULT"),
        (BEHIND_S / 2, False, "DEFAULT"),
        (BEHIND_S * 2, False, "NONREF"),
        (0.0, True, "NONREF"),
        (FAR_BEHIND_S * 2, False, "NONKEY"),
        (FAR_BEHIND_S * 2, True, "NONKEY"),
    ],
)
def test_level_follows_lag_and_demand(lag_s: float, downstream: bool, level: str) -> None:
    assert DecodeShedder().update(0.0, lag_s, downstream) == level


def test_steps_down_one_level_per_calm_period() -> None:
    s = DecodeShedder()
    assert s.update(0.0, FAR_BEHIND_S * 2, False) == "NONKEY"
    assert s.update(0.1, 0.0, False) == "NONKEY"  # caught up, not calm for long yet
    assert s.update(0.1 + CALM_S, 0.0, False) == "NONREF"
    assert s.update(0.2 + CALM_S, 0.0, False) == "NONREF"
    assert s.update(0.1 + 2 * CALM_S, 0.0, False) == "DEFAULT"


def test_demand_again_restarts_the_calm_period() -> None:
    s = DecodeShedder()
    s.update(0.0, 0.0, True)
    s.update(0.5, 0.0, False)
    assert s.update(0.9, 0.0, True) == "NONREF"
    assert s.update(0.9 + CALM_S * 0.9, 0.0, False) == "NONREF"
    assert s.update(0.9 + CALM_S * 2, 0.0, False) == "DEFAULT"


def test_lag_is_the_growth_of_the_offset_to_the_wall_clock() -> None:
    """A camera's clock is its own: only an offset that grows means falling behind."""
    s = DecodeShedder()
    assert s.lag_s(100.0, 5000.0) == 0.0  # any first offset is the reference
    assert s.lag_s(101.0, 5001.0) == 0.0  # keeping up
    assert s.lag_s(102.0, 5001.5) == pytest.approx(0.5)  # half a second behind
    s.reset()
    assert s.lag_s(200.0, 0.0) == 0.0  # a new session starts over


def test_lag_forgets_offsets_older_than_its_window() -> None:
    s = DecodeShedder()
    s.lag_s(0.0, 0.0)
    assert s.lag_s(1.0, 0.5) == pytest.approx(0.5)
    # Long after, a steady offset is the new normal (a camera clock that drifted).
    for t in range(2, 30):
        s.lag_s(float(t), t - 0.5)
    assert s.lag_s(30.0, 29.5) == pytest.approx(0.0)
