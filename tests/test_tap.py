"""Tap pictures: sizes; the block mean by whole factors (streamer._box, C) against NumPy's;
and the three downscales (block mean, FFmpeg's scaler for other decoded frames, OpenCV's area
resize for webcam frames) against each other on the same picture."""

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
from hypothesis import given, settings
from hypothesis import strategies as st

import streamer.swscale as swscale
from streamer import tap
from streamer._box import MAX_BLOCK, box_down
from streamer.sources.frames import from_av
from streamer.tap import scaled_i420, tap_image, tap_size
from tests.conftest import write_clip


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
    """testsrc2 at `size` (odd sizes too: scaled to it), chroma siting unspecified."""
    w, h = size
    with av.open(f"testsrc2=size={w + w % 2}x{h + h % 2}:rate=30", format="lavfi") as src:
        vf = next(src.decode(video=0))
    return vf.reformat(width=w, height=h, format=fmt)


@settings(max_examples=300, deadline=None)
@given(
    fx=st.integers(1, 17),
    fy=st.integers(1, 17),
    ow=st.integers(1, 9),
    oh=st.integers(1, 9),
    pad=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
)
def test_box_down_is_each_blocks_rounded_mean(
    fx: int, fy: int, ow: int, oh: int, pad: int, seed: int
) -> None:
    """Any whole factors up to 255 pixels a block, rows of any stride (a view into a wider
    picture), extreme values included: (sum + n // 2) // n of each block, exactly."""
    if fx * fy > MAX_BLOCK:
        fy = MAX_BLOCK // fx
    rng = np.random.default_rng(seed)
    shape = (oh * fy, ow * fx + pad)
    if seed % 2:  # any level, or only the extremes and the rounding edges
        wide = rng.integers(0, 256, shape, np.uint8)
    else:
        wide = rng.choice(np.array([0, 1, 127, 128, 254, 255], np.uint8), shape)
    src = wide[:, : ow * fx]
    blocks = src.reshape(oh, fy, ow, fx).astype(np.int64).sum(axis=(1, 3))
    n = fx * fy
    out_wide = np.full((oh, ow + pad), 7, np.uint8)
    box_down(src, out_wide[:, :ow])
    assert np.array_equal(out_wide[:, :ow], (blocks + n // 2) // n)
    assert np.all(out_wide[:, ow:] == 7)  # nothing written past a row's pixels


def test_the_division_is_exact_for_every_block_size_at_every_rounding_step() -> None:
    """box_down divides by a multiply and a shift: for every block of n = 1..MAX_BLOCK pixels,
    each sum just below a rounding step ((sum + n // 2) one short of a multiple of n), the one
    at it, and the largest sum (255 n) give (sum + n // 2) // n. (A reciprocal of 2^22 or 2^23
    instead of 2^24 is wrong for some of them; random pixels almost never hit those sums.)"""
    for n in range(1, MAX_BLOCK + 1):
        steps = np.arange(1, 256) * n - n // 2
        sums = np.unique(np.clip(np.concatenate([steps - 1, steps, [0, 255 * n]]), 0, 255 * n))
        q, r = np.divmod(sums, n)
        blocks = q[:, None] + (np.arange(n)[None, :] < r[:, None])  # n pixels summing to each
        dst = np.empty((1, len(sums)), np.uint8)
        box_down(blocks.astype(np.uint8).reshape(1, -1), dst)
        assert np.array_equal(dst[0], (sums + n // 2) // n), n


def test_box_down_refuses_what_it_cannot_average() -> None:
    """Only 2-D uint8 planes with contiguous pixels, a writable destination whose shape divides
    the source's, at most MAX_BLOCK pixels a block: anything else raises, and writes nothing."""
    src = np.zeros((12, 12), np.uint8)
    read_only = np.full((4, 4), 9, np.uint8)
    read_only.flags.writeable = False
    cases: list[tuple[object, object]] = [
        (src.astype(np.uint16), np.full((4, 4), 9, np.uint8)),  # not bytes
        (src.reshape(2, 6, 12), np.full((4, 4), 9, np.uint8)),  # not 2-D
        (src[:, ::3], np.full((4, 4), 9, np.uint8)),  # pixels not contiguous
        (src[::-1], np.full((4, 4), 9, np.uint8)),  # rows backwards
        (src, np.full((4, 8), 9, np.uint8)[:, ::2]),
        (src, np.full((5, 4), 9, np.uint8)),  # 12 rows into 5
        (src, np.full((0, 4), 9, np.uint8)),
        (np.zeros((16, 16), np.uint8), np.full((1, 1), 9, np.uint8)),  # 256 pixels a block
        (np.zeros((1, 256), np.uint8), np.full((1, 1), 9, np.uint8)),  # 256 wide
        (src, read_only),
        (b"\0" * 144, np.full((4, 4), 9, np.uint8)),
        (src, bytearray(b"\x09" * 16)),
        (src, None),
    ]
    for bad_src, bad_dst in cases:
        with pytest.raises((ValueError, TypeError, BufferError)):
            box_down(bad_src, bad_dst)
        if bad_dst is not None:
            assert set(bytes(np.asarray(bad_dst).tobytes())) <= {9}, (bad_src, bad_dst)
    taken = np.zeros((1, 1), np.uint8)
    box_down(np.full((15, 17), 200, np.uint8), taken)  # 255 pixels: taken
    assert taken[0, 0] == 200


@pytest.mark.parametrize("size", [(1920, 1080), (1280, 720), (3840, 2160)])
def test_whole_factors_take_the_block_mean(size: tuple[int, int]) -> None:
    """1080p, 720p and 4K to 640x360 are averaged by block (streamer._box), for decoded frames
    and others alike: within one level of OpenCV's area resize of each plane, and of swscale's
    area filter on a picture whose chroma siting is unspecified (fixed-point coefficients)."""
    frame = from_av(_decoded(size), "cam", 0, 0.0)
    tw, th = tap_size(*size, 640)
    assert tap._whole_factors(frame, tw, th)
    for f in (frame, dataclasses.replace(frame, decoded=None)):
        box, tw2, th2 = scaled_i420(f, 640, None)
        assert (tw2, th2) == (tw, th) == (640, 360)
        opencv = np.concatenate(
            [
                cv2.resize(plane, (w, h), interpolation=cv2.INTER_AREA).reshape(-1)
                for plane, (w, h) in zip(
                    frame.planes, ((tw, th), (tw // 2, th // 2), (tw // 2, th // 2)), strict=True
                )
            ]
        )
        assert np.max(np.abs(box.astype(np.int16) - opencv)) <= 1
    sws = np.empty_like(box)
    tap._fill_swscale(sws, frame, tw, th)
    assert np.max(np.abs(box.astype(np.int16) - sws.astype(np.int16))) <= 1


def test_a_left_sited_camera_differs_from_swscale_by_its_chroma_siting_only(
    tmp_path: Path,
) -> None:
    """An H.264 camera's chroma is sited left: swscale places it so, the block mean takes it
    as centred. At 3:1 that is weights 1/6, 1/3, 1/3, 1/6 on chroma columns 3j-1..3j+2 against
    1/3 on 3j..3j+2: the two differ by (x[3j+2] - x[3j-1]) / 6 (averaged over the block's rows),
    and by nothing else but rounding. The luma agrees within one level."""
    with av.open(str(write_clip(tmp_path / "c.mp4", 1, (1920, 1080)))) as c:
        vf = next(c.decode(video=0))
    frame = from_av(vf, "cam", 0, 0.0)
    box, tw, th = scaled_i420(frame, 640, None)
    sws = np.empty_like(box)
    tap._fill_swscale(sws, frame, tw, th)
    n, cw, ch = tw * th, tw // 2, th // 2
    assert np.max(np.abs(box[:n].astype(np.int16) - sws[:n])) <= 1
    for i, start in ((1, n), (2, n + n // 4)):
        x = frame.planes[i].astype(np.float64)  # 960 x 540
        siting = ((x[:, 5::3] - x[:, 2:-1:3]) / 6).reshape(ch, 3, cw - 1).mean(axis=1)
        got = box[start : start + n // 4].reshape(ch, cw).astype(np.float64)
        want = sws[start : start + n // 4].reshape(ch, cw).astype(np.float64)
        # (from block 1 on: block 0 has no column -1, and swscale weighs its edge its own way)
        assert np.max(np.abs((got - want)[:, 1:] - siting)) <= 2
        assert np.max(np.abs(got - want)) > 2  # the siting does differ on this picture


@pytest.mark.parametrize(
    ("size", "width"), [((1920, 1080), 500), ((1000, 562), 320), ((641, 361), 320)]
)
def test_swscale_and_opencv_area_downscales_agree(size: tuple[int, int], width: int) -> None:
    """Other ratios: FFmpeg's scaler for decoded frames, OpenCV's for others."""
    frame = from_av(_decoded(size), "cam", 0, 0.0)
    assert frame.decoded is not None
    assert not tap._whole_factors(frame, *tap_size(*size, width))
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
    assert not tap._whole_factors(frame, *tap_size(1280, 720, 500))  # (swscale's path)
    want = scaled_i420(frame, 500, None)[0]
    results: list[bool] = []

    def work() -> None:
        results.extend(np.array_equal(scaled_i420(frame, 500, None)[0], want) for _ in range(50))

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
            scaled_i420(frame, 300, None)  # not by whole factors: swscale
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
        scaled_i420(frame, 500, None)  # (not by whole factors: swscale)
        from_av(full, "cam", 0, 0.0)  # full range: converted to video range
        counts.extend((before, _os_threads()))

    with ThreadPoolExecutor(1) as pool:  # the contexts (and any threads of theirs) stay alive
        pool.submit(run).result()
        assert counts[1] == counts[0], counts
