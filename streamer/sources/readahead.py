"""A live stream that comes a segment at a time (HLS), read ahead and released at its own pace.

FFmpeg reads a live HLS playlist a segment at a time, each at once, seconds after the one
before. Decoded as they come, a segment's frames reach the pipeline in one burst (most of it
turned away by the tap's rate or dropped in the hand-off), then nothing for seconds. Here a
thread of its own reads the packets as they come into a bounded queue (compressed video: about
a megabyte a segment at 1080p), so the playlist is always read at its live edge, and the decode
thread takes each packet at the stream's pace: when the packet before was due plus the media
time between the two, and never before the packet arrived.

- **Input late** (the queue ran dry): the packet is due as it arrives, and the schedule goes on
  from there. Late input is not the decoder's lag: nothing is shed for it, and the stream plays
  that much later, as a player rebuffers.
- **Later than it needs**: when the media in hand has not come under a second for 30 s (late
  input played late; a start further back than the last segment; timestamps that run faster
  than the segments come, a camera's clock fast against the host), the stream is played
  faster until it has, while its decoder has time to spare: 1.1 times as fast, and 0.1 faster
  for every second of media over that second held all along, up to 1.5 times as fast and to
  what keeps the decoder about 80% busy at what decoding everything costs it (its frames are
  handed on that much faster meanwhile). A clock 20% fast thus plays about 3 s behind the
  segments, not a minute. (How late FFmpeg finds each new segment, by when it polls the
  playlist, is not media in hand: that stays.)
- **The decoder slow**: packets wait in the queue past their time; how late the decoder takes
  them (now against when they were due) is its lag, which the decoder's shedder sees.
- **The queue full** (its bytes, the media in hand, or all read-aheads' bytes together: a
  decoder far behind, or timestamps that run faster than the segments come): the oldest packets
  are dropped, up to the next keyframe (the frames after them reference them), and counted as
  not decoded. A finished playlist (a recording: its duration is known) is not dropped from:
  the reader waits for room instead.

A step between two packets' timestamps that goes back by more than `CLOCK_BACK_S` (a new clock),
or forward by more than `MAX_STEP_S`, is not waited for: the packet after it is due a frame
interval after the one before. A packet without a timestamp is due with the one before. Gaps in
the timestamps are counted as frames missing from the input (`Steps`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MAX_STEP_S = 5.0  # a timestamp step further forward than this is not waited for
CLOCK_BACK_S = 0.5  # a step further back than this is a new clock
MAX_GAP_S = 30.0  # a gap up to this is frames missing (3 segments of 10 s); longer: a new clock
MISSING_AFTER = 2.5  # a step over this many frame intervals is a gap (a halved frame rate is not)
RECENT_STEPS = 31  # the frame interval is the median of this many recent steps
OFFSET_WINDOW_S = 5.0  # a live stream's gap is judged against its packets' arrival in this
RECENT_OFFSETS = 512  # ... and at most this many of them (the oldest go first)
LIVE_JITTER_S = 0.2  # ... and counts only when the wall clock confirms more than this
# The queue's bounds. A stream starts at the playlist's last segment, so a queue holds about one
# segment (two while the next comes in); FFmpeg's default of three back (`live_start_index` in a
# source's `av_options`) holds three: 18 s at Apple's 6-s segments, 30 s at 10 s.
MAX_AHEAD_S = 60.0  # media in hand (past it, timestamps run faster than the segments come)
MAX_BYTES = 64 * 1024 * 1024  # one stream's queue (1080p H.264 at 8 Mbit/s: 60 s)
MAX_TOTAL_BYTES = 512 * 1024 * 1024  # every read-ahead in the process together (see ByteBudget)
# How long one read may wait for FFmpeg: it waits for the next segment inside one read, up to a
# segment's length and the playlist's reload. (A stall shows first as the decode thread's
# queue running dry: its watchdog, `stall_timeout_s`, ends the session.)
READ_TIMEOUT_S = 30.0
# A stream whose media in hand has not come under CATCHUP_SLACK_S for CATCHUP_WINDOW_S (at least
# a segment's cycle) plays later than it needs to: it is played faster (CATCHUP_SPEED, more the
# more media it holds, no faster than the decoder allows) until it has.
CATCHUP_WINDOW_S = 30.0
CATCHUP_SLACK_S = 1.0
CATCHUP_SPEED = 1.1
CATCHUP_GAIN = 0.1  # ... faster by this for each second of media in hand over CATCHUP_SLACK_S
# ... at most (a clock faster than this fills the queue; all of a box's cameras catching up at
# once decode this much more, and hand on this many times their frames)
CATCHUP_MAX_SPEED = 1.5
CATCHUP_MAX_LOAD = 0.8  # ... and only as fast as keeps the decoder about this busy
CLOSE_WAIT_S = 1.0  # how long a session's end waits for its reader (then it closes by itself)
POLL_S = 0.1  # an idle decode thread looks at its stop flag and watchdog this often


def seconds(packet: Any, dts_only: bool = False) -> float | None:
    """A packet's decode timestamp (its presentation one if it has none, unless `dts_only`),
    in seconds."""
    ts = packet.dts if packet.dts is not None or dts_only else packet.pts
    if ts is None or packet.time_base is None:
        return None
    s = float(ts * packet.time_base)
    return s if math.isfinite(s) else None


@dataclass
class Item:
    packet: Any
    arrived: float  # monotonic
    step_s: float  # media time since the packet read before it (0: discontinuity or unknown)
    nbytes: int  # its data (0: a packet that flushes the decoder, never dropped)
    keyframe: bool


class Steps:
    """The media time each packet moves the stream on by, as packets are read, and the frames
    missing in the gaps between them. An HLS stream's read-ahead keeps one per camera: it spans
    sessions, so what a reconnect missed is counted too. A live stream read as it comes (RTSP)
    has one per session and gives each packet's arrival time.

    A gap is a step of over `MISSING_AFTER` frame intervals between two steps of about one: a
    frame rate that falls for a while (a camera that slows down when nothing moves, for a
    smart codec or in low light) makes several long steps in a row, and is no gap. With arrival
    times, only the part of a gap that the wall clock also spent counts, and only when that
    part is longer than `LIVE_JITTER_S` and an interval. The part is the step, less how much
    earlier against its timestamp the packet after the gap arrived than the median packet of
    the `OFFSET_WINDOW_S` before the packet before it did (a packet that came later adds
    nothing). So a camera that sent nothing for that long counts. A camera's clock set ahead
    (by NTP), its packets on time, counts nothing: a packet over `LIVE_JITTER_S` early is such
    a clock, its step no gap, and the window starts again on the new clock. An encoder's delay
    that puts the pause on the wire some packets before the gap in the timestamps still counts.
    What cannot be told apart from a frame rate that changed (one long step between short ones)
    is counted. The count is never more than the gaps in the timestamps, and for a live stream
    gaps under `LIVE_JITTER_S` are not counted at all."""

    def __init__(self) -> None:
        self.frame_s: float | None = None  # the stream's nominal interval (until steps are seen)
        self._newest: float | None = None
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self._gap: tuple[float, float] | None = None  # a gap (its step, the interval then)...
        self._steady = False  # the last step was about one interval (not a gap)
        # (arrival, arrival - timestamp) of the newest packets, oldest first.
        self._offsets: deque[tuple[float, float]] = deque(maxlen=RECENT_OFFSETS)
        self.missing = 0  # frames missing from the input (gaps in its timestamps)

    def _early_by(self, ts_s: float, arrived: float | None) -> float | None:
        """How much earlier against its timestamp a packet arrived than the window's median
        packet (negative: later; None if not told or the window is empty); the packet is
        added."""
        if arrived is None:
            return None
        early = None
        if self._offsets:
            ordered = sorted(o for _, o in self._offsets)
            early = ordered[len(ordered) // 2] - (arrived - ts_s)
        self._note_arrival(ts_s, arrived)
        return early

    def interval_s(self) -> float | None:
        """The frame interval: the median of the recent steps (a frame rate that changes is
        followed), or the nominal one until there are a few."""
        if len(self._recent) < 8:
            return self.frame_s
        return sorted(self._recent)[len(self._recent) // 2]

    def step(self, ts_s: float | None, arrived: float | None = None) -> float:
        """How far a packet with timestamp `ts_s` (None: none), read at monotonic time
        `arrived` (None: not told), moves the stream on (a step not to wait for gives one
        frame)."""
        if ts_s is None:
            return 0.0
        if self._newest is None:
            self._newest = ts_s
            self._note_arrival(ts_s, arrived)
            return 0.0
        step = ts_s - self._newest
        if step <= 0.0:
            if step < -CLOCK_BACK_S:  # a new clock
                self._newest, self._gap, self._steady = ts_s, None, False
                self._offsets.clear()
                self._note_arrival(ts_s, arrived)
                return self.interval_s() or 0.0
            return 0.0  # (presentation times go back a little with B-frames: the newest counts)
        self._newest = ts_s
        interval = self.interval_s()
        long_step = interval is not None and step > MISSING_AFTER * interval
        early = None
        if long_step:  # (the window's median is needed only then)
            early = self._early_by(ts_s, arrived)
        else:
            self._note_arrival(ts_s, arrived)
        if self._gap is not None:
            # ... counted once the step after it is back to the interval before.
            gap, before = self._gap
            self._gap = None
            if step <= MISSING_AFTER * before:
                self.missing += round(gap / before) - 1
        ahead = early is not None and early > LIVE_JITTER_S
        if ahead:
            # The clock moved ahead of the wall clock: the packets before are on the old one,
            # and the step is not a gap (what is left of it is the reader's own lateness).
            self._offsets.clear()
            self._note_arrival(ts_s, arrived)
        if long_step and self._steady and not ahead and step <= MAX_GAP_S:
            assert interval is not None
            # (A packet that came late adds nothing: the gap is never more than its step.)
            spent = step if early is None else step - max(0.0, early)
            allowance = 0.0 if arrived is None else LIVE_JITTER_S
            if spent > MISSING_AFTER * interval and spent - interval > allowance:
                self._gap = (spent, interval)
        self._steady = not long_step
        if step > MAX_STEP_S:
            return interval or 0.0
        self._recent.append(step)
        return step

    def _note_arrival(self, ts_s: float, arrived: float | None) -> None:
        """Add a packet to the window, and let go of those older than `OFFSET_WINDOW_S` (all
        but the newest: a pause longer than the window is still judged against it)."""
        if arrived is None:
            return
        offsets = self._offsets
        while len(offsets) > 1 and arrived - offsets[0][0] > OFFSET_WINDOW_S:
            offsets.popleft()
        offsets.append((arrived, arrived - ts_s))


class ByteBudget:
    """The bytes every read-ahead queue holds together, and how many queues there are: past
    the total, a queue over its fair share drops (down to a keyframe) at its next packet, and
    one under its share goes on. So the total passes its bound only while the queues over
    their share wait for their next packet (up to a segment), by no more than what they hold
    over their share; each queue's own bound holds always."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.queues = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int, queues: int = 0) -> None:
        with self._lock:
            self.nbytes += nbytes
            self.queues += queues

    def over(self, own_bytes: int) -> bool:
        """Whether a queue holding `own_bytes` must drop."""
        with self._lock:
            return self.nbytes > self.max_bytes and own_bytes > self.max_bytes / max(1, self.queues)


