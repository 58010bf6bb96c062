"""Watches for /healthz, fed with running totals: how much of a camera's stream is shed over a
sliding window (a camera the box cannot serve), and whether its frames still pair (a detector
that died). Pure: counters and `now` are passed in."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

# Frames turned away on purpose or for want of a subscribed detector (`PairingWatch` reports
# that): not a sign of overload. (``full``, the tap's socket refusing them, is: a detector too
# slow, unless none is connected at all, which the pipeline tells from `PairingWatch`.)
NOT_OVERLOAD = frozenset(
    {
        "max_fps",
        "not_tapped/rate",
        "not_tapped/no_subscriber",
        "not_tapped/stopping",
        "not_tapped/encode_failed",
        "not_tapped/error",
        "expired/shutdown",
    }
)
# Without a tap, the detector reads the camera itself and answers the frames it picks; the ones
# it leaves expire in the ring (by age, count or the memory budget), which says nothing of the
# box.
NOT_OVERLOAD_UNTAPPED = NOT_OVERLOAD | {"expired/age", "expired/full", "expired/budget"}
# A source named overloaded stays so until its share falls below this fraction of the limit
# (hysteresis: a share hovering at the limit does not flap the readiness probe).
RECOVER_FACTOR = 0.8


def shed_by_reason(source: dict[str, Any]) -> dict[str, int]:
    """One source's frames not served so far, by reason, from its stats snapshot: every shed
    term of the accounting invariant, plus the frames the decoder skipped."""
    shed = {f"not_tapped/{r}": int(n) for r, n in source["not_tapped_by"].items()}
    shed.update({f"expired/{r}": int(n) for r, n in source["expired_by"].items()})
    shed["handoff"] = int(source["dropped_handoff"])
    shed["decoder/skipped"] = int(source["skipped_decode"])
    shed["max_fps"] = int(source["skipped_fps"])
    return shed


def overload_shed(source: dict[str, Any], tapped: bool = True) -> tuple[int, int]:
    """(eligible, shed) frames of one source so far: those it received less those shed on
    purpose or for want of a detector (`NOT_OVERLOAD`, or `NOT_OVERLOAD_UNTAPPED` without a
    tap), and of them, those the box (or the detector, for ``busy``) could not serve."""
    exempt = NOT_OVERLOAD if tapped else NOT_OVERLOAD_UNTAPPED
    shed = shed_by_reason(source)
    received = int(source["decoded"]) + int(source["skipped_decode"])
    on_purpose = sum(n for k, n in shed.items() if k in exempt)
    return received - on_purpose, sum(n for k, n in shed.items() if k not in exempt)


class ShedWatch:
    """Feed it a source's running totals now and then (`observe`); `share` says what fraction
    of the frames it was to serve in the last `window_s` were shed (not decoded, not tapped for
    want of room, dropped, or expired unmatched). `overloaded` turns on when that share exceeds
    `limit` and off when it falls below `RECOVER_FACTOR` x `limit` (None: never on)."""

    def __init__(self, window_s: float, limit: float | None = None) -> None:
        self.window_s = window_s
        self.limit = limit
        self.overloaded = False
        self._samples: deque[tuple[float, int, int]] = deque()  # (now, eligible, shed)

    def observe(self, now: float, eligible: int, shed: int) -> None:
        self._samples.append((now, eligible, shed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        seen = self.share()
        if self.limit is None or seen is None:
            return
        if self.overloaded:
            self.overloaded = seen[0] >= RECOVER_FACTOR * self.limit
        else:
            self.overloaded = seen[0] > self.limit

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
    or whose tap's frames no detector takes (none subscribed or connected, or none reading).

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
    untaken: int = 0
    since: float | None = None  # the first frame added after the last pairing (armed) came then
    last_arrived_at: float | None = None  # frames last arrived (decoded or added to the ring)
    last_paired_at: float | None = None
    untaken_since: float | None = None  # frames went untapped for want of a detector taking them
    last_untaken_at: float | None = None  # ... since then, and last then, none tapped

    def observe(
        self,
        added: int,
        paired: int,
        now: float,
        received: int | None = None,
        untaken: int | None = None,
    ) -> None:
        """Running totals of the source: `added`, frames put in its ring; `paired`, frames
        paired; `received` (optional), frames it decoded, so that frames still count as coming
        while none enters the ring (the tap is busy because the detector hangs); `untaken`
        (optional), frames not tapped because no detector subscribes, is connected or reads."""
        if paired != self.paired:
            self.paired = paired
            self.since = None
            self.armed = True
            self.last_paired_at = now
        arrived = False
        if added != self.added:
            self.added = added
            arrived = True
            self.untaken_since = None
            if self.since is None and self.armed:
                self.since = now
        if received is not None and received != self.received:
            self.received = received
            arrived = True
        if arrived:
            self.last_arrived_at = now
        if untaken is not None and untaken != self.untaken:
            self.untaken = untaken
            self.last_untaken_at = now
            if self.untaken_since is None:
                self.untaken_since = now

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

    def untaken_for(self, now: float, window_s: float) -> float | None:
        """Seconds since frames began to go untapped for want of a detector taking them (none
        tapped since), if they still do (one within the last `window_s`); else None."""
        if (
            self.untaken_since is None
            or self.last_untaken_at is None
            or now - self.last_untaken_at > window_s
        ):
            return None
        return now - self.untaken_since

    def problem(self, now: float, after_s: float) -> str | None:
        """What /healthz should say of the source, if its detections stopped coming back for
        longer than `after_s`; None when fine (or when no frame comes at all)."""
        untaken = self.untaken_for(now, after_s)
        if untaken is not None and untaken > after_s:
            return (
                f"no detector takes the tap's frames (none subscribed or reading) "
                f"for {untaken:.1f} s"
            )
        unpaired = self.unpaired_for(now, after_s)
        if unpaired is not None and unpaired > after_s:
            return f"detections not coming back: frames arrive but none paired for {unpaired:.1f} s"
        return None
