"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

import pytest

from streamer.sources.shedding import (
    BACKLOG_FAR_S,
    BEHIND_S,
    CALM_S,
    FAR_BEHIND_S,
    DecodeShedder,
)


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


def test_a_camera_clock_that_jumps_back_is_not_lag() -> None:
    """A camera whose timestamps jump back within a session (its clock re-synced): the offset
    to the wall clock grows by the jump at once, which is not the decoder falling behind
    (before: 5 s of "lag", keyframes only for the next ten seconds)."""
    s = DecodeShedder()
    for i in range(30):
        assert s.lag_s(100.0 + i / 30, 50.0 + i / 30) == pytest.approx(0.0, abs=1e-9)
    assert s.lag_s(101.0, 46.0) == pytest.approx(0.0)  # 5 s back
    assert s.update(101.0, s.lag_s(101.0 + 1 / 30, 46.0 + 1 / 30), False) == "DEFAULT"
    assert s.lag_s(102.0, 46.5) == pytest.approx(0.5)  # and real lag still counts after it


def test_a_camera_clock_that_jumps_forward_is_not_lag_either() -> None:
    s = DecodeShedder()
    s.lag_s(100.0, 50.0)
    assert s.lag_s(101.0, 3651.0) == pytest.approx(0.0)  # an hour ahead
    assert s.lag_s(102.0, 3651.5) == pytest.approx(0.5)


FRAME_S = 1 / 30


def _decode(s: DecodeShedder, seconds: float, busy_s: float, t0: float = 0.0) -> list[str]:
    """Frames of `seconds` at 30 fps, each costing the decoder `busy_s` at the level it is at
    (a skipped frame costs nothing: its time is covered by the next decoded one); the level
    after each decoded frame."""
    levels, t, step = [], t0, 0.0
    while t < t0 + seconds:
        t += FRAME_S
        step += FRAME_S
        if s.level == "NONKEY" and round(t / FRAME_S) % 15:
            continue  # skipped: keyframes every 15 frames only
        s.served(busy_s, step)
        step = 0.0
        levels.append(s.update(t, 0.0, False))
    return levels


def test_a_decoder_that_keeps_up_owes_nothing_whatever_its_jitter() -> None:
    s = DecodeShedder()
    for i in range(3000):  # 100 s at 90% of real time, every 15th frame five times as dear
        busy = 0.9 * FRAME_S * (5 if i % 15 == 0 else 1) / (19 / 15)
        s.served(busy, FRAME_S)
        assert s.update(i * FRAME_S, 0.0, False) == "DEFAULT"
    assert s.backlog_s < 0.2


def test_a_decoder_a_little_short_sheds_about_its_deficit_and_stays_fresh() -> None:
    """5% short of real time, without B-frames: the lag estimate reads 0.5 s for ever while the
    stream falls 3 s a minute further behind; the backlog grows to BACKLOG_FAR_S, keyframes only
    take it off, and the decoder decodes everything again."""
    s = DecodeShedder()
    levels = _decode(s, 120.0, 1.05 * FRAME_S)
    decoded = len(levels)
    assert "NONKEY" in levels and levels[-1] in ("DEFAULT", "NONREF", "NONKEY")
    assert s.backlog_s <= BACKLOG_FAR_S + 1.05 * FRAME_S
    assert 0.85 * 3600 <= decoded <= 0.96 * 3600, decoded  # ~5% lost, plus the GOPs' rounding


def test_a_decoder_far_short_decodes_what_it_can() -> None:
    s = DecodeShedder()
    levels = _decode(s, 60.0, 4 * FRAME_S)  # it can do a quarter of real time
    assert s.backlog_s <= BACKLOG_FAR_S + 4 * FRAME_S
    assert 0.1 * 1800 <= len(levels) <= 0.3 * 1800, len(levels)


def test_the_backlog_drains_through_nonref_to_default() -> None:
    s = DecodeShedder()
    s.served(BACKLOG_FAR_S + 0.1, 0.0)
    assert s.update(0.0, 0.0, False) == "NONKEY"
    s.served(0.0, BACKLOG_FAR_S + 0.1 - BEHIND_S / 2)
    assert s.update(0.5, 0.0, False) == "NONREF"  # under BEHIND_S, not gone
    s.served(0.0, 1.0)
    assert s.backlog_s == 0.0 and s.update(0.6, 0.0, False) == "DEFAULT"  # at once: no CALM_S


def test_a_clock_that_goes_back_covers_no_media() -> None:
    s = DecodeShedder()
    assert s.served(0.01, -3600.0) == pytest.approx(0.01)  # not an hour of credit...
    s.served(0.01, 3600.0)  # ... while a jump ahead forgives what is owed (never below zero)
    assert s.backlog_s == 0.0


def test_a_new_session_owes_nothing() -> None:
    s = DecodeShedder()
    s.served(5.0, 0.0)
    assert s.update(0.0, 0.0, False) == "NONKEY"
    s.reset()
    assert s.backlog_s == 0.0 and s.level == "DEFAULT"
    assert s.update(0.1, 0.0, False) == "DEFAULT"
