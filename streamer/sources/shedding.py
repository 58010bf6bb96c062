"""Load shedding inside a decoder: a camera that falls behind skips decoding what nothing needs
before any decoded frame has to be dropped.

A plain state machine (no I/O, no clock reads: time is passed in). The decode loop tells it, per
frame, how far the stream runs behind the wall clock and whether the pipeline is turning this
camera's frames away; it answers FFmpeg's `skip_frame` level for the next packets:

- ``DEFAULT``: decode everything (the camera keeps up);
- ``NONREF``: skip frames no other frame references (B-frames in most encodings): they cost
  decoding time and nothing is lost for the frames after them;
- ``NONKEY``: decode keyframes only, while far behind (seconds), to catch up at all.

It steps back down only after the camera has kept up for `CALM_S`, so it does not flap.
"""

from __future__ import annotations

from typing import Literal

SkipLevel = Literal["DEFAULT", "NONREF", "NONKEY"]

BEHIND_S = 0.25  # behind the wall clock by more than this: skip non-reference frames
FAR_BEHIND_S = 2.0  # ... by more than this: keyframes only
CALM_S = 1.0  # caught up (and nothing shed downstream) this long: back one level
# A decoder that waited for its input (the network, or a file's pacing) for at least IDLE_SHARE
# of a window of IDLE_WINDOW_S, and for at least WAITED_PACKETS of its packets, has caught up:
# its stream's offset to the wall clock then is the reference the lag is measured against. A
# decoder that is behind finds its next packet waiting; it waits only when preempted while it
# reads, for a few of its packets. Only that evidence moves the reference up: a delay step
# upstream, or timestamps that run slow, are forgotten within a window when the decoder keeps
# up, and a decoder that falls behind by however little is not taken as caught up. (Before:
# the smallest offset of the last 10 s, which read at most 10 s x the deficit: 26 of 30 frames/s
# read 1.3 s forever, never reaching keyframes only, while the real lag grew without end; then,
# for a day, the session's smallest offset with a 2%/s creep and re-anchoring when skipping did
# not bring the lag down, which a review's simulation showed ratcheting a decoder 4x overloaded
# to 400 s behind.)
IDLE_WINDOW_S = 1.0
IDLE_SHARE = 0.1
WAITED_PACKETS = 0.2
WAITED_MIN_S = 0.001  # a packet that took this long to come was waited for


class DecodeShedder:
    """Chooses a decoder's skip level from its lag and the pipeline's demand."""

    def __init__(self) -> None:
        self.level: SkipLevel = "DEFAULT"
        self._calm_since: float | None = None
        self._reference: float | None = None  # the offset (wall - media) when last caught up
        self._caught_up = False  # the next offset becomes the reference
        self._last_media_s: float | None = None
        # (since, seconds waited, packets, packets waited for) in the current window
        self._window: tuple[float, float, int, int] | None = None

    def reset(self) -> None:
        """A new session: its media clock starts again."""
        self.level = "DEFAULT"
        self._calm_since = None
        self._reference = None
        self._caught_up = False
        self._last_media_s = None
        self._window = None

    def note_wait(self, now: float, waited_s: float) -> None:
        """The decode thread waited `waited_s` for its next packet (or for a file's pacing)."""
        since, waited, packets, waited_for = self._window or (now, 0.0, 0, 0)
        waited += waited_s
        packets += 1
        waited_for += waited_s >= WAITED_MIN_S
        if now - since < IDLE_WINDOW_S:
            self._window = (since, waited, packets, waited_for)
            return
        if waited >= IDLE_SHARE * (now - since) and waited_for >= WAITED_PACKETS * packets:
            self._caught_up = True
        self._window = (now, 0.0, 0, 0)

    def lag_s(self, now: float, media_s: float) -> float:
        """How far behind the stream is: its offset to the wall clock now against the offset
        when the decoder last had caught up (or the smallest since, if smaller: a camera's
        clock is its own, only a growing offset means falling behind; a clock that jumps back
        starts a new reference). O(1) a frame."""
        offset = now - media_s
        if self._last_media_s is not None and media_s < self._last_media_s - BEHIND_S:
            self._reference = None  # the camera's clock went back: a new reference, not lag
        self._last_media_s = media_s
        if self._caught_up or self._reference is None or offset < self._reference:
            self._reference = offset
            self._caught_up = False
        return offset - self._reference

    def update(self, now: float, lag_s: float, shed_downstream: bool) -> SkipLevel:
        """The level for the next packets, given the lag (seconds behind) and whether the
        pipeline sheds this camera's frames (it cannot serve them all)."""
        wanted: SkipLevel = "DEFAULT"
        if lag_s > FAR_BEHIND_S:
            wanted = "NONKEY"
        elif lag_s > BEHIND_S or shed_downstream:
            wanted = "NONREF"
        order = ("DEFAULT", "NONREF", "NONKEY")
        if order.index(wanted) >= order.index(self.level):
            self.level = wanted
            self._calm_since = None
            return self.level
        if self._calm_since is None:
            self._calm_since = now
        elif now - self._calm_since >= CALM_S:
            self.level = order[order.index(self.level) - 1]  # type: ignore[assignment]
            self._calm_since = None if self.level == wanted else now
        return self.level
