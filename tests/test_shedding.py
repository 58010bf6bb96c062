"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from streamer.sources.shedding import (
    BEHIND_S,
    BUSY_BEHIND_S,
    CALM_S,
    FAR_BEHIND_S,
    WAITED_S,
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


def test_a_decoder_that_never_waits_for_its_input_is_behind() -> None:
    """Its next packet was always there for BUSY_BEHIND_S: keyframes only, however small the
    lag reads; once it waits again, its lag alone decides."""
    s = DecodeShedder()
    s.note_wait(0.0, 0.02)
    for t in range(1, int(BUSY_BEHIND_S) + 1):
        s.note_wait(float(t), WAITED_S / 10)  # always there
        assert s.update(float(t), 0.1, False) == "DEFAULT"
    assert s.update(BUSY_BEHIND_S + 0.5, 0.1, False) == "NONKEY"
    s.note_wait(BUSY_BEHIND_S + 1, 0.02)  # caught up: it waited
    assert s.update(BUSY_BEHIND_S + 1, 0.1, False) == "NONKEY"  # (steps down when calm)
    assert s.update(BUSY_BEHIND_S + 1 + CALM_S + 0.1, 0.1, False) == "NONREF"
    assert s.update(BUSY_BEHIND_S + 1 + 2 * CALM_S + 0.2, 0.1, False) == "DEFAULT"


class _LagOnly(DecodeShedder):
    """The shedder as it was: no evidence from the decoder's waits."""

    def note_wait(self, now: float, waited_s: float) -> None:
        pass


def _play(
    shedder: DecodeShedder,
    seconds: float,
    cost_s: Callable[[str], float],
    *,
    gop: int = 30,
    b_frames: bool = False,
    delay_s: Callable[[float], float] = lambda t: 0.05,
    noise: float = 0.0,
) -> dict[str, object]:
    """A 30 fps camera through a simulated decoder driving `shedder` as the decode loop does:
    packets of capture time t arrive at 1000 + t + `delay_s(t)` in order; each is decoded
    after the one before at `cost_s(frame type)` (x 1 +- `noise`, at random) unless the level
    skips it; the time it was waited for goes to `note_wait`. Returns the real lag at its worst,
    the share of frames not decoded and the levels, frame by frame."""
    rnd = random.Random(7)
    level, done, arrived, worst, skipped, levels = "DEFAULT", 1000.0, 0.0, 0.0, 0, []
    n = int(seconds * 30)
    for i in range(n):
        t = i / 30
        kind = "I" if i % gop == 0 else ("B" if b_frames and i % 3 else "P")
        arrived = max(arrived, 1000.0 + t + delay_s(t))
        start = max(arrived, done)
        shedder.note_wait(start, start - done)
        if not (level == "DEFAULT" or (level == "NONREF" and kind != "B") or kind == "I"):
            skipped += 1
            done = start + 0.0005
            continue
        done = start + cost_s(kind) * (1 + noise * (2 * rnd.random() - 1))
        level = shedder.update(done, shedder.lag_s(done, t), False)
        levels.append(level)
        worst = max(worst, done - 1000.0 - t)
    return {"worst_lag_s": worst, "skipped": skipped / n, "levels": levels}


@pytest.mark.parametrize("short", [0.01, 0.03, 0.13])
def test_a_decoder_a_little_short_of_the_stream_rate_stays_near_live(short: float) -> None:
    """A decoder short by 1-13% of real time (noisy costs, no B-frames: skipping non-reference
    frames frees nothing) reads at most 10 s x that behind, under FAR_BEHIND_S, while its real
    lag grows without end (measured against the shedder as it was: 6-89 s after 10 minutes in
    a simulation). It never waits for its input, so it goes to keyframes only and catches up."""
    cost = 1 / 30 / (1 - short)
    before = _play(_LagOnly(), 600, lambda kind: cost, noise=0.3)
    now = _play(DecodeShedder(), 600, lambda kind: cost, noise=0.3)
    assert before["worst_lag_s"] > 5.0, before["worst_lag_s"]
    assert now["worst_lag_s"] < FAR_BEHIND_S, now["worst_lag_s"]


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("decoder 95% busy", {"cost_s": lambda kind: 0.95 / 30, "noise": 0.05}),
        (
            "HLS-like segments of 6 s",
            {
                "cost_s": lambda kind: 0.1 / 30,
                "b_frames": True,
                "gop": 180,
                "delay_s": lambda t: (math.floor(t / 6) + 1) * 6 - t + 0.3,
            },
        ),
        (
            "bursts of a second",
            {
                "cost_s": lambda kind: 0.3 / 30,
                "b_frames": True,
                "delay_s": lambda t: math.floor(t) + 1 - t + 0.05,
            },
        ),
        ("a 3 s delay step", {"cost_s": lambda kind: 0.01, "delay_s": lambda t: 3.0 * (t > 60)}),
    ],
)
def test_a_decoder_that_waits_for_its_input_is_judged_by_its_lag_alone(
    name: str, kw: dict[str, object]
) -> None:
    """Decoders that keep up (bursty senders, a delay step upstream): the waits change no
    level, frame by frame, against the shedder as it was."""
    assert _play(DecodeShedder(), 300, **kw)["levels"] == _play(_LagOnly(), 300, **kw)["levels"]


def test_no_keyframes_only_for_want_of_waits_while_the_pipeline_sheds() -> None:
    """A box too busy for all its cameras turns this one's frames away: its decoder, behind
    and never waiting, is left to the lag rule and the shedding (keyframes only on every busy
    decoder in turn left the cores idle at twice the capacity). Ten seconds after the last
    frame turned away, the trigger applies again."""
    s = DecodeShedder()
    s.note_wait(0.0, 0.02)
    for t in range(1, 30):
        s.note_wait(float(t), 0.0)
        assert s.update(float(t), 0.1, True) == "NONREF"
    for t in range(30, 40):
        s.note_wait(float(t), 0.0)
        assert s.update(float(t), 0.1, False) != "NONKEY"  # (steps down, calm)
    s.note_wait(40.5, 0.0)
    assert s.update(40.5, 0.1, False) == "NONKEY"
