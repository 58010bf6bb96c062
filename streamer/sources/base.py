"""The Source interface: a decode thread that reconnects by itself, a stall watchdog, and the
bounded hand-off from that thread to the event loop (drop-oldest for live sources; a lossless
source's decoder waits for room instead)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np

from streamer.errors import EndOfStream
from streamer.sources.frames import from_av, from_bgr
from streamer.sources.redact import redact
from streamer.sources.shedding import DecodeShedder
from streamer.types import U8, Frame

log = logging.getLogger(__name__)

HANDOFF_MAX_FRAMES = 4
# States in which a source's last `behind_s` still says something (in the others it is None;
# "stopped": the pipeline's last counters keep where each camera was).
KEEPS_SCHEDULE = frozenset({"streaming", "stopped"})
HANDOFF_WAIT_POLL_S = 0.1  # a decoder waiting for room looks at its stop flag this often
JOIN_MARGIN_S = 2.0  # beyond the read timeout, for a blocked FFmpeg read to return
# Decode threads (and the codec threads they start) run this much nicer than the rest: when the
# CPU is short, the stages that turn decoded frames into crops go first, and a decoder that falls
# behind sheds (skips) frames instead of decoding frames nobody can serve.
DECODE_NICE = 5
MEDIA_TIME_EPS_S = 1e-6


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with jitter; the attempt count resets after a healthy session."""

    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 10.0

    def delay_s(self, attempt: int, rnd: random.Random) -> float:
        """Delay before retry number `attempt` (0-based): between half and all of
        ``min(cap, base * 2**attempt)``, so many cameras do not retry in lock-step."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt, 30))
        return float(ceiling * rnd.uniform(0.5, 1.0))


class EvenSkip:
    """The ``max_fps`` schedule: lets frames through at most `max_fps` a second of media time,
    evenly spaced (a 30 fps stream at 12 keeps frames 0, 3, 5, 8, 10, ...). Pure: media times
    are passed in. `reset` at each new session, whose media clock starts again; a clock that
    goes back by more than a period within one is re-anchored too."""

    def __init__(self) -> None:
        self.next_s: float | None = None

    def reset(self) -> None:
        self.next_s = None

    def admit(self, media_time_s: float, max_fps: float | None) -> bool:
        """True when the frame at `media_time_s` is to be emitted, False when skipped."""
        if max_fps is None:
            return True
        period = 1.0 / max_fps
        nxt = self.next_s
        if nxt is not None and media_time_s < nxt - period - MEDIA_TIME_EPS_S:
            nxt = None  # earlier than any frame after the last emitted one: a new clock
        if nxt is not None and media_time_s < nxt - MEDIA_TIME_EPS_S:
            return False
        due = (media_time_s if nxt is None else nxt) + period
        self.next_s = due if due > media_time_s else media_time_s + period
        return True


class StreamStalled(Exception):
    """No frame for longer than the stall timeout."""


@dataclass
class SourceStats:
    """Counters and state of one source. Written by its decode thread, read by the loop."""

    decoded: int = 0
    skipped_fps: int = 0
    dropped_handoff: int = 0
    skipped_decode: int = 0  # frames the decoder skipped on purpose, shedding load (never decoded)
    skip_level: str = "DEFAULT"  # what the decoder skips now (sources/shedding.py)
    bad_packets: int = 0  # damaged packets the decoder refused (skipped; decoding went on)
    too_large: int = 0  # sessions ended on a picture larger than the source's max_pixels
    # Frames missing from the input, by the gaps in its timestamps of over 2.5 frame intervals
    # and up to 30 s (longer: a new clock): frames a camera or the network lost, segments an
    # HLS server failed to deliver.
    missing_frames: int = 0
    reconnects: int = 0
    stalls: int = 0
    state: str = "starting"
    last_error: str | None = None
    last_frame_at: float | None = None  # monotonic
    # How far behind its schedule the decoder's last frame came, in seconds: a file played in
    # real time, against its presentation time; a network stream, as its shedder reads it (the
    # larger of its lag and its backlog); None where nothing says (webcams, unpaced files) and
    # while frames do not come (a state not in KEEPS_SCHEDULE).
    behind_s: float | None = None


class Handoff:
    """A bounded queue from one producer thread to the asyncio loop. When full, the oldest frame
    is dropped (latest frames win) and counted in ``stats.dropped_handoff`` -- or, when the
    producer passes a stop event to `put`, the producer waits for room (lossless).

    It also counts, under its lock, every frame the producer decoded (``decoded``, and
    ``skipped_fps`` for those `skip` is told of), so `snapshot` gives counts that agree with
    each other: a decoded frame is skipped, dropped, or in the hand-off (a frame waiting for
    room counts as in it) until the loop takes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: SourceStats, maxlen: int) -> None:
        self._loop = loop
        self._stats = stats
        self._items: deque[Frame] = deque()
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._ready = asyncio.Event()
        self._ended = False
        self._waiting = 0  # 1 while the producer holds a frame waiting for room
        self.waiting_for_room = False

    def __len__(self) -> int:
        return len(self._items) + self._waiting

    def discard(self) -> int:
        """Empty the queue (its producer has stopped); returns how many frames it held."""
        with self._lock:
            n = len(self._items)
            self._items.clear()
            return n

    def snapshot(self) -> tuple[int, int, int, int]:
        """(decoded, skipped_fps, dropped_handoff, in the hand-off), taken together."""
        with self._lock:
            s = self._stats
            return s.decoded, s.skipped_fps, s.dropped_handoff, len(self._items) + self._waiting

    def count(self) -> None:
        """Called from the decode thread: a decoded frame handed on without the queue (see
        `Source.sink`)."""
        with self._lock:
            self._stats.decoded += 1

    def skip(self) -> None:
        """Called from the decode thread: a decoded frame the rate limit skips."""
        with self._lock:
            self._stats.decoded += 1
            self._stats.skipped_fps += 1

    def put(self, frame: Frame, wait_unless: threading.Event | None = None) -> None:
        """Called from the decode thread with a decoded frame. With `wait_unless`, wait while
        full, until that event is set (the source is stopping: then drop as usual)."""
        with self._lock:
            self._stats.decoded += 1
            if wait_unless is not None:
                self.waiting_for_room = True
                self._waiting = 1
                while len(self._items) >= self._maxlen and not wait_unless.is_set():
                    self._room.wait(HANDOFF_WAIT_POLL_S)
                self._waiting = 0
                self.waiting_for_room = False
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self._stats.dropped_handoff += 1
            # Only an empty queue's consumer may be waiting: when frames are already queued,
            # the wake-up that came with the first of them is still pending or being served
            # (`get` waits only after finding the queue empty, under this lock). Under load
            # this saves a loop wake-up per frame.
            first = not self._items
            self._items.append(frame)
        if first:
            self._wake()

    def end(self) -> None:
        """Called from the decode thread when no more frames will come."""
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Frame:
        """Next frame, oldest first; raises EndOfStream once the producer ended and all is taken."""
        while True:
            with self._lock:
                if self._items:
                    self._room.notify()
                    return self._items.popleft()
                if self._ended:
                    raise EndOfStream()
                self._ready.clear()
            await self._ready.wait()


