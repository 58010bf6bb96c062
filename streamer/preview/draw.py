"""Drawing detections on a preview picture. Pure; runs in a worker thread."""

from __future__ import annotations

import cv2
import numpy as np

from streamer.crop.geometry import centre_to_corners
from streamer.crop.masks import crop_mask
from streamer.tap import scaled_bgr
from streamer.types import U8, Detections, Frame

# BGR colours by class_id (cycled). Class 0 is pure green, which tests look for.
PALETTE_BGR = (
    (0, 255, 0),
    (0, 0, 255),
    (255, 0, 0),
    (0, 255, 255),
    (255, 0, 255),
    (255, 255, 0),
    (0, 128, 255),
    (255, 128, 0),
)
MASK_ALPHA = 0.4
LINE_PX = 3
LABEL_MAX_CHARS = 48


def label_text(text: str) -> str:
    """`text` made safe for OpenCV's Hershey fonts: printable ASCII only (anything else, a lone
    surrogate included, on which cv2.putText crashes the process, becomes ``?``), at most
    LABEL_MAX_CHARS characters."""
    short = text[:LABEL_MAX_CHARS]
    return "".join(c if " " <= c <= "~" else "?" for c in short)


def colour(class_id: int) -> tuple[int, int, int]:
    return PALETTE_BGR[class_id % len(PALETTE_BGR)]


def annotate(frame: Frame, dets: Detections | None, max_width: int) -> U8:
    """The frame scaled to at most `max_width`, as BGR, with boxes, labels (class, confidence,
    tracker id) and semi-transparent masks of `dets` drawn on it."""
    img = scaled_bgr(frame, max_width, None)
    if dets is None or not dets.predictions:
        return img
    h, w = img.shape[:2]
    sx, sy = w / dets.image_width, h / dets.image_height
    xywh = np.array([(p.x, p.y, p.width, p.height) for p in dets.predictions], dtype=np.float64)
    corners = centre_to_corners(xywh, (sx, sy), (w, h))
    for pred, (x0, y0, x1, y1) in zip(dets.predictions, corners.tolist(), strict=True):
        if x1 <= x0 or y1 <= y0:
            continue
        c = colour(pred.class_id)
        mask = crop_mask(pred, (sx, sy), (w, h), (x0, y0, x1, y1))
        if mask is not None:
            region = img[y0:y1, x0:x1]
            tinted = cv2.addWeighted(region, 1 - MASK_ALPHA, np.full_like(region, c), MASK_ALPHA, 0)
            cv2.copyTo(tinted, mask, region)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), c, LINE_PX)
        label = f"{label_text(pred.class_name)} {pred.confidence:.2f}"
        if pred.tracker_id is not None:
            label += f" #{pred.tracker_id}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else y1 + th + 4
        cv2.rectangle(img, (x0, ty - th - 2), (x0 + tw + 4, ty + base - 2), c, cv2.FILLED)
        cv2.putText(
            img, label, (x0 + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    return img
