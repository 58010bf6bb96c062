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

from collections import deque
from typing import Literal

SkipLevel = Literal["DEFAULT", "NONREF", "NONKEY"]

BEHIND_S = 0.25  # behind the wall clock by more than this: skip non-reference frames
FAR_BEHIND_S = 2.0  # ... by more than this: keyframes only
CALM_S = 1.0  # caught up (and nothing shed downstream) this long: back one level
LAG_WINDOW_S = 10.0  # the stream's offset to the wall clock is measured against this window


class DecodeShedder:
    """Chooses a decoder's skip level from its lag and the pipeline's demand."""

    def __init__(self) -> None:
        self.level: SkipLevel = "DEFAULT"
        self._calm_since: float | None = None
        # (now, wall - media), oldest first, each offset smaller than the ones after it: the
        # window's minimum is the first (a monotonic queue).
        self._offsets: deque[tuple[float, float]] = deque()
        self._last_media_s: float | None = None

    def reset(self) -> None:
        """A new session: its media clock starts again."""
        self.level = "DEFAULT"
        self._calm_since = None
        self._offsets.clear()
        self._last_media_s = None

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
