"""What the preview shows: per source, the newest frame (with its detections once paired) and
the newest crops. Frames are drawn and turned into video only while someone watches, at most
`max_fps` a second, in a worker thread, once for all viewers of a source; each viewer's track
makes its own frames of the drawn pictures."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import itertools
import logging
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, cast

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from streamer.preview.draw import annotate
from streamer.supervise import Supervisor
from streamer.types import U8, Detections, Frame

log = logging.getLogger(__name__)

RECENT_CROPS = 12  # per source, for the crop strip
PAIRED_FRESH_S = 1.0  # after this long without a paired frame, show plain frames
VIDEO_CLOCK_RATE = 90_000
CROP_JPEG_QUALITY = 80
# Video-range black, 640x360, as I420 rows: shown until the first picture is drawn.
BLACK: U8 = np.concatenate([np.full((360, 640), 16, np.uint8), np.full((180, 640), 128, np.uint8)])
BLACK.setflags(write=False)


# The crop header fields the crop strip shows; a RecentCrop keeps only these (not, e.g., a
# prediction's keypoints or polygon), for every source, watched or not.
SHOWN_FIELDS = ("frame_id", "class", "confidence", "tracker_id", "width", "height")


@dataclass
class RecentCrop:
    key: int
    shown: dict[str, Any]  # SHOWN_FIELDS of its header
    image: np.ndarray
    jpeg: bytes | None = None  # encoded once, when first asked for


class PreviewTrack(MediaStreamTrack):
    """One viewer's video of a source: each newly drawn picture (the last one again when nothing
    new comes, so the browser keeps playing), each time as a frame of its own."""

    kind = "video"

    def __init__(self, source: PreviewSource) -> None:
        super().__init__()
        self._source = source
        self._start = time.monotonic()
        self._seen = 0  # the last picture handed out (PreviewSource.rendered)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        # A new frame every time, for this viewer alone: aiortc encodes it in a worker thread,
        # and the encoder writes into it (PyAV rebases its pts and time base in place, aiortc's
        # H.264 encoder sets its picture type). A frame handed out twice, or to two viewers,
        # could have its time changed under another encoder: libvpx then saw time go
        # backwards, failed, and that viewer's video stopped. The frames share the drawn
        # picture's pixels, which nothing writes (read-only).
        picture, self._seen = await self._source.next_output(1.0 / self._source.max_fps, self._seen)
        frame = av.VideoFrame.from_numpy_buffer(picture, format="yuv420p")  # no copy
        frame.pts = int((time.monotonic() - self._start) * VIDEO_CLOCK_RATE)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return frame


class PreviewSource:
    """Preview state of one source."""

    def __init__(self, source_id: str, max_width: int, max_fps: float, executor: Executor) -> None:
        self.source_id = source_id
        self.max_width = max_width
        self.max_fps = max_fps
        self._executor = executor
        self.tracks: set[PreviewTrack] = set()  # a viewer's each, connected or not yet
        self.viewers = 0  # connected viewers
        self.closed = False  # the source was removed
        self.crops: deque[RecentCrop] = deque(maxlen=RECENT_CROPS)
        self._input: tuple[Frame, Detections | None] | None = None
        self._input_ready = asyncio.Event()
        self._output: U8 | None = None  # the last drawn picture, I420, read-only
        self._new_output = asyncio.Event()  # set (and replaced) when a picture is drawn
        self._last_paired = 0.0
        self._render_task: asyncio.Task[None] | None = None
        self.supervisor = Supervisor(f"preview render of {source_id}")
        self.rendered = 0  # pictures drawn so far: which one `_output` is

    # Called by the pipeline (cheap: keep references, nothing more).
    def on_frame(self, frame: Frame, now: float) -> None:
        if self.viewers and now - self._last_paired > PAIRED_FRESH_S:
            self._set_input(frame, None)

    def on_paired(self, frame: Frame, dets: Detections, now: float) -> None:
        self._last_paired = now
        if self.viewers:
            self._set_input(frame, dets)

    def on_crop(self, key: int, header: dict[str, Any], image: np.ndarray) -> None:
        shown = {name: header[name] for name in SHOWN_FIELDS}
        self.crops.append(RecentCrop(key, shown, image))

    def _set_input(self, frame: Frame, dets: Detections | None) -> None:
        self._input = (frame, dets)
        self._input_ready.set()

    # Viewers. A viewer is attached from its offer on (its track must exist to answer it) and
    # counts in `viewers` only once connected: nothing is drawn for a viewer still connecting.
    @property
    def attached(self) -> int:
        """Viewers with a peer connection, connected or not yet."""
        return len(self.tracks)

    def attach(self) -> PreviewTrack:
        """A new viewer's peer connection: its own track."""
        track = PreviewTrack(self)
        self.tracks.add(track)
        return track

    def connect(self) -> None:
        """An attached viewer connected: draw frames while at least one is."""
        self.viewers += 1
        if self._render_task is None:
            self._render_task = asyncio.create_task(self.supervisor.run_async(self._render_loop))

    def detach(self, track: PreviewTrack, connected: bool) -> None:
        """The viewer of `track` left (`connected`: after `connect`)."""
        if connected:
            self.viewers = max(0, self.viewers - 1)
            if self.viewers == 0:
                if self._render_task is not None:
                    self._render_task.cancel()
                    self._render_task = None
                self._input = None
        self.tracks.discard(track)
        track.stop()
        if not self.tracks:
            self._output = None

    async def close(self) -> None:
        """The source is gone: stop drawing and end the viewers' tracks."""
        self.closed = True
        task, self._render_task = self._render_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for track in list(self.tracks):
            track.stop()
        self.tracks.clear()
        self._input = self._output = None

    async def _render_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.max_fps
        while True:
            await self._input_ready.wait()
            self._input_ready.clear()
            if self._input is None:
                continue
            frame, dets = self._input
            started = loop.time()
            self._output = await loop.run_in_executor(self._executor, self._render, frame, dets)
            self.rendered += 1
            drawn, self._new_output = self._new_output, asyncio.Event()
            drawn.set()
            await asyncio.sleep(max(0.0, period - (loop.time() - started)))

    def _render(self, frame: Frame, dets: Detections | None) -> U8:
        img = annotate(frame, dets, self.max_width)  # even sizes (tap_size)
        # A height that is a multiple of 4: PyAV's from_numpy_buffer (recv) reads I420 rows as
        # a height of rows // 6 * 4, 2 rows short for the others (640x362 from 2688x1520).
        # Heights are even: 2 rows less, or (a picture 2 rows high) 2 more.
        if img.shape[0] % 4:
            edge = ((0, 2), (0, 0), (0, 0))
            img = img[:-2] if img.shape[0] > 2 else np.pad(img, edge, mode="edge")
        drawn = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format="yuv420p")
        picture = cast(U8, drawn.to_ndarray())
        picture.setflags(write=False)  # viewers' frames share it
        return picture

    async def next_output(self, wait_s: float, seen: int) -> tuple[U8, int]:
        """The picture drawn after picture `seen` (I420, rows of Y then U then V), or the last
        one again after `wait_s` (a black picture before the first); with its number."""
        if self.rendered == seen:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._new_output.wait()
        return (BLACK if self._output is None else self._output), self.rendered


