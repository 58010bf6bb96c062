"""The read-ahead of streams that come a segment at a time: when each packet is due, what the
queue holds and what it drops, on made-up times (no threads, no clock). Over real HTTP with
FFmpeg: tests/test_sources_live.py."""

from __future__ import annotations

import pytest

from streamer.sources.readahead import CLOCK_BACK_S, MAX_STEP_S, ByteBudget, Item, Queue, Steps

F = 1 / 30  # a frame at 30 fps
GOP = 30


def _queue(finished: bool = False, **bounds: float) -> Queue:
    """A queue with a budget of its own (the process's is shared with the live tests)."""
    budget = ByteBudget(int(bounds.pop("max_total_bytes", 1 << 40)))
    return Queue(finished, budget=budget, **bounds)  # type: ignore[arg-type]


def _segment(first: int, n: int, arrived: float, nbytes: int = 1000, gop: int = GOP) -> list[Item]:
    """Packets `first`..`first + n - 1` of a 30-fps stream, all arrived at `arrived`."""
    return [Item(i, arrived, F, nbytes, i % gop == 0) for i in range(first, first + n)]


def _drain(q: Queue) -> list[tuple[int, float]]:
    out = []
    while (got := q.pop()) is not None:
        out.append((got[0].packet, got[1]))
    return out


def test_a_segment_that_comes_at_once_is_due_at_its_own_pace() -> None:
    q = _queue()
    for item in _segment(0, 120, arrived=10.0):
        q.push(item)
    assert q.ahead_s == pytest.approx(120 * F)
    dues = [due for _, due in _drain(q)]
    assert dues[0] == 10.0
    assert dues == pytest.approx([10.0 + i * F for i in range(120)])
    assert q.ahead_s == 0.0 and q.nbytes == 0 and q.dropped == 0


def test_the_next_segment_on_time_goes_on_at_the_same_pace() -> None:
    """The second 4-s segment arrives while the first still plays: no gap, no jump."""
    q = _queue()
    for item in _segment(0, 120, arrived=0.0):
        q.push(item)
    first = _drain(q)
    for item in _segment(120, 120, arrived=3.5):
        q.push(item)
    second = _drain(q)
    assert second[0][1] == pytest.approx(first[-1][1] + F)
    assert [d for _, d in second] == pytest.approx([4.0 + i * F for i in range(120)])


def test_input_late_is_due_as_it_arrives_and_paced_from_there() -> None:
    """The queue ran dry: the next segment, 2 s late, is due as it arrives, not in a burst to
    catch up with the schedule, and the decoder owes nothing for the wait."""
    q = _queue()
    for item in _segment(0, 120, arrived=0.0):
        q.push(item)
    _drain(q)  # due until 4 s
    for item in _segment(120, 120, arrived=6.0):
        q.push(item)
    dues = [d for _, d in _drain(q)]
    assert dues == pytest.approx([6.0 + i * F for i in range(120)])


def test_a_packet_taken_late_keeps_its_time() -> None:
    """A slow decoder takes packets after they were due: when they were due does not move,
    so how late it is shows (the shedder measures it)."""
    q = _queue()
    for item in _segment(0, 60, arrived=0.0):
        q.push(item)
    dues = [d for _, d in _drain(q)]  # (popped "late": the queue reads no clock)
    assert dues[-1] == pytest.approx(59 * F)


def test_a_live_queue_that_overfills_drops_the_oldest_up_to_a_keyframe() -> None:
    """Timestamps that run faster than the segments come, or a decoder far behind: the media in
    hand passes its bound, and the oldest packets go, a whole group of pictures at a time (the
    frames after a dropped one reference it), counted."""
    q = _queue(max_ahead_s=3.0)
    for item in _segment(0, 100, arrived=0.0):  # 3.33 s: frames 0-29 go
        q.push(item)
    assert q.dropped == 30
    assert q.items[0].packet == 30 and q.items[0].keyframe
    assert q.ahead_s <= 3.0
    assert [p for p, _ in _drain(q)] == list(range(30, 100))