#: The process's budget for all read-ahead queues.
BUDGET = ByteBudget(MAX_TOTAL_BYTES)


class Queue:
    """The packets read and not yet taken, bounded; when each is due. No threads, no clock
    reads: the reader thread `push`es, the decode thread `pop`s, both under the caller's lock
    (`max_speed` is the decode thread's alone). `close` when done: it gives its bytes back to
    the budget."""

    def __init__(
        self,
        finished: bool,
        max_bytes: int = MAX_BYTES,
        max_ahead_s: float = MAX_AHEAD_S,
        budget: ByteBudget = BUDGET,
    ) -> None:
        self.finished = finished  # a recording: wait for room, never drop
        self.max_bytes, self.max_ahead_s = max_bytes, max_ahead_s
        self.budget = budget
        budget.add(0, queues=+1)
        self.items: deque[Item] = deque()
        self.nbytes = 0
        self.ahead_s = 0.0  # the media the queued packets hold (the sum of their steps)
        self.dropped = 0  # frames dropped unread, not yet taken into the source's count
        self._need_key = False  # dropped: nothing until a keyframe
        self._due: float | None = None  # when the last packet taken was due
        self._lows: deque[tuple[float, float]] = deque()  # (due, media in hand), see _watch
        self._watched_since: float | None = None
        # Set by the decode thread: how much faster than the stream's pace it can decode with
        # time to spare (1: none; a decoder that sheds would only shed more).
        self.max_speed = 1.0
        self._closed = False

    def full(self) -> bool:
        return (
            self.nbytes > self.max_bytes
            or self.ahead_s > self.max_ahead_s
            or self.budget.over(self.nbytes)
        )

    def push(self, item: Item) -> None:
        """Queue a packet; if that overfills the queue (and it may drop), drop from the oldest
        up to a keyframe. A packet with no data (the end of the stream, which flushes the
        decoder) is always queued."""
        if self._need_key and item.nbytes and not item.keyframe:
            self.dropped += 1
            return
        self._need_key = self._need_key and not item.nbytes
        self.items.append(item)
        self._account(item, +1)
        if self.finished:
            return  # (the reader waits for room before it reads the next)
        while self.items and self.items[0].nbytes and self.full():
            self._drop_oldest()
            while self.items and self.items[0].nbytes and not self.items[0].keyframe:
                self._drop_oldest()
            self._need_key = not self.items

    def pop(self) -> tuple[Item, float] | None:
        """The oldest packet and when it is due (monotonic), or None if there is none."""
        if not self.items:
            return None
        item = self._popleft()
        due = item.arrived
        if self._due is not None:
            due = max(due, self._due + item.step_s / self._speed())
        self._due = due
        self._watch(due)
        return item, due

    def _watch(self, now: float) -> None:
        """Keep the smallest media in hand of the last `CATCHUP_WINDOW_S` (a queue of rising
        minima: the window's is the first)."""
        lows, ahead = self._lows, self.ahead_s
        while lows and lows[-1][1] >= ahead:
            lows.pop()
        lows.append((now, ahead))
        while now - lows[0][0] > CATCHUP_WINDOW_S:
            lows.popleft()
        if self._watched_since is None:
            self._watched_since = now

    def _speed(self) -> float:
        """How fast to play: faster while the media in hand has not come under
        `CATCHUP_SLACK_S` for a whole window (the stream plays later than it needs to: late
        input played late, a start further back than the last segment, or timestamps that run
        fast), the more so the more it held all along, and as far as the decoder has time to
        spare. Not a recording: its reader keeps it full."""
        since, due = self._watched_since, self._due
        if self.max_speed <= 1.0 or self.finished or since is None or due is None:
            return 1.0
        low = self._lows[0][1]
        if due - since < CATCHUP_WINDOW_S or low <= CATCHUP_SLACK_S:
            return 1.0
        speed = max(CATCHUP_SPEED, 1.0 + CATCHUP_GAIN * (low - CATCHUP_SLACK_S))
        return min(speed, CATCHUP_MAX_SPEED, self.max_speed)

    def close(self) -> int:
        """Let go of every packet, and of the budget (the session ends); returns how many frames
        it let go of."""
        frames = 0
        while self.items:
            frames += bool(self._popleft().nbytes)
        if not self._closed:
            self._closed = True
            self.budget.add(0, queues=-1)
        return frames

    def _drop_oldest(self) -> None:
        """The oldest packet is not decoded: its frame is counted. (The schedule does not move
        on by its media: what is dropped is skipped, not waited for.)"""
        self.dropped += 1
        self._popleft()

    def _popleft(self) -> Item:
        item = self.items.popleft()
        self._account(item, -1)
        if not self.items:
            self.ahead_s = 0.0  # (no rounding left over from the running sum)
        return item

    def _account(self, item: Item, sign: int) -> None:
        self.nbytes += sign * item.nbytes
        self.ahead_s += sign * item.step_s
        self.budget.add(sign * item.nbytes)


