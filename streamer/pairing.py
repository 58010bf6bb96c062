"""Pairing detections with frames. A plain synchronous state machine: no I/O, no clock reads;
`now` (seconds, monotonic) is passed in so tests drive time.

Two ways to pair: by exact ``(source_id, frame_id)`` (detectors fed by the frame tap echo the id),
or by nearest ``captured_at`` within a tolerance (detectors that read the camera themselves).

Each source has a ring of frames waiting for detections, bounded by count, bytes and age; and
all rings together, with the frames on their way to them (tapped, not yet sent: `reserve` and
`release`), are bounded by one memory budget (`max_total_bytes`), kept when a frame is admitted
(`budget_fits`): a frame is taken only if it fits. When it does not, its source waits its turn:
sources refused for the budget queue, the least recently served first, and a source takes room
only if it leaves room for the frame of every source waiting before it (before the turn it
would take, if it has none). So each finds room when it next asks, whatever its frames' size (a
4K camera among 1080p ones) or how seldom it asks. A frame sent to a detector is never thrown
away for another (its detector's work would be lost). Without a tap, a live source's frame
goes in and the oldest frame of the ring holding the most frames makes room (`bound`), for the
waiting sources' frames too: nothing was sent for those.

Every frame leaves the ring exactly one way, and every detection message gets exactly one outcome,
each counted:

    frames:      paired | expired (left the ring unmatched: by age, by its ring's own bounds,
                 or by the global budget)
    detections:  paired | duplicate | late | unknown_frame | unknown_source
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from streamer.types import Frame

Outcome = Literal["paired", "duplicate", "late", "unknown_frame", "unknown_source"]

# How many paired frame ids each source remembers, to tell a duplicate from a late detection.
PAIRED_MEMORY_FRAMES = 4096
# Timestamp pairing looks for duplicates among this many most recently paired frames.
PAIRED_SCAN_FRAMES = 256


@dataclass
class RingStats:
    """Counters of one source's ring; `in_ring` and `ring_bytes` are gauges."""

    added: int = 0
    paired: int = 0
    expired: int = 0  # = expired_age + expired_full + expired_budget + expired_shutdown
    expired_age: int = 0  # older than max_age_s
    expired_full: int = 0  # pushed out by the ring's own count or byte bound
    expired_budget: int = 0  # pushed out by the global memory budget
    expired_shutdown: int = 0  # still waiting when the pipeline stopped (or its source went)
    in_ring: int = 0
    ring_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Match:
    outcome: Outcome
    frame: Frame | None = None


ExpiryReason = Literal["age", "full", "budget", "shutdown"]


class _Total:
    """The bytes held by every ring together, and those on their way to them."""

    bytes = 0
    coming = 0


class _Ring:
    def __init__(self, total: _Total, lossless: bool = False) -> None:
        self.lossless = lossless  # its frames wait for room: never evicted for the budget
        self.frames: OrderedDict[int, tuple[Frame, float]] = OrderedDict()
        self.paired_ids: OrderedDict[int, float] = OrderedDict()  # frame_id -> captured_at
        self.newest_id = -1
        self.newest_captured_at: float | None = None
        self.stats = RingStats()
        self.total = total
        self.coming_bytes = 0  # of its frames admitted, not yet in it (`Pairer.reserve`)
        self.admitted = 0  # when its last frame was admitted (`Pairer.budget_fits`), in turns

    def put(self, frame: Frame, now: float) -> None:
        self.frames[frame.frame_id] = (frame, now)
        self.stats.in_ring += 1
        self.stats.ring_bytes += frame.nbytes
        self.total.bytes += frame.nbytes

    def remove(self, frame_id: int) -> Frame | None:
        """Take a frame out of the ring, uncounted (the caller counts its outcome)."""
        entry = self.frames.pop(frame_id, None)
        if entry is None:
            return None
        frame = entry[0]
        self.stats.in_ring -= 1
        self.stats.ring_bytes -= frame.nbytes
        self.total.bytes -= frame.nbytes
        return frame

    def pop_oldest(self, reason: ExpiryReason) -> None:
        frame_id = next(iter(self.frames))
        self.remove(frame_id)
        self.stats.expired += 1
        if reason == "age":
            self.stats.expired_age += 1
        elif reason == "full":
            self.stats.expired_full += 1
        elif reason == "budget":
            self.stats.expired_budget += 1
        else:
            self.stats.expired_shutdown += 1