def test_after_a_drop_that_emptied_the_queue_nothing_is_queued_before_a_keyframe() -> None:
    """A single packet over the byte bound leaves nothing to decode from: the packets after it
    reference it, so they are dropped (and counted) until the next keyframe."""
    q = _queue(max_bytes=20_000)
    q.push(Item(0, 0.0, 0.0, 50_000, True))  # a keyframe too big to keep
    for item in _segment(1, 40, arrived=0.0):
        q.push(item)
    assert q.dropped == 1 + 29  # it, and 1-29
    assert [p for p, _ in _drain(q)] == list(range(30, 41))


def test_past_the_total_a_queue_over_its_fair_share_drops() -> None:
    """Every queue's bytes together are bounded: past the total, the queue that holds more
    than its share drops, not the small one that happens to read a packet then."""
    budget = ByteBudget(50_000)
    big, small = Queue(False, budget=budget), Queue(False, budget=budget)
    for item in _segment(0, 40, arrived=0.0):
        big.push(item)  # 40 kB, under the total
    for item in _segment(0, 20, arrived=0.0):
        small.push(item)  # 60 kB in all, but small holds under half of the total: it goes on
    assert small.dropped == 0 and budget.nbytes == 60_000
    big.push(Item(40, 0.0, F, 1000, False))  # big is over its share: it drops a group
    assert big.dropped == 30 and budget.nbytes == 31_000
    big.close()
    small.close()
    assert (budget.nbytes, budget.queues) == (0, 0)


def test_a_packet_that_flushes_the_decoder_is_never_dropped() -> None:
    """The stream's end (a packet with no data) gets the frames the decoder still holds out:
    it is queued even while the queue waits for a keyframe."""
    q = _queue(max_bytes=20_000)
    q.push(Item(0, 0.0, 0.0, 50_000, True))  # dropped: nothing until a keyframe
    q.push(Item(1, 0.0, F, 1000, False))
    q.push(Item(-1, 0.0, 0.0, 0, False))  # the end
    assert q.dropped == 2
    assert [p for p, _ in _drain(q)] == [-1]


def test_a_recording_is_never_dropped_from() -> None:
    """A finished playlist (all of it is there): the reader waits while the queue is full."""
    q = _queue(True, max_ahead_s=1.0)
    for item in _segment(0, 90, arrived=0.0):
        q.push(item)
    assert q.full() and q.dropped == 0
    assert [p for p, _ in _drain(q)] == list(range(90))


def test_steps() -> None:
    s = Steps(F)
    assert s.step(10.0) == 0.0  # the first: nothing to step from
    assert s.step(10.0 + F) == pytest.approx(F)
    assert s.step(None) == 0.0  # no timestamp: due with the one before
    assert s.step(10.0 + 3 * F) == pytest.approx(2 * F)
    assert s.step(10.0 + 2 * F) == 0.0  # a little back (B-frames' presentation order)
    assert s.step(10.0 + 4 * F) == pytest.approx(F)  # from the newest
    assert s.step(10.0 + 4 * F + MAX_STEP_S + 1) == F  # a jump ahead: one frame
    assert s.step(10.0 + 5 * F + MAX_STEP_S + 1) == pytest.approx(F)  # the new reference
    assert s.step(0.0) == F  # a jump back further than CLOCK_BACK_S
    assert s.step(F) == pytest.approx(F)
    assert s.step(F - CLOCK_BACK_S / 2) == 0.0  # back, within CLOCK_BACK_S


def test_frames_missing_from_the_input_are_counted() -> None:
    """A segment the server failed to deliver (FFmpeg goes on to the next) leaves a gap in the
    timestamps: its frames are counted as missing. A discontinuity is not a gap."""
    s = Steps(F)
    for i in range(10):
        s.step(i * F)
    assert s.missing == 0
    s.step(10 * F + 1.0)  # a second missing: 30 frames
    assert s.missing == 30
    s.step(11 * F + 1.0)
    s.step(11 * F + 1.0 + 2 * F)  # one frame missing (1.5 frames is the least gap)
    assert s.missing == 31
    s.step(100.0)  # a new clock, not a gap
    assert s.missing == 31


def test_steps_without_a_frame_rate() -> None:
    s = Steps(None)
    s.step(0.0)
    assert s.step(100.0) == 0.0  # a discontinuity, and no rate to say what a frame is
