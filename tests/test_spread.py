"""Spreading a live HLS segment's frames: a pure state machine driven with made-up times."""

from __future__ import annotations

import itertools

import pytest

from streamer.sources.spread import (
    EDGE_WINDOW_S,
    MAX_STEP_FRAMES,
    SPREAD_SPEEDUP,
    BurstSpreader,
)

FRAME_S = 1 / 30


def _hand(s: BurstSpreader, now: float, ts: list[float | None]) -> list[float]:
    """Frames that all came at `now`, handed on as soon as they are due: their times."""
    out = []
    for t in ts:
        at = s.due(now, t)
        s.handed(at, t)
        out.append(at)
    return out


def test_a_segment_that_comes_at_once_is_spread_over_most_of_its_length() -> None:
    s = BurstSpreader(0.0, FRAME_S)
    at = _hand(s, 0.0, [i * FRAME_S for i in range(120)])  # a 4-s segment
    assert at[0] == 0.0
    assert at[-1] == pytest.approx(119 * FRAME_S / SPREAD_SPEEDUP)  # 3.17 s of its 4
    steps = [b - a for a, b in itertools.pairwise(at)]
    assert min(steps) == pytest.approx(max(steps))  # evenly


def test_a_segment_that_comes_late_is_spread_from_when_it_comes() -> None:
    """No schedule to catch up with: frames are never handed on faster than the spread."""
    s = BurstSpreader(0.0, FRAME_S)
    _hand(s, 0.0, [i * FRAME_S for i in range(120)])
    s.read(3.5, 0.5)  # the reader waited at the live edge
    at = _hand(s, 5.5, [4 + i * FRAME_S for i in range(120)])  # 1.5 s late
    assert at[0] == 5.5
    assert at[1] - at[0] == pytest.approx(FRAME_S / SPREAD_SPEEDUP)


def test_frames_that_come_slower_than_the_spread_are_not_held() -> None:
    s = BurstSpreader(0.0, FRAME_S)
    for i in range(30):
        now = i * FRAME_S  # a camera at its pace: each frame when it comes
        at = s.due(now, i * FRAME_S)
        assert at == now
        s.handed(at, i * FRAME_S)


@pytest.mark.parametrize("jump_s", [0.99, 100.0, -5.0])
def test_a_timestamp_jump_is_no_wait(jump_s: float) -> None:
    s = BurstSpreader(0.0, FRAME_S)
    _hand(s, 0.0, [0.0])
    at = s.due(0.0, jump_s)
    assert at <= MAX_STEP_FRAMES * FRAME_S / SPREAD_SPEEDUP + 1e-9


def test_a_frame_without_a_timestamp_is_not_held_nor_holds_the_next() -> None:
    s = BurstSpreader(0.0, FRAME_S)
    _hand(s, 0.0, [0.0])
    assert s.due(0.0, None) == 0.0
    s.handed(0.0, None)
    assert s.due(0.0, FRAME_S) == pytest.approx(FRAME_S / SPREAD_SPEEDUP)


def test_a_slow_camera_is_spread_at_its_own_pace() -> None:
    s = BurstSpreader(0.0, 2.0)  # a frame every 2 s
    at = _hand(s, 0.0, [0.0, 2.0, 4.0])
    assert at == pytest.approx([0.0, 2.0 / SPREAD_SPEEDUP, 4.0 / SPREAD_SPEEDUP])


def test_input_that_piles_up_is_not_held_for_long() -> None:
    """Timestamps that run twice as fast as the stream comes (4-s segments holding 8 s by their
    timestamps): spread at 1.25x their pace, the reader would fall further behind the live edge
    for ever, until the server's playlist dropped what it had not read. Once no read has waited
    for input for EDGE_WINDOW_S, frames are handed on as they come, and the reader catches up;
    it then waits for the next segment, and spreading starts again."""
    s = BurstSpreader(0.0, FRAME_S)
    released, held, spread = 0.0, [], 0
    for i in range(120 * 30):  # 30 segments, 2 minutes
        come = (i // 120) * 4.0  # a segment comes at once, every 4 s
        now = max(come, released)
        s.read(now, come - released)  # the read waits when the segment is not there yet
        at = s.due(now, 2 * i * FRAME_S)
        spread += at > now
        s.handed(at, 2 * i * FRAME_S)
        released = at
        held.append(at - come)
    # Spread for ever, the last frames would be held 76 s; here at most about half the window.
    assert max(held) < 0.6 * EDGE_WINDOW_S, max(held)
    assert spread > len(held) / 2  # most frames are still spread
