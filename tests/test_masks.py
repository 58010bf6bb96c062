"""Masks and background removal: every mask form, every opacity, against plain references."""

from __future__ import annotations

import time
import tracemalloc
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
from streamer.preview.draw import annotate
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
    assert res.no_mask == 0 and img is not None and plain is not None
    assert np.array_equal(img[inside], plain[inside])
    assert (img[~inside] == (255, 0, 0)).all()


def test_opacity_without_mask_leaves_crop_and_counts() -> None:
    frame = _gray_frame()
    dets = _decode(dict(BOX))
    plain = make_crops(frame, dets, CropParams(), []).crops[0].image
    res = make_crops(frame, dets, CropParams(0.5, (0, 0, 0)), [])
    assert plain is not None and res.crops[0].image is not None
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


@pytest.mark.parametrize("counts", [[5, 0, 3], [0, 0, 8], "0" * 300, "0" * 100_000, "11" + "0" * 5])
def test_zero_length_runs_after_the_first_are_refused(counts: Any) -> None:
    """pycocotools never writes an empty run except the first; refusing them bounds the number of
    runs by the mask's area, whatever the string's length."""
    rle = {"size": [2, 4], "counts": counts}
    with pytest.raises(ProtocolError, match="zero-length run"):
        _decode(dict(BOX, rle=rle))


def test_long_rle_string_decodes_in_bounded_memory() -> None:
    """4 M characters of ``0`` (each a run of 0) made the decoder allocate ~60 bytes per
    character (240 MB); now it stops in its first chunk: peak under 2 bytes per character."""
    text = "0" * 4_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="zero-length run"):
            rle_string_to_counts(text, H * W)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(text), peak


def test_rle_runs_beyond_the_area_stop_decoding_early() -> None:
    """Runs adding up past the mask's area are refused as soon as a chunk shows it."""
    one = coco.encode(np.asfortranarray(np.ones((H, W), np.uint8)))["counts"].decode()
    text = one + "1" * 1_000_000  # more runs after the whole area is covered
    with pytest.raises(ValueError, match=r"(longer|more) than 3072"):
        rle_string_to_counts(text, H * W)


def test_far_out_polygon_costs_what_the_canvas_costs() -> None:
    """Three polygons of 1,024 vertices zig-zagging between y = +-1e9 (a 120 KB message) took
    OpenCV ~12 s to rasterise (each edge walked over its 2**21 rows), in the crop stage and as
    much again in the preview; clipped to the canvas first, a few milliseconds. The bound is
    over 10x below the broken cost, generous for a loaded machine."""
    fw, fh = 640, 360
    pts = [{"x": 0.6 * i, "y": 1e9 if i % 2 else -1e9} for i in range(1_024)]
    box = dict(BOX, x=320, y=180, width=640, height=360)
    preds = [dict(box, points=pts)] * 3
    dets = decode_detections(encode_detections("s", 0, (fw, fh), preds))
    y = np.full((fh, fw), 128, np.uint8)
    frame = Frame("s", 0, 0, 0.0, fw, fh, "gray", (y,), y.nbytes)
    started = time.perf_counter()
    crops = make_crops(frame, dets, CropParams(mask_opacity=1.0), ("raw-bgr24",)).crops
    img = annotate(frame, dets, fw)
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, elapsed
    assert [None if c.image is None else c.image.shape[:2] for c in crops] == [(fh, fw)] * 3
    assert img.shape[:2] == (fh, fw)


def _near_an_edge(pixels: np.ndarray, pts: np.ndarray, tolerance_px: float) -> np.ndarray:
    """For each (row, col) pixel: is its centre within `tolerance_px` of an edge of `pts`?"""
    p = pixels[:, ::-1].astype(np.float64)[:, None, :]  # (n, 1, 2) as x, y
    a, b = pts[None, :, :], np.roll(pts, -1, axis=0)[None, :, :]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
    return np.asarray(d.min(axis=1) <= tolerance_px)


def test_clipped_polygon_matches_the_full_rasterisation_but_along_edges() -> None:
    """A polygon reaching far outside the frame is clipped before it is rasterised: it covers
    the same pixels as one rasterised on a canvas holding all of it, except pixels within a
    pixel of one of its edges."""
    rng = np.random.default_rng(7)
    off = 4_000
    for _ in range(60):
        pts = np.rint(rng.uniform(-3_000, 3_000, (int(rng.integers(3, 10)), 2)))
        big = np.zeros((H + 2 * off, W + 2 * off), np.uint8)
        cv2.fillPoly(big, [(pts + off).astype(np.int32)], 255)
        full = big[off : off + H, off : off + W]
        (pred,) = _decode(dict(BOX, points=[{"x": x, "y": y} for x, y in pts])).predictions
        got = crop_mask(pred, (1.0, 1.0), (W, H), (0, 0, W, H))
        assert got is not None
        differ = np.argwhere(got != full)
        assert _near_an_edge(differ, pts, 1.0).all()
