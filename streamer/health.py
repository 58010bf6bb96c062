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
    """Notices a source whose detections stopped coming back (e.g. its detector died or hangs),
    or whose tap has no detector subscribed.

    Feed it the source's running totals now and then (`observe`); `problem` gives the verdict
    for /healthz. A detector that answers with empty prediction lists still pairs.

    The unpaired check is armed by a first pairing (or from the start with ``armed=True``, for a
    source whose frames are tapped, so reach a subscribed detector): a source without a tap
    (timestamp pairing, the detector reads the camera itself) puts every decoded frame in its
    ring, which says nothing about whether a detector exists. Pure: `now` is passed in.
    """

    armed: bool = False
    added: int = 0
    paired: int = 0
    received: int = 0
    no_subscriber: int = 0
    since: float | None = None  # the first frame added after the last pairing (armed) came then
    last_arrived_at: float | None = None  # frames last arrived (decoded or added to the ring)
    last_paired_at: float | None = None
    unsubscribed_since: float | None = None  # frames went untapped for want of a subscriber
    last_unsubscribed_at: float | None = None  # ... since then, and last then, none tapped

    def observe(
        self,
        added: int,
        paired: int,
        now: float,
        received: int | None = None,
        no_subscriber: int | None = None,
    ) -> None:
        """Running totals of the source: `added`, frames put in its ring; `paired`, frames
        paired; `received` (optional), frames it decoded, so that frames still count as coming
        while none enters the ring (the tap is busy because the detector hangs);
        `no_subscriber` (optional), frames not tapped because no detector subscribes."""
        if paired != self.paired:
            self.paired = paired
            self.since = None
            self.armed = True
            self.last_paired_at = now
        arrived = False
        if added != self.added:
            self.added = added
            arrived = True
            self.unsubscribed_since = None
            if self.since is None and self.armed:
                self.since = now
        if received is not None and received != self.received:
            self.received = received
            arrived = True
        if arrived:
            self.last_arrived_at = now
        if no_subscriber is not None and no_subscriber != self.no_subscriber:
            self.no_subscriber = no_subscriber
            self.last_unsubscribed_at = now
            if self.unsubscribed_since is None:
                self.unsubscribed_since = now

    def unpaired_for(self, now: float, window_s: float) -> float | None:
        """Seconds since frames began to come with nothing paired (once armed), if frames still
        come (one within the last `window_s`); None when pairing works or no frame comes."""
        if (
            self.since is None
            or self.last_arrived_at is None
            or now - self.last_arrived_at > window_s
        ):
            return None
        return now - self.since

    def unsubscribed_for(self, now: float, window_s: float) -> float | None:
        """Seconds since frames began to go untapped for want of a subscribed detector (none
        tapped since), if they still do (one within the last `window_s`); else None."""
        if (
            self.unsubscribed_since is None
            or self.last_unsubscribed_at is None
            or now - self.last_unsubscribed_at > window_s
        ):
            return None
        return now - self.unsubscribed_since

    def problem(self, now: float, after_s: float) -> str | None:
        """What /healthz should say of the source, if its detections stopped coming back for
        longer than `after_s`; None when fine (or when no frame comes at all)."""
        unsubscribed = self.unsubscribed_for(now, after_s)
        if unsubscribed is not None and unsubscribed > after_s:
            return f"no detector subscribed to the tap for {unsubscribed:.1f} s"
        unpaired = self.unpaired_for(now, after_s)
        if unpaired is not None and unpaired > after_s:
            return f"detections not coming back: frames arrive but none paired for {unpaired:.1f} s"
        return None