class Source(abc.ABC):
    """A camera or stand-in, decoded in its own named thread.

    `_session()` (one connection) is retried forever with back-off, unless the source is finite
    and ended normally, or failed after handing on frames (then it is `failed`: opened again,
    a file would hand its first frames on again). `recv()` yields frames until EndOfStream;
    `stop()` is idempotent.
    """

    #: A finite source (a file played once) ends for good when its session returns normally,
    #: and fails for good when it fails after handing on frames.
    finite = False
    #: A lossless source (a file read unpaced) is never dropped from: when the pipeline is
    #: behind, its decoder waits (the pipeline's stages wait too) instead of dropping frames.
    lossless = False

    def __init__(
        self,
        source_id: str,
        *,
        max_fps: float | None = None,
        retry: RetryPolicy | None = None,
        stall_timeout_s: float = 5.0,
    ) -> None:
        self.source_id = source_id
        self.max_fps = max_fps
        self.retry = retry or RetryPolicy()
        self.stall_timeout_s = stall_timeout_s
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handoff: Handoff | None = None
        self._next_frame_id = 0
        self._schedule = EvenSkip()
        #: Strings never to store, log or serve (a camera URL's password).
        self.secrets: tuple[str, ...] = ()
        self._rnd = random.Random()
        self._shedder = DecodeShedder()
        #: Monotonic time until which the pipeline sheds this source's frames (it cannot serve
        #: them all): the decoder then skips what it can (set from the loop, read by the decoder).
        self.shed_downstream_until = 0.0
        self._state_lock = threading.Lock()
        self._session_frames = 0
        self._watch_since = 0.0
        #: Set before `start` for a source that is not lossless: called from the decode thread
        #: with each frame it hands on, instead of queueing the frame for the loop (the
        #: pipeline decides and does all a live frame needs right there; it counts the frame
        #: with `count_decoded`). Hops between threads cost more than that work.
        self.sink: Callable[[Frame], None] | None = None
        #: Called from the decode thread with the seconds each decode call took.
        self.decode_observer: Callable[[float], None] | None = (
            None  # monotonic: the later of session start and last frame
        )

    # -- life cycle (loop side) ------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handoff = Handoff(loop, self.stats, HANDOFF_MAX_FRAMES)
        self._thread = threading.Thread(
            target=self._thread_main, name=f"source-{self.source_id}", daemon=True
        )
        self._thread.start()

    async def recv(self) -> Frame:
        assert self._handoff is not None, "start() first"
        return await self._handoff.get()

    def discard_handoff(self) -> int:
        """After `stop`: let go of the frames still in the hand-off; returns how many."""
        return self._handoff.discard() if self._handoff is not None else 0

    @property
    def next_frame_id(self) -> int:
        """The id the next frame will get."""
        return self._next_frame_id

    def continue_ids(self, next_frame_id: int) -> None:
        """Before `start`: number frames on from `next_frame_id` (a camera restarted in the same
        process keeps its ids rising, so detections for its old frames cannot pair new ones)."""
        self._next_frame_id = next_frame_id

    def count_decoded(self) -> None:
        """(From `sink`) count a frame it was handed as decoded."""
        assert self._handoff is not None, "start() first"
        self._handoff.count()

    @property
    def in_handoff(self) -> int:
        return len(self._handoff) if self._handoff is not None else 0

    def counts(self) -> tuple[int, int, int, int]:
        """(decoded, skipped_fps, dropped_handoff, in_handoff), consistent with each other."""
        if self._handoff is None:
            s = self.stats
            return s.decoded, s.skipped_fps, s.dropped_handoff, 0
        return self._handoff.snapshot()

    @property
    def join_timeout_s(self) -> float:
        """How long a stop may take: a blocked read returns within the stall timeout."""
        return self.stall_timeout_s + JOIN_MARGIN_S

    @property
    def alive(self) -> bool:
        """Whether the decode thread still runs (after `stop`: still blocked in a read)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Ask the decode thread to stop and join it, waiting at most `join_timeout_s`."""
        self._stop.set()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(self.join_timeout_s)
            if t.is_alive():
                log.error(
                    "source %s: decode thread still blocked %.1f s after stop",
                    self.source_id,
                    self.join_timeout_s,
                )

    def check_stall(self, now: float) -> None:
        """Watchdog, called periodically from the loop: a streaming source with no frame for
        `stall_timeout_s` is marked stalled (the reader's own read timeout then tears it down)."""
        last = self.stats.last_frame_at
        if (
            self.stats.state == "streaming"
            and last is not None
            and now - last > self.stall_timeout_s
            and not (self._handoff is not None and self._handoff.waiting_for_room)
        ):
            # Only from "streaming": the decode thread may have moved on (to backing_off, say)
            # since the state was read above, and that state must stand.
            self._set_state("stalled", f"no frame for {now - last:.1f} s", only_from="streaming")

    # -- the decode thread -----------------------------------------------------------------

    def _set_state(
        self, state: str, reason: str | None = None, only_from: str | None = None
    ) -> None:
        """Move to `state` (and, if `only_from` is given, only out of that state: the check and
        the move are one step under the lock)."""
        if reason is not None:
            reason = redact(reason, self.secrets)
        with self._state_lock:
            old = self.stats.state
            if old == state or (only_from is not None and old != only_from):
                return
            if state == "stalled":
                self.stats.stalls += 1
            if state not in KEEPS_SCHEDULE:
                self.stats.behind_s = None  # no frames come: nothing they run behind
            self.stats.state = state
            if reason is not None:
                self.stats.last_error = reason
        level = logging.WARNING if state in ("stalled", "backing_off", "failed") else logging.INFO
        log.log(
            level,
            "source %s: %s -> %s%s",
            self.source_id,
            old,
            state,
            f" ({reason})" if reason else "",
        )

    def _thread_main(self) -> None:
        assert self._handoff is not None
        attempt = 0
        _lower_priority()
        try:
            while not self._stop.is_set():
                self._set_state("connecting")
                self._session_frames = 0
                self._schedule.reset()
                session_start = self._watch_since = time.monotonic()
                try:
                    self._session()
                    if self._stop.is_set():
                        break
                    if self.finite:
                        self._set_state("ended")
                        return
                    reason = "stream ended"
                except StreamStalled as e:
                    if self.stats.state != "stalled":
                        self._set_state("stalled", str(e))
                    reason = f"stalled: {e}"
                except Exception as e:
                    reason = _describe(e)
                    idle_s = time.monotonic() - self._watch_since
                    if self.stats.state == "streaming" and idle_s >= self.stall_timeout_s:
                        # The read timed out before the loop's watchdog looked: a stall too.
                        self._set_state("stalled", f"no frame for {idle_s:.1f} s")
                if self._stop.is_set():
                    break
                if self.finite and self._session_frames:
                    # A file that failed part-way (a picture past max_pixels, a read error):
                    # opened again, it would hand on its first frames again, as new ones.
                    self._set_state(
                        "failed",
                        f"{reason} after {self._session_frames} frames (a file is not played "
                        "again from its start)",
                    )
                    return
                healthy = time.monotonic() - session_start >= self.retry.healthy_after_s
                if healthy and self._session_frames:
                    attempt = 0
                delay = self.retry.delay_s(attempt, self._rnd)
                attempt += 1
                self.stats.reconnects += 1
                self._set_state("backing_off", f"{reason}; retry in {delay:.1f} s")
                if self._stop.wait(delay):
                    break
            self._set_state("stopped")
        except Exception as e:  # a bug, not a camera fault: say so and end this source
            trace = redact("".join(traceback.format_exception(e)), self.secrets)
            log.error("source %s: decode thread failed\n%s", self.source_id, trace.rstrip())
            self._set_state("failed", _describe(e))
        finally:
            self._handoff.end()

    @abc.abstractmethod
    def _session(self) -> None:
        """One connection: open, decode and `_offer` frames until the stream ends (return), it
        fails (raise), or `self._stop` is set (return)."""

    def _offer(self, media_time_s: float, picture: av.VideoFrame | U8) -> None:
        """Count a decoded frame; hand it to the loop unless ``max_fps`` skips it.

        `media_time_s` is the frame's presentation time in seconds; `picture` is a PyAV frame or
        a BGR (h, w, 3) array.
        """
        assert self._handoff is not None
        self._session_frames += 1
        self.stats.last_frame_at = self._watch_since = time.monotonic()
        if self.stats.state != "streaming":
            self._set_state("streaming")
        if not self._schedule.admit(media_time_s, self.max_fps):
            self._handoff.skip()
            return
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        now = time.time()
        if isinstance(picture, np.ndarray):
            frame = from_bgr(picture, self.source_id, frame_id, now)
        else:
            frame = from_av(picture, self.source_id, frame_id, now)
        if self.lossless:
            self._handoff.put(frame, wait_unless=self._stop)
            # Waiting for the pipeline is not a stall.
            self.stats.last_frame_at = self._watch_since = time.monotonic()
        elif self.sink is not None:
            self.sink(frame)
        else:
            self._handoff.put(frame)

    def _note_progress(self) -> None:
        """A packet the decoder skipped on purpose (shedding load): the stream is alive, so
        neither watchdog may take the missing frames for a stall (for at most two stall timeouts
        after the last frame, the way to the next keyframe included: `AvSource._decode` then
        stops skipping)."""
        self.stats.last_frame_at = self._watch_since = time.monotonic()

    def _check_watchdog(self) -> None:
        """Raise StreamStalled from inside a read loop when packets come but frames do not."""
        idle_s = time.monotonic() - self._watch_since
        if idle_s > self.stall_timeout_s:
            raise StreamStalled(f"no frame for {idle_s:.1f} s")


def _lower_priority() -> None:
    """Make the calling thread (and the threads it starts) `DECODE_NICE` nicer; Linux keeps a
    nice value per thread. Elsewhere, or if refused, it runs as it is."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + DECODE_NICE)


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
