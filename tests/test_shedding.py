"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from streamer.sources.shedding import (
    BEHIND_S,
    CALM_S,
    FAR_BEHIND_S,
    IDLE_SHARE,
    IDLE_WINDOW_S,
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


def test_a_camera_clock_that_jumps_back_is_not_lag() -> None:
    """A camera whose timestamps jump back within a session (its clock re-synced): the offset
    to the wall clock grows by the jump at once, which is not the decoder falling behind
    (before: 5 s of "lag", keyframes only for the next ten seconds)."""
    s = DecodeShedder()
    for i in range(30):
        assert s.lag_s(100.0 + i / 30, 50.0 + i / 30) == pytest.approx(0.0, abs=1e-9)
    assert s.lag_s(101.0, 46.0) == pytest.approx(0.0)  # 5 s back
    assert s.update(101.0, s.lag_s(101.0 + 1 / 30, 46.0 + 1 / 30), False) == "DEFAULT"
    assert s.lag_s(102.0, 46.5) == pytest.approx(0.5, abs=0.04)  # lag counts after


def test_a_camera_clock_that_jumps_forward_is_not_lag_either() -> None:
    s = DecodeShedder()
    s.lag_s(100.0, 50.0)
    assert s.lag_s(101.0, 3651.0) == pytest.approx(0.0)  # an hour ahead
    assert s.lag_s(102.0, 3651.5) == pytest.approx(0.5)


def _play(
    seconds: float,
    cost_s: Callable[[str], float],
    *,
    gop: int = 30,
    b_frames: bool = False,
    delay_s: Callable[[float], float] = lambda t: 0.05,
    stamp: Callable[[float], float] = lambda t: t,
    shed: bool = False,
    noise: float = 0.0,
    preempted: float = 0.0,
) -> dict[str, float]:
    """A 30 fps camera through a simulated decoder driving a DecodeShedder as the decode loop
    does: packets of capture time t arrive at 1000 + t + `delay_s(t)` in order, are decoded one
    after the other at `cost_s(frame type)` (x a random factor 1 +- `noise`) unless the level
    skips them, and the decoder waits for a packet that has not come yet (`note_wait`); a
    `preempted` share of the packets it decodes also come 30 ms late though they were there
    (a busy box preempting the decode thread while it reads). Frames carry `stamp(t)`.
    Returns the real lag at its worst and the share of frames not decoded."""
    rnd = random.Random(7)
    s, level, done, arrived = DecodeShedder(), "DEFAULT", 1000.0, 0.0
    worst, skipped, n = 0.0, 0, int(seconds * 30)
    for i in range(n):
        t = i / 30
        kind = "I" if i % gop == 0 else ("B" if b_frames and i % 3 else "P")
        arrived = max(arrived, 1000.0 + t + delay_s(t))
        start = max(arrived, done)
        decode = level == "DEFAULT" or (level == "NONREF" and kind != "B") or kind == "I"
        late = 0.03 if decode and rnd.random() < preempted else 0.0  # (skipping takes no time)
        s.note_wait(start, start - done + late)
        if not decode:
            skipped += 1
            done = start + 0.0005
            continue
        done = start + cost_s(kind) * (1 + noise * (2 * rnd.random() - 1))
        level = s.update(done, s.lag_s(done, stamp(t)), shed)
        worst = max(worst, done - 1000.0 - t)
    return {"worst_lag_s": worst, "skipped": skipped / n}


@pytest.mark.parametrize("short", [0.015, 0.05, 0.13, 0.5])
def test_a_decoder_short_of_the_stream_rate_stays_within_seconds_of_live(short: float) -> None:
    """A decoder short by `short` of real time (no B-frames: skipping non-reference frames
    frees nothing), its costs noisy, preempted now and then: it goes to keyframes only at
    FAR_BEHIND_S and catches up, for ten minutes. Before, the lag was measured against the
    last 10 s of offsets: 26 of 30 frames/s (short 0.13) read 1.3 s forever, under
    FAR_BEHIND_S, while the real lag grew without end; and a later rule that re-anchored the
    reference when skipping did not bring the lag down let a 4x overloaded decoder fall 400 s
    behind in a review's simulation."""
    cost = 1 / 30 / (1 - short)
    got = _play(600, lambda kind: cost, noise=0.3, preempted=0.02)
    assert got["worst_lag_s"] < FAR_BEHIND_S + 1.0, got
    assert got["skipped"] > 0, got


def test_a_decoder_four_times_too_slow_stays_within_seconds_of_live() -> None:
    got = _play(900, lambda kind: 4 / 30 * (5 if kind == "I" else 1), noise=0.3, shed=True)
    assert got["worst_lag_s"] < FAR_BEHIND_S + 3.0, got


@pytest.mark.parametrize("slow", [0.01, 0.025, 0.17])
def test_frames_stamped_slower_than_they_come_are_not_lag(slow: float) -> None:
    """A decoder keeping up (30% busy) with a camera whose timestamps run 1-17% slow (stamped
    by frame count at a nominal rate, or FFmpeg's default 25 fps for a 30 fps raw stream):
    ten minutes, never a frame skipped. It waits for its packets, so it is caught up."""
    got = _play(600, lambda kind: 0.01, b_frames=True, stamp=lambda t: t * (1 - slow))
    assert got["skipped"] == 0, got


@pytest.mark.parametrize("step_s", [0.5, 3.0, 5.0])
def test_a_delay_step_upstream_is_not_lag(step_s: float) -> None:
    """After a minute every packet comes `step_s` later than before (a link's delay grew),
    its timestamps continuous: the decoder keeps up, waiting for its packets, so nothing is
    skipped (with the reference creeping up at 2%/s, a 5 s step meant keyframes only for
    minutes)."""
    got = _play(300, lambda kind: 0.01, b_frames=True, delay_s=lambda t: step_s * (t >= 60))
    assert got["skipped"] == 0, got


def test_a_camera_clock_slow_by_a_crystal_s_drift_is_not_lag_in_a_day() -> None:
    """A camera clock 100 ppm slow against ours, a decoder that keeps up: a day of it."""
    got = _play(24 * 3600 / 30, lambda kind: 0.01, stamp=lambda t: 30 * t * (1 - 1e-4))
    assert got["skipped"] == 0, got


def test_waiting_now_and_then_is_not_catching_up() -> None:
    """Only waiting for a share of a window counts: a behind decoder's odd wait (preempted in
    the demuxer) leaves the reference where it is; a decoder that keeps up moves it."""
    s = DecodeShedder()
    s.lag_s(0.0, 0.0)
    t = 0.0
    while t < 3 * IDLE_WINDOW_S:  # 3% waiting: below IDLE_SHARE
        t += 0.1
        s.note_wait(t, 0.1 * IDLE_SHARE * 0.3)
    assert s.lag_s(t, t - 1.0) == pytest.approx(1.0)  # still measured from the start
    while t < 5 * IDLE_WINDOW_S:  # now waiting half the time
        t += 0.1
        s.note_wait(t, 0.05)
    assert s.lag_s(t, t - 1.0) == pytest.approx(0.0)  # caught up: the offset now is the reference
