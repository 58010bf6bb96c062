"""The read-ahead of streams that come a segment at a time: when each packet is due, what the
queue holds and what it drops, on made-up times (no threads, no clock). Over real HTTP with
FFmpeg: tests/test_sources_live.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from streamer.sources.base import SourceStats
from streamer.sources.readahead import (
    CATCHUP_GAIN,
    CATCHUP_MAX_LOAD,
    CATCHUP_MAX_SPEED,
    CATCHUP_SLACK_S,
    CLOCK_BACK_S,
    MAX_STEP_S,
    ByteBudget,
    Item,
    Queue,
    Steps,
)
from streamer.sources.session_shedding import SessionShedding
from streamer.sources.shedding import DecodeShedder

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


def _steps(frame_s: float | None = F) -> Steps:
    s = Steps()
    s.frame_s = frame_s
    return s


def test_steps() -> None:
    s = _steps()
    assert s.step(10.0) == 0.0  # the first: nothing to step from
    assert s.step(10.0 + F) == pytest.approx(F)
    assert s.step(None) == 0.0  # no timestamp: due with the one before
    assert s.step(10.0 + 3 * F) == pytest.approx(2 * F)
    assert s.step(10.0 + 2 * F) == 0.0  # a little back (B-frames' presentation order)
    assert s.step(10.0 + 4 * F) == pytest.approx(F)  # from the newest
    assert s.step(10.0 + 4 * F + MAX_STEP_S + 1) == F  # further ahead: not waited for
    assert s.step(10.0 + 5 * F + MAX_STEP_S + 1) == pytest.approx(F)  # the new reference
    assert s.step(0.0) == F  # a jump back further than CLOCK_BACK_S: a new clock
    assert s.step(F) == pytest.approx(F)
    assert s.step(F - CLOCK_BACK_S / 2) == 0.0  # back, within CLOCK_BACK_S
    assert s.missing == 179  # (the jump ahead of 6 s: a gap, below)


def test_frames_missing_from_the_input_are_counted() -> None:
    """A segment the server failed to deliver (FFmpeg goes on to the next) leaves a gap in the
    timestamps: its frames are counted as missing, a whole 6-s segment too. A new clock is not
    a gap."""
    s = _steps()
    for i in range(10):
        s.step(i * F)
    assert s.missing == 0
    s.step(10 * F + 1.0)  # a second missing: 30 frames (counted with the step after it)
    assert s.missing == 0
    s.step(11 * F + 1.0)
    assert s.missing == 30
    s.step(11 * F + 1.0 + 2 * F)  # one frame missing: not a gap (a halved rate looks the same)
    s.step(11 * F + 1.0 + 3 * F)
    s.step(11 * F + 1.0 + 7 * F)  # 3 missing
    s.step(11 * F + 1.0 + 8 * F)
    assert s.missing == 33
    s.step(11 * F + 7.0 + 8 * F)  # a whole 6-s segment: 6 s between two frames, 179 missing
    s.step(11 * F + 7.0 + 9 * F)
    assert s.missing == 212
    s.step(100.0)  # a jump over MAX_GAP_S: a new clock, not a gap
    s.step(100.0 + F)
    assert s.missing == 212


def test_a_frame_rate_that_changes_is_no_gap() -> None:
    """A camera that goes from 30 to 15 fps (low light), or to 2.5 fps at once, or one that
    slows to 1 fps while nothing moves and comes back to 25 when something does, loses
    nothing: a step is a gap only if the step after it is back to the interval before."""
    s = _steps()
    t = 0.0
    for rate, n in [(30, 60), (15, 60), (2.5, 60), (30, 60)] + [(25, 50), (1, 20)] * 10:
        for _ in range(n):
            t += 1 / rate
            s.step(t)
    assert s.missing == 0


def test_a_frame_rate_that_falls_for_a_moment_is_no_gap() -> None:
    """A camera whose smart codec drops to 1 fps for 4 s while nothing moves, or to 8.33 fps
    for 1.4 s, and back to 25 (too short for the median interval to follow): its long steps
    come in a row, so none is a gap; with arrival times (they take as long on the wall clock)
    neither. A single long step between short ones is one, either way."""
    for told in (False, True):
        s = _steps(1 / 25)
        t = 0.0
        for rate, n in [(25, 50), (1, 4), (25, 50), (8.33, 12)] * 5 + [(25, 50)]:
            for _ in range(n):
                t += 1 / rate
                s.step(t, t if told else None)
        assert s.missing == 0, told
        s.step(t + 0.5, t + 0.5 if told else None)  # 0.5 s between two frames of 25 fps
        for i in range(1, 5):
            s.step(t + 0.5 + i / 25, t + 0.5 + i / 25 if told else None)
        assert s.missing == 12, told


def test_a_live_stream_s_jitter_is_not_counted() -> None:
    """Arrival times jitter (the network, the reader's own pace): a clock set ahead whose next
    packet comes 150 ms later than usual, or a gap of 5 frames (under LIVE_JITTER_S), counts
    nothing."""
    s = _steps()
    ts = wall = 0.0
    for i in range(100):
        s.step(ts, wall + (0.03 if i % 7 == 0 else 0.0))
        ts, wall = ts + F, wall + F
    ts += 3.0
    s.step(ts, wall + 0.15)  # the clock set 3 s ahead, its packet late
    for _ in range(30):
        ts, wall = ts + F, wall + F
        s.step(ts, wall)
    ts, wall = ts + 6 * F, wall + 6 * F  # 5 frames never sent: 0.17 s
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 0
    ts, wall = ts + 3 * F, wall + 3 * F + 0.3  # 2 frames lost, the next packet read 0.3 s late
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 0  # (the lateness is not a gap: a gap is never more than its step)
    wall += 10.0  # nothing for 10 s, twice the window: judged against the packets before
    ts += 10.0
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 300
    wall += 10.0  # 10 s of nothing, 20 s in the timestamps: a clock ahead, so no gap at all
    ts += 20.0
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 300


def test_a_nominal_rate_that_is_wrong_is_no_gap() -> None:
    """A stream whose header says 25 fps and that runs at 1: nothing missing while the steps
    show the rate."""
    s = _steps(1 / 25)
    for i in range(40):
        s.step(float(i))
    assert s.missing == 0


def test_a_live_stream_s_gap_counts_only_as_far_as_its_arrival_agrees() -> None:
    """A camera read as it comes (RTSP) tells each packet's arrival: a gap in its timestamps
    that took as long on the wall clock is frames it never sent (also when its encoder's delay
    put the pause on the wire some packets before the gap); a clock set ahead (packets one
    interval apart) loses none; a gap that arrived a little sooner (the reader had fallen
    behind and took the packets back to back) counts no more than the wall clock shows, and
    one that arrived much sooner is a clock ahead too."""
    s = _steps()
    ts = wall = 0.0
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    ts, wall = ts + 15 * F, wall + 15 * F  # 15 frames never sent (half a second of nothing)
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 15
    wall += 15 * F  # the camera pauses, and 5 frames it had encoded come after the pause
    for _ in range(5):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    ts += 15 * F  # then the gap in the timestamps
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 30
    ts += 3.0  # the camera's clock set 3 s ahead: the next packet comes on time
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 30
    ts, wall = ts + 30 * F, wall + 25 * F  # 30 frames in the timestamps, 25 on the wall clock
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 30 + 25
    ts, wall = ts + 30 * F, wall + 10 * F  # ... 10 on the wall clock: 0.67 s early, a clock ahead
    for _ in range(10):
        s.step(ts, wall)
        ts, wall = ts + F, wall + F
    assert s.missing == 30 + 25


def test_what_a_reconnect_missed_is_counted() -> None:
    """One Steps spans a camera's sessions: the next session's first packet, 4 s on from the
    last one read, counts the frames between (a replay, further back, counts nothing)."""
    s = _steps()
    for i in range(30):
        s.step(i * F)
    s.step(29 * F + 4.0)  # the new session, at the playlist's last segment
    s.step(30 * F + 4.0)
    assert s.missing == 119
    s.step(2.0)  # a session that starts further back: a new reference, nothing counted
    assert s.missing == 119


def test_steps_without_a_frame_rate() -> None:
    s = _steps(None)
    s.step(0.0)
    assert s.step(100.0) == 0.0  # far ahead, and no rate to say what a frame is
    for i in range(1, 20):
        assert s.step(100.0 + i * 0.1) == pytest.approx(0.1)
    s.step(100.0 + 19 * 0.1 + 1.0)  # the steps so far say 10 fps: 9 missing
    s.step(100.0 + 20 * 0.1 + 1.0)
    assert s.missing == 9


def _live(
    q: Queue, segment_s: float, joined_late_s: float, run_s: float, clock: float = 1.0
) -> list[float]:
    """A live stream of `segment_s` segments, each whole once its last frame is captured (the
    stream's clock is the wall clock, or runs `clock` times as fast: its timestamps step by
    that much more), read from `joined_late_s` after a segment was listed, and a decoder that
    takes each packet when it is due: each frame's age when due."""
    per = round(segment_s / F)
    k = 0
    now = segment_s + joined_late_s

    def push_arrived() -> None:
        nonlocal k
        while (k + 1) * segment_s <= now:  # segment k is listed at the end of its media
            arrived = max((k + 1) * segment_s, segment_s + joined_late_s)
            for i in range(k * per, (k + 1) * per):
                q.push(Item(i, arrived, 0.0 if i == 0 else F * clock, 1000, i % GOP == 0))
            k += 1

    ages = []
    push_arrived()
    while now < run_s:
        got = q.pop()
        if got is None:
            now = (k + 1) * segment_s
        else:
            now = max(now, got[1])
            ages.append(got[1] - got[0].packet * F)
        push_arrived()
    return ages


@pytest.mark.parametrize("joined_late_s", [0.0, 3.0])
def test_a_stream_that_plays_later_than_it_needs_catches_up(joined_late_s: float) -> None:
    """Joined 3 s into a 4-s segment's cycle, the stream would play 3 s later than it needs
    to for good (a frame 7 s old when due, where 4 s is the least: a segment comes whole).
    Played faster (1.1-1.2x here) until its media in hand comes under a second, it is ~5 s. (With
    real FFmpeg the lateness of a join is mostly when it polls the playlist, which is not media
    in hand: this is late input played late, or a start three segments back.)"""
    q = _queue()
    q.max_speed = CATCHUP_MAX_SPEED  # (the decoder has time to spare)
    ages = _live(q, 4.0, joined_late_s, 240.0)
    assert ages[0] == pytest.approx(4.0 + joined_late_s)
    assert max(ages[-30 * 60 :]) < 4.0 + 1.0 + 0.2  # the last minute
    assert min(ages) > 4.0 - 1e-9  # never before the frame could have come


def test_a_stream_with_no_time_to_spare_is_not_sped_up() -> None:
    """Each segment comes as the one before is played out: nothing to catch up, played at its
    pace all along."""
    q = _queue()
    q.max_speed = CATCHUP_MAX_SPEED
    ages = _live(q, 4.0, 0.0, 240.0)
    assert max(ages) == pytest.approx(4.0)


@pytest.mark.parametrize("clock", [1.05, 1.2, 1.45])
def test_a_camera_clock_that_runs_fast_is_caught_up_with(clock: float) -> None:
    """Timestamps that run faster than the segments come (a camera's clock fast against the
    host: each 4-s segment holds 4.8 s of media at 1.2x) would play later and later, up to the
    queue's 60 s of media and then dropping groups of pictures. Played faster the more media it
    holds, it settles a few seconds behind the segments and drops nothing."""
    q = _queue()
    q.max_speed = CATCHUP_MAX_SPEED
    ages = _live(q, 4.0, 0.0, 600.0, clock)
    settled = ages[-30 * 60 :]  # the last minute of frames
    # A segment's wait (4 s), what is held to play it at the speed that keeps up (CATCHUP_SLACK_S
    # + (clock - 1) / CATCHUP_GAIN), and a segment more in hand at times.
    assert max(settled) < 4.0 + CATCHUP_SLACK_S + (clock - 1) / CATCHUP_GAIN + 4.0 * clock
    assert q.dropped == 0
    slow = _queue()  # a decoder with no time to spare: later and later (then it drops)
    assert max(_live(slow, 4.0, 0.0, 600.0, clock)) > 30.0


def _decoded_live(
    cost: float, clock: float, run_s: float, back: int = 0, pause: tuple[float, float] = (0, 0)
) -> tuple[Queue, list[float], list[float]]:
    """The read-ahead and the decoder's side together, as the decode loop wires them: a live
    stream of 4-s segments whose clock runs `clock` times as fast, joined `back` segments
    behind its live edge, decoded at `cost` seconds of work per second of media (the decoder
    busy that long on each packet, in which it cannot take another), its cost telling the queue
    how fast it may play; `pause`: (at, for how long) the whole process stops once, which
    the decoder's timing counts as work on the packet it was on. Returns the queue, each
    frame's age when due, and the decoder's busy share of each second. Asserts the decoder
    never went to keyframes only."""
    q = _queue()
    shedding = SessionShedding(DecodeShedder(), SimpleNamespace(), SourceStats(), "hls", F)
    segment_s, per, k = 4.0, round(4.0 / F), 0
    start = now = segment_s * (1 + back)
    first_due: float | None = None
    ages: list[float] = []
    busy = [0.0] * (int(run_s) + 2)

    def push_arrived() -> None:
        nonlocal k
        while (k + 1) * segment_s <= now:
            arrived = max((k + 1) * segment_s, start)
            for i in range(k * per, (k + 1) * per):
                step = 0.0 if i == 0 else F * clock
                q.push(Item(i, arrived, step, 1, i % GOP == 0))
            k += 1

    push_arrived()
    while now < run_s:
        got = q.pop()
        if got is None:
            now = (k + 1) * segment_s
            push_arrived()
            continue
        item, due = got
        now = max(now, due)
        first_due = due if first_due is None else first_due
        wanted = shedding.next_packet(now, due - first_due, item.keyframe, False)
        q.max_speed = shedding.catch_up_speed(wanted)
        work = cost * F * clock
        if pause[1] and now >= pause[0]:
            work, pause = work + pause[1], (0, 0)
        shedding.worked(work)
        shedding.decoded(1, True)
        shedding.packet_done(True, item.step_s)
        busy[int(now)] += work
        now += work
        ages.append(due - item.packet * F)
        assert shedding.level != "NONKEY", (now, item)
        push_arrived()
    return q, ages, busy[: int(run_s)]


@pytest.mark.parametrize(
    ("cost", "clock", "back"),
    [(0.5, 1.4, 0), (0.3, 1.45, 0), (0.7, 1.1, 0), (0.6, 1.3, 0), (0.55, 1.45, 0), (0.7, 1.0, 3)],
)
def test_a_busy_decoder_catches_up_within_its_means(
    cost: float, clock: float, back: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the decoder's own cost setting the pace: one that works half a second per second
    of media can play 1.6 times as fast at 80% busy, so a clock 40% fast is kept up with
    (capped at 1.5x) and nothing is dropped; one that works 0.7 s can go 1.14x, enough for a
    clock 10% fast or to work off a join three segments back. Every second the decoder is busy
    under about 80% (not only on average: a speed set from the load on the schedule it was given
    fed back into itself, and swung between 1x and 1.5x)."""
    monkeypatch.setattr(time, "thread_time", lambda: 0.0)  # (the test's own work is no decoding)
    q, ages, busy = _decoded_live(cost, clock, 600.0, back)
    assert q.dropped == 0
    settled = ages[-30 * 60 :]
    bound = 4.0 + CATCHUP_SLACK_S + (clock - 1) / CATCHUP_GAIN + 4.0 * clock
    assert max(settled) < bound
    assert max(busy[5:]) < CATCHUP_MAX_LOAD + 0.05, max(busy[5:])
    if back:
        assert max(settled) < 4.0 + CATCHUP_SLACK_S + 1.0  # the join worked off


@pytest.mark.parametrize(
    ("clock", "back", "around", "pause_s"), [(1.3, 0, 200.0, 0.7), (1.0, 3, 60.0, 0.7)]
)
def test_a_pause_while_catching_up_costs_no_group_of_pictures(
    clock: float, back: int, around: float, pause_s: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process stops for 0.7 s while a stream catches up (a clock 30% fast, or a join
    three segments back being worked off, at 46-84 s; the decoder about 80% busy on the faster
    schedule). The backlog stops the catch-up, and is worked off at the stream's own pace,
    where the decoder is 55% busy: it skips non-reference frames a while, not to the next
    keyframe. (Judged by its load on the faster schedule, it could not work the backlog off in
    time and dropped the rest of the group of pictures.)"""
    monkeypatch.setattr(time, "thread_time", lambda: 0.0)
    for at in (around, around + 0.3, around + 0.6, around + 1.0):  # (points of a group)
        q, _, _ = _decoded_live(0.55, clock, around + 40.0, back, pause=(at, pause_s))
        assert q.dropped == 0  # (and never keyframes only: _decoded_live asserts it)


def test_catching_up_is_capped() -> None:
    """However little the decoder costs, a stream is played at most 1.5 times as fast (every
    camera of a box catching up at once decodes, and hands on, that many times its frames): a
    clock 1.9x fast is not kept up with, as it would be at 2x."""
    q = _queue()
    q.max_speed = 10.0
    _live(q, 4.0, 0.0, 600.0, 1.9)
    assert q.dropped > 0
    uncapped = _queue()
    uncapped.max_speed = 10.0
    with pytest.MonkeyPatch.context() as m:
        m.setattr("streamer.sources.readahead.CATCHUP_MAX_SPEED", 2.0)
        _live(uncapped, 4.0, 0.0, 600.0, 1.9)
    assert uncapped.dropped == 0


def test_a_decoder_that_cannot_keep_up_with_a_fast_clock_plays_as_fast_as_it_may(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A decoder that works 0.7 s per second of media can go 1.14x: a clock 30% fast still
    falls behind (and drops at the queue's bound), but no second is over about 80% busy."""
    monkeypatch.setattr(time, "thread_time", lambda: 0.0)
    q, _, busy = _decoded_live(0.7, 1.3, 600.0)
    assert q.dropped > 0
    assert max(busy[5:]) < CATCHUP_MAX_LOAD + 0.05


def test_a_decoder_with_little_time_to_spare_catches_up_as_fast_as_it_can() -> None:
    """The speed is held to what the decoder can do (`max_speed`, from its load): a 1.2x clock
    with a decoder that can go only 1.1 times as fast still falls behind, more slowly."""
    q = _queue()
    q.max_speed = 1.1
    ages = _live(q, 4.0, 0.0, 600.0, 1.2)
    free = _queue()
    free.max_speed = CATCHUP_MAX_SPEED
    assert max(ages) > max(_live(free, 4.0, 0.0, 600.0, 1.2)) + 10.0


def test_a_decoder_without_time_to_spare_is_not_asked_to_catch_up() -> None:
    """A decoder that sheds, or is busy most of the time, would only shed more played faster: the
    stream stays as late as it is."""
    ages = _live(_queue(), 4.0, 3.0, 240.0)  # (max_speed: 1)
    assert min(ages) == pytest.approx(7.0) and max(ages) == pytest.approx(7.0)


def test_what_a_session_s_end_lets_go_of_is_counted() -> None:
    q = _queue()
    for item in _segment(0, 40, arrived=0.0):
        q.push(item)
    q.push(Item(-1, 0.0, 0.0, 0, False))  # the end: no frame
    q.pop()
    assert q.close() == 39
