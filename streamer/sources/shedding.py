"""Load shedding inside a decoder: a camera that falls behind skips decoding what nothing needs
before any decoded frame has to be dropped.

A plain state machine (no I/O, no clock reads: time is passed in). The decode loop tells it, per
packet, how far the stream runs behind the wall clock, how long the loop worked on the packet
and whether the pipeline is turning this camera's frames away; it answers FFmpeg's `skip_frame`
level for the next packets:

- ``DEFAULT``: decode everything (the camera keeps up);
- ``NONREF``: skip frames no other frame references (B-frames in most encodings): they cost
  decoding time and nothing is lost for the frames after them;
- ``NONKEY``: decode keyframes only, to catch up at all. It is left only at a keyframe: the
  frames after a skipped one reference it.

Two measures of "behind", because each sees what the other cannot:

- the **lag**: the stream's offset to the wall clock against its smallest offset of the last
  `LAG_WINDOW_S`. It sees a stream that arrives late or in bursts, but a decoder short by a
  fraction d of real time reads at most ``LAG_WINDOW_S * d`` on it, for ever, while it falls
  further behind without end. (A stream delivered a segment at a time, live HLS, would read
  as seconds behind at every segment: it is read ahead and paced first, and its lag measured
  against that schedule: streamer/sources/readahead.py);
- the **backlog**: what the decoder itself has fallen behind, from its own work and nothing
  else. Each packet adds the time the loop spent on it (demuxing it on the CPU, decoding it,
  handing its frames on; not waiting for input or pacing) and takes off the media time it
  moves the stream on, never going below zero (the waiting time of a queue, Lindley's
  recursion). A decoder that keeps up stays near zero whatever the network or the camera's
  clock do; one short of real time grows it, and sheds:
  - the tail of a group of pictures, when the backlog is as long as what is left of it (the
    last frames of a group are the cheapest to lose: nothing after the next keyframe needs
    them), so a small deficit costs about its own share of frames;
  - at once, down to the next keyframe, when the backlog passes `BACKLOG_FAR_S`;
  but only when the decoder would not work the backlog off on its own within `DRAIN_S` (its
  load, measured while not on keyframes only and per second of the stream's own media, says
  how fast it can: a read-ahead that catches up stops at a backlog), so a one-off pause of the
  whole process does not cost a lightly loaded camera a group of pictures.

Levels the lag and the pipeline's demand ask for step back down only after the camera has kept
up for `CALM_S`, so they do not flap; the backlog's own levels have their hysteresis in their
thresholds.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

SkipLevel = Literal["DEFAULT", "NONREF", "NONKEY"]
ORDER: tuple[SkipLevel, ...] = ("DEFAULT", "NONREF", "NONKEY")

BEHIND_S = 0.25  # behind the wall clock by more than this: skip non-reference frames
FAR_BEHIND_S = 2.0  # ... by more than this: keyframes only
CALM_S = 1.0  # caught up (and nothing shed downstream) this long: back one level
LAG_WINDOW_S = 10.0  # the stream's offset to the wall clock is measured against this window
BACKLOG_FAR_S = 1.0  # the decoder's own backlog over this: keyframes only, until under BEHIND_S
DRAIN_S = 2.0  # ... unless its spare time would work the backlog off within this
LOAD_WINDOW_S = 5.0  # the decoder's load is measured over about this much media, decoding all
LOAD_PACKET_S = 0.25  # ... a packet's work counting at most this (longer: the process paused)
LOAD_KNOWN_S = 1.0  # ... known once this much media was measured (until then: cannot drain)
_LOAD_KNOWN_SUM = LOAD_KNOWN_S * (1 - math.exp(-1))  # (~1 s of media, as the decaying sum has it)


def _drain_s(work_s: float, load: float | None) -> float:
    """How long a decoder at `load` takes to work off `work_s` of work on top of the stream's,
    in its spare time (infinite if the load is not known or is full)."""
    if load is None or load >= 1.0:
        return math.inf
    return work_s / (1.0 - load)


def _higher(a: SkipLevel, b: SkipLevel) -> SkipLevel:
    return a if ORDER.index(a) >= ORDER.index(b) else b


class DecodeShedder:
    """Chooses a decoder's skip level from its lag, its backlog and the pipeline's demand."""

    def __init__(self) -> None:
        self._start(None)

    def reset(self, frame_s: float | None = None) -> None:
        """A new session (at `frame_s` a frame, if known): its media clock starts again, and a
        new decoder owes nothing."""
        self._start(frame_s)

    def _start(self, frame_s: float | None) -> None:
        self._times = PacketTimes(frame_s)
        self._clock_s = self._lag_s = 0.0  # the stream's clock as its packets move it; its lag
        self.level: SkipLevel = "DEFAULT"
        self.backlog_s = 0.0
        # Both per second of the stream's own media (a read-ahead played faster shortens the
        # time the decoder is given, not what a second of media costs it): its load while not on
        # keyframes only (how fast it works a backlog off, at the stream's pace: a backlog stops
        # any catch-up), and what decoding everything costs it, measured afresh each time it
        # stops skipping (how fast a read-ahead may catch up).
        self._load = Load()
        self._cost = Load()
        self._paced: SkipLevel = "DEFAULT"  # what the lag and the demand ask for (with CALM_S)
        self._own: SkipLevel = "DEFAULT"  # what the backlog asks for
        self._calm_since: float | None = None
        # (now, wall - media), oldest first, each offset smaller than the ones after it: the
        # window's minimum is the first (a monotonic queue).
        self._offsets: deque[tuple[float, float]] = deque()
        self._last_media_s: float | None = None

    @property
    def load(self) -> float | None:
        """The decoder's busy share of real time while not on keyframes only (None until
        known)."""
        return self._load.share

    def next_packet(
        self, now: float, ts_s: float | None, keyframe: bool, restart: bool, shed_downstream: bool
    ) -> tuple[SkipLevel, float | None]:
        """A packet (with timestamp `ts_s`, a `keyframe` by its flag) is about to be decoded:
        the level to decode it at, and the media it moves the stream on by (for `served`; None:
        not known). `restart`: decoding everything may start again at it (a keyframe, or the
        packet after one that gave a frame on keyframes only, whatever its flag said)."""
        step_s = self._times.add(ts_s, keyframe)
        if step_s is not None:
            self._clock_s += step_s
            self._lag_s = self.lag_s(now, self._clock_s)
        level = self.update(
            now,
            self._lag_s,
            shed_downstream,
            keyframe or restart,
            self._times.to_keyframe_s,
        )
        return level, step_s

    @property
    def behind_s(self) -> float:
        """How far behind the decoder is, as far as it can tell: the larger of the lag (as of the
        last packet with a timestamp) and the backlog."""
        return max(self._lag_s, self.backlog_s)

    def lag_s(self, now: float, media_s: float) -> float:
        """How far behind the stream is: its offset to the wall clock now, against the smallest
        offset seen in the last `LAG_WINDOW_S` (a live camera's clock is its own; only a growing
        offset means the decoder falls behind; a clock that jumps back starts a new reference)."""
        offset = now - media_s
        if self._last_media_s is not None and media_s < self._last_media_s - BEHIND_S:
            self._offsets.clear()  # the camera's clock went back: a new reference, not lag
        self._last_media_s = media_s
        while self._offsets and self._offsets[-1][1] >= offset:
            self._offsets.pop()
        self._offsets.append((now, offset))
        while now - self._offsets[0][0] > LAG_WINDOW_S:
            self._offsets.popleft()
        return offset - self._offsets[0][1]

    @property
    def cost(self) -> float | None:
        """The decoder's work per second of the stream's own media, decoding everything since
        it last skipped (None until about `LOAD_KNOWN_S` of it was measured)."""
        return self._cost.share

    def served(self, busy_s: float, media_s: float, stream_s: float | None = None) -> float:
        """Account one packet: the loop worked `busy_s` on it, and it moves the stream on by
        `media_s` (0 for a timestamp that goes back); `stream_s`: the stream's own media it
        holds, where that differs (a read-ahead played faster). Returns the decoder's backlog."""
        busy_s, media_s = max(0.0, busy_s), max(0.0, media_s)
        self.backlog_s = max(0.0, self.backlog_s + busy_s - media_s)
        own_s = media_s if stream_s is None else stream_s
        if self.level != "NONKEY":  # the load at the level it would drain the backlog at
            # (the schedule's time where it is the longer: input that comes slower is idle time)
            self._load.add(busy_s, max(media_s, own_s))
        if self.level != "DEFAULT":
            self._cost = Load()  # (skipping is cheaper: it tells nothing of the cost)
        else:
            self._cost.add(busy_s, own_s)
        return self.backlog_s

    def update(
        self,
        now: float,
        lag_s: float,
        shed_downstream: bool,
        keyframe: bool = True,
        to_keyframe_s: float | None = None,
    ) -> SkipLevel:
        """The level for the packet about to be decoded (a `keyframe` or not), given the lag
        (seconds behind), whether the pipeline sheds this camera's frames (it cannot serve them
        all), the backlog, and how much media is left to the next keyframe, if known."""
        wanted: SkipLevel = "DEFAULT"
        lag_s -= self.backlog_s  # what the decoder's own work explains is the backlog's to shed
        if lag_s > FAR_BEHIND_S:
            wanted = "NONKEY"
        elif lag_s > BEHIND_S or shed_downstream:
            wanted = "NONREF"
        if ORDER.index(wanted) >= ORDER.index(self._paced):
            self._paced = wanted
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= CALM_S:
            self._paced = ORDER[ORDER.index(self._paced) - 1]
            self._calm_since = None if self._paced == wanted else now
        self._own = self._own_level(to_keyframe_s)
        level = _higher(self._paced, self._own)
        if self.level == "NONKEY" and level != "NONKEY" and not keyframe:
            return self.level  # the next frames reference skipped ones: on to a keyframe
        self.level = level
        return level

    def _own_level(self, to_keyframe_s: float | None) -> SkipLevel:
        backlog = self.backlog_s
        if backlog <= 0.0:
            return "DEFAULT"
        if self._own == "NONKEY" and backlog > BEHIND_S:
            return "NONKEY"
        stuck = _drain_s(backlog, self.load) > DRAIN_S  # not soon
        tail = to_keyframe_s is not None and backlog > BEHIND_S and backlog >= to_keyframe_s
        if stuck and (backlog > BACKLOG_FAR_S or tail):
            return "NONKEY"
        if backlog > BEHIND_S or self._own != "DEFAULT":
            return "NONREF"  # (until the backlog is gone)
        return "DEFAULT"


