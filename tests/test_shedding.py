"""The decoder's load shedding: a pure state machine driven with made-up times."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from streamer.sources.readahead import CATCHUP_MAX_LOAD, CATCHUP_MAX_SPEED
from streamer.sources.shedding import (
    BACKLOG_FAR_S,
    BEHIND_S,
    CALM_S,
    FAR_BEHIND_S,
    DecodeShedder,
    PacketTimes,
    SkipCount,
    SkipLevel,
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
GOP = 30  # frames: a keyframe a second


def _decode(
    s: DecodeShedder,
    seconds: float,
    busy_s: float,
    pause_at: float | None = None,
    keyframes: frozenset[int] | None = None,
    downstream: bool = False,
    arrives: Callable[[float], float] | None = None,
    uncounted_s: float = 0.0,
    levels: set[str] | None = None,
    stall: Callable[[int], float] | None = None,
    bframes: bool = False,
    cost_of: Callable[[float], float] | None = None,
) -> list[float]:
    """A camera of `seconds` at 30 fps, no B-frames, read packet by packet as `AvSource` does:
    each packet decoded costs `busy_s` (one skipped costs nothing), the level is chosen before
    each packet (its lag read from the packet's time), and with `pause_at` the whole process
    stops for 1.2 s once. Keyframes every `GOP` frames, or at `keyframes` (frame numbers).
    A packet is there at its time, or at `arrives(its time)` (a stream that comes in bursts).
    Each packet also takes `uncounted_s` that the loop does not count as work (as waits for
    the interpreter lock while demuxing), and `stall(its number)` more before it (the process
    held up while demuxing). With `bframes`, two packets in three reference nothing (skipped
    from NONREF up); `cost_of(its time)` scales a packet's cost (content that is dearer for
    a while). The lag behind real time of each frame decoded; `levels` gets every level
    chosen."""
    s.reset(FRAME_S)
    wall, lags = 0.0, []
    for i in range(round(seconds * 30)):
        ts = i * FRAME_S
        wall = max(wall, ts if arrives is None else arrives(ts))  # there, or at once if behind
        if stall is not None:
            wall += stall(i)
        keyframe = i % GOP == 0 if keyframes is None else i in keyframes
        level, step = s.next_packet(wall, ts, keyframe, False, downstream)
        assert step is not None
        if levels is not None:
            levels.add(level)
        skipped = (level == "NONKEY" and not keyframe) or (
            level == "NONREF" and bframes and i % 3 != 0
        )
        cost = 0.0 if skipped else busy_s * (1.0 if cost_of is None else cost_of(ts))
        if pause_at is not None and ts >= pause_at:
            cost, pause_at = cost + 1.2, None  # frozen in the middle of decoding a packet
        wall += cost + uncounted_s
        if cost:
            lags.append(wall - ts)
        s.served(cost, step)
    return lags


def test_a_decoder_that_keeps_up_sheds_nothing_whatever_its_jitter() -> None:
    s = DecodeShedder()
    for i in range(3000):  # 100 s at 90% of real time, every 15th frame five times as dear
        busy = 0.9 * FRAME_S * (5 if i % 15 == 0 else 1) / (19 / 15)
        s.served(busy, FRAME_S)
        assert s.update(i * FRAME_S, 0.0, False, i % 15 == 0) == "DEFAULT"
    assert s.backlog_s < 0.2


@pytest.mark.parametrize("short", [0.01, 0.05, 0.18, 0.5])
def test_a_decoder_short_of_real_time_sheds_about_its_deficit_and_stays_fresh(
    short: float,
) -> None:
    """Without B-frames (skipping non-reference frames frees nothing): the lag estimate reads
    at most 10 x the deficit for ever while the stream falls further behind without end; the
    backlog sheds the tails of groups of pictures instead: about the deficit's share of the
    frames, and the stream stays within a second."""
    s = DecodeShedder()
    lags = _decode(s, 300.0, (1 + short) * FRAME_S)
    share = len(lags) / (300 * 30)
    ideal = 1 / (1 + short)
    print(f"{short:.0%} short: {share:.3f} of the frames (ideal {ideal:.3f}), lag {max(lags):.2f}")
    assert ideal - 0.005 <= share <= ideal + 0.001, share
    assert max(lags) < BACKLOG_FAR_S + 2 * FRAME_S


def _varying_gops(seconds: float, gops_s: tuple[float, ...]) -> frozenset[int]:
    keys, t, i = set(), 0.0, 0
    while t < seconds:
        keys.add(round(t * 30))
        t += gops_s[i % len(gops_s)]
        i += 1
    return frozenset(keys)


@pytest.mark.parametrize("gops_s", [(1.0, 8.0), (0.5, 6.0), (2.0, 2.0, 0.3, 1.7)])
def test_groups_of_pictures_that_vary_do_not_cost_more_than_the_deficit(
    gops_s: tuple[float, ...],
) -> None:
    """A camera's "smart" codec (a keyframe every 1 s in motion, every 8 s when still) or a
    keyframe at a scene cut: the next keyframe is expected within the longest recent interval,
    and the tail of a group is not shed once that is overdue (before: 5% short delivered 53%
    of the frames with groups of 1 s and 8 s)."""
    s = DecodeShedder()
    lags = _decode(s, 300.0, 1.05 * FRAME_S, keyframes=_varying_gops(300.0, gops_s))
    share = len(lags) / (300 * 30)
    print(f"GOPs {gops_s}: {share:.3f} of the frames, lag {max(lags):.2f}")
    assert share >= 0.9, share
    assert max(lags) < BACKLOG_FAR_S + 2 * FRAME_S


def test_a_camera_whose_frames_are_turned_away_still_sheds_its_backlog() -> None:
    """The pipeline sheds the camera's frames (non-reference frames skipped, none here): the
    load is measured at that level too, so the backlog is still shed at once (before: the load
    read "idle", and a decoder 30% short ran 2 s behind)."""
    s = DecodeShedder()
    lags = _decode(s, 60.0, 1.3 * FRAME_S, downstream=True)
    assert max(lags) < BACKLOG_FAR_S + 2 * FRAME_S, max(lags)
    assert len(lags) / 1800 >= 0.72, len(lags)


def test_how_far_behind_is_the_larger_of_lag_and_backlog() -> None:
    """What the stats report of a network camera: a stream that comes late reads its lag; a
    decoder short of time, its backlog, which the lag's window cannot hold for ever."""
    s = DecodeShedder()
    s.reset(1 / 30)
    for i in range(300):  # 10 s on time, the loop busy half of each frame
        s.next_packet(100.0 + i / 30, i / 30, i % 30 == 0, False, False)
        s.served(0.5 / 30, 1 / 30)
    assert s.behind_s == pytest.approx(0.0, abs=1e-9)
    s.next_packet(100.0 + 300 / 30 + 1.5, 300 / 30, True, False, False)  # 1.5 s late
    assert s.behind_s == pytest.approx(1.5)
    s.reset(1 / 30)
    s.served(4.0, 1.0)  # three seconds' work more than the media it moved on
    assert s.behind_s == pytest.approx(3.0)


