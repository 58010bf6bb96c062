"""Load shedding inside a decoder: a camera that falls behind skips decoding what nothing needs
before any decoded frame has to be dropped.

A plain state machine (no I/O, no clock reads: time is passed in). The decode loop tells it, per
frame, how far the stream runs behind the wall clock, how long the decoder worked for the frame
and whether the pipeline is turning this camera's frames away; it answers FFmpeg's `skip_frame`
level for the next packets:

- ``DEFAULT``: decode everything (the camera keeps up);
- ``NONREF``: skip frames no other frame references (B-frames in most encodings): they cost
  decoding time and nothing is lost for the frames after them;
- ``NONKEY``: decode keyframes only, to catch up at all.

Two measures of "behind", because each sees what the other cannot:

- the **lag**: the stream's offset to the wall clock against its smallest offset of the last
  `LAG_WINDOW_S`. It sees a stream that arrives late or in bursts, but a decoder short by a
  fraction d of real time reads at most ``LAG_WINDOW_S * d`` on it, for ever, while it falls
  further behind without end;
- the **backlog**: what the decoder itself has fallen behind, from its own work and nothing
  else. Each frame adds the time the loop spent on it (decoding, handing it on; not waiting for
  input or pacing) and takes off the media time the frame covers, never going below zero (the
  waiting time of a queue, Lindley's recursion). A decoder that keeps up stays near zero
  whatever the network or the camera's clock do; one short by d grows it by d a second until
  keyframes only take the excess off again. So a small deficit costs about its own share of
  frames, not the stream's freshness.

Levels the lag and the pipeline's demand ask for step back down only after the camera has kept
up for `CALM_S`, so they do not flap; the backlog's own levels have their hysteresis in their
thresholds.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

SkipLevel = Literal["DEFAULT", "NONREF", "NONKEY"]
ORDER: tuple[SkipLevel, ...] = ("DEFAULT", "NONREF", "NONKEY")

BEHIND_S = 0.25  # behind the wall clock by more than this: skip non-reference frames
FAR_BEHIND_S = 2.0  # ... by more than this: keyframes only
CALM_S = 1.0  # caught up (and nothing shed downstream) this long: back one level
LAG_WINDOW_S = 10.0  # the stream's offset to the wall clock is measured against this window
BACKLOG_FAR_S = 1.0  # the decoder's own backlog over this: keyframes only, until under BEHIND_S


def _higher(a: SkipLevel, b: SkipLevel) -> SkipLevel:
    return a if ORDER.index(a) >= ORDER.index(b) else b


class DecodeShedder:
    """Chooses a decoder's skip level from its lag, its backlog and the pipeline's demand."""

    def __init__(self) -> None:
        self._start()

    def reset(self) -> None:
        """A new session: its media clock starts again, and a new decoder owes nothing."""
        self._start()

    def _start(self) -> None:
        self.level: SkipLevel = "DEFAULT"
        self.backlog_s = 0.0
        self._paced: SkipLevel = "DEFAULT"  # what the lag and the demand ask for (with CALM_S)
        self._own: SkipLevel = "DEFAULT"  # what the backlog asks for
        self._calm_since: float | None = None
        # (now, wall - media), oldest first, each offset smaller than the ones after it: the
        # window's minimum is the first (a monotonic queue).
        self._offsets: deque[tuple[float, float]] = deque()
        self._last_media_s: float | None = None

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

    def served(self, busy_s: float, media_s: float) -> float:
        """Account one decoded frame: the loop worked `busy_s` on it (and on the packets since
        the last frame), and it covers `media_s` of the stream (the step in its timestamps;
        a clock that went back covers nothing). Returns the decoder's backlog in seconds."""
        self.backlog_s = max(0.0, self.backlog_s + max(0.0, busy_s) - max(0.0, media_s))
        return self.backlog_s

    def update(self, now: float, lag_s: float, shed_downstream: bool) -> SkipLevel:
        """The level for the next packets, given the lag (seconds behind), whether the pipeline
        sheds this camera's frames (it cannot serve them all), and the backlog."""
        wanted: SkipLevel = "DEFAULT"
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
        self._own = self._own_level()
        self.level = _higher(self._paced, self._own)
        return self.level

    def _own_level(self) -> SkipLevel:
        """Keyframes only above `BACKLOG_FAR_S` until the backlog is under `BEHIND_S`;
        non-reference frames skipped above `BEHIND_S` until it is gone."""
        if self.backlog_s > BACKLOG_FAR_S:
            return "NONKEY"
        if self.backlog_s > BEHIND_S:
            return _higher(self._own, "NONREF")
        if self.backlog_s > 0.0:
            return "NONREF" if self._own != "DEFAULT" else "DEFAULT"
        return "DEFAULT"