class Load:
    """A decoder's busy share of a timeline: decaying sums of its work on each packet and of
    the time the packet moves the timeline on, over about `LOAD_WINDOW_S` of it; known once
    about `LOAD_KNOWN_S` was measured. A packet counts at most `LOAD_PACKET_S` of either (a
    clock that jumps ahead is no idle time; a longer piece of work, the process paused)."""

    def __init__(self) -> None:
        self._busy = self._span = 0.0

    def add(self, busy_s: float, span_s: float) -> None:
        span_s = min(max(0.0, span_s), LOAD_PACKET_S)
        keep = math.exp(-span_s / LOAD_WINDOW_S)
        self._busy = self._busy * keep + min(max(0.0, busy_s), LOAD_PACKET_S)
        self._span = self._span * keep + span_s

    @property
    def share(self) -> float | None:
        return None if self._span < _LOAD_KNOWN_SUM else self._busy / self._span


class PacketTimes:
    """A stream's timeline as its packets are read, for the shedder: how far each packet moves
    the stream on, and how much is left to the next keyframe.

    Timestamps come from the camera: B-frames go back a little in presentation order (the
    newest timestamp is what counts), a clock that jumps back by more than `CLOCK_BACK_S` starts
    a new reference, a jump forward moves the stream on (it can only forgive backlog). Without
    timestamps, each packet is one frame at the stream's nominal rate, if it has one.
    """

    CLOCK_BACK_S = 0.5
    STUCK_PACKETS = 20  # packets in a row that move the clock on by nothing: it is broken
    KEY_GAPS = 4  # the next keyframe is expected within the longest of the last few gaps

    def __init__(self, frame_s: float | None) -> None:
        self.frame_s = frame_s
        self.newest_s: float | None = None
        self._still = 0  # packets since the clock last moved on
        self._key_s: float | None = None  # the last keyframe's timestamp
        self._key_gaps: deque[float] = deque(maxlen=self.KEY_GAPS)

    def add(self, ts_s: float | None, keyframe: bool) -> float | None:
        """A packet with timestamp `ts_s` (seconds, or None): the media it moves the stream on
        by (None: not known)."""
        if ts_s is None or not math.isfinite(ts_s):
            return self.frame_s
        step = 0.0
        if self.newest_s is None or ts_s < self.newest_s - self.CLOCK_BACK_S:
            self.newest_s = ts_s  # the first, or the clock went back: a new reference
            self._key_s = None
            self._key_gaps.clear()
        elif ts_s > self.newest_s:
            step, self.newest_s = ts_s - self.newest_s, ts_s
        self._still = 0 if step else self._still + 1
        if keyframe:
            if self._key_s is not None and ts_s > self._key_s:
                self._key_gaps.append(ts_s - self._key_s)
            self._key_s = ts_s
        if self._still > self.STUCK_PACKETS:
            return self.frame_s  # a clock that stands still: one frame a packet
        return step

    @property
    def to_keyframe_s(self) -> float | None:
        """Media left until the next keyframe if it comes within the longest of the last few
        intervals between keyframes; None if not known, or overdue (GOPs vary: a camera's
        "smart" codec, a keyframe at a scene cut)."""
        if not self._key_gaps or self._key_s is None or self.newest_s is None:
            return None
        left = self._key_s + max(self._key_gaps) - self.newest_s
        return left if left >= 0.0 else None


