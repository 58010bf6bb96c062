"""The Source interface and the bounded, drop-oldest hand-off from a decode thread to the loop."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import av

from streamer.errors import EndOfStream
from streamer.sources.frames import from_av
from streamer.types import Frame

log = logging.getLogger(__name__)

HANDOFF_MAX_FRAMES = 4
THREAD_JOIN_TIMEOUT_S = 5.0


@dataclass
class SourceStats:
    """Counters of one source. Written by its decode thread, read by the loop."""

    decoded: int = 0
    skipped_fps: int = 0
    dropped_handoff: int = 0
    state: str = "starting"


class Handoff:
    """A bounded queue from one producer thread to the asyncio loop. When full, the oldest frame
    is dropped (latest frames win) and counted in ``stats.dropped_handoff``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: SourceStats, maxlen: int) -> None:
        self._loop = loop
        self._stats = stats
        self._items: deque[Frame] = deque()
        self._maxlen = maxlen
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._ended = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, frame: Frame) -> None:
        """Called from the decode thread."""
        with self._lock:
            if len(self._items) >= self._maxlen:
                self._items.popleft()
                self._stats.dropped_handoff += 1
            self._items.append(frame)
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
                    return self._items.popleft()
                if self._ended:
                    raise EndOfStream()
                self._ready.clear()
            await self._ready.wait()


class Source(abc.ABC):
    """A camera or stand-in. `recv()` yields frames until EndOfStream; `stop()` is idempotent."""

    def __init__(self, source_id: str, max_fps: float | None = None) -> None:
        self.source_id = source_id
        self.max_fps = max_fps
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handoff: Handoff | None = None
        self._next_frame_id = 0
        self._next_emit_s: float | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handoff = Handoff(loop, self.stats, HANDOFF_MAX_FRAMES)
        self._thread = threading.Thread(
            target=self._thread_main, name=f"source-{self.source_id}", daemon=True
        )
        self._thread.start()

    async def recv(self) -> Frame:
        assert self._handoff is not None, "start() first"
        return await self._handoff.get()

    @property
    def in_handoff(self) -> int:
        return len(self._handoff) if self._handoff is not None else 0

    def stop(self) -> None:
        """Ask the decode thread to stop and join it (bounded)."""
        self._stop.set()
        t = self._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(THREAD_JOIN_TIMEOUT_S)
            if t.is_alive():
                log.warning(
                    "source %s: decode thread did not stop within %.1f s",
                    self.source_id,
                    THREAD_JOIN_TIMEOUT_S,
                )

    def _thread_main(self) -> None:
        assert self._handoff is not None
        try:
            self._run()
        except Exception:
            log.exception("source %s: decode thread failed", self.source_id)
            self.stats.state = "failed"
        finally:
            if self.stats.state != "failed":
                self.stats.state = "ended"
            self._handoff.end()

    @abc.abstractmethod
    def _run(self) -> None:
        """Decode until the stream ends or `self._stop` is set, calling `self._emit` per frame."""

    def _offer(self, media_time_s: float, vf: av.VideoFrame) -> None:
        """Count a decoded frame; hand it to the loop unless ``max_fps`` skips it.

        `media_time_s` is the frame's presentation time in seconds.
        """
        self.stats.decoded += 1
        if self.max_fps is not None:
            period = 1.0 / self.max_fps
            if self._next_emit_s is not None and media_time_s < self._next_emit_s - 1e-6:
                self.stats.skipped_fps += 1
                return
            nxt = (media_time_s if self._next_emit_s is None else self._next_emit_s) + period
            self._next_emit_s = nxt if nxt > media_time_s else media_time_s + period
        assert self._handoff is not None
        frame_id = self._next_frame_id
        self._next_frame_id += 1
        self._handoff.put(from_av(vf, self.source_id, frame_id, time.time()))
