"""Crop geometry and pixels: tables for the rules, properties over random boxes, and a
differential check against supervision's crop_image."""

from __future__ import annotations

import av
import numpy as np
import pytest
import supervision as sv
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.crop.convert import crop_bgr
from streamer.crop.geometry import centre_to_corners, is_empty
from streamer.crop.stage import make_crops
from streamer.sources.frames import from_av
from streamer.types import CropParams, Detections, Frame, Prediction

MAX_CODEC_DIFF = 4


def _av_frame(w: int, h: int, fmt: str = "yuv420p") -> av.VideoFrame:
    rng = np.random.default_rng(w * 7919 + h)
    # Smooth content: a gradient plus blocks, so chroma subsampling stays near-lossless.
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (xx * 255 // max(1, w - 1)),
            (yy * 255 // max(1, h - 1)),
            ((xx // 16 + yy // 16) % 2) * 200,
        ],
        axis=2,
    ).astype(np.uint8)
    img[: h // 3, : w // 3] = rng.integers(0, 255, 3)
    return av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format=fmt)


def _reference_bgr(frame: Frame) -> np.ndarray:
    """FFmpeg's conversion of the whole frame. For odd sizes, FFmpeg's scaler stretches the
    chroma rows slightly (25 -> 49 is not x2); 4:2:0 means luma row y uses chroma row y // 2,
    so the reference pads the frame to even size first, converts, and cuts the padding off."""
    w, h = frame.width, frame.height
    ew, eh = w + w % 2, h + h % 2
    y = np.pad(frame.planes[0], ((0, eh - h), (0, ew - w)), mode="edge")
    i420 = np.concatenate([y.ravel(), frame.planes[1].ravel(), frame.planes[2].ravel()])
    vf = av.VideoFrame.from_ndarray(i420.reshape(eh * 3 // 2, ew), format="yuv420p")
    return vf.to_ndarray(format="bgr24")[:h, :w]


def _frame(w: int, h: int, fmt: str = "yuv420p") -> tuple[Frame, np.ndarray]:
    vf = _av_frame(w, h, fmt)
    frame = from_av(vf, "s", 0, 0.0)
    ref = vf.to_ndarray(format="bgr24") if fmt == "gray" else _reference_bgr(frame)
    return frame, ref


@pytest.mark.parametrize(
    ("xywh", "expected"),
    [
        ((10, 10, 4, 4), (8, 8, 12, 12)),
        ((10.5, 10.5, 3, 3), (9, 9, 12, 12)),  # 9.0 .. 12.0
        ((10, 10, 3, 3), (8, 8, 12, 12)),  # 8.5 -> 8 and 11.5 -> 12: half to even
        ((10, 10, 5, 5), (8, 8, 12, 12)),  # 7.5 -> 8 and 12.5 -> 12
        ((0, 0, 10, 10), (0, 0, 5, 5)),  # clamped at the top-left
        ((98, 48, 10, 10), (93, 43, 100, 50)),  # clamped at the bottom-right
        ((-50, -50, 10, 10), (0, 0, 0, 0)),  # wholly outside: empty
        ((150, 25, 10, 10), (100, 20, 100, 30)),  # beyond the right edge: empty
        ((50, 25, 0, 10), (50, 20, 50, 30)),  # zero width: empty
        ((50, 25, 0.4, 0.4), (50, 25, 50, 25)),  # rounds to nothing: empty
    ],
)
def test_corners_round_half_even_and_clamp(
    xywh: tuple[float, ...], expected: tuple[int, ...]
) -> None:
    got = centre_to_corners(np.array([xywh], float), (1.0, 1.0), (100, 50))
    assert tuple(got[0].tolist()) == expected


def test_empty_boxes_flagged() -> None:
    corners = np.array([[0, 0, 0, 5], [0, 0, 5, 0], [3, 3, 2, 9], [0, 0, 1, 1]], np.int64)
    assert is_empty(corners).tolist() == [True, True, True, False]


def test_rescale_from_detector_space() -> None:
    got = centre_to_corners(np.array([[320, 180, 64, 36]], float), (2.0, 2.0), (1280, 720))
    assert got[0].tolist() == [576, 324, 704, 396]


@pytest.mark.parametrize("size", [(64, 48), (65, 49), (33, 17), (1, 1), (2, 3)])
def test_crop_bgr_matches_full_conversion_for_every_rect(size: tuple[int, int]) -> None:
    w, h = size
    frame, ref = _frame(w, h)
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        if x1 == x0 or y1 == y0:
            continue
        got = crop_bgr(frame, int(x0), int(y0), int(x1), int(y1))
        assert got.shape == (y1 - y0, x1 - x0, 3) and got.flags.c_contiguous
        diff = np.abs(got.astype(int) - ref[y0:y1, x0:x1].astype(int)).max()
        assert diff <= MAX_CODEC_DIFF, (x0, y0, x1, y1, diff)


def test_gray_frames() -> None:
    frame, ref = _frame(31, 21, "gray")
    assert frame.pixel_format == "gray"
    got = crop_bgr(frame, 3, 5, 20, 17)
    assert np.array_equal(got, ref[5:17, 3:20])


@settings(max_examples=60, deadline=None)
@given(
    w=st.integers(1, 80),
    h=st.integers(1, 60),
    box=st.tuples(st.floats(-100, 200), st.floats(-100, 200), st.floats(0, 150), st.floats(0, 150)),
)
def test_property_crops_inside_frame_and_equal_region(
    w: int, h: int, box: tuple[float, float, float, float]
) -> None:
    frame, ref = _frame(w, h)
    pred = Prediction(*box, confidence=0.5, class_name="c", class_id=0, detection_id="d")
    dets = Detections("s", 0, None, w, h, (pred,))
    res = make_crops(frame, dets, CropParams(), ["raw-bgr24"])
    ((x0, y0, x1, y1),) = centre_to_corners(np.array([box]), (1.0, 1.0), (w, h)).tolist()
    if x1 <= x0 or y1 <= y0:
        assert res.crops == [] and res.empty_box == 1
        return
    (crop,) = res.crops
    o = crop.header["origin"]
    assert 0 <= o["x"] < o["x"] + crop.header["width"] <= w
    assert 0 <= o["y"] < o["y"] + crop.header["height"] <= h
    assert crop.image is not None and crop.image.shape == (y1 - y0, x1 - x0, 3)
    assert np.abs(crop.image.astype(int) - ref[y0:y1, x0:x1].astype(int)).max() <= MAX_CODEC_DIFF
    assert bytes(crop.payloads["raw-bgr24"]) == crop.image.tobytes()


def test_matches_supervision_crop_image_in_bounds() -> None:
    frame, ref = _frame(320, 240)
    rng = np.random.default_rng(3)
    for _ in range(50):
        x0, y0 = int(rng.integers(0, 300)), int(rng.integers(0, 220))
        x1, y1 = int(rng.integers(x0 + 1, 321)), int(rng.integers(y0 + 1, 241))
        theirs = sv.crop_image(ref, np.array([x0, y0, x1, y1]))
        ours = crop_bgr(frame, x0, y0, x1, y1)
        assert ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= MAX_CODEC_DIFF


def test_headers_shift_points_and_keypoints_into_crop() -> None:
    frame, _ = _frame(200, 100)
    pred = Prediction(
        50,
        25,
        40,
        20,
        0.8,
        "car",
        3,
        "d1",
        tracker_id=9,
        points=np.array([[40.0, 20.0], [60.0, 20.0], [60.0, 30.0]]),
        keypoints=({"x": 45.0, "y": 22.0, "confidence": 0.9, "class_id": 0, "class": "nose"},),
    )
    # The detector worked on a half-size picture: everything scales by 2.
    res = make_crops(frame, Detections("s", 0, None, 100, 50, (pred,)), CropParams(), [])
    (crop,) = res.crops
    h = crop.header
    assert h["origin"] == {"x": 60, "y": 30, "frame_width": 200, "frame_height": 100}
    assert (h["width"], h["height"], h["tracker_id"], h["index"], h["count"]) == (80, 40, 9, 0, 1)
    assert h["points"][0] == {"x": 20.0, "y": 10.0}  # (40*2 - 60, 20*2 - 30)
    kp = h["keypoints"][0]
    assert (kp["x"] + h["origin"]["x"], kp["y"] + h["origin"]["y"]) == (90.0, 44.0)
    assert kp["class"] == "nose"


def test_crops_of_one_message_stop_at_the_pixel_budget() -> None:
    """A message of many whole-frame boxes is cropped up to CROP_BUDGET_FRAMES frames' worth of
    pixels; the rest are skipped and counted (before: all 50 cut, 50 frames of pixels)."""
    from streamer.crop.stage import CROP_BUDGET_FRAMES

    frame, _ = _frame(64, 48)
    whole = Prediction(32, 24, 64, 48, 0.9, "car", 0, "d", None, None, None, None)
    small = Prediction(10, 10, 4, 4, 0.9, "car", 0, "s", None, None, None, None)
    preds = (small, *[whole] * 50, small)
    dets = Detections("s", 0, None, 64, 48, preds, None)
    result = make_crops(frame, dets, CropParams(), ("raw-bgr24",))
    # The first small box and CROP_BUDGET_FRAMES - 1 whole ones fit; then the budget is spent.
    assert len(result.crops) == CROP_BUDGET_FRAMES
    assert result.crop_budget == len(preds) - CROP_BUDGET_FRAMES
    assert [c.header["count"] for c in result.crops] == [CROP_BUDGET_FRAMES] * CROP_BUDGET_FRAMES
