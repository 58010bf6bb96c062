"""One decoding session's side of load shedding (the policy is streamer/sources/shedding.py):
at each packet it asks the shedder for FFmpeg's skip level and sets it on the decoder, adds up
the loop's work on the packet (demuxing, as CPU time: its waits for input are not work; then
decoding and handing frames on, as the decode loop times them) for the shedder, and counts the
frames the decoder skipped on purpose. Without a shedder (a file read losslessly) it never
touches the decoder and counts nothing."""

from __future__ import annotations

import logging
import time
from typing import Any

from streamer.sources.base import SourceStats
from streamer.sources.readahead import CATCHUP_MAX_LOAD
from streamer.sources.shedding import DecodeShedder, SkipCount, SkipLevel

log = logging.getLogger(__name__)


class SessionShedding:
    """Per video packet, in this order: `next_packet`, `worked` (each timed piece of work),
    `decoded` (unless the packet was damaged), `frame` for each frame it gave, `packet_done`;
    `end` when the session ends."""

    def __init__(
        self,
        shedder: DecodeShedder | None,
        ctx: Any,
        stats: SourceStats,
        source_id: str,
        frame_s: float | None,
    ) -> None:
        self.shedder = shedder
        self._ctx = ctx  # the decoder's codec context: its skip_frame is set
        self._stats = stats
        self._source_id = source_id
        self.level: SkipLevel = "DEFAULT"
        self._blind = False  # shedding left no frame for too long: not again this session
        self._skips = SkipCount()
        # The last packet gave a frame on keyframes only: it was a keyframe, whatever its flag
        # said, so the packets after it can be decoded again.
        self._after_key = False
        self._busy_s = 0.0  # the loop's work on this packet
        # The time this packet moves the stream on, as the decode loop keeps to it (a
        # read-ahead's schedule, which a catch-up shortens; otherwise the stream's media).
        self._step_s: float | None = None
        if shedder is not None:
            shedder.reset(frame_s)
        stats.skip_level = "DEFAULT"  # a new decoder: it skips nothing yet
        self._cpu_mark = time.thread_time()

    @property
    def skipping(self) -> bool:
        return self.level != "DEFAULT"

    @property
    def behind_s(self) -> float | None:
        """How far behind the decoder runs, by the shedder (None without one)."""
        return None if self.shedder is None else self.shedder.behind_s

    def catch_up_speed(self, asked: SkipLevel) -> float:
        """How much faster than the stream's own pace the decoder could play a read-ahead and
        stay about `CATCHUP_MAX_LOAD` busy (1: not faster): from its work per second of the
        stream's media while decoding everything (not per second of the schedule it was given,
        which a faster pace shortens: that would feed the speed back into itself). Only while
        the shedder asks for nothing to be skipped (`asked`: from `next_packet`), and once the
        cost is known afresh since it last skipped."""
        cost = None if self.shedder is None else self.shedder.cost
        if asked != "DEFAULT" or cost is None:
            return 1.0
        return max(1.0, CATCHUP_MAX_LOAD / max(cost, 1e-3))

    def next_packet(
        self, now: float, media_s: float | None, keyframe: bool, shed_downstream: bool
    ) -> SkipLevel:
        """A video packet is about to be decoded: its stream time `media_s` (seconds), whether
        it is flagged a keyframe, and whether the pipeline is turning this camera's frames
        away. Returns the level the shedder asks for (set unless this session gave up)."""
        self._step_s = None
        if self.shedder is None:
            return "DEFAULT"
        self._busy_s = time.thread_time() - self._cpu_mark  # (demuxing, on the CPU)
        level, self._step_s = self.shedder.next_packet(
            now, media_s, keyframe, self._after_key, shed_downstream
        )
        if level != self.level and not self._blind:
            self._set(level)
            log.info("source %s: decoder skips %s", self._source_id, level)
        return level

    def worked(self, seconds: float) -> None:
        """The loop spent `seconds` on the packet (decoding it, handing a frame on)."""
        self._busy_s += seconds

    def decoded(self, size: int, gave_frame: bool) -> None:
        """The packet (of `size` bytes, not a damaged one) went through the decoder."""
        if self.shedder is not None and size:
            self._skips.packet(gave_frame, self.skipping)

    def frame(self, gap: int) -> int:
        """A frame came out, `gap` frame intervals after the one before: how many frames are
        newly counted as skipped on purpose."""
        return self._skips.frame(gap, self.skipping) if self.shedder is not None else 0

    def packet_done(self, gave_frame: bool, media_s: float | None = None) -> None:
        """The packet's frames are handed on: its work counts against the decoder (`media_s`:
        the stream's own media it holds, where the loop's time is a read-ahead's schedule)."""
        if self.shedder is None:
            return
        if self._step_s is not None:
            self.shedder.served(self._busy_s, self._step_s, media_s)
        self._after_key = self.level == "NONKEY" and gave_frame
        self._cpu_mark = time.thread_time()

    def give_up(self) -> None:
        """Skipping left no frame for too long: decode everything for the rest of the session."""
        self._blind = True
        self._set("DEFAULT")

    def end(self, flushed: bool) -> int:
        """The session ended (`flushed`: its decoder gave out all it held): the frames still
        to count as skipped."""
        return self._skips.end(flushed)

    def _set(self, level: SkipLevel) -> None:
        self._ctx.skip_frame = self.level = self._stats.skip_level = level
