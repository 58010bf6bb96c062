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
# How fast the reference offset may creep up on its own (seconds a second): a camera clock or a
# frame-count timestamp that runs slow against ours by less than this is not lag; a decoder
# short of the stream's rate by more than this is seen as lag that grows until it acts. (A
# window over the offsets, 10 s before, saw at most 10 s x the deficit: a decoder at 26 of 30
# frames/s read 1.3 s forever while falling behind without end.)
DRIFT_ALLOWANCE = 0.02
# A lag that skipping does not bring down, nor sees grow, is not the decoder's (the stream's
# timing moved: a delay step upstream, a timestamp drift): if the lag has neither halved nor
# grown after this long at non-reference skipping (while the pipeline takes this camera's
# frames: a box too busy to serve them can hold a decoder's lag level), or has not halved at
# keyframes only, the offset now becomes the reference. (A lag that grows at non-reference
# skipping is a decoder falling behind: it goes on to keyframes only at FAR_BEHIND_S.)
PROBE_S = 3.0


class DecodeShedder:
    """Chooses a decoder's skip level from its lag and the pipeline's demand."""

    def __init__(self) -> None:
        self.level: SkipLevel = "DEFAULT"
        self._calm_since: float | None = None
        # The smallest (wall - media - DRIFT_ALLOWANCE x wall) seen this session: the reference
        # offset, allowed to creep up at DRIFT_ALLOWANCE.
        self._reference: float | None = None
        self._rebase = False  # the next offset becomes the reference
        self._last_media_s: float | None = None
        self._probe: tuple[float, float] | None = None  # (since, lag then) while lag is shed

    def reset(self) -> None:
        """A new session: its media clock starts again."""
        self.level = "DEFAULT"
        self._calm_since = None
        self._reference = None
        self._rebase = False
        self._last_media_s = None
        self._probe = None

    def lag_s(self, now: float, media_s: float) -> float:
        """How far behind the stream is: its offset to the wall clock now, against the smallest
        offset seen this session, which creeps up at `DRIFT_ALLOWANCE` (a live camera's clock is
        its own; only a growing offset means the decoder falls behind; a clock that jumps back
        starts a new reference, and so does a lag that skipping did not reduce). O(1) a frame."""
        offset = now - media_s - DRIFT_ALLOWANCE * now
        if self._last_media_s is not None and media_s < self._last_media_s - BEHIND_S:
            self._reference = None  # the camera's clock went back: a new reference, not lag
        self._last_media_s = media_s
        if self._rebase or self._reference is None or offset < self._reference:
            self._reference = offset
            self._rebase = False
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
        if lag_s <= BEHIND_S:
            self._probe = None
        elif self._probe is None:
            self._probe = (now, lag_s)
        elif now - self._probe[0] >= PROBE_S:
            lag_then = self._probe[1]
            self._probe = (now, lag_s)
            steady = lag_s <= lag_then and not shed_downstream  # (not a box too busy)
            if lag_s > lag_then / 2 and (self.level == "NONKEY" or steady):
                self._rebase = True  # skipping did not bring it down: not the decoder's lag
                wanted = "DEFAULT"
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