class PreviewHub:
    """Every source's preview."""

    def __init__(
        self, source_ids: list[str], max_width: int, max_fps: float, executor: Executor
    ) -> None:
        self.sources = {s: PreviewSource(s, max_width, max_fps, executor) for s in source_ids}
        self._executor = executor
        self._max_width, self._max_fps = max_width, max_fps
        self._keys = itertools.count(1)
        # Crop JPEGs are encoded one at a time, each once: the tap's pictures and the viewers'
        # frames share these workers, and any number of requests may ask (3,000 at once
        # turned frames away from the tap).
        self._jpeg_turn = asyncio.Semaphore(1)

    def add_source(self, source_id: str) -> None:
        """A camera added while running. ValueError if the id has a preview."""
        if source_id in self.sources:
            raise ValueError(f"source {source_id!r} already has a preview")
        self.sources[source_id] = PreviewSource(
            source_id, self._max_width, self._max_fps, self._executor
        )

    async def remove_source(self, source_id: str) -> None:
        """A camera removed while running: its viewers' track ends."""
        preview = self.sources.pop(source_id, None)
        if preview is not None:
            await preview.close()

    def subscribe(self, source_id: str) -> tuple[PreviewSource, PreviewTrack]:
        """A new viewer of `source_id`: its preview and its track. Nothing is drawn for it until
        the preview's `connect`; end with its `detach` (on that object: the id may have a new
        preview by then)."""
        preview = self.sources[source_id]
        return preview, preview.attach()

    def watched(self, source_id: str) -> bool:
        """Whether a viewer has `source_id` open (its crop strip wants every crop)."""
        preview = self.sources.get(source_id)  # called from the crop thread
        return preview is not None and preview.attached > 0

    def on_crop(self, header: dict[str, Any], image: np.ndarray) -> None:
        preview = self.sources.get(header["source_id"])  # called from the crop thread
        if preview is not None:
            preview.on_crop(next(self._keys), header, image)

    def recent_crops(self, source_id: str) -> list[dict[str, Any]]:
        return [
            {"key": c.key, **c.shown}
            for c in reversed(list(self.sources[source_id].crops))  # the crop thread appends
        ]

    async def crop_jpeg(self, source_id: str, key: int) -> bytes | None:
        for c in list(self.sources[source_id].crops):
            if c.key == key:
                async with self._jpeg_turn:
                    if c.jpeg is None:
                        loop = asyncio.get_running_loop()
                        c.jpeg = await loop.run_in_executor(self._executor, _jpeg, c.image)
                return c.jpeg
        return None


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, CROP_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cannot encode a crop as JPEG")
    return buf.tobytes()
