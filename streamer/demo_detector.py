"""The demo detector: a separate process that reads the frame tap, finds the synthetic scene's
licence plates (light rectangles) and coloured blobs with classical OpenCV, and sends detections
back. Run: ``python -m streamer.demo_detector --tap ENDPOINT --detections ENDPOINT``."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import cv2
import numpy as np

from streamer.client import DetectionSender, FrameSubscriber
from streamer.sharding import add_shards_arg, endpoints_arg
from streamer.tracking import IouTracker

MIN_AREA_FRACTION = 0.0005  # of the frame, for a contour to count


def detect(image: np.ndarray) -> list[dict[str, Any]]:
    """Plates and blobs in a BGR image, as Roboflow-style centre boxes in its pixel space."""
    h, w = image.shape[:2]
    min_area = MIN_AREA_FRACTION * w * h
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    sat, val = hsv[:, :, 1], hsv[:, :, 2]
    plates = ((val > 200) & (sat < 40)).astype(np.uint8)
    blobs = ((sat > 120) & (val > 80)).astype(np.uint8)
    out: list[dict[str, Any]] = []
    for mask, cls, class_id in ((plates, "plate", 0), (blobs, "blob", 1)):
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            x, y, bw, bh = cv2.boundingRect(c)
            if bw * bh < min_area:
                continue
            fill = float(cv2.contourArea(c)) / float(bw * bh)
            if cls == "plate" and (fill < 0.8 or not 1.5 <= bw / bh <= 8.0):
                continue
            out.append(
                {
                    "x": x + bw / 2,
                    "y": y + bh / 2,
                    "width": bw,
                    "height": bh,
                    "class": cls,
                    "class_id": class_id,
                    "confidence": round(min(1.0, fill), 3),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--tap", nargs="+", default=["tcp://127.0.0.1:5554"], help="every shard's frame tap"
    )
    ap.add_argument(
        "--detections",
        default="tcp://127.0.0.1:5555",
        help="for frames that do not say where their detections go (reply_to)",
    )
    add_shards_arg(ap)
    args = ap.parse_args(argv)
    taps = endpoints_arg(ap, args.tap, args.shards)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    frames = FrameSubscriber(taps)
    sender = DetectionSender(args.detections)
    trackers: dict[str, IouTracker] = {}
    try:
        for frame in frames:
            preds = detect(frame.image)
            trackers.setdefault(frame.source_id, IouTracker()).update(preds)
            sender.send(frame, preds)
    except KeyboardInterrupt:
        pass
    finally:
        frames.close()
        sender.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
