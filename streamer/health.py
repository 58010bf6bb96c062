"""Watches for /healthz, fed with running totals: how much of a camera's stream is shed over a
sliding window (a camera the box cannot serve), and whether its frames still pair (a detector
that died). Pure: counters and `now` are passed in."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

# Frames turned away on purpose or for want of a detector: not a sign of overload.
NOT_OVERLOAD = frozenset(
    {
        "max_fps",
        "not_tapped rate",
        "not_tapped no_subscriber",
        "not_tapped stopping",
        "not_tapped encode_failed",
        "expired shutdown",
    }
)


def shed_by_reason(source: dict[str, Any]) -> dict[str, int]:
    """One source's frames not served so far, by reason, from its stats snapshot: every shed
    term of the accounting invariant, plus the frames the decoder skipped."""
    shed = {f"not_tapped {r}": int(n) for r, n in source["not_tapped_by"].items()}
    shed.update({f"expired {r}": int(n) for r, n in source["expired_by"].items()})
    shed["handoff"] = int(source["dropped_handoff"])
    shed["not decoded"] = int(source["skipped_decode"])
    shed["max_fps"] = int(source["skipped_fps"])
    return shed


def overload_shed(source: dict[str, Any]) -> int:
    """The frames of one source that the box could not serve (not those shed on purpose)."""
    return sum(n for k, n in shed_by_reason(source).items() if k not in NOT_OVERLOAD)


class ShedWatch:
    """Feed it a source's running totals now and then (`observe`); `share` says what fraction
    of the frames it received in the last `window_s` were shed (not decoded, not tapped for
    want of room, dropped, or expired unmatched)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int, int]] = deque()  # (now, received, shed)

    def observe(self, now: float, received: int, shed: int) -> None:
        self._samples.append((now, received, shed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def share(self) -> tuple[float, int] | None:
        """(shed / received, received) over the window, or None before two samples."""
        if len(self._samples) < 2:
            return None
        (_, r0, s0), (_, r1, s1) = self._samples[0], self._samples[-1]
        received = r1 - r0
        return ((s1 - s0) / received if received > 0 else 0.0), received


@dataclass
class PairingWatch:
    """Notices a source whose frames keep entering its ring (tapped, or decoded when there is no
    tap) while no detection pairs with any of them, e.g. because its detector died.

    Feed it the ring's running totals now and then (`observe`); `unpaired_for` says for how long
    frames have come without a pairing. A detector that answers with empty prediction lists
    still pairs. Pure: `now` is passed in.
    """

    added: int = 0
    paired: int = 0
    since: float | None = None  # the first frame added after the last pairing was seen then
    last_added_at: float | None = None

    def observe(self, added: int, paired: int, now: float) -> None:
        """`added` and `paired`: the source's running totals of frames put in its ring and of
        frames paired."""
        if paired != self.paired:
            self.paired = paired
            self.since = None
        if added != self.added:
            self.added = added
            self.last_added_at = now
            if self.since is None:
                self.since = now

    def unpaired_for(self, now: float, window_s: float) -> float | None:
        """Seconds since frames began to come with nothing paired, if frames still come (one
        within the last `window_s`); None when pairing works or no frame comes."""
        if self.since is None or self.last_added_at is None or now - self.last_added_at > window_s:
            return None
        return now - self.since
