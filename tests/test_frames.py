"""from_av: every decoder output brought to streamer's two forms (I420 in video range, 8-bit gray
in full range), on frames built in memory: every integer gray depth and byte order in every
range, full- and video-range YUV, and the tap's downscale of each."""

from __future__ import annotations

import numpy as np
import pytest
from av import VideoFrame
from av.video.reformatter import ColorRange

from streamer.crop.convert import crop_bgr
from streamer.sources.frames import from_av
from streamer.tap import scaled_i420

RANGES = [ColorRange.UNSPECIFIED, ColorRange.MPEG, ColorRange.JPEG]
DEPTHS = [9, 10, 12, 14, 16]


def _gray(bits: int, order: str, values: np.ndarray, color_range: int) -> VideoFrame:
    """A one-row gray frame of `bits` holding `values`, written into its padded plane."""
    vf = VideoFrame(len(values), 1, f"gray{bits}{order}")
    plane = vf.planes[0]
    row = np.zeros(plane.line_size // 2, np.dtype(">u2" if order == "be" else "<u2"))
    row[: len(values)] = values
    plane.update(row.tobytes() * (plane.buffer_size // plane.line_size))
    vf.color_range = color_range
    vf.pts = 7
    return vf


@pytest.mark.parametrize("order", ["le", "be"])
@pytest.mark.parametrize("bits", DEPTHS)
@pytest.mark.parametrize("color_range", RANGES)
def test_deep_gray_is_rounded_to_8_bits_in_its_range(
    bits: int, order: str, color_range: int
) -> None:
    """Video range drops the extra bits, rounded (940 of 10 bits is 235, 16 << shift is 16);
    full or unspecified range scales (the top value is 255). Every value of the depth."""
    top = (1 << bits) - 1
    values = np.unique(np.linspace(0, top, 4000).round().astype(np.int64))
    shift = bits - 8
    frame = from_av(_gray(bits, order, values, color_range), "cam", 3, 1.5)
    assert (frame.frame_id, frame.pts, frame.width, frame.height) == (3, 7, len(values), 1)
    luma = frame.planes[0][0].astype(np.int64)
    if color_range == ColorRange.MPEG:
        want = np.minimum((values + (1 << (shift - 1))) >> shift, 255)
        assert frame.pixel_format == "yuv420p"
        assert np.all(frame.planes[1] == 128) and np.all(frame.planes[2] == 128)
    else:
        want = (values * 255 + top // 2) // top
        assert frame.pixel_format == "gray"
    assert np.array_equal(luma, want)
    if bits == 10 and color_range == ColorRange.MPEG:
        assert luma[values == 940][0] == 235 and luma[values == 64][0] == 16


def _yuv420p(y: int, color_range: int, fmt: str = "yuv420p") -> VideoFrame:
    vf = VideoFrame.from_ndarray(
        np.concatenate([np.full((8, 8), y, np.uint8), np.full((4, 8), 128, np.uint8)]),
        format="yuv420p",
    )
    if fmt != "yuv420p":
        vf = VideoFrame.from_ndarray(vf.to_ndarray(), format=fmt)  # same bytes, another name
    vf.color_range = color_range
    return vf


@pytest.mark.parametrize(
    ("fmt", "color_range", "converted"),
    [
        ("yuv420p", ColorRange.UNSPECIFIED, False),
        ("yuv420p", ColorRange.MPEG, False),
        ("yuv420p", ColorRange.JPEG, True),
        ("yuvj420p", ColorRange.JPEG, True),
        ("yuvj420p", ColorRange.UNSPECIFIED, True),  # the j says full range
    ],
)
def test_full_range_yuv_is_brought_to_video_range(
    fmt: str, color_range: int, converted: bool
) -> None:
    """Video range (or unspecified) yuv420p is wrapped as decoded; full range is converted:
    luma 0, 128, 255 become 16, 126, 235, and their BGR crops give 0, 128, 255 back."""
    for y in (0, 128, 255):
        vf = _yuv420p(y, color_range, fmt)
        frame = from_av(vf, "cam", 0, 0.0)
        assert frame.pixel_format == "yuv420p"
        assert (frame.decoded is vf) is not converted
        want = round(16 + y * 219 / 255) if converted else y
        assert np.all(frame.planes[0] == want), (y, frame.planes[0][0, 0])
        bgr = crop_bgr(frame, 0, 0, 8, 8)
        if converted:
            assert np.all(np.abs(bgr.astype(int) - y) <= 1), (y, bgr[0, 0])


@pytest.mark.parametrize("color_range", RANGES)
@pytest.mark.parametrize("size", [(80, 48), (81, 49)])
def test_the_tap_of_a_gray_frame_is_video_range_i420(
    color_range: int, size: tuple[int, int]
) -> None:
    """The tap of 8-bit gray, scaled (block means, or FFmpeg's scaler) or not: video-range
    gray as it is, full or unspecified range mapped to video range; neutral chroma; odd sizes
    too."""
    w, h = size
    levels = np.array([0, 16, 126, 235, 255])
    luma = np.tile(np.repeat(levels, 16), (h, 1))[:, :w].copy()
    if w > luma.shape[1]:
        luma = np.pad(luma, ((0, 0), (0, w - luma.shape[1])), mode="edge")
    vf = VideoFrame.from_ndarray(luma.astype(np.uint8), format="gray")
    vf.color_range = color_range
    frame = from_av(vf, "cam", 0, 0.0)
    want = levels if color_range == ColorRange.MPEG else np.round(16 + levels * 219 / 255)
    for width in (w, 40):
        buf, tw, th = scaled_i420(frame, width, None)
        step = 16 * tw / 80
        got = buf[:tw][(step / 2 + step * np.arange(5)).astype(int)].astype(int)
        assert np.all(np.abs(got - want) <= 1), (width, got)
        assert np.all(buf[tw * th :] == 128)
