"""Sources decoded with PyAV: RTSP/HTTP cameras, files, and FFmpeg lavfi test graphs."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import av
from av.stream import Discard

from streamer.config import MAX_PIXELS
from streamer.errors import SourceError
from streamer.sources.base import RetryPolicy, Source
from streamer.sources.http_input import OPTIONS, HttpInput, is_http
from streamer.sources.protocols import (
    LIVE_WHITELIST,
    LOCAL_PROTOCOLS,
    is_live,
    is_network_file,
    protocol,
)
from streamer.sources.readahead import (
    CLOSE_WAIT_S,
    MAX_GAP_S,
    MAX_STEP_S,
    READ_TIMEOUT_S,
    ReadAhead,
    Steps,
    seconds,
)
from streamer.sources.redact import redact, url_secrets
from streamer.sources.session_shedding import SessionShedding

log = logging.getLogger(__name__)

LAVFI_PREFIX = "lavfi:"
# A file read unpaced decodes with at most this many frame threads, as FFmpeg's own choice does
# (more hold more pictures, and the errors of the last of them are lost at the end of the file).
MAX_THREADS = 16
SEGMENTED_FORMATS = frozenset({"hls"})  # FFmpeg's demuxers of streams that come a segment at a time
# Cameras (streamer/sources/protocols.py: read with open and read timeouts, reconnected when
# they end) whose FFmpeg option `timeout` is a read timeout in microseconds; the others get FFmpeg's
# generic `rw_timeout` (RTMP's `timeout` is how long to listen for a peer: it made an rtmp://
# camera listen on its port instead of connecting; unix: counts milliseconds).
TIMEOUT_OPTION_SCHEMES = (
    "rtsp://",
    "rtsps://",
    "http://",
    "https://",
    "srt://",
    "udp://",
    "tcp://",
)


def _frame_s(stream: Any) -> float | None:
    """A video stream's nominal frame interval in seconds, if known."""
    rate = stream.guessed_rate or stream.average_rate
    return 1.0 / float(rate) if rate else None


def _segmented(container: Any) -> bool:
    """Whether the stream comes a segment at a time, each segment at once (HLS; FFmpeg's DASH
    demuxer is not in PyAV's build): it is read ahead (streamer/sources/readahead.py)."""
    return bool(SEGMENTED_FORMATS & set(container.format.name.split(",")))


def _network_reason(url: str, err: OSError) -> str:
    """FFmpeg reports an unresolvable host as a bare I/O error: say what it is."""
    host = urlsplit(url).hostname
    if host:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as e:
            return f"cannot resolve host {host!r} ({e.strerror})"
    return err.strerror or str(err)


class FrameClock:
    """A session's frames on the stream's clock: each frame's time (its timestamp; without one,
    as far on as the wall clock for a live stream or when the frame rate is unknown, else one
    frame interval on), the frames missing before it, and when it is due in real time."""

    def __init__(self, frame_s: float | None, live: bool, now: float) -> None:
        self.frame_s = frame_s
        self.live = live
        self.start_wall = self.last_wall = now  # the session's start; the last frame's arrival
        self.first_s: float | None = None  # the time real-time play is anchored to
        self.last_s = 0.0  # the last frame's time
        self.jumps = 0  # times the clock went back or jumped ahead (played on from the last)

    def place(self, time_s: float | None, now: float) -> tuple[float, int]:
        """The time of a frame that came out at `now` with timestamp `time_s` (seconds), and
        how many frame intervals lie empty between it and the frame before."""
        if time_s is not None:
            t = time_s
        elif self.live or self.frame_s is None:
            t = self.last_s + (now - self.last_wall)
        else:
            t = self.last_s + self.frame_s
        gap = 0
        step = t - self.last_s
        if self.first_s is None:
            self.first_s = t
        elif (
            step < 0
            or (not self.live and step > MAX_GAP_S)
            or (self.live and step > now - self.last_wall + MAX_STEP_S)
        ):
            # The clock went back, or jumped ahead further than a file pauses or than the time
            # a live stream took (recordings joined, a camera re-synced): play on from the
            # previous frame rather than against the old clock (a burst; or a wait as long as
            # the jump, an hour for a clock an hour ahead). Nothing is missing in between.
            self.first_s += step - (self.frame_s or 0.0)
            self.jumps += 1
        else:
            if not self.live and step > MAX_STEP_S:
                # A file that pauses (a recording stopped for a while): its frames missing are
                # counted, as the read-ahead counts a live stream's, and not waited for.
                self.first_s += step - (self.frame_s or 0.0)
            if self.frame_s is not None:
                gap = max(0, round(step / self.frame_s) - 1)
        self.last_s, self.last_wall = t, now
        return t, gap

    def due_in(self, t: float, now: float) -> float:
        """Seconds from `now` until a frame at time `t` (placed) is due, played in real time
        from the session's start; negative: late."""
        assert self.first_s is not None
        return self.start_wall + (t - self.first_s) - now


