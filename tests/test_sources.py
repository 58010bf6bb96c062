"""The Source base class and its max_fps schedule: even skipping, a new schedule per session
(its media clock starts again), and frames without timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from streamer.config import SourceConfig
from streamer.crop.convert import crop_bgr, crop_i420
from streamer.sources.av_source import AvSource, _segmented
from streamer.sources.base import EvenSkip, Source
from streamer.sources.protocols import is_live
from streamer.sources.shedding import SkipLevel
from streamer.tap import scaled_i420
from streamer.types import U8, Frame
from tests.conftest import write_clip
from tests.live import Consumer, ScriptedShedder, until

U16 = npt.NDArray[np.uint16]


def _kept(skip: EvenSkip, times: list[float], max_fps: float | None) -> list[int]:
    return [i for i, t in enumerate(times) if skip.admit(t, max_fps)]


@pytest.mark.parametrize(
    ("fps", "max_fps", "kept"),
    [
        (30, 15, [0, 2, 4, 6, 8, 10]),
        (30, 12, [0, 3, 5, 8, 10]),
        (30, 10, [0, 3, 6, 9]),
        (30, 30, list(range(12))),
        (30, 60, list(range(12))),
        (30, None, list(range(12))),
    ],
)
def test_even_skipping(fps: int, max_fps: float | None, kept: list[int]) -> None:
    times = [i / fps for i in range(12)]
    assert _kept(EvenSkip(), times, max_fps) == kept


def test_a_new_session_starts_a_new_schedule() -> None:
    skip = EvenSkip()
    first = [i / 30 for i in range(30 * 20)]  # 20 s
    assert len(_kept(skip, first, 15)) == 300
    skip.reset()  # the source reconnected; the new session's clock starts at 0
    assert _kept(skip, [i / 30 for i in range(6)], 15) == [0, 2, 4]


def test_a_clock_that_goes_back_within_a_session_is_followed() -> None:
    skip = EvenSkip()
    _kept(skip, [i / 30 for i in range(300)], 15)  # 10 s
    assert _kept(skip, [0.0, 1 / 30, 2 / 30], 15) == [0, 2]  # not skipped for 10 s


def test_raising_max_fps_applies_from_the_next_frame() -> None:
    skip = EvenSkip()
    assert skip.admit(0.0, 1.0) and not skip.admit(0.1, 1.0)
    assert skip.admit(0.2, 30.0)  # not held back until 1.0 s


class _Idle(Source):
    """A source whose decode thread is never started: the test drives its states."""

    def _session(self) -> None:
        raise AssertionError("not started")


class _TornDownWhileLooked:
    """A hand-off whose `waiting_for_room` is read by the watchdog after it has read the state
    as "streaming": reading it moves the source on, as its decode thread may at that moment."""

    def __init__(self, src: Source) -> None:
        self.src = src

    @property
    def waiting_for_room(self) -> bool:
        self.src._set_state("backing_off", "stream ended; retry in 1.0 s")
        return False


def test_the_watchdog_does_not_overwrite_a_state_the_decode_thread_has_moved_on_to() -> None:
    """The watchdog (loop thread) reads "streaming" and no frame for too long; before it marks
    the source stalled, the decode thread tears the reader down (backing_off). That state must
    stand: before, the watchdog wrote "stalled" over it, and a camera retrying showed as stalled
    and counted a stall it never had."""
    src = _Idle("cam", stall_timeout_s=1.0)
    src._set_state("streaming")
    src.stats.last_frame_at = time.monotonic() - 5.0
    src._handoff = _TornDownWhileLooked(src)  # type: ignore[assignment]
    src.check_stall(time.monotonic())
    assert src.stats.state == "backing_off"
    assert src.stats.stalls == 0
    assert src.stats.last_error == "stream ended; retry in 1.0 s"
    # Without the decode thread moving on, the watchdog still marks a silent camera stalled.
    src._handoff = None
    src._set_state("streaming")
    src.check_stall(time.monotonic())
    assert (src.stats.state, src.stats.stalls) == ("stalled", 1)


def _play(src: AvSource, all_taken: bool = False) -> Consumer:
    """Play a file source to its end with a consumer taking its frames (with `all_taken`, until
    the consumer has taken every one); the consumer, stopped, with what it got."""

    async def main() -> Consumer:
        c = Consumer(src).start()
        try:
            await until(lambda: src.stats.state == "ended", 20, "the file played to its end")
            if all_taken:
                await until(lambda: src.in_handoff == 0, 5, "every frame taken")
        finally:
            await c.stop()
        return c

    return asyncio.run(asyncio.wait_for(main(), 30))


def _raw_h264(path: Path, n: int) -> Path:
    """An H.264 elementary stream: its frames carry no timestamps."""
    src = av.open("testsrc2=size=64x48:rate=30", format="lavfi")
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= n:
                break
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    src.close()
    return path


def test_frames_without_timestamps_do_not_freeze_max_fps(tmp_path: Path) -> None:
    """60 frames at 30 fps, max_fps 10: a third are emitted (a clock frozen at the first frame's
    time emitted one and skipped the rest)."""
    path = _raw_h264(tmp_path / "raw.h264", 60)

    src = _play(AvSource("cam", str(path), max_fps=10.0, realtime=False), all_taken=True).source
    assert src.stats.decoded == 60
    assert 19 <= src.stats.decoded - src.stats.skipped_fps <= 21, src.stats


def _jumping_h264(path: Path, jump_s: float, frames: int = 60, gop: int | None = None) -> Path:
    """An MP4 of `frames` at 30 fps whose timestamps jump `jump_s` ahead after frame 29 (a
    camera whose clock was set forward); no B-frames (x264 ultrafast). With `gop`, a keyframe
    every `gop` frames and P-frames between; otherwise every frame is a keyframe (lavfi marks
    them so)."""
    src = av.open("testsrc2=size=64x48:rate=30", format="lavfi")
    with av.open(str(path), "w") as out:
        options = {"preset": "ultrafast"} | ({"g": str(gop)} if gop else {})
        stream = out.add_stream("libx264", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            frame.pts = i + (round(jump_s * 30) if i >= 30 else 0)
            frame.time_base = Fraction(1, 30)
            if gop:
                frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    src.close()
    return path


class _Shedding(ScriptedShedder):
    """A decoder that always skips non-reference frames (there are none in this stream)."""

    def script(self) -> SkipLevel:
        return "NONREF"


def test_a_timestamp_jump_while_shedding_is_not_counted_as_skipped_frames(tmp_path: Path) -> None:
    """Frames the decoder skipped on purpose are counted from the gaps in the timestamps, but
    never more than the packets that gave no frame (before: a 3 s jump counted 89 frames
    skipped that were all decoded)."""
    path = _jumping_h264(tmp_path / "jump.mp4", 3.0)

    src = AvSource("cam", str(path), realtime=True)
    src._shedder = _Shedding()
    _play(src)
    assert src.stats.decoded == 60 and src.stats.skip_level == "NONREF", src.stats
    assert src.stats.skipped_decode == 0, src.stats


class _FirstSessionShedding(ScriptedShedder):
    """Skips non-reference frames in the first session only (as if it fell behind then)."""

    sessions = 0

    def reset(self, frame_s: float | None = None) -> None:
        super().reset(frame_s)
        self.sessions += 1

    def script(self) -> SkipLevel:
        return "NONREF" if self.sessions == 1 else "DEFAULT"


def test_the_skip_level_shown_is_the_session_s_own(tmp_path: Path) -> None:
    """A new session (here: a file looped; a camera reconnecting alike) starts its decoder
    decoding everything, and the stats say so (before: the last session's NONREF stayed in
    the stats while the new decoder skipped nothing)."""
    path = _jumping_h264(tmp_path / "loop.mp4", 0.0)
    src = AvSource("cam", str(path), realtime=True, loop=True)  # 2 s a session
    shedder = _FirstSessionShedding()
    src._shedder = shedder

    async def main() -> list[str]:
        levels = []
        c = Consumer(src).start()
        try:
            await until(lambda: shedder.sessions >= 1 and src.stats.decoded >= 5, 20, "decoding")
            levels.append(src.stats.skip_level)
            await until(lambda: shedder.sessions >= 2 and src.stats.decoded >= 70, 20, "looped")
            levels.append(src.stats.skip_level)
        finally:
            await c.stop()
        return levels

    assert asyncio.run(asyncio.wait_for(main(), 30)) == ["NONREF", "DEFAULT"]


def _concatenated_ts(path: Path, n: int) -> Path:
    """Two MPEG-TS recordings of `n` frames at 30 fps, one after the other in one file: the
    timestamps jump back to the start at the seam (a camera's recordings joined)."""
    src = av.open("testsrc2=size=64x48:rate=30", format="lavfi")
    part = path.with_suffix(".part.ts")
    with av.open(str(part), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= n:
                break
            frame.pts, frame.time_base = i, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    src.close()
    path.write_bytes(part.read_bytes() * 2)
    return path


def test_a_file_whose_timestamps_jump_back_is_still_played_in_real_time(tmp_path: Path) -> None:
    """After the seam, the second recording is paced like the first, and no frame is dropped
    (before: its frames were all overdue against the first recording's clock, came as fast as
    decoded, and overflowed the hand-off)."""
    path = _concatenated_ts(tmp_path / "joined.ts", 30)

    c = _play(AvSource("cam", str(path), realtime=True), all_taken=True)
    arrivals = [at for at, _ in c.frames]
    assert len(arrivals) == 60  # none dropped in a burst
    first, second = arrivals[29] - arrivals[0], arrivals[59] - arrivals[30]
    assert second >= 0.6 * first, (first, second)  # 29 frame periods each (~0.97 s)


def _damaged_ts(path: Path) -> Path:
    """An MPEG-TS of 30 frames remuxed with 20 bytes of each of packets 5..19 overwritten at
    random (seeded): what a lossy network makes of a camera's stream."""
    good = _concatenated_ts(path.with_name("good.ts"), 30).with_suffix(".part.ts")
    rnd = random.Random(1)
    with av.open(str(good)) as src, av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for i, packet in enumerate(src.demux(video=0)):
            if packet.size == 0:
                continue
            data = bytearray(bytes(packet))
            if 5 <= i < 20:
                for _ in range(20):
                    data[rnd.randrange(len(data))] = rnd.randrange(256)
            damaged = av.Packet(bytes(data))
            damaged.pts, damaged.dts, damaged.time_base = packet.pts, packet.dts, packet.time_base
            damaged.is_keyframe = packet.is_keyframe
            damaged.stream = stream
            out.mux(damaged)
    return path


def test_damaged_packets_are_skipped_and_counted_not_a_reconnect(tmp_path: Path) -> None:
    """A decoder that refuses damaged packets goes on with the next ones (before: each one
    ended the session, and a file with one started over from its beginning, for ever)."""
    path = _damaged_ts(tmp_path / "damaged.ts")

    src = AvSource("cam", str(path), realtime=False)
    _play(src)
    assert src.stats.reconnects == 0 and src.stats.bad_packets > 0, src.stats
    assert src.stats.decoded >= 15, src.stats  # the rest of the stream decoded


def _growing_ts(path: Path, codec: str, big: tuple[int, int]) -> Path:
    """MPEG-TS of 30 frames at 160x120, then 30 at `big`: a stream whose picture grows (a new
    sequence header mid-stream, as a camera reconfigured, or a hostile one, sends)."""
    options = {"preset": "ultrafast"} if codec == "libx264" else {}
    if codec == "libx265":
        options = {"preset": "ultrafast", "x265-params": "log-level=none"}
    with path.open("wb") as f:
        for w, h in ((160, 120), big):
            src = av.open(f"testsrc2=size={w}x{h}:rate=30", format="lavfi")
            with av.open(f, "w", format="mpegts") as out:
                stream = out.add_stream(codec, rate=30, options=options)
                assert isinstance(stream, av.VideoStream)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.codec_context.time_base = Fraction(1, 30)
                for i, frame in enumerate(src.decode(video=0)):
                    if i >= 30:
                        break
                    frame.pts = i
                    out.mux(stream.encode(frame))
                out.mux(stream.encode())
            src.close()
    return path


def _mjpeg_avi(path: Path, size: tuple[int, int]) -> Path:
    """Three frames of MJPEG in AVI (an HTTP camera's stream, recorded)."""
    w, h = size
    src = av.open(f"testsrc2=size={w}x{h}:rate=30", format="lavfi")
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=30)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p"
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 3:
                break
            out.mux(stream.encode(frame.reformat(format="yuvj420p")))
        out.mux(stream.encode())
    src.close()
    return path


def _refused(src: AvSource) -> Consumer:
    """Run `src` until its session has ended on a picture too large; the consumer, stopped."""

    async def main() -> Consumer:
        c = Consumer(src).start()
        try:
            refused = ("backing_off", "failed")  # (failed: a file after frames handed on)
            await until(lambda: src.stats.state in refused, 10, "the session refused")
        finally:
            await c.stop()
        return c

    return asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("container", ["mp4", "avi"])
def test_a_picture_larger_than_max_pixels_is_never_decoded(tmp_path: Path, container: str) -> None:
    """A stream whose pictures are larger than the source's `max_pixels` (a camera sending 16K,
    by mistake or to exhaust memory): its session ends at once with an error that says so and a
    count, no frame handed on, and it is retried like any failure. H.264 in MP4 says its size
    in its header; MJPEG in AVI only once a picture is decoded."""
    if container == "mp4":
        path = write_clip(tmp_path / "big.mp4", 3, (640, 480))
    else:
        path = _mjpeg_avi(tmp_path / "big.avi", (640, 480))
    src = AvSource("cam", str(path), realtime=False, max_pixels=320 * 240)
    c = _refused(src)
    assert c.frames == [] and src.stats.decoded == 0, src.stats
    assert src.stats.too_large >= 1, src.stats
    reason = src.stats.last_error or ""
    assert "640x480 (307,200 pixels) are larger than max_pixels (76,800)" in reason, reason


@pytest.mark.parametrize("codec", ["libx264", "libx265", "mpeg2video"])
@pytest.mark.parametrize("big", [(640, 480), (1280, 1024)])
def test_a_picture_that_grows_past_max_pixels_mid_stream_is_not_decoded(
    tmp_path: Path, codec: str, big: tuple[int, int]
) -> None:
    """The stream starts small and its picture grows past `max_pixels` (76,800) mid-stream: the
    session ends with the error, counted, whatever the codec. 640x480 is decoded, then refused;
    1280x1024 is past the bound FFmpeg's decoders are given (plus its row padding), and they
    refuse it before allocating it, each its own way. Only the small pictures are handed on.
    (Played in real time: a decoder without frame threads, whose errors of the last packets of
    a file cannot be lost, whatever the machine's cores.)"""
    src = AvSource("cam", str(_growing_ts(tmp_path / "grow.ts", codec, big)), realtime=True)
    src.max_pixels = 320 * 240
    refusals: list[str] = []  # FFmpeg's: its decoder failed on the picture
    refused = src._refused

    def record(ctx: Any, e: av.error.FFmpegError) -> None:
        refusals.append(type(e).__name__)
        refused(ctx, e)

    src._refused = record  # type: ignore[method-assign]
    c = _refused(src)
    assert bool(refusals) == (big == (1280, 1024)), refusals
    sizes = {(f.width, f.height) for _, f in c.frames}
    assert sizes == {(160, 120)} and len(c.frames) >= 10, (sizes, len(c.frames))
    # The file is not opened again (its first frames would be handed on again, as new ones):
    # failed, once, with the reason.
    assert src.stats.state == "failed" and src.stats.too_large == 1, src.stats
    assert len(c.frames) <= 30  # the small pictures, each once
    assert "a file is not played again" in (src.stats.last_error or "")
    reason = src.stats.last_error or ""
    assert "{}x{}".format(*big) in reason or "refused a picture" in reason, reason


def test_a_picture_of_exactly_max_pixels_is_decoded(tmp_path: Path) -> None:
    """FFmpeg counts a picture's width padded to 64: a camera of exactly `max_pixels` whose
    width is not a multiple of it is still decoded."""
    path = write_clip(tmp_path / "exact.mp4", 5, (200, 120))
    c = _play(AvSource("cam", str(path), realtime=False, max_pixels=200 * 120), True)
    assert len(c.frames) == 5 and c.source.stats.too_large == 0, c.source.stats


def _clip(
    path: Path, codec: str, picture: U8 | U16, pix_fmt: str, options: Mapping[str, str]
) -> Path:
    """A clip of three copies of `picture`, as `pix_fmt`."""
    h, w = picture.shape[:2]
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream(codec, rate=30)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = dict(options)
        for _ in range(3):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format=pix_fmt)))
        out.mux(stream.encode())
    return path


