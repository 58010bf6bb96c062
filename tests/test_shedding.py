"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

import pytest

from streamer.sources.shedding import (
    BEHIND_S,
    CALM_S,
    DRIFT_ALLOWANCE,
    FAR_BEHIND_S,
    PROBE_S,
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
    assert s.lag_s(102.0, 5001.5) == pytest.approx(0.5 - DRIFT_ALLOWANCE)  # half a second behind
    s.reset()
    assert s.lag_s(200.0, 0.0) == 0.0  # a new session starts over


def test_a_steady_step_in_the_offset_is_forgotten_at_the_drift_allowance() -> None:
    s = DecodeShedder()
    s.lag_s(0.0, 0.0)
    assert s.lag_s(1.0, 0.5) == pytest.approx(0.5 - DRIFT_ALLOWANCE)
    # Long after, a steady offset is the new normal (a one-off step in the network's delay).
    for t in range(2, 200):
        s.lag_s(float(t), t - 0.5)
    assert s.lag_s(200.0, 199.5) == pytest.approx(0.0)


@pytest.mark.parametrize("decode_fps", [29.0, 26.0, 20.0, 10.0])
def test_a_decoder_short_of_the_stream_rate_catches_up_within_seconds(decode_fps: float) -> None:
    """A 30 fps camera decoded at `decode_fps` (no B-frames: skipping non-reference frames
    frees nothing): its real lag grows without end unless the decoder goes to keyframes only,
    which it does once it reads FAR_BEHIND_S behind.
    With the lag measured over a 10 s window, 26 fps read 1.3 s forever, under FAR_BEHIND_S,
    and the real lag grew by 8 s a minute."""
    s, wall, media, level, catch_ups = DecodeShedder(), 1000.0, 0.0, "DEFAULT", 0
    for _ in range(30 * 600):  # ten minutes of the stream
        if level == "NONKEY":
            catch_ups += 1
            wall, media = wall + 1 / 30, wall - 1000.0  # keyframes only: caught up at once
        else:
            wall, media = wall + 1 / decode_fps, media + 1 / 30
        level = s.update(wall, s.lag_s(wall, media), False)
        # The real lag stays bounded: FAR_BEHIND_S is read when the real lag is that x d / (d -
        # the drift allowed), d the share of real time the decoder is short (29 fps: 5 s).
        d = 1 - decode_fps / 30
        assert wall - 1000.0 - media < FAR_BEHIND_S * d / (d - DRIFT_ALLOWANCE) + 1.0
    assert catch_ups > 0


@pytest.mark.parametrize("slow", [0.01, 0.019])
def test_frames_stamped_slower_than_they_come_are_not_lag(slow: float) -> None:
    """A decoder keeping up with a camera whose timestamps advance 1-1.9% slower than frames
    come (stamped by frame count at a nominal rate above the real one): ten minutes, never a
    frame skipped."""
    s = DecodeShedder()
    for i in range(30 * 600):
        wall, media = 1000.0 + i / 30, i / 30 * (1 - slow)
        assert s.update(wall, s.lag_s(wall, media), False) == "DEFAULT", i / 30


@pytest.mark.parametrize("step_s", [0.5, 1.0, 3.0, 5.0])
def test_a_delay_step_upstream_is_not_lag_for_long(step_s: float) -> None:
    """A decoder keeping up; after a minute every frame comes `step_s` later than before (a
    link's delay grew) and stays so. Skipping cannot bring that lag down, so after probing
    (PROBE_S at each level) the new offset becomes the reference. With the reference creeping
    up at DRIFT_ALLOWANCE alone, a 5 s step meant keyframes only for minutes."""
    s, skipping = DecodeShedder(), 0
    for i in range(30 * 600):
        wall, media = 1000.0 + i / 30, i / 30 - (step_s if i >= 30 * 60 else 0.0)
        skipping += s.update(wall, s.lag_s(wall, media), False) != "DEFAULT"
    assert s.level == "DEFAULT"
    assert skipping / 30 <= 2 * PROBE_S + 2 * CALM_S + 1.0, skipping / 30


def test_a_camera_clock_slow_by_a_crystal_s_drift_is_not_lag_in_a_day() -> None:
    """A camera clock 100 ppm slow against ours (worse than common crystals): a day of it."""
    s = DecodeShedder()
    for i in range(24 * 3600):
        lag = s.lag_s(float(i), i * (1 - 1e-4))
        assert s.update(float(i), lag, False) == "DEFAULT"
    assert lag == pytest.approx(0.0)


def test_a_camera_clock_that_jumps_back_is_not_lag() -> None:
    """A camera whose timestamps jump back within a session (its clock re-synced): the offset
    to the wall clock grows by the jump at once, which is not the decoder falling behind
    (before: 5 s of "lag", keyframes only for the next ten seconds)."""
    s = DecodeShedder()
    for i in range(30):
        assert s.lag_s(100.0 + i / 30, 50.0 + i / 30) == pytest.approx(0.0, abs=1e-9)
    assert s.lag_s(101.0, 46.0) == pytest.approx(0.0)  # 5 s back
    assert s.update(101.0, s.lag_s(101.0 + 1 / 30, 46.0 + 1 / 30), False) == "DEFAULT"
    assert s.lag_s(102.0, 46.5) == pytest.approx(0.5, abs=DRIFT_ALLOWANCE)  # lag counts after


def test_a_camera_clock_that_jumps_forward_is_not_lag_either() -> None:
    s = DecodeShedder()
    s.lag_s(100.0, 50.0)
    assert s.lag_s(101.0, 3651.0) == pytest.approx(0.0)  # an hour ahead
    assert s.lag_s(102.0, 3651.5) == pytest.approx(0.5 - DRIFT_ALLOWANCE)


def test_a_lag_held_level_while_the_pipeline_sheds_is_the_decoder_s() -> None:
    """A box too busy: the pipeline turns this camera's frames away, and its decoder, skipping
    non-reference frames, holds its lag level at 1 s. That lag is the decoder's: it is not
    taken as the new normal (as a level lag is when the pipeline takes every frame)."""
    s = DecodeShedder()
    for i in range(30 * 20):  # the lag grows to 1 s over 5 s, then stays
        wall, media = 1000.0 + i / 30, i / 30 - min(1.0, i / 150)
        s.update(wall, lag := s.lag_s(wall, media), True)
    assert lag == pytest.approx(1.0 - DRIFT_ALLOWANCE * 20, abs=0.05)  # only the drift allowed
    calm = DecodeShedder()
    for i in range(30 * 20):
        wall, media = 1000.0 + i / 30, i / 30 - min(1.0, i / 150)
        calm.update(wall, lag := calm.lag_s(wall, media), False)
    assert lag < 0.1  # a level lag with nothing shed downstream: a new reference