class AvSource(Source):
    """A network camera (``rtsp://``, ``http(s)://`` MJPEG/HLS, ...), a video file, or an FFmpeg
    lavfi graph (``lavfi:testsrc2=size=1280x720:rate=30``).

    Network streams: TCP transport for RTSP unless told otherwise, open and read timeouts always
    set (a stalled read raises after `stall_timeout_s`), extra FFmpeg options passed through.
    Files and lavfi: with `realtime`, frames are released at their presentation times, like a
    camera; without, as fast as the pipeline serves them, every one (lossless); with `loop`, a
    file starts over at its end. Frame ids keep rising across reconnects
    and loops.
    """

    def __init__(
        self,
        source_id: str,
        url: str,
        *,
        max_fps: float | None = None,
        realtime: bool = True,
        loop: bool = False,
        transport: str = "tcp",
        open_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        av_options: Mapping[str, str] | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        super().__init__(source_id, max_fps=max_fps, retry=retry, stall_timeout_s=stall_timeout_s)
        self.max_pixels = max_pixels
        self.url = url
        self.secrets = url_secrets(url, av_options)
        self.live = is_live(url)
        self.realtime = realtime and not self.live
        self.loop = loop
        self.finite = not self.live and not loop
        self.lossless = not self.live and not self.realtime
        self.transport = transport
        self.open_timeout_s = open_timeout_s
        self.av_options = dict(av_options or {})
        self._media_offset_s = 0.0
        self._hls: bool | None = None  # whether the stream is HLS, once an open has said
        self._steps = Steps()  # an HLS stream's timeline, across its sessions
        self._http: HttpInput | None = None  # an http(s) camera's session's input

    def _open(self) -> Any:
        if self.url.startswith(LAVFI_PREFIX):
            return av.open(self.url[len(LAVFI_PREFIX) :], format="lavfi")
        if is_network_file(self.url):  # (a file on another host: with timeouts)
            stall_us = str(int(self.stall_timeout_s * 1e6))
            options = {"timeout": stall_us, "rw_timeout": stall_us, **self.av_options}
            options["protocol_whitelist"] = f"{protocol(self.url)},tcp,tls"
            timeouts = (self.open_timeout_s, self.stall_timeout_s)
            started = time.monotonic()
            try:
                return av.open(self.url, options=options, timeout=timeouts)
            except (OSError, av.error.FFmpegError) as e:
                why = (
                    str(e) if isinstance(e, av.error.FFmpegError) else _network_reason(self.url, e)
                )
                if time.monotonic() - started >= min(timeouts) * 0.9:
                    # (FFmpeg's FTP client calls a server that never greets "permission denied")
                    why = f"no answer in {min(timeouts):g} s ({why})"
                raise OSError(redact(f"{self.url}: {why}", self.secrets)) from None
        if not self.live:
            # A local file: FFmpeg may reach no network, whatever the URL names or nests
            # (streamer/sources/protocols.py).
            options = {**self.av_options, "protocol_whitelist": LOCAL_PROTOCOLS}
            return av.open(self.url, options=options)
        key = "timeout" if self.url.lower().startswith(TIMEOUT_OPTION_SCHEMES) else "rw_timeout"
        options = {key: str(int(self.stall_timeout_s * 1e6)), **self.av_options}
        if not is_http(self.url):  # (what its stream names: no http, no file)
            options["protocol_whitelist"] = LIVE_WHITELIST
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            options.setdefault("rtsp_transport", self.transport)
            # Set up only the video track: an audio track that keeps flowing would keep the
            # read busy while video has stopped.
            options.setdefault("allowed_media_types", "video")
        # HLS waits for its next segment inside one read: it gets a longer read timeout (the
        # read-ahead's queue running dry shows a stall first), and starts at the playlist's
        # last segment (read ahead and paced, three segments back would be three segments
        # late for good). Guessed from the URL until the first open says, and opened again if
        # the guess was wrong.
        hls = self._hls
        if hls is None:
            hls = urlsplit(self.url).path.lower().endswith((".m3u8", ".m3u"))
        container = self._open_live(options, hls)
        self._hls = _segmented(container)
        if self._hls != hls:
            container.close()
            if self._http is not None:
                self._http.close()
            container = self._open_live(options, self._hls)
        return container

    def _check_size(self, width: int | None, height: int | None) -> None:
        """Raise SourceError (counted in `too_large`) if a picture of `width` x `height` (the
        stream's header, or a decoded frame) is larger than `max_pixels`."""
        width, height = width or 0, height or 0
        if width * height > self.max_pixels:
            self._too_large(
                f"pictures of {width}x{height} ({width * height:,} pixels) are larger than "
                f"max_pixels ({self.max_pixels:,})"
            )

    def _too_large(self, what: str) -> None:
        self.stats.too_large += 1
        raise SourceError(f"{what}: not decoded")

    def _refused(self, ctx: Any, e: av.error.FFmpegError) -> None:
        """The decoder failed: if it was on a picture over FFmpeg's bound (`_ffmpeg_bound`),
        raise SourceError (counted in `too_large`). A decoder that refuses one leaves its size
        at the new picture's (HEVC's, H.264's mostly: then it is checked) or at 0x0 (MPEG-2's,
        H.264's at times: then an allocation or argument error is taken for such a refusal, the
        likeliest cause, and said so). A picture beyond FFmpeg's own limit for any decoder
        (about 268 million pixels) is refused as invalid data with the old size kept: a
        damaged packet, as far as this can tell."""
        width, height = ctx.width or 0, ctx.height or 0
        self._check_size(width, height)
        if width * height == 0 and isinstance(e, (av.error.MemoryError, av.error.ArgumentError)):
            self._too_large(
                f"the decoder refused a picture, most likely one larger than max_pixels "
                f"({self.max_pixels:,}; FFmpeg: {e.strerror})"
            )

    @property
    def _ffmpeg_bound(self) -> int:
        """The bound FFmpeg's decoders are given: `max_pixels` plus the row padding FFmpeg
        counts (it takes a picture's width rounded up to 64), for up to 16,896 rows (H.264's
        tallest picture has 16,880)."""
        return self.max_pixels + 63 * 16_896

    def _open_live(self, options: dict[str, str], segmented: bool) -> Any:
        if segmented:
            options = {"live_start_index": "-1", **options}
        read_timeout_s = max(self.stall_timeout_s, READ_TIMEOUT_S if segmented else 0.0)
        if is_http(self.url):
            return self._open_http(options, read_timeout_s)
        try:
            return av.open(self.url, options=options, timeout=(self.open_timeout_s, read_timeout_s))
        except OSError as e:
            raise OSError(
                f"{redact(self.url, self.secrets)}: {_network_reason(self.url, e)}"
            ) from None

    def _open_http(self, options: dict[str, str], read_timeout_s: float) -> Any:
        """An http(s) camera, its input read by streamer (streamer/sources/http_input.py):
        bounded in bytes between packets (`max_pixels`, at least 8 MiB) and in time."""
        try:
            http = HttpInput(
                self.url,
                read_timeout_s=self.stall_timeout_s,
                time_limit_s=max(self.open_timeout_s, read_timeout_s),
                max_bytes=self.max_pixels,
                options=options,
                name=f"source {self.source_id}",
                redact=lambda text: redact(text, self.secrets),
            )
        except ValueError as e:  # (the config checks the same: its message says no secret)
            raise SourceError(str(e)) from None
        demuxer = {k: v for k, v in options.items() if k not in OPTIONS}
        demuxer.pop("timeout", None)  # (the reads' own)
        # FFmpeg's HLS demuxer reuses a connection only of its own HTTP client (it aborts on
        # another's): one request per resource.
        demuxer["http_persistent"] = "0"
        try:
            url = http.start()
            # A playlist known by its type alone (a name not ending in .m3u8): FFmpeg's probe
            # reads the type only from its own client, so it is told.
            container = av.open(
                url,
                format="hls" if http.hls_type else None,
                options=demuxer,
                timeout=(self.open_timeout_s, read_timeout_s),
                io_open=http,
            )
        except (OSError, av.error.FFmpegError) as e:
            http.close()
            if http.refused is not None:
                self._too_large(http.refused)
            why = (
                http.expired
                or http.error
                or (e.strerror if isinstance(e, OSError) else None)
                or str(e)
            )
            raise OSError(redact(f"{self.url}: {why}", self.secrets)) from None
        self._http = http
        return container

    def _session(self) -> None:
        while True:
            container = self._open()
            ahead: ReadAhead | None = None
            try:
                if not container.streams.video:
                    failed = self._http.error if self._http is not None else None
                    raise SourceError(
                        "no video stream" + (f" ({redact(failed, self.secrets)})" if failed else "")
                    )
                stream = container.streams.video[0]
                ctx = stream.codec_context
                self._check_size(ctx.width, ctx.height)  # (as the stream's header says)
                # FFmpeg's own bound, for a picture that grows mid-stream: refused before its
                # buffers are allocated (with the padding FFmpeg counts; decoded frames are held
                # to ours exactly, in `_decode`). Not given to the probe: a size only decoding
                # tells (MJPEG) would stay unknown.
                ctx.options = {**ctx.options, "max_pixels": str(self._ffmpeg_bound)}
                if self.lossless:
                    # Read as fast as served: frame threading, one thread per core (FFmpeg's
                    # default, cores + 1, decodes a 1080p H.264 file ~20% slower on 2 cores;
                    # scripts/bench_pipeline.py measures both). Cameras, and files played in
                    # real time like one, keep FFmpeg's slice threading: no frames of delay, and
                    # no per-thread frame buffers in each of many decoders.
                    stream.thread_type = "AUTO"
                    stream.codec_context.thread_count = min(os.cpu_count() or 0, MAX_THREADS)
                if not self.live or self._http is not None:
                    # A file's audio and data: not even read. An http(s) camera's: not parsed
                    # either, so that its input's bound counts only the video's packets (a
                    # data stream's packets, coming between a video frame's bytes that never
                    # end, kept it from counting them), and its time bound ends a session
                    # whose video stopped while the rest flows.
                    for other in container.streams:
                        if other.index != stream.index:
                            other.discard = Discard.all
                if self.live and self._hls:  # (what this session's open found)
                    name = f"source-{self.source_id}-read"
                    self._steps.frame_s = _frame_s(stream)
                    on_packet = None if self._http is None else self._http.packet
                    ahead = ReadAhead(container, stream.index, self._steps, name, on_packet).start()
                self._decode(container, stream, ahead)
            except Exception:
                http = self._http
                if http is not None and http.refused is not None:
                    self._too_large(http.refused)  # (what the error came of)
                if http is not None and http.expired is not None:
                    raise ConnectionError(http.expired) from None
                raise
            finally:
                if self._http is not None:
                    self._http.close()  # (a read still blocked returns now)
                    self._http = None
                # A reader still in a read after a second (at a stop: at once) closes the
                # container itself when the read returns.
                if ahead is None or ahead.close(0.0 if self._stop.is_set() else CLOSE_WAIT_S):
                    container.close()
                if ahead is not None:
                    self._take_counts(ahead)
                    if not self._stop.is_set():  # what the session's end let go of (not a stop's)
                        self.stats.skipped_decode += ahead.discarded
            if not self.loop or self._stop.is_set():
                return

    def _decode(self, container: Any, stream: Any, ahead: ReadAhead | None) -> None:
        """Decode the video stream until it ends or `_stop`. Packets of every stream come back
        here (not only video's): a camera whose audio flows while its video has stopped must
        not keep the read loop from the stop flag and the watchdog. With `ahead` (a stream that
        comes a segment at a time), its packets come from the read-ahead, each when it is due,
        and the shedder judges the decoder against that schedule."""
        self._watch_since = time.monotonic()  # (open has its timeout)
        frame_s = _frame_s(stream)
        clock = FrameClock(frame_s, self.live, self._watch_since)
        jump_logged = False
        video = stream.index
        shedder = None if self.lossless else self._shedder
        shedding = SessionShedding(
            shedder, stream.codec_context, self.stats, self.source_id, frame_s
        )
        self.stats.behind_s = None  # nothing is known of the new decoder's schedule yet
        # A live stream's frames missing from the input: the gaps in its packets' decode
        # timestamps that their arrival confirms (an HLS stream's read-ahead counts its own; a
        # stream without decode timestamps, none). Not a file's: a jump in its timestamps is not
        # told apart from frames lost.
        steps = None
        if ahead is None and self.live:
            steps = Steps()
            steps.frame_s = frame_s
        bad_in_session = 0
        http = self._http if ahead is None else None  # (a read-ahead tells it of its packets)
        flushed = False  # the demuxer ran to its end: the decoder gave out all it held
        try:
            for packet in container.demux() if ahead is None else ahead.packets(self._stop):
                if self._stop.is_set():
                    return
                if packet is None:  # the read-ahead has had nothing for a while
                    self._check_watchdog()
                    continue
                if ahead is not None:
                    self._take_counts(ahead)
                if packet.stream_index != video:
                    if self.live:
                        self._check_watchdog()
                    continue
                if http is not None:
                    http.packet()  # (the video's: the input's bounds start again)
                if steps is not None:  # (in decode order: presentation times jump over B-frames)
                    steps.step(seconds(packet, dts_only=True), time.monotonic())
                    if steps.missing:
                        self.stats.missing_frames += steps.missing
                        steps.missing = 0
                if shedder is not None:
                    now = time.monotonic()
                    wanted = shedding.next_packet(
                        now,
                        seconds(packet) if ahead is None else ahead.media_s(),
                        packet.is_keyframe,
                        now < self.shed_downstream_until,
                    )
                    if self.live:
                        self.stats.behind_s = shedding.behind_s
                    if ahead is not None:
                        ahead.queue.max_speed = shedding.catch_up_speed(wanted)
                t0 = time.perf_counter()
                bad_packet = False
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    self._refused(stream.codec_context, e)  # a new, larger picture?
                    if not isinstance(e, av.error.InvalidDataError):
                        raise
                    # A damaged packet (lost or corrupted on the way): the decoder resumes at the
                    # next one; only a stream that gives no frame at all is a stall.
                    self.stats.bad_packets += 1
                    if not bad_in_session:  # logged once a session; counted always
                        log.warning("source %s: damaged packet(s) skipped (%s)", self.source_id, e)
                    bad_in_session += 1
                    decoded, bad_packet = [], True
                if self.decode_observer is not None:
                    self.decode_observer(time.perf_counter() - t0)
                shedding.worked(time.perf_counter() - t0)
                if not bad_packet:
                    shedding.decoded(packet.size, bool(decoded))
                if shedding.skipping and packet.size:
                    # Skipping to the next keyframe may take one stall timeout longer than a stall.
                    if time.monotonic() - clock.last_wall <= 2 * self.stall_timeout_s:
                        self._note_progress()  # skipped on purpose: not a stall (for a while)
                    else:
                        # Skipping this long left no frame at all (a stream with too few keyframes,
                        # or none: intra refresh): decode everything again, and let the watchdogs
                        # judge the stream by its frames.
                        log.warning(
                            "source %s: no frame for %.1f s while the decoder skipped %s; "
                            "decoding every frame again for this session",
                            self.source_id,
                            time.monotonic() - clock.last_wall,
                            shedding.level,
                        )
                        shedding.give_up()
                for vf in decoded:
                    self._check_size(vf.width, vf.height)
                    t, gap = clock.place(
                        None if vf.time is None else float(vf.time), time.monotonic()
                    )
                    if clock.jumps == 1 and not jump_logged:
                        jump_logged = True
                        log.warning(
                            "source %s: its timestamps jumped (back, or ahead further than "
                            "the time that passed); played on from the frame before (logged "
                            "once a session)",
                            self.source_id,
                        )
                    self.stats.skipped_decode += shedding.frame(gap)
                    if self.realtime:
                        delay = clock.due_in(t, time.monotonic())
                        if delay > 0 and self._stop.wait(delay):
                            return
                        self.stats.behind_s = max(0.0, -delay)
                    t0 = time.perf_counter()
                    self._offer(self._media_offset_s + t, vf)
                    shedding.worked(time.perf_counter() - t0)
                shedding.packet_done(bool(decoded), None if ahead is None else ahead.step_s)
                if self.live:
                    self._check_watchdog()
            flushed = True
        finally:
            self.stats.skipped_decode += shedding.end(flushed)
        if self.live and not self._stop.is_set():
            raise ConnectionError("the server closed the stream")
        self._media_offset_s += clock.last_s + 1e-3

    def _take_counts(self, ahead: ReadAhead) -> None:
        dropped, missing = ahead.take_counts()
        self.stats.skipped_decode += dropped
        self.stats.missing_frames += missing