def _first_frames(path: Path) -> list[Frame]:
    return [f for _, f in _play(AvSource("cam", str(path), realtime=False), True).frames]


# Luma columns, 16 pixels each: 0, video range's black (16), a mid gray, white (235), 255.
_LEVELS = np.array([0, 16, 126, 235, 255], np.uint8)
_LUMA = np.tile(np.repeat(_LEVELS, 16), (48, 1))  # 80 x 48
_X265 = "log-level=none:lossless=1"


def _column_centres(row: U8, width: int) -> U8:
    step = width // len(_LEVELS)
    return row[step // 2 :: step]


def _video(levels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Full-range luma as video range (the tap's and raw-i420 crops' I420)."""
    return np.round(16 + levels * 219 / 255)


def _full(levels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Video-range luma as full range (what BT.601 makes of it in BGR)."""
    return np.clip(np.round((levels - 16) * 255 / 219), 0, 255)


@pytest.mark.parametrize("pix_fmt", ["gray", "gray10le"])
def test_a_video_range_gray_camera_keeps_its_range(tmp_path: Path, pix_fmt: str) -> None:
    """HEVC monochrome (4:0:0), as thermal cameras send it, decodes to gray luma in video
    range (16..235): its crops map 16 to black and 235 to white, its raw-i420 crops and its tap
    keep the luma as decoded, with neutral chroma. 10 bits are rounded to 8 (940 -> 235)."""
    deep = pix_fmt != "gray"
    picture: U8 | U16 = (_LUMA.astype(np.uint16) << 2).astype(np.uint16) if deep else _LUMA
    frames = _first_frames(
        _clip(tmp_path / "t.mkv", "libx265", picture, pix_fmt, {"x265-params": _X265})
    )
    assert len(frames) == 3
    frame = frames[0]
    assert frame.pixel_format == "yuv420p"
    assert np.array_equal(frame.planes[0], _LUMA)
    assert frames[1].planes[1] is frame.planes[1]  # one neutral chroma plane for every frame
    assert not frame.planes[1].flags.writeable and np.all(frame.planes[2] == 128)
    assert frame.nbytes == frame.decoded.planes[0].buffer_size  # the luma: chroma is shared

    bgr = crop_bgr(frame, 0, 0, 80, 48)
    assert np.all(bgr == bgr[:, :, :1]), "gray stays gray"
    got = _column_centres(bgr[0, :, 0], 80).astype(int)
    assert np.all(np.abs(got - _full(_LEVELS.astype(float))) <= 1), got

    i420 = crop_i420(frame, 16, 0, 64, 48)
    assert np.array_equal(i420[: 48 * 48].reshape(48, 48), _LUMA[:, 16:64])
    assert np.all(i420[48 * 48 :] == 128)

    for width in (80, 40, 32):  # not scaled; block means (2:1); FFmpeg's scaler, gray to gray
        buf, tw, th = scaled_i420(frame, width, None)
        got = _column_centres(buf[:tw], tw).astype(int)
        assert np.all(np.abs(got - _LEVELS) <= 1), (width, got)
        assert np.all(buf[tw * th :] == 128)


@pytest.mark.parametrize(
    ("codec", "options"),
    [("ffv1", {}), ("libx265", {"x265-params": f"{_X265}:range=full"})],
    ids=["unspecified", "full"],
)
def test_a_full_range_gray_camera_keeps_its_full_range(
    tmp_path: Path, codec: str, options: dict[str, str]
) -> None:
    """A gray stream that says full range, or nothing (FFV1 here; PNG, raw video), is full
    range: 0 is black and 255 white in its crops, and its tap maps it to video range."""
    frame = _first_frames(_clip(tmp_path / "g.mkv", codec, _LUMA, "gray", options))[0]
    assert frame.pixel_format == "gray"
    assert np.array_equal(crop_bgr(frame, 0, 0, 80, 48)[:, :, 0], _LUMA)
    for width in (80, 40):
        buf, tw, th = scaled_i420(frame, width, None)
        got = _column_centres(buf[:tw], tw).astype(int)
        assert np.all(np.abs(got - _video(_LEVELS.astype(float))) <= 1), (width, got)
        assert np.all(np.abs(buf[tw * th :].astype(int) - 128) <= 1)


@pytest.mark.parametrize(
    ("codec", "pix_fmt", "options", "tolerance"),
    [
        ("mjpeg", "yuvj420p", {"q": "1"}, 1),  # MJPEG cameras: JPEG is full range
        ("libx265", "yuv420p", {"x265-params": f"{_X265}:range=full"}, 1),  # flagged full range
    ],
    ids=["mjpeg", "hevc-full"],
)
def test_a_full_range_colour_camera_is_brought_to_video_range(
    tmp_path: Path, codec: str, pix_fmt: str, options: dict[str, str], tolerance: int
) -> None:
    """A full-range YUV camera's frames become video range: a BGR crop of its gray levels
    gives the levels back (not stretched), its raw-i420 crop and its tap hold them in video
    range."""
    picture = np.concatenate([_LUMA, np.full((24, 80), 128, np.uint8)])  # I420: Y, U, V
    frames = _first_frames(_clip(tmp_path / "c.mkv", codec, picture, pix_fmt, options))
    frame = frames[0]
    assert frame.pixel_format == "yuv420p"
    bgr = crop_bgr(frame, 0, 0, 80, 48)
    got = _column_centres(bgr[24, :, 1], 80).astype(int)
    assert np.all(np.abs(got - _LEVELS) <= tolerance), got
    luma = _column_centres(crop_i420(frame, 0, 0, 80, 48)[80 * 24 : 80 * 25], 80).astype(int)
    assert np.all(np.abs(luma - _video(_LEVELS.astype(float))) <= tolerance), luma
    for width in (80, 40):
        buf, tw, th = scaled_i420(frame, width, None)
        got = _column_centres(buf[tw * (th // 2) : tw * (th // 2 + 1)], tw).astype(int)
        assert np.all(np.abs(got - _video(_LEVELS.astype(float))) <= tolerance), (width, got)


class _SlowCamera(AvSource):
    """A camera played in real time whose loop needs `busy_s` for every decoded frame (as a
    decoder on a box short of CPU): the real decoder and its real skipping, a slow hand-on.
    Records (wall time, media time) of every frame it hands on, and how far behind its stats
    said it was as it came."""

    def __init__(self, path: Path, busy_s: float) -> None:
        super().__init__("cam", str(path), realtime=True)
        self.busy_s = busy_s
        self.handed: list[tuple[float, float]] = []
        self.behind: list[tuple[float, float, float | None]] = []

    def _offer(self, media_time_s: float, picture: av.VideoFrame | U8) -> None:
        self.behind.append((time.monotonic(), media_time_s, self.stats.behind_s))
        time.sleep(self.busy_s)
        self.handed.append((time.monotonic(), media_time_s))
        super()._offer(media_time_s, picture)


@pytest.mark.parametrize("b_frames", [False, True])
def test_a_decoder_a_little_short_of_real_time_sheds_and_does_not_fall_behind(
    tmp_path: Path, b_frames: bool
) -> None:
    """A decoder 18% short of real time, a keyframe every half second: it sheds about its
    deficit's share of the frames (the tails of groups of pictures; without B-frames, skipping
    non-reference frames frees nothing) and stays within a second of the stream; every frame is
    handed on or counted as skipped, B-frames' reordering delay or not. Before, its lag read
    1.8 s for ever (under the 2 s of keyframes only) while it fell 1.8 s further behind every
    10 s: about 1.5 s behind at the end of this clip, and more without end."""
    frames = 240
    if b_frames:
        path = write_clip(tmp_path / "cam.mp4", frames, (64, 48), gop=15)
    else:
        path = _jumping_h264(tmp_path / "cam.mp4", 0.0, frames=frames, gop=15)
    src = _play(_SlowCamera(path, busy_s=1.18 / 30)).source
    assert isinstance(src, _SlowCamera)
    (wall0, media0), *_ = src.handed
    lags = [(wall - wall0) - (media - media0) for wall, media in src.handed]
    handed = len(src.handed)
    print(f"max lag {max(lags):.2f} s, {handed} of {frames} frames, {src.stats}")
    assert max(lags) < 1.0, max(lags)
    assert 0.75 * frames <= handed <= 0.9 * frames, handed  # 1/1.18: 85%
    assert handed + src.stats.skipped_decode == frames, src.stats
    assert all(b is not None and b < 1.0 for _, _, b in src.behind), src.behind


def test_how_far_behind_a_camera_played_in_real_time_runs_is_in_its_stats(
    tmp_path: Path,
) -> None:
    """A camera 40% short of real time that has nothing to skip (every frame a keyframe) falls
    further behind with every frame, and its stats say by how much: each frame's lateness
    against its presentation time, as a clock outside the source measures it."""
    path = write_clip(tmp_path / "cam.mp4", 90, (64, 48))  # 3 s, all keyframes
    src = _play(_SlowCamera(path, busy_s=1.4 / 30)).source
    assert isinstance(src, _SlowCamera)
    (wall0, media0, first), *_ = src.behind
    assert first is not None and 0.0 <= first < 0.5  # (the first frame: opening the file)
    errors = []
    for wall, media, behind in src.behind:
        assert behind is not None
        errors.append(behind - (first + (wall - wall0) - (media - media0)))
    # The test's clock reads after the source's figure: later, by any preemption in between.
    assert min(errors) > -0.1 and max(errors) < 0.01, errors
    assert src.behind[-1][2] is not None and src.behind[-1][2] > 0.9, src.behind[-1]
    assert src.stats.skipped_decode == 0 and len(src.behind) == 90


class _KeyframesAfter(ScriptedShedder):
    """Decodes everything for the first `frames`, keyframes only after (far behind then)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.frames, self.seen = frames, 0

    def script(self) -> SkipLevel:
        self.seen += 1
        return "NONKEY" if self.seen > self.frames else "DEFAULT"


def test_skipping_to_keyframes_further_apart_than_the_stall_timeout_goes_on(
    tmp_path: Path,
) -> None:
    """Keyframes 1.5 s apart, a stall timeout of 1 s: skipping to the next keyframe is not taken
    for a stream that gives no frames (before: after 1 s without a frame the decoder decoded
    everything again for the rest of the session, and fell behind for good)."""
    path = _jumping_h264(tmp_path / "cam.mp4", 0.0, frames=150, gop=45)
    src = AvSource("cam", str(path), realtime=True, stall_timeout_s=1.0)
    src._shedder = _KeyframesAfter(50)
    _play(src)
    assert src.stats.skip_level == "NONKEY", src.stats
    # Frames 0-49, then the keyframes 90 and 135; the other 98 skipped (14 after the last).
    assert src.stats.decoded == 52 and src.stats.skipped_decode == 98, src.stats


def test_a_stream_that_comes_a_segment_at_a_time_is_told_apart(tmp_path: Path) -> None:
    """Only streams FFmpeg reads a segment at a time are read ahead and paced: an HLS playlist
    is one, one of its segments on its own (MPEG-TS) is not."""
    write_clip(tmp_path / "p.m3u8", 45, (64, 48), options={"hls_time": "1"})
    with av.open(str(tmp_path / "p.m3u8")) as playlist:
        assert _segmented(playlist)
    with av.open(str(tmp_path / "p0.ts")) as segment:
        assert not _segmented(segment)


def test_frame_clock_places_frames_counts_gaps_and_plays_on_after_the_clock_jumps() -> None:
    from streamer.sources.av_source import FrameClock

    step = 1 / 30
    clock = FrameClock(step, live=False, now=100.0)
    assert clock.place(5.0, 100.0) == (5.0, 0)  # the first frame anchors real-time play
    assert clock.due_in(5.0, 100.0) == 0.0
    assert clock.place(5.0 + step, 100.1) == (5.0 + step, 0)
    t, gap = clock.place(5.0 + 4 * step, 100.2)  # two frames missing before it
    assert gap == 2 and abs(clock.due_in(t, 100.0) - 4 * step) < 1e-9
    # The clock goes back (recordings joined): the frame is due one interval after the last,
    # not at once (a burst) nor 5 s later.
    t, gap = clock.place(0.0, 100.3)
    assert gap == 0 and abs(clock.due_in(t, 100.0) - 5 * step) < 1e-9
    # No timestamp: a file with a frame rate goes one interval on ...
    assert clock.place(None, 100.4) == (step, 0)
    # ... a live stream (or no frame rate) as far as the wall clock went since the last frame.
    live = FrameClock(step, live=True, now=50.0)
    assert live.place(None, 50.5) == (0.5, 0)
    t, gap = live.place(None, 50.7)
    assert abs(t - 0.7) < 1e-9 and gap == 5
    # A clock that jumps an hour ahead: a file plays on one interval after the last frame
    # (it waited the hour: its source hung, stalled), nothing counted missing ...
    t, gap = clock.place(3600.0, 100.5)
    assert gap == 0 and abs(clock.due_in(t, 100.0) - 7 * step) < 1e-9 and clock.jumps == 2
    # ... while a file that pauses 10 s has its frames missing counted, and is not waited for
    # either (as the read-ahead does up to MAX_GAP_S).
    t, gap = clock.place(3610.0, 100.6)
    assert gap == 299 and abs(clock.due_in(t, 100.0) - 8 * step) < 1e-9 and clock.jumps == 2
    # ... and a live stream's clock too, when it jumped further than the time that passed;
    # a gap as long as the time that passed is frames missing.
    live.place(1.0, 51.0)
    t, gap = live.place(3601.0, 51.1)
    assert gap == 0 and live.jumps == 1
    t, gap = live.place(3611.0, 61.1)  # 10 s of frames missing, 10 s passed
    assert gap == 299 and live.jumps == 1


def test_a_file_whose_timestamps_jump_an_hour_ahead_plays_on(tmp_path: Path) -> None:
    """20 frames at 10 fps, then the timestamps an hour on, then 20 more, played in real time:
    every frame comes, in about 4 s (the source waited the hour before, stalled)."""
    path = tmp_path / "jump.mkv"
    src = av.open("testsrc2=size=64x48:rate=10", format="lavfi")
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 10)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 40:
                break
            frame.pts = i if i < 20 else 36_000 + i
            frame.time_base = Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    src.close()
    c = _play(AvSource("cam", str(path), realtime=True), all_taken=True)
    assert len(c.frames) == 40 and c.source.stats.missing_frames == 0, c.source.stats
    assert c.source.stats.stalls == 0


def test_a_run_whose_file_failed_part_way_exits_1_and_says_why(tmp_path: Path) -> None:
    """A file played once that fails after handing on frames ends failed (not replayed); a run
    of it exits 1 naming the source, so that a batch job does not pass it."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import REPO, free_port

    clip = _growing_ts(tmp_path / "grow.ts", "libx264", (640, 480))
    cfg = {
        "sources": [{"id": "cam", "url": str(clip), "max_pixels": 320 * 240}],
        "detections": {"bind": f"tcp://127.0.0.1:{free_port()}"},
        "publish": [{"bind": f"tcp://127.0.0.1:{free_port()}"}],
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(
        [sys.executable, "-m", "streamer", "run", "-c", str(tmp_path / "cfg.yaml"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    assert "error: source cam failed: " in res.stderr and "max_pixels" in res.stderr


def _silent_server() -> socket.socket:
    """A TCP server on loopback that accepts connections and says nothing (10 s to accept)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(10)
    return listener


def _run_until_backing_off(src: AvSource) -> None:
    """Run `src` until its session has failed (its open timed out); the consumer, stopped."""

    async def main() -> None:
        c = Consumer(src).start()
        try:
            await until(lambda: src.stats.state == "backing_off", 10, "the open timed out")
        finally:
            await c.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_tcp_camera_that_sends_nothing_times_out_and_stops(tmp_path: Path) -> None:
    """`tcp://` is a network camera (an MPEG-TS stream over TCP): its open has a timeout and it
    is reconnected, never taken for a file. A peer that accepts and sends nothing made the
    decode thread block for good; removing the camera left the thread and its socket behind."""
    assert all(is_live(u) for u in ("tcp://h:1", "TLS://h:1", "rtp://h:1", "unix:/run/cam"))
    with _silent_server() as listener:
        port = listener.getsockname()[1]
        src = AvSource("cam", f"tcp://127.0.0.1:{port}", open_timeout_s=1.0, stall_timeout_s=0.5)
        assert not src.finite
        _run_until_backing_off(src)
        assert not src.alive, "the decode thread is still blocked"
        assert "timed out" in (src.stats.last_error or ""), src.stats.last_error


@pytest.mark.parametrize("scheme", ["rtmp", "rtmps"])
def test_an_rtmp_camera_connects_to_its_server_and_times_out(scheme: str) -> None:
    """An rtmp:// camera connects to its server (FFmpeg's RTMP reads the option `timeout` as
    how long to listen for a peer: the camera listened on its own port instead), and a server
    that says nothing times it out like any network camera."""
    with _silent_server() as listener:
        port = listener.getsockname()[1]
        url = f"{scheme}://127.0.0.1:{port}/live/cam"
        src = AvSource("cam", url, open_timeout_s=1.0, stall_timeout_s=0.5)
        _run_until_backing_off(src)
        conn, _ = listener.accept()  # (socket.timeout: it never connected)
        conn.close()
        assert not src.alive


def test_a_file_with_sound_plays_every_frame(tmp_path: Path) -> None:
    """A file's other streams are set aside (not even read); setting them aside failed on
    PyAV's Discard (a string where it takes its enum), and no file with sound played."""
    path = tmp_path / "with_sound.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        sound = out.add_stream("aac", rate=48000)
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 8, np.uint8), "rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.float32), "fltp", "mono")
            chunk.sample_rate, chunk.pts = 48000, i * 1600
            out.mux(sound.encode(chunk))
        out.mux(video.encode())
        out.mux(sound.encode())

    async def main() -> list[int]:
        src = AvSource("f", str(path), realtime=False)
        c = Consumer(src).start()
        await until(lambda: len(c.frames) >= 30, 20, "every frame of the file")
        await c.stop()
        return [f.frame_id for _, f in c.frames]

    assert asyncio.run(main()) == list(range(30))


def test_a_file_on_a_silent_ftp_server_times_out_and_is_retried() -> None:
    """An ftp:// file was opened with no timeout: a server that accepts and says nothing kept
    the decode thread in its open for good. Now it is opened with the source's timeouts."""
    with _silent_server() as listener:
        url = f"ftp://user:S3cret@127.0.0.1:{listener.getsockname()[1]}/clip.mp4"
        src = AvSource("f", url, open_timeout_s=1.0, stall_timeout_s=1.0)
        t0 = time.monotonic()
        _run_until_backing_off(src)
        assert time.monotonic() - t0 < 1.0 + 2.0
        assert not src.alive, "the decode thread is still blocked"
    said = src.stats.last_error or ""
    assert "no answer in 1 s" in said and "S3cret" not in said, said


def test_a_local_file_url_reaches_no_network_whatever_it_nests() -> None:
    """A URL taken for a local file is opened with FFmpeg's protocol whitelist of local
    protocols: a network URL inside a wrapper (here past the config, which refuses it) is not
    even connected to."""
    with _silent_server() as listener:
        port = listener.getsockname()[1]
        for url in (f"concat:http://127.0.0.1:{port}/a.ts", f"cache:tcp://127.0.0.1:{port}"):
            src = AvSource("f", url, open_timeout_s=1.0, stall_timeout_s=1.0)
            _run_until_backing_off(src)  # (FFmpeg: EINVAL, "not on whitelist" in its log)
            assert src.stats.last_error is not None and not src.alive
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()  # (nobody connected)


def test_schemes_are_read_in_any_case_and_paths_keep_theirs() -> None:
    """A URL's scheme is case-insensitive (RFC 3986), FFmpeg's protocol names and streamer's
    prefixes are not: the config writes the scheme of what streamer reads by name in lower
    case (RTSP:// was refused by FFmpeg at open: "Protocol not found"). The rest of the URL,
    and any path, keep their case; a refused URL stays refused in capitals."""
    for given, read in (
        ("RTSP://User:Pw@Cam/Stream1", "rtsp://User:Pw@Cam/Stream1"),
        ("Http://cam/A.mjpg", "http://cam/A.mjpg"),
        ("SRT://cam:9000", "srt://cam:9000"),
        ("FTP://host/F.ts", "ftp://host/F.ts"),
        ("UNIX:/run/Cam.sock", "unix:/run/Cam.sock"),
        ("WebCam:0", "webcam:0"),
        ("LAVFI:testsrc2=size=64x64", "lavfi:testsrc2=size=64x64"),
        ("Synthetic:", "synthetic:"),
        ("/Videos/Cam.MP4", "/Videos/Cam.MP4"),
        ("C:/Videos/cam.mp4", "C:/Videos/cam.mp4"),
        ("File:Clip.mp4", "file:Clip.mp4"),
        ("PIPE:0", "pipe:0"),
        ("Concat:A.ts|b.ts", "Concat:A.ts|b.ts"),  # (a wrapper: a local file, as written)
    ):
        assert SourceConfig(id="c", url=given).url == read, given
    for refused in ("HTTP:cam/x", "Cache:http://cam/x", "LAVFI:movie=x.mp4", "IPFS://b/v"):
        with pytest.raises(ValueError, match=r"give the|write a|lavfi: |network protocol"):
            SourceConfig(id="c", url=refused)


@pytest.mark.parametrize(
    "url",
    [
        "cache:http://cam/video.mjpg",  # (cache: also writes all it reads to disk)
        "async:tcp://cam:1234",
        "concat:http://a/1.ts|http://a/2.ts",
        "crypto+http://cam/x.ts",
        "subfile,,start,0,end,100,,:http://cam/x.mp4",
        "subfile,,start,0,end,0,,:http:cam/x",
        "ipfs://bafy/video.mp4",  # (through FFmpeg's HTTP client, to a gateway)
        "ipns://name/video.mp4",
        "mmsh://cam/x",
        "udplite://cam:1234",
        # FFmpeg takes a protocol by its name alone: no // needed.
        "http:127.0.0.1:8080/cam.mjpeg",
        "http:/cam/x",
        "cache:http:cam/x",
        "tcp:127.0.0.1:1234",
        "ftp:cam/f.ts",
        "lavfi:movie=http\\\\://cam/x.mp4",
        # lavfi's filters that open files or URLs themselves, however written
        "lavfi:m\\\\ovie=x.mp4",
        "lavfi:mo''vie=x.mp4",
        "lavfi:color=s=64x64,removelogo=logo.png",
        "lavfi:testsrc=s=64x64,split[a][b];[a][b]psnr=stats_file=/tmp/psnr.txt",
        "lavfi:testsrc=s=64x64,metadata=mode=print",
        "cache:/videos/clip.mp4",  # (only of use around a network URL)
        "rtmpt://cam/live",  # (RTMP through FFmpeg's HTTP client)
        "lavfi:life=filename=/etc/passwd",  # (reads a file)
        "webcam:http://cam/x.mjpg",  # (OpenCV's FFmpeg would open it, unbounded)
        "webcam:rtsp://cam/x",
    ],
)
def test_urls_that_would_read_the_network_around_the_bounds_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"give the|write a|lavfi: |webcam: takes"):
        SourceConfig(id="c", url=url)
    for fine in (
        "concat:a.ts|b.ts",
        "file:clip.mp4",
        "/videos/cam:1.mp4",
        "file:/videos/cam_udp:1.ts",
        "unix:/run/cam.sock",
        "lavfi:testsrc2=size=1280x720:rate=30",
        "lavfi:color=c=red:s=64x64,scale=32:32",
        "webcam:0",
        "webcam:/dev/video2",
        "/dev/video0",
    ):
        SourceConfig(id="c", url=fine)
    with pytest.raises(ValueError, match="rtsp_transport http"):
        SourceConfig(id="c", url="rtsp://cam/x", av_options={"rtsp_transport": "https"})


def test_a_tcp_camera_whose_stream_names_other_protocols_reaches_none_of_them(
    tmp_path: Path,
) -> None:
    """A camera other than http(s) is opened with FFmpeg's protocol whitelist of camera
    protocols: an HLS playlist it serves naming an http segment and a local file gets neither
    (FFmpeg's own HTTP client is not bounded; a camera reads no file of this host)."""
    local = tmp_path / "local.ts"
    write_clip(local, 10, (64, 48))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    playlist = (
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n"
        f"http://127.0.0.1:{port}/seg.ts\n#EXTINF:1.0,\nfile:{local}\n#EXT-X-ENDLIST\n"
    ).encode()
    seen: list[bytes] = []

    def serve() -> None:
        listener.settimeout(5)
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.settimeout(0.5)
                asked = b"(nothing: a raw TCP camera)"
                with contextlib.suppress(OSError):
                    asked = conn.recv(200)[:20] or asked
                seen.append(asked)
                with contextlib.suppress(OSError):
                    conn.sendall(playlist)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        src = AvSource("c", f"tcp://127.0.0.1:{port}/cam.m3u8", open_timeout_s=2.0)
        with pytest.raises(Exception):  # noqa: B017 (whatever FFmpeg makes of no segment)
            container = src._open()
            try:
                next(container.decode(video=0))
            finally:
                container.close()
    finally:
        listener.close()
    assert seen and not any(s.startswith(b"GET") for s in seen), seen