class Pairer:
    """Matches detection messages to the frames waiting in per-source rings."""

    def __init__(
        self,
        source_ids: list[str],
        *,
        max_frames: int,
        max_bytes: int,
        max_age_s: float,
        max_total_bytes: int | None = None,
        lossless: frozenset[str] = frozenset(),
    ) -> None:
        self._total = _Total()
        self._rings = {sid: _Ring(self._total, sid in lossless) for sid in source_ids}
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        # Sources refused for the budget, in turn: source id -> the size of its frame. A source
        # leaves when it is admitted, or when it no longer asks (`forget_turn`: it ended, stopped
        # streaming, or its frames are refused for another reason).
        self._waiting: OrderedDict[str, int] = OrderedDict()
        self._waiting_bytes = 0  # their frames' sizes, summed
        self._admitted = 0  # frames admitted so far: each ring's `admitted` is its last one's

    @property
    def total_bytes(self) -> int:
        """The bytes of every frame waiting in any ring."""
        return self._total.bytes

    @property
    def coming_bytes(self) -> int:
        """The bytes reserved for frames admitted to a ring and not yet in it."""
        return self._total.coming

    def stats(self, source_id: str) -> RingStats:
        return self._rings[source_id].stats

    def add_source(self, source_id: str, lossless: bool = False, first_frame_id: int = 0) -> None:
        """Give a new source an empty ring (`lossless`: a source whose frames wait for room
        rather than be dropped; the budget never evicts them) whose frame ids start at
        `first_frame_id` (detections for an earlier id, such as a removed camera's of the same
        id, are ``late``). ValueError if it has one."""
        if source_id in self._rings:
            raise ValueError(f"source {source_id!r} already has a ring")
        ring = self._rings[source_id] = _Ring(self._total, lossless)
        ring.newest_id = first_frame_id - 1

    def remove_source(self, source_id: str) -> RingStats:
        """Expire what the source still has waiting, give back what was on its way to it, and
        forget its ring; return its final counters."""
        ring = self._rings.pop(source_id)
        while ring.frames:
            ring.pop_oldest("shutdown")
        self._total.coming -= ring.coming_bytes
        self.forget_turn(source_id)
        return ring.stats

    def add_frame(self, frame: Frame, now: float, *, bound: bool = True) -> None:
        """Put a frame in its source's ring, evicting (as expired) what no longer fits. With
        ``bound=False`` nothing is evicted yet (a frame about to be sent, that may be withdrawn):
        call `bound` once it stays."""
        ring = self._rings[frame.source_id]
        ring.put(frame, now)
        ring.newest_id = max(ring.newest_id, frame.frame_id)
        if ring.newest_captured_at is None or frame.captured_at > ring.newest_captured_at:
            ring.newest_captured_at = frame.captured_at
        ring.stats.added += 1
        if bound:
            self.bound(frame.source_id, now, turns=True)

    def bound(self, source_id: str, now: float, turns: bool = False) -> None:
        """Evict (as expired) the oldest frames beyond the ring's count and byte bounds, then
        beyond the global budget (from the rings holding the most frames, never a lossless
        source's, and the frame just added last of all: with a tap, admission keeps the budget
        and this evicts nothing), and the ring's old ones. With `turns` (a frame added without
        admission: no tap), room is kept for the frames of the sources waiting their turn too."""
        ring = self._rings[source_id]
        while len(ring.frames) > self.max_frames or (
            ring.stats.ring_bytes > self.max_bytes and len(ring.frames) > 1
        ):
            ring.pop_oldest("full")
        limit = self.max_total_bytes
        if limit is not None and turns:
            limit -= self._kept_for_others(source_id)
        while limit is not None and self._total.bytes > limit:
            giving = self._fullest(ring)
            if giving is None:  # only lossless frames and this one: not this one either
                if not ring.lossless and ring.frames:
                    ring.pop_oldest("budget")
                break
            giving.pop_oldest("budget")
        self._expire_ring(ring, now)

    def _fullest(self, adding: _Ring) -> _Ring | None:
        """The ring that gives a frame to the budget: the one holding the most frames (counted
        in frames, not bytes: a 4K camera's frames count like any other's), the most bytes among
        those; never a lossless source's (it waits for room instead), nor the frame `adding`
        just took."""
        best, best_key = None, (0, 0)
        for r in self._rings.values():
            frames = len(r.frames) - (r is adding)
            key = (frames, r.stats.ring_bytes)
            if frames > 0 and not r.lossless and key > best_key:
                best, best_key = r, key
        return best

    def room_for(self, source_id: str, nbytes: int, frames: int) -> bool:
        """Whether `frames` more frames of `nbytes` each fit the source's own ring bounds."""
        ring = self._rings[source_id]
        return (
            ring.stats.in_ring + frames <= self.max_frames
            and ring.stats.ring_bytes + frames * nbytes <= self.max_bytes
        )

    def budget_fits(self, source_id: str, nbytes: int) -> bool:
        """Whether one more frame of `nbytes` for this source may be admitted now: it fits the
        budget beside every ring's frames and those on their way (`reserve`), and leaves room
        for the frame of every source waiting before it: before its turn, or before the turn
        it would take. Refused, the source takes a turn: after the waiting sources last served
        before it, before those served since (a camera that asks seldom goes before those
        served many times meanwhile); asking again keeps it, until it is admitted or
        `forget_turn`. So a waiting source finds room for its frame when it next asks. A frame
        larger than the whole budget never fits and takes no turn. Reserve the frame
        (`reserve`) before anything else is admitted."""
        limit = self.max_total_bytes
        if limit is None:
            return True
        if nbytes > limit:
            self.forget_turn(source_id)  # (room kept for a smaller frame it had would never go)
            return False
        waiting = self._waiting
        free = limit - self._total.bytes - self._total.coming
        mine = waiting.get(source_id, 0)
        ring = self._rings[source_id]
        ahead = 0  # the frames of the sources waiting before it: its turn, or the one it would take
        for sid, size in waiting.items():  # (in turn: O(its place))
            if sid == source_id or self._rings[sid].admitted > ring.admitted:
                break
            ahead += size
        fits = nbytes + ahead <= free
        if fits:
            waiting.pop(source_id, None)
            self._admitted += 1
            ring.admitted = self._admitted
        elif source_id in waiting:
            waiting[source_id] = nbytes  # (an update keeps its place)
        else:  # its turn: after those served before it, before those served since
            last = next(reversed(waiting), None)
            waiting[source_id] = nbytes
            if last is not None and self._rings[last].admitted > ring.admitted:
                self._waiting = OrderedDict(
                    sorted(waiting.items(), key=lambda kv: self._rings[kv[0]].admitted)
                )
        self._waiting_bytes += (0 if fits else nbytes) - mine
        return fits

    def forget_turn(self, source_id: str) -> None:
        """The source no longer waits for room in the budget (see `budget_fits`)."""
        self._waiting_bytes -= self._waiting.pop(source_id, 0)

    def _kept_for_others(self, source_id: str) -> int:
        """Room kept for the frames of the other sources waiting their turn."""
        return self._waiting_bytes - self._waiting.get(source_id, 0)

    def reserve(self, source_id: str, nbytes: int) -> None:
        """Count a frame admitted for this source, on its way to the ring, in the budget."""
        self._rings[source_id].coming_bytes += nbytes
        self._total.coming += nbytes

    def release(self, source_id: str, nbytes: int) -> None:
        """A frame `reserve` counted is no longer on its way (it is in the ring, or shed)."""
        self._rings[source_id].coming_bytes -= nbytes
        self._total.coming -= nbytes

    def withdraw(self, frame: Frame) -> None:
        """Take back a frame added with ``bound=False``, as if it never was (its tap send
        failed)."""
        ring = self._rings[frame.source_id]
        if ring.remove(frame.frame_id) is not None:
            ring.stats.added -= 1

    def expire(self, now: float) -> None:
        """Drop (as expired) frames older than the age bound in every ring."""
        for ring in self._rings.values():
            self._expire_ring(ring, now)

    def _expire_ring(self, ring: _Ring, now: float) -> None:
        while ring.frames:
            _, added_at = next(iter(ring.frames.values()))
            if now - added_at <= self.max_age_s:
                break
            ring.pop_oldest("age")

    def flush(self) -> None:
        """Expire every frame still waiting (at shutdown)."""
        for ring in self._rings.values():
            while ring.frames:
                ring.pop_oldest("shutdown")

    def match(self, source_id: str, frame_id: int, now: float) -> Match:
        """Take the frame a detection message names out of the ring, or say why not."""
        ring = self._rings.get(source_id)
        if ring is None:
            return Match("unknown_source")
        self._expire_ring(ring, now)  # (the others, at the pipeline's next sweep: `expire`)
        if frame_id in ring.frames:
            return Match("paired", self._take(ring, frame_id))
        if frame_id in ring.paired_ids:
            return Match("duplicate")
        if frame_id > ring.newest_id:
            return Match("unknown_frame")
        return Match("late")

    def match_time(
        self, source_id: str, captured_at: float, tolerance_s: float, now: float
    ) -> Match:
        """Take the frame captured nearest to `captured_at`, if within `tolerance_s`.

        For detectors that read the camera themselves and only know when a picture was taken.
        The nearest frame is looked for among the waiting frames *and* the recently paired ones:
        if the nearest was already paired, the message is a ``duplicate``; a time beyond every
        frame decoded so far is ``unknown_frame``; otherwise nothing near enough is ``late``.
        On an exact tie the earlier frame wins.
        """
        ring = self._rings.get(source_id)
        if ring is None:
            return Match("unknown_source")
        self._expire_ring(ring, now)
        best_id, best_d, best_waiting = -1, float("inf"), False
        for fid, (frame, _) in ring.frames.items():
            d = abs(frame.captured_at - captured_at)
            if d < best_d:
                best_id, best_d, best_waiting = fid, d, True
        recent = itertools.islice(reversed(ring.paired_ids.items()), PAIRED_SCAN_FRAMES)
        for fid, at in recent:
            d = abs(at - captured_at)
            if d < best_d or (d == best_d and fid < best_id):
                best_id, best_d, best_waiting = fid, d, False
        if best_d <= tolerance_s:
            return (
                Match("paired", self._take(ring, best_id)) if best_waiting else Match("duplicate")
            )
        newest = ring.newest_captured_at
        if newest is None or captured_at > newest + tolerance_s:
            return Match("unknown_frame")
        return Match("late")

    @staticmethod
    def _take(ring: _Ring, frame_id: int) -> Frame:
        frame = ring.remove(frame_id)
        assert frame is not None
        ring.stats.paired += 1
        ring.paired_ids[frame_id] = frame.captured_at
        if len(ring.paired_ids) > PAIRED_MEMORY_FRAMES:
            ring.paired_ids.popitem(last=False)
        return frame