class SkipCount:
    """Counts the frames a decoder skipped on purpose. FFmpeg does not say which packets it
    skipped, so they are counted from the gaps in the timestamps of the frames that come out,
    never more than:

    - the packets whose frames did not come out, beyond what the decoder holds back while it
      decodes everything (`held`: its reordering delay), and
    - the packets decoded while skipping that gave no frame (`pool`), once the session has
      given its first frame (a session that starts mid-GOP has packets no frame can come of).

    So a clock that jumps, frames lost on the way, or packets that are not frames (fields,
    parameter sets) count nothing while nothing is skipped. At the session's end what is still
    in the pool and never came out is counted too.
    """

    def __init__(self) -> None:
        self.sent = self.out = self.counted = self.pool = 0
        self.held: int | None = None

    def packet(self, gave_frame: bool, skipping: bool) -> None:
        """A packet went through the decoder (not a damaged one)."""
        self.sent += 1
        if skipping and not gave_frame and self.out:
            self.pool += 1

    def frame(self, gap: int, skipping: bool) -> int:
        """A frame came out, `gap` frames after the previous one in its timestamps: how many
        are newly counted as skipped."""
        self.out += 1
        waiting = self.sent - self.out - self.counted
        if not skipping and not gap:
            self.held = waiting if self.held is None else min(self.held, waiting)
            if waiting <= self.held:
                self.pool = 0  # all accounted for: what is left in the pool came out later
        return self._count(min(gap, waiting - (self.held or 0)))

    def end(self, flushed: bool) -> int:
        """The session ended; `flushed`: the decoder gave out everything it held."""
        return self._count(self.sent - self.out - self.counted - (0 if flushed else self.held or 0))

    def _count(self, n: int) -> int:
        n = max(0, min(n, self.pool))
        self.counted += n
        self.pool -= n
        return n
