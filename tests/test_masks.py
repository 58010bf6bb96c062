"""Masks and background removal: every mask form, every opacity, against plain references."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pycocotools.mask as coco
import pytest

from streamer.crop.background import remove_background
from streamer.crop.masks import crop_mask
from streamer.crop.stage import make_crops
from streamer.detections.codec import decode_detections, encode_detections, rle_string_to_counts
from streamer.errors import ProtocolError
from streamer.types import CropParams, Detections, Frame

W, H = 64, 48
BOX = {
    "x": 30,
    "y": 20,
    "width": 20,
    "height": 16,
    "class": "car",
    "class_id": 0,
    "confidence": 0.9,
}  # corners (20, 12) .. (40, 28)


def _gray_frame(w: int = W, h: int = H) -> Frame:
    y = (np.arange(w * h, dtype=np.uint32).reshape(h, w) * 7 % 251).astype(np.uint8)
    return Frame("s", 0, 0, 0.0, w, h, "gray", (y,), y.nbytes)


def _truth(w: int = W, h: int = H) -> np.ndarray:
    """An L-shaped object inside the box, as a full-image bool mask."""
    m = np.zeros((h, w), bool)
    m[14:26, 22:27] = True
    m[22:26, 22:38] = True
    return m


def _decode(
    pred: dict[str, Any], payload: tuple[bytes, ...] = (), image: tuple[int, int] = (W, H)
) -> Detections:
    return decode_detections(encode_detections("s", 0, image, [pred], payload=payload))


def _mask_forms() -> dict[str, tuple[dict[str, Any], tuple[bytes, ...]]]:
    truth = _truth()
    rle = coco.encode(np.asfortranarray(truth.astype(np.uint8)))
    counts = rle_string_to_counts(rle["counts"].decode()).tolist()
    box = truth[12:28, 20:40]
    return {
        "rle-string": (dict(BOX, rle={"size": [H, W], "counts": rle["counts"].decode()}), ()),
        "rle-list": (dict(BOX, rle_mask={"size": [H, W], "counts": counts}), ()),
        "bitmap-image": (dict(BOX, mask_part=0), (truth.astype(np.uint8).tobytes(),)),
        "bitmap-box": (
            dict(BOX, mask_part=0, mask_layout="box", mask_size=[16, 20]),
            ((box * 255).astype(np.uint8).tobytes(),),
        ),
    }


def test_rle_string_decoding_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = (rng.random((37, 23)) < rng.random()).astype(np.uint8)
        rle = coco.encode(np.asfortranarray(m))
        counts = rle_string_to_counts(rle["counts"].decode())
        assert sum(counts) == m.size
        flat = np.repeat(np.arange(len(counts)) % 2, counts)
        assert np.array_equal(flat.reshape(23, 37).T, m)


@pytest.mark.parametrize("form", list(_mask_forms()))
def test_every_mask_form_gives_the_same_crop_mask(form: str) -> None:
    pred_json, payload = _mask_forms()[form]
    (pred,) = _decode(pred_json, payload).predictions
    got = crop_mask(pred, (1.0, 1.0), (W, H), (20, 12, 40, 28))
    assert got is not None and got.shape == (16, 20)
    assert np.array_equal(got > 0, _truth()[12:28, 20:40])


def test_polygon_mask() -> None:
    pts = [{"x": 22, "y": 14}, {"x": 36, "y": 14}, {"x": 36, "y": 25}, {"x": 22, "y": 25}]
    (pred,) = _decode(dict(BOX, points=pts)).predictions
    got = crop_mask(pred, (1.0, 1.0), (W, H), (20, 12, 40, 28))
    assert got is not None
    expected = np.zeros((16, 20), bool)
    expected[2:14, 2:17] = True  # fillPoly includes the boundary pixels
    assert np.array_equal(got > 0, expected)


def test_masks_follow_detector_scale() -> None:
    """A mask at the detector's half resolution lands on the right frame pixels."""
    truth = _truth()
    small = truth[::2, ::2]
    rle = coco.encode(np.asfortranarray(small.astype(np.uint8)))
    pred_json = dict(
        BOX,
        x=15,
        y=10,
        width=10,
        height=8,
        rle={"size": [H // 2, W // 2], "counts": rle["counts"].decode()},
    )
    (pred,) = _decode(pred_json, image=(W // 2, H // 2)).predictions
    got = crop_mask(pred, (2.0, 2.0), (W, H), (20, 12, 40, 28))
    assert got is not None
    assert np.array_equal(got > 0, np.repeat(np.repeat(small, 2, 0), 2, 1)[12:28, 20:40])


@pytest.mark.parametrize("opacity", [0.0, 0.25, 0.5, 1.0])
def test_background_removal_exact(opacity: float) -> None:
    rng = np.random.default_rng(2)
    crop = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    mask = (rng.random((16, 20)) < 0.5).astype(np.uint8) * 255
    bgr = (10, 0, 255)
    got = remove_background(crop, mask, opacity, bgr)
    ref = np.round(opacity * np.array(bgr, np.float64) + (1 - opacity) * crop).astype(np.uint8)
    ref[mask > 0] = crop[mask > 0]
    assert np.array_equal(got, ref)


def test_background_removal_any_opacity_within_one() -> None:
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    mask = np.zeros((30, 30), np.uint8)
    for op in rng.random(20):
        got = remove_background(crop, mask, float(op), (200, 100, 0))
        ref = np.round(op * np.array([200, 100, 0]) + (1 - op) * crop)
        assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("form", list(_mask_forms()))
def test_stage_applies_config_and_message_params(form: str) -> None:
    frame = _gray_frame()
    pred_json, payload = _mask_forms()[form]
    dets = _decode(pred_json, payload)
    inside = _truth()[12:28, 20:40]
    plain = make_crops(frame, dets, CropParams(), []).crops[0].image
    res = make_crops(frame, dets, CropParams(1.0, (255, 0, 0)), [])
    img = res.crops[0].image
    assert res.no_mask == 0
    assert np.array_equal(img[inside], plain[inside])
    assert (img[~inside] == (255, 0, 0)).all()


def test_opacity_without_mask_leaves_crop_and_counts() -> None:
    frame = _gray_frame()
    dets = _decode(dict(BOX))
    plain = make_crops(frame, dets, CropParams(), []).crops[0].image
    res = make_crops(frame, dets, CropParams(0.5, (0, 0, 0)), [])
    assert res.no_mask == 1 and np.array_equal(res.crops[0].image, plain)


@pytest.mark.parametrize(
    ("pred", "payload", "text"),
    [
        (dict(BOX, rle={"size": [H, W], "counts": [1, 2]}), (), "runs add up to 3"),
        (dict(BOX, rle={"size": [H], "counts": [H * W]}), (), "size: expected [H, W]"),
        (dict(BOX, rle={"size": [H, W], "counts": "\x01"}), (), "invalid character"),
        (dict(BOX, rle={"size": [H, W], "counts": [H * W + 1, -1]}), (), "negative run"),
        (dict(BOX, rle={"size": [H, W], "counts": 5}), (), "expected a string or a list"),
        (dict(BOX, mask_part=1), (b"x" * (W * H),), "mask_part: 1 but the message has 1"),
        (dict(BOX, mask_part=0), (b"x" * 10,), "10 bytes, expected"),
        (dict(BOX, mask_part=0, mask_layout="box"), (b"x" * 10,), "mask_size"),
        (dict(BOX, mask_part=0, mask_layout="blob"), (b"x",), "mask_layout"),
    ],
)
def test_bad_masks_are_protocol_errors(
    pred: dict[str, Any], payload: tuple[bytes, ...], text: str
) -> None:
    with pytest.raises(ProtocolError, match=r"^(bad_value|wrong_type): ") as exc:
        _decode(pred, payload)
    assert text in str(exc.value)


def test_polygon_equals_full_frame_rasterisation() -> None:
    """Clipping to the crop must not change the polygon's edges (v1 rasterises on the frame)."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        pts = rng.uniform(-20, 84, (int(rng.integers(3, 8)), 2))
        (pred,) = _decode(dict(BOX, points=[{"x": x, "y": y} for x, y in pts])).predictions
        x0, x1 = sorted(int(v) for v in rng.integers(0, W + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, H + 1, 2))
        if x1 == x0 or y1 == y0:
            continue
        full = np.zeros((H, W), np.uint8)
        cv2.fillPoly(full, [np.rint(pts).astype(np.int32)], 255)
        got = crop_mask(pred, (1.0, 1.0), (W, H), (x0, y0, x1, y1))
        assert got is not None and np.array_equal(got, full[y0:y1, x0:x1])
