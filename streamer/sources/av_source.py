"""Files and FFmpeg test sources decoded with PyAV in a worker thread."""

from __future__ import annotations

import logging
import time

import av

from streamer.sources.base import Source

log = logging.getLogger(__name__)

LAVFI_PREFIX = "lavfi:"


class AvFileSource(Source):
    """A video file, or an FFmpeg lavfi graph (``lavfi:testsrc2=size=1280x720:rate=30``).

    With `realtime`, frames are released at their presentation times, like a camera; otherwise as
    fast as the decoder goes. With `loop`, a file starts over at its end (frame ids keep rising).
    """

    def __init__(
        self,
        source_id: str,
        url: str,
        *,
        max_fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
    ) -> None:
        super().__init__(source_id, max_fps)
        self.url = url
        self.realtime = realtime
        self.loop = loop

    def _open(self) -> av.container.InputContainer:
        if self.url.startswith(LAVFI_PREFIX):
            return av.open(self.url[len(LAVFI_PREFIX) :], format="lavfi")
        return av.open(self.url)

    def _run(self) -> None:
        offset_s = 0.0  # media time of the current pass's start, when looping
        while not self._stop.is_set():
            self.stats.state = "connecting"
            with self._open() as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                self.stats.state = "streaming"
                log.info(
                    "source %s: streaming %s (%sx%s)",
                    self.source_id,
                    self.url,
                    stream.codec_context.width,
                    stream.codec_context.height,
                )
                start_wall = time.monotonic()
                first_s: float | None = None
                last_s = 0.0
                for vf in container.decode(stream):
                    if self._stop.is_set():
                        return
                    t = float(vf.time) if vf.time is not None else last_s
                    if first_s is None:
                        first_s = t
                    last_s = t
                    if self.realtime:
                        delay = start_wall + (t - first_s) - time.monotonic()
                        if delay > 0 and self._stop.wait(delay):
                            return
                    self._offer(offset_s + t, vf)
                offset_s += last_s + 1e-3
            if not self.loop:
                return
