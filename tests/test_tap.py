"""Tap pictures: sizes, and FFmpeg's scaler (decoded frames) against OpenCV's area resize (webcam
frames) on the same picture."""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import streamer.swscale as swscale
from streamer.sources.frames import from_av
from streamer.tap import scaled_i420, tap_image, tap_size


@pytest.mark.parametrize(
    ("frame", "limit", "expected"),
    [
        ((1920, 1080), (640, None), (640, 360)),
        ((1920, 1080), (None, 360), (640, 360)),
        ((1920, 1080), (640, 100), (178, 100)),
        ((640, 360), (1280, None), (640, 360)),  # never upscaled
        ((641, 361), (None, None), (640, 360)),  # even for I420
        ((1001, 999), (333, None), (332, 332)),
        ((4, 4000), (1, None), (2, 1000)),  # at least 2 wide
    ],
)
def test_tap_size(
    frame: tuple[int, int], limit: tuple[int | None, int | None], expected: tuple[int, int]
) -> None:
    assert tap_size(*frame, *limit) == expected


def _decoded(size: tuple[int, int], fmt: str = "yuv420p") -> av.VideoFrame:
    w, h = size
    with av.open(f"testsrc2=size={w}x{h}:rate=30", format="lavfi") as src:
        vf = next(src.decode(video=0))
    return vf.reformat(format=fmt)


@pytest.mark.parametrize(
    ("size", "width"), [((1920, 1080), 640), ((1280, 720), 640), ((641, 361), 320)]
)
def test_swscale_and_opencv_area_downscales_agree(size: tuple[int, int], width: int) -> None:
    frame = from_av(_decoded(size), "cam", 0, 0.0)
    assert frame.decoded is not None
    fast, tw, th = scaled_i420(frame, width, None)
    slow, tw2, th2 = scaled_i420(dataclasses.replace(frame, decoded=None), width, None)
    assert (tw, th) == (tw2, th2) == tap_size(*size, width)
    diff = np.abs(fast.astype(np.int16) - slow.astype(np.int16))
    # Both average each output pixel's area; they differ by rounding and edge weights only.
    assert np.mean(diff) < 1.5
    assert np.percentile(diff, 99) <= 12


@pytest.mark.parametrize("width", [320, 640])  # scaled (swscale or OpenCV), and not scaled
def test_gray_frames_decode_to_their_gray(width: int) -> None:
    """A gray camera's tap is I420 in video range, as decoders read it, with neutral chroma:
    its BGR is the gray picture (the luma of a gray frame is full range)."""
    frame = from_av(_decoded((640, 360), "gray"), "cam", 0, 0.0)
    assert frame.pixel_format == "gray"
    want = cv2.resize(frame.planes[0], tap_size(640, 360, width), interpolation=cv2.INTER_AREA)
    for f in (frame, dataclasses.replace(frame, decoded=None)):
        buf, tw, th = scaled_i420(f, width, None)
        assert (tw, th) == tap_size(640, 360, width)
        assert np.all(np.abs(buf[tw * th :].astype(int) - 128) <= 1)
        bgr = cv2.cvtColor(buf.reshape(th * 3 // 2, tw), cv2.COLOR_YUV2BGR_I420)
        diff = np.abs(bgr.astype(int) - want[:, :, None].astype(int))
        assert np.mean(diff) < 1.5, (f.decoded is not None, np.mean(diff))
        assert np.max(diff) <= 12


def test_tap_encodings_decode_to_the_same_picture() -> None:
    frame = from_av(_decoded((1280, 720)), "cam", 0, 0.0)
    fields, raw = tap_image(frame, "raw-i420", 640, None, 90)
    assert fields == {"width": 640, "height": 360, "encoding": "raw-i420"}
    i420 = np.frombuffer(raw, np.uint8).reshape(540, 640)
    want = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    _, bgr = tap_image(frame, "raw-bgr24", 640, None, 90)
    assert np.array_equal(np.frombuffer(bgr, np.uint8).reshape(360, 640, 3), want)
    _, jpg = tap_image(frame, "jpeg", 640, None, 95)
    decoded = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert np.mean(np.abs(decoded.astype(int) - want.astype(int))) < 3
    with pytest.raises(ValueError, match="unknown tap encoding"):
        tap_image(frame, "gif", 640, None, 90)


def test_threads_scaling_one_frame_at_once(tmp_path: Path) -> None:
    """The tap and the preview may scale the same frame at the same time (a shared swscale
    context would crash)."""
    frame = from_av(_decoded((1280, 720)), "cam", 0, 0.0)
    want = scaled_i420(frame, 640, None)[0]
    results: list[bool] = []

    def work() -> None:
        results.extend(np.array_equal(scaled_i420(frame, 640, None)[0], want) for _ in range(50))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 200


def test_cameras_of_different_sizes_keep_their_own_scaler() -> None:
    """A tap worker serving cameras of different sizes in turn keeps one swscale context per
    conversion (rebuilding one costs more than the downscale), the last SCALERS_PER_THREAD."""

    def run() -> list[int]:
        big = from_av(_decoded((1280, 720)), "a", 0, 0.0)
        small = from_av(_decoded((640, 360)), "b", 0, 0.0)
        ids = []
        for frame in (big, small, big, small):
            scaled_i420(frame, 320, None)
            ids.append(id(next(reversed(swscale._local.scalers.values()))))
        # Each size's context is the one it had the time before.
        assert ids[0] == ids[2] and ids[1] == ids[3] and ids[0] != ids[1]
        for w in range(40, 40 + 2 * (swscale.SCALERS_PER_THREAD + 4), 2):
            scaled_i420(big, w, None)
        return [len(swscale._local.scalers)]

    # In a thread of its own: the contexts are per thread.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run).result() == [swscale.SCALERS_PER_THREAD]


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_the_downscale_starts_no_threads_of_its_own() -> None:
    """swscale's default would split each picture across worker threads it starts (two more
    wake-ups a picture beside each camera's decoder); the tap's downscale and the decode
    thread's range conversion run in the calling thread alone. (Fails with threads=0 on any
    machine with more than one core.)"""
    frame = from_av(_decoded((1280, 720)), "cam", 0, 0.0)
    full = _decoded((640, 360), "yuvj420p")
    counts: list[int] = []

    def run() -> None:
        before = _os_threads()
        scaled_i420(frame, 640, None)
        from_av(full, "cam", 0, 0.0)  # full range: converted to video range
        counts.extend((before, _os_threads()))

    with ThreadPoolExecutor(1) as pool:  # the contexts (and any threads of theirs) stay alive
        pool.submit(run).result()
        assert counts[1] == counts[0], counts