def test_the_lag_the_backlog_explains_is_not_shed_twice() -> None:
    """The lag from the stream's timing includes the decoder's own backlog: with it taken off,
    a small backlog alone does not hold non-reference skipping on for CALM_S."""
    s = DecodeShedder()
    s.served(0.4, 0.0)
    assert s.update(0.0, 0.45, False) == "NONREF"  # the backlog's own level
    s.served(0.0, 1.0)
    assert s.update(0.1, 0.0, False) == "DEFAULT"  # gone: at once, no calm period


def test_a_decoder_far_short_decodes_what_it_can() -> None:
    s = DecodeShedder()
    lags = _decode(s, 60.0, 4 * FRAME_S)  # it can do a quarter of real time
    assert max(lags) < BACKLOG_FAR_S + 5 * FRAME_S
    assert 0.15 * 1800 <= len(lags) <= 0.26 * 1800, len(lags)


@pytest.mark.parametrize(("load", "sheds"), [(0.3, False), (0.9, True)])
def test_a_pause_of_the_whole_process_sheds_only_where_it_would_not_drain(
    load: float, sheds: bool
) -> None:
    """1.2 s without the CPU (a VM's steal, swap): a camera at 30% load works it off in half
    a second and loses nothing; one at 90% would take 12 s, and skips to a keyframe."""
    s = DecodeShedder()
    lags = _decode(s, 20.0, load * FRAME_S, pause_at=10.0)
    assert (len(lags) < 600) == sheds, len(lags)
    assert max(lags) < 1.5


