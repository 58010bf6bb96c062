"""Spreading a live HLS segment's frames: a segment comes at once, and decoded at once its frames
would reach the pipeline in one burst, most of them lost in the hand-off of a pipeline slower than
the decoder. A plain state machine (times are passed in).

Each frame is handed on no sooner than `SPREAD_SPEEDUP` times its own pace after the one before
(its timestamp step, at most `MAX_STEP_FRAMES` nominal frames: a timestamp that jumps is no
wait), so a segment's burst is spread over most of its length, and nothing is held back longer
than that: there is no schedule to fall behind, and a segment that comes late is spread from when
it comes. The reader then finishes each segment before the next is due and waits at the live edge
for it, as it would unpaced. Should it stop reaching the edge (no read waited for input for
`EDGE_WINDOW_S`: timestamps that run faster than the segments come, a backlog), frames are not
held at all until it reaches the edge again, so input never piles up behind the spreading.
"""

from __future__ import annotations

SPREAD_SPEEDUP = 1.25  # frames are handed on at most this many times their own pace
MAX_STEP_FRAMES = 4  # a timestamp step counts as at most this many nominal frame intervals
UNKNOWN_RATE_STEP_S = 0.25  # ... or this long, for a stream that does not say its rate
EDGE_WAIT_S = 0.05  # a read that waited this long for input found the live edge
EDGE_WINDOW_S = 20.0  # no read waited for input for this long: the input piles up; no spreading


class BurstSpreader:
    """When each frame of a live segmented stream may be handed on (see the module)."""

    def __init__(self, now: float, frame_s: float | None) -> None:
        self._max_step_s = MAX_STEP_FRAMES * frame_s if frame_s else UNKNOWN_RATE_STEP_S
        self._edge_at = now  # a stream is opened at its live edge (as far as anything says)
        self._last_t: float | None = None
        self._last_at = 0.0

    def read(self, now: float, waited_s: float) -> None:
        """A read of the stream returned at `now`, after waiting `waited_s` for input."""
        if waited_s >= EDGE_WAIT_S:
            self._edge_at = now

    def due(self, now: float, t: float | None) -> float:
        """When the frame with timestamp `t` (seconds; None: it has none) may be handed on."""
        if t is None or self._last_t is None or now - self._edge_at > EDGE_WINDOW_S:
            return now
        step_s = min(max(0.0, t - self._last_t), self._max_step_s)
        return max(now, self._last_at + step_s / SPREAD_SPEEDUP)

    def handed(self, at: float, t: float | None) -> None:
        """The frame with timestamp `t` was handed on at `at`."""
        self._last_at = at
        if t is not None:
            self._last_t = t
