"""The crop stage: one frame and its detections in, encoded crops out. Pure and synchronous;
the pipeline runs it in the crop thread; OpenCV and numpy release the GIL while they work."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from streamer.crop.background import remove_background
from streamer.crop.convert import bgr_to_i420, crop_bgr, crop_i420, i420_size
from streamer.crop.geometry import centre_to_corners, is_empty
from streamer.crop.masks import crop_mask
from streamer.types import U8, Crop, CropParams, Detections, Frame, Prediction

PROTOCOL_VERSION = 1
PNG_COMPRESSION_LEVEL = 1
JPEG_QUALITY = 90
WEBP_QUALITY = 90
# The crops of one message may add up to at most this many frames' worth of pixels; the
# predictions beyond are skipped and counted in `crop_budget` (overlapping boxes of a crowd stay
# well within it; a message of 1,000 whole-frame boxes does not).
CROP_BUDGET_FRAMES = 4


@dataclass
class CropResult:
    crops: list[Crop] = field(default_factory=list)
    empty_box: int = 0
    no_mask: int = 0
    crop_budget: int = 0  # predictions skipped: the message's crops had used up the budget
    unwanted: int = 0  # predictions not cut: no publisher or viewer would receive them


def encode_image(image: np.ndarray, key: str) -> bytes | memoryview:
    """Encode a BGR crop for the wire: raw bytes (a zero-copy view), PNG, JPEG or WebP.

    `key` is ``<encoding>`` or ``<encoding>:<quality>`` (PNG compression level 0-9, JPEG/WebP
    quality 1-100), as PublishConfig.encoding_key gives it.
    """
    encoding, _, quality = key.partition(":")
    if encoding == "raw-bgr24":
        return np.ascontiguousarray(image).data.cast("B")
    if encoding == "png":
        level = int(quality) if quality else PNG_COMPRESSION_LEVEL
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, level])
    elif encoding == "jpeg":
        q = int(quality) if quality else JPEG_QUALITY
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])
    elif encoding == "webp":
        q = int(quality) if quality else WEBP_QUALITY
        ok, buf = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, q])
    else:
        raise ValueError(f"unknown crop encoding {encoding!r}")
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode a {image.shape} crop as {encoding}")
    return buf.tobytes()


def _shift_keypoints(
    pred: Prediction, sx: float, sy: float, x0: int, y0: int
) -> list[dict[str, Any]] | None:
    if pred.keypoints is None:
        return None
    return [{**kp, "x": kp["x"] * sx - x0, "y": kp["y"] * sy - y0} for kp in pred.keypoints]


def message_params(params: CropParams, dets: Detections) -> CropParams:
    """The source's crop parameters with the message's own ``params`` (if any) applied."""
    return dataclasses.replace(params, **dets.params) if dets.params else params


def make_crops(
    frame: Frame, dets: Detections, params: CropParams, encodings: Iterable[str]
) -> CropResult:
    """Cut one crop per prediction out of `frame` (all of `iter_crops`, in a list)."""
    result = CropResult()
    result.crops.extend(iter_crops(frame, dets, params, encodings, result))
    return result


def iter_crops(
    frame: Frame,
    dets: Detections,
    params: CropParams,
    encodings: Iterable[str],
    result: CropResult,
    wanted: Callable[[Prediction], bool] | None = None,
    dest: Callable[[Prediction, str, int], U8 | None] | None = None,
    need_image: bool = True,
) -> Iterator[Crop]:
    """Cut one crop per prediction out of `frame`, yielding each as soon as it is made (so it
    can be sent while the next is cut); `result` gets the counts (its `crops` stay empty).
    With `wanted`, a prediction it refuses is not cut at all (nobody would receive it); it
    keeps its `index`, so the crops that are cut carry the same headers either way.
    With `dest`, a raw encoding's bytes are written into the flat uint8 array it returns for
    (prediction, encoding, size in bytes) (None: a new array), e.g. straight into a
    shared-memory ring. Without `need_image`, a crop that only raw-i420 publishers take is
    never converted to BGR (its `image` is None).

    Boxes are rescaled from the message's image size to the frame's, rounded and clamped; a box
    empty after clamping yields no crop and counts in ``empty_box``. Once the crops add up to
    CROP_BUDGET_FRAMES frames' worth of pixels, the remaining predictions yield no crop and
    count in ``crop_budget``. Each crop carries its wire header and one payload per requested
    encoding.
    """
    preds = dets.predictions
    if not preds:
        return
    sx = frame.width / dets.image_width
    sy = frame.height / dets.image_height
    xywh = np.array([(p.x, p.y, p.width, p.height) for p in preds], dtype=np.float64)
    corners = centre_to_corners(xywh, (sx, sy), (frame.width, frame.height))
    empty = is_empty(corners)
    result.empty_box = int(empty.sum())
    areas = np.where(empty, 0, (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1]))
    within = np.cumsum(areas) <= CROP_BUDGET_FRAMES * frame.width * frame.height
    result.crop_budget = int((~within & ~empty).sum())
    empty |= ~within
    count = len(preds) - result.empty_box - result.crop_budget
    index = 0
    encodings = tuple(encodings)
    masked = params.mask_opacity > 0
    bgr_needed = need_image or masked or any(key != "raw-i420" for key in encodings)
    for pred, (x0, y0, x1, y1), is_void in zip(
        preds, corners.tolist(), empty.tolist(), strict=True
    ):
        if is_void:
            continue
        if wanted is not None and not wanted(pred):
            result.unwanted += 1
            index += 1
            continue
        image = None
        if bgr_needed:
            out = (
                None
                if dest is None or masked
                else dest(pred, "raw-bgr24", (y1 - y0) * (x1 - x0) * 3)
            )
            image = crop_bgr(
                frame, x0, y0, x1, y1, None if out is None else out.reshape(y1 - y0, x1 - x0, 3)
            )
        points = None
        if pred.points is not None:
            points = pred.points * (sx, sy) - (x0, y0)
        changed = False  # pixels changed after cutting: background removed
        if masked:
            assert image is not None
            mask = crop_mask(pred, (sx, sy), (frame.width, frame.height), (x0, y0, x1, y1))
            if mask is None:
                result.no_mask += 1
            else:
                image = remove_background(image, mask, params.mask_opacity, params.background_bgr)
                changed = True
            if dest is not None:
                out = dest(pred, "raw-bgr24", image.nbytes)
                if out is not None:
                    out[:] = image.reshape(-1)
                    image = out.reshape(image.shape)
        header: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "source_id": frame.source_id,
            "frame_id": frame.frame_id,
            "pts": frame.pts,
            "captured_at": frame.captured_at,
            "detection_id": pred.detection_id,
            "class": pred.class_name,
            "class_id": pred.class_id,
            "confidence": pred.confidence,
            "tracker_id": pred.tracker_id,
            "index": index,
            "count": count,
            "origin": {"x": x0, "y": y0, "frame_width": frame.width, "frame_height": frame.height},
            "width": x1 - x0,
            "height": y1 - y0,
        }
        kps = _shift_keypoints(pred, sx, sy, x0, y0)
        if kps is not None:
            header["keypoints"] = kps
        if points is not None:
            header["points"] = [{"x": float(px), "y": float(py)} for px, py in points]
        payloads: dict[str, bytes | memoryview] = {}
        for key in encodings:
            if key == "raw-i420":
                slot = None if dest is None else dest(pred, key, i420_size(x0, y0, x1, y1))
                if changed:
                    assert image is not None
                    yuv = bgr_to_i420(image, x0, y0, slot)
                else:
                    yuv = crop_i420(frame, x0, y0, x1, y1, slot)
                payloads[key] = yuv.data
            else:
                assert image is not None
                payloads[key] = encode_image(image, key)
        yield Crop(header=header, image=image, payloads=payloads)
        index += 1