def test_a_stream_that_comes_in_bursts_is_shed_by_the_lag_rule() -> None:
    """A camera whose packets come in bursts, 4 s apart: nothing in the timing tells a burst
    from a stall of the process while demuxing, so the lag rule sheds. (A stream that comes a
    segment at a time, live HLS, is read ahead and paced before the shedder sees it:
    streamer/sources/readahead.py.)"""
    s = DecodeShedder()
    levels: set[str] = set()
    _decode(s, 30.0, 0.3 * FRAME_S, arrives=lambda ts: (ts // 4.0 + 1) * 4.0, levels=levels)
    assert "NONKEY" in levels


def _once(at: int, stall_s: float) -> Callable[[int], float]:
    return lambda i: stall_s if i == at else 0.0


@pytest.mark.parametrize(
    "stall",
    [
        None,
        _once(300, 1.0),  # one 1-s stall at 10 s
        _once(300, 3.0),
        lambda i: 0.3 if i % 60 == 0 else 0.0,  # 0.3 s every 2 s
    ],
)
@pytest.mark.parametrize("load", [0.3, 0.5])
def test_lag_that_grows_packet_by_packet_is_still_shed_whatever_the_load(
    load: float, stall: Callable[[int], float] | None
) -> None:
    """Time the loop does not count as work (waits for the interpreter lock or the CPU while
    demuxing) shows in neither the backlog nor the load, only in a lag that grows packet by
    packet. Here the decoder is 30% short in truth: the lag rule still sheds for it, though
    the measured load would drain any lag (a credit for every lag the load could drain shed
    nothing: 36 s behind after 120 s). (The lag window bounds such a deficit only loosely.)"""
    s = DecodeShedder()
    lags = _decode(
        s,
        120.0,
        load * FRAME_S,
        uncounted_s=(1.3 - load) * FRAME_S,
        stall=stall,
    )
    unshed = 0.3 * 120 + (0.0 if stall is None else sum(map(stall, range(3600))))
    assert len(lags) < 0.9 * 3600, len(lags)
    assert max(lags[-300:]) < 0.8 * unshed, (max(lags[-300:]), unshed)


def test_keyframes_only_is_left_at_a_keyframe_only() -> None:
    s = DecodeShedder()
    s.served(10 * FRAME_S, FRAME_S)  # load 10: it cannot drain
    s.served(BACKLOG_FAR_S, 0.0)
    assert s.update(0.0, 0.0, False, False) == "NONKEY"
    s.served(0.0, 5.0)  # the skipped packets took the backlog off
    assert s.backlog_s == 0.0
    assert s.update(0.1, 0.0, False, False) == "NONKEY"  # its references were skipped
    assert s.update(0.2, 0.0, False, True) == "DEFAULT"  # a keyframe: decode all from here


def test_packet_times() -> None:
    t = PacketTimes(FRAME_S)
    assert t.add(10.0, True) == 0.0 and t.to_keyframe_s is None  # the first: a reference
    assert t.add(10.1, False) == pytest.approx(0.1)
    assert t.add(10.05, False) == 0.0  # a B-frame: behind the newest, moves nothing on
    assert t.add(11.0, True) == pytest.approx(0.9) and t.to_keyframe_s == pytest.approx(1.0)
    assert t.add(11.25, False) == pytest.approx(0.25)
    assert t.to_keyframe_s == pytest.approx(0.75)
    assert t.add(3600.0, False) == pytest.approx(3588.75)  # ahead: forgives, never charges
    assert t.add(5.0, True) == 0.0  # an hour back: a new reference, and no keyframe interval
    assert t.to_keyframe_s is None
    assert t.add(None, False) == FRAME_S and PacketTimes(None).add(None, False) is None
    assert t.add(float("nan"), False) == FRAME_S


def test_packet_times_expect_keyframes_within_the_longest_recent_gap() -> None:
    t = PacketTimes(FRAME_S)
    for key in (0.0, 1.0, 9.0, 10.0):  # gaps of 1, 8 and 1 s
        t.add(key, True)
    t.add(11.0, False)
    assert t.to_keyframe_s == pytest.approx(7.0)  # within 8 s of the last keyframe
    t.add(17.5, False)
    assert t.to_keyframe_s == pytest.approx(0.5)
    t.add(18.5, False)
    assert t.to_keyframe_s is None  # overdue: not known


def test_packet_times_a_clock_that_stands_still_counts_frames() -> None:
    t = PacketTimes(FRAME_S)
    steps = [t.add(5.0, i == 0) for i in range(30)]  # the same timestamp on every packet
    stuck = PacketTimes.STUCK_PACKETS
    assert steps == [0.0] * stuck + [FRAME_S] * (30 - stuck)
    assert t.add(5.1, False) == pytest.approx(0.1)  # moving again


def test_a_clock_that_goes_back_covers_no_media() -> None:
    s = DecodeShedder()
    assert s.served(0.01, -3600.0) == pytest.approx(0.01)  # not an hour of credit...
    s.served(0.01, 3600.0)  # ... while a jump ahead forgives what is owed (never below zero)
    assert s.backlog_s == 0.0


def test_a_new_session_owes_nothing() -> None:
    s = DecodeShedder()
    s.served(10 * FRAME_S, FRAME_S)
    s.served(5.0, 0.0)
    assert s.update(0.0, 0.0, False) == "NONKEY"
    s.reset()
    assert s.backlog_s == 0.0 and s.level == "DEFAULT" and s.load is None
    assert s.update(0.1, 0.0, False) == "DEFAULT"


def test_skipped_frames_are_counted_when_they_come_out_late() -> None:
    """A decoder that holds two frames back (B-frames): keyframes only for five packets; the
    gap shows two frames later, after frames that were already in the decoder."""
    c = SkipCount()
    for _ in range(2):
        c.packet(False, False)  # held back
    for _ in range(10):
        c.packet(True, False)
        assert c.frame(0, False) == 0
    assert c.held == 2
    for _ in range(5):
        c.packet(False, True)  # skipped
    c.packet(True, True)  # the keyframe: out comes a frame held from before
    assert c.frame(0, True) == 0
    c.packet(True, False)
    assert c.frame(0, False) == 0  # the other one held
    c.packet(True, False)
    assert c.frame(5, False) == 5  # the keyframe, five frames after it
    assert c.pool == 0


def test_gaps_count_nothing_while_nothing_is_skipped() -> None:
    """A clock that jumps, frames lost on the way, two packets a frame (fields): never counted
    as skipped while the decoder skipped nothing, nor at the end."""
    c = SkipCount()
    for _ in range(100):
        c.packet(False, False)  # a field: no frame yet
        c.packet(True, False)
        assert c.frame(0, False) == 0
    c.packet(True, False)
    assert c.frame(3600 * 30, False) == 0
    assert c.end(flushed=True) == 0 and c.counted == 0


def test_a_session_that_starts_mid_group_while_skipping_counts_only_what_it_skipped() -> None:
    c = SkipCount()
    for _ in range(20):
        c.packet(False, True)  # before the first keyframe: no frame can come of these
    c.packet(True, True)
    assert c.frame(0, True) == 0
    for _ in range(3):
        c.packet(False, True)  # skipped
    c.packet(True, True)
    assert c.frame(3, True) == 3
    c.packet(True, True)
    assert c.frame(40, True) == 0  # a clock jump: the pool is spent
    assert c.end(flushed=True) == 0


def test_frames_skipped_after_the_last_frame_are_counted_at_the_end() -> None:
    c = SkipCount()
    c.packet(True, False)
    c.frame(0, False)
    for _ in range(7):
        c.packet(False, True)
    assert c.end(flushed=True) == 7
    c = SkipCount()
    c.packet(False, False)  # held back
    c.packet(True, False)
    c.frame(0, False)
    for _ in range(7):
        c.packet(False, True)
    # The session broke off: of the 8 packets that gave nothing, the decoder still holds one.
    assert c.end(flushed=False) == 7


def test_a_camera_clock_that_stands_still_is_neither_lag_nor_backlog() -> None:
    """Every packet stamped with the same time (the lag is read from the clock the packets move
    on): after STUCK_PACKETS, a frame a packet; the camera at
    30% load decodes everything (before: the lag grew with the wall clock, keyframes only for
    the whole session: 5% of the frames)."""
    s = DecodeShedder()
    s.reset(FRAME_S)
    levels = []
    for i in range(900):
        level, step = s.next_packet(i * FRAME_S, 5.0, i % GOP == 0, False, False)
        assert step is not None
        levels.append(level)
        s.served(0.3 * FRAME_S, step)
    # (the first 20 packets read as lag, forgotten with the lag's window)
    assert levels.count("NONKEY") == 0 and levels[-500:] == ["DEFAULT"] * 500


def test_a_sessions_shedding_sets_the_decoder_and_gives_up_for_the_session() -> None:
    """SessionShedding sets FFmpeg's skip level the shedder asks for, on the decoder and in the
    stats; after `give_up` it decodes everything whatever the shedder asks (while still saying
    what it asks), and without a shedder it never touches the decoder."""
    from types import SimpleNamespace

    from streamer.sources.base import SourceStats
    from streamer.sources.session_shedding import SessionShedding
    from tests.live import ScriptedShedder

    asked: list[SkipLevel] = ["NONREF", "NONKEY", "NONREF"]

    class Asked(ScriptedShedder):
        def script(self) -> SkipLevel:
            return asked[0]

    ctx, stats = SimpleNamespace(skip_frame="DEFAULT"), SourceStats()
    shedding = SessionShedding(Asked(), ctx, stats, "cam", 1 / 30)
    assert shedding.next_packet(0.0, 0.0, True, False) == "NONREF"
    assert (ctx.skip_frame, stats.skip_level, shedding.level) == ("NONREF",) * 3
    assert shedding.skipping
    asked[0] = "NONKEY"
    shedding.next_packet(0.1, 0.1, True, False)
    assert ctx.skip_frame == "NONKEY"
    shedding.give_up()
    assert (ctx.skip_frame, stats.skip_level) == ("DEFAULT",) * 2 and not shedding.skipping
    assert shedding.next_packet(0.2, 0.2, True, False) == "NONKEY"  # asked, not set
    assert ctx.skip_frame == "DEFAULT"

    # Without a shedder the decoder is never touched (whatever it was set to), the session's
    # stat says DEFAULT, and nothing is counted.
    untouched, lossless_stats = SimpleNamespace(skip_frame="NONKEY"), SourceStats()
    lossless_stats.skip_level = "NONKEY"
    lossless = SessionShedding(None, untouched, lossless_stats, "file", 1 / 30)
    assert lossless_stats.skip_level == "DEFAULT"
    assert lossless.next_packet(0.0, 0.0, True, True) == "DEFAULT"
    lossless.decoded(100, False)
    lossless.packet_done(False)
    assert untouched.skip_frame == "NONKEY" and not lossless.skipping
    assert lossless.behind_s is None and lossless.catch_up_speed("DEFAULT") == 1.0

    # Time to spare to catch up: once the decoder's cost per second of the stream's media is
    # known (about a second of it, decoding everything), and low, and only while the shedder
    # asks for nothing to be skipped.
    idle = SessionShedding(DecodeShedder(), SimpleNamespace(skip_frame="DEFAULT"), stats, "c", 0.1)
    assert idle.catch_up_speed("DEFAULT") == 1.0  # cost not known yet
    for i in range(40):  # 4 s of media at 10 fps, next to no work on each packet
        idle.next_packet(i / 10, i / 10, i % 10 == 0, False)
        idle.packet_done(True, 0.1)
    assert idle.catch_up_speed("DEFAULT") > CATCHUP_MAX_SPEED  # (the queue caps it)
    assert idle.catch_up_speed("NONREF") == 1.0
    # A decoder busy 0.05 s on each 0.1 s of media could play it 1.6 times as fast at 80% busy,
    # whatever pace it was given: here 2x (the schedule's steps half the media's). Its
    # load on that schedule (busy all the time) is not what it costs.
    half = SessionShedding(DecodeShedder(), SimpleNamespace(skip_frame="DEFAULT"), stats, "c", 0.1)
    for i in range(60):
        half.next_packet(i / 20, i / 20, i % 10 == 0, False)
        half.worked(0.05)
        half.packet_done(True, 0.1)
    assert half.catch_up_speed("DEFAULT") == pytest.approx(CATCHUP_MAX_LOAD / 0.5, rel=0.05)
    # Packets decoded while skipping cost less: the cost is what decoding everything costs, so
    # it is measured afresh once the decoder decodes everything again (about a second of
    # media), not taken from the cheaper packets nor from before them.
    for i in range(60, 120):  # (frames turned away downstream: NONREF)
        assert half.next_packet(i / 20, i / 20, i % 10 == 0, True) == "NONREF"
        half.worked(0.0)
        half.packet_done(True, 0.1)
    assert half.catch_up_speed("DEFAULT") == 1.0
    levels = []
    for i in range(120, 200):  # calm again: back to DEFAULT after CALM_S, then measured
        levels.append(half.next_packet(i / 20, i / 20, i % 10 == 0, False))
        half.worked(0.05)
        half.packet_done(True, 0.1)
    assert levels[0] == "NONREF" and levels[-1] == "DEFAULT"
    assert half.catch_up_speed("DEFAULT") == pytest.approx(CATCHUP_MAX_LOAD / 0.5, rel=0.05)
    # A decoder that costs more than it may be busy is not sped up.
    heavy = SessionShedding(DecodeShedder(), SimpleNamespace(skip_frame="DEFAULT"), stats, "c", 0.1)
    for i in range(60):
        heavy.next_packet(i / 10, i / 10, i % 10 == 0, False)
        heavy.worked(0.09)
        heavy.packet_done(True, 0.1)
    assert heavy.catch_up_speed("DEFAULT") == 1.0
    assert idle.behind_s is not None and idle.behind_s < 0.1