class ReadAhead:
    """One session's reader thread and its queue. `packets` gives the decode thread each packet
    when it is due; `close` stops the reader."""

    def __init__(
        self,
        container: Any,
        video_index: int,
        steps: Steps,
        name: str,
        on_packet: Callable[[], None] | None = None,
    ) -> None:
        self._container = container
        self._on_packet = on_packet  # told of each video packet read, and when reading goes on
        self._video = video_index
        self._steps = steps  # the camera's (read here, under the lock, while this session runs)
        # A finished playlist (a recording) has a duration; a live one has none.
        self.queue = Queue(container.duration is not None, MAX_BYTES, MAX_AHEAD_S)
        self._cond = threading.Condition()
        self._closing = False
        self._ended = False  # the reader is out of the container for good
        self._error: Exception | None = None
        self._close_container = False  # `close` gave up waiting: the reader closes it
        self.first_due: float | None = None
        self.due = 0.0  # when the last packet given out was due (monotonic)
        self.step_s = 0.0  # ... and the stream's media from the one before to it
        # Counts moved out of the queue and the steps under the lock, for the decode thread to
        # take without it (`take_counts`).
        self._dropped = self._missing = 0
        self.discarded = 0  # frames still queued when the session ended (`close`)
        self._thread = threading.Thread(target=self._read, name=name, daemon=True)

    def start(self) -> ReadAhead:
        try:
            self._thread.start()
        except BaseException:
            self.queue.close()
            raise
        return self

    def _read(self) -> None:
        try:
            for packet in self._container.demux():
                if self._closing:
                    return
                if packet.stream_index != self._video:
                    continue
                arrived = time.monotonic()
                with self._cond:
                    while self.queue.finished and self.queue.full() and not self._closing:
                        self._cond.wait(POLL_S)  # a recording: wait for room
                        if self._on_packet is not None:
                            self._on_packet()  # (not input that is late)
                    if self._closing:
                        return  # (the camera's Steps belong to the next session now)
                    step = self._steps.step(seconds(packet))
                    key = bool(packet.is_keyframe)
                    self.queue.push(Item(packet, arrived, step, packet.size, key))
                    self._cond.notify_all()
                if self._on_packet is not None:
                    self._on_packet()  # (after a wait for room: input goes on from now)
        except Exception as e:  # the session's error: the decode thread raises it
            self._error = e
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
                close = self._close_container
            if close:
                self._container.close()

    def packets(self, stop: threading.Event) -> Iterator[Any | None]:
        """Each packet when it is due (waiting for it), and None when none has come for
        `POLL_S` (time to look at the watchdog). Ends when the stream has ended and every packet
        read was given out; raises what the reader raised, after them."""
        while not stop.is_set():
            with self._cond:
                got = self.queue.pop()
                if got is None and not self._ended:
                    self._cond.wait(POLL_S)
                    got = self.queue.pop()
                if got is None and self._ended:
                    if self._error is not None:
                        raise self._error
                    return
                if got is not None:
                    self._cond.notify_all()  # room for a reader waiting for it
                self._collect()
            if got is None:
                yield None
                continue
            item, due = got
            if self.first_due is None:
                self.first_due = due
            delay = due - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            self.due, self.step_s = due, item.step_s
            yield item.packet

    def _collect(self) -> None:
        """Move the queue's and the steps' counts to this reader's (under the lock)."""
        self._dropped += self.queue.dropped
        self._missing += self._steps.missing
        self.queue.dropped = self._steps.missing = 0

    def take_counts(self) -> tuple[int, int]:
        """(frames dropped unread, frames missing from the input) since the last call, as of
        the last packet given out or `close` (decode thread only)."""
        counts = self._dropped, self._missing
        self._dropped = self._missing = 0
        return counts

    def media_s(self) -> float:
        """The last packet given out: when it was due, in seconds from the first one (the
        stream's time as the decode thread keeps to it)."""
        return self.due - (self.first_due or self.due)

    def close(self, timeout_s: float) -> bool:
        """Stop reading and let go of the queued packets. True once the reader is out of the
        container (which may then be closed); False if it is still in a read after `timeout_s`:
        it closes the container itself when the read returns."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        with self._cond:
            self._collect()
            self.discarded = self.queue.close()
            if self._ended or self._thread.ident is None:
                return True
            self._close_container = True
        log.info(
            "%s: still in a read; it closes the stream when the read returns", self._thread.name
        )
        return False
