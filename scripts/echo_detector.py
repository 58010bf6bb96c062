#!/usr/bin/env python3
"""A stand-in detector for tests and benchmarks: for every tapped frame it sends back a fixed,
reproducible set of boxes (`boxes_for`), so the receiver knows exactly which crops to expect.

    python scripts/echo_detector.py --tap tcp://127.0.0.1:5554 --detections tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from typing import Any

from streamer.client import DetectionSender, FrameSubscriber
from streamer.detections.codec import encode_detections
from streamer.sharding import add_shards_arg, endpoints_arg


def boxes_for(
    frame_id: int, width: int, height: int, n: int, masks: bool = False
) -> list[dict[str, Any]]:
    """`n` Roboflow-style boxes for a frame of the given size; the same every call.

    Box 0 hangs over the top-left corner (clamping), box 1 lies wholly outside (empty after
    clamping) when n > 2; the rest are plate- and person-sized boxes inside the frame. With
    `masks`, boxes 2, 4, ... carry a diamond polygon (instance segmentation) and a keypoint at
    their centre.
    """
    rnd = random.Random(frame_id)
    out = []
    for i in range(n):
        if i == 0:
            x, y, w, h = 0.0, 0.0, width / 8, height / 8
        elif i == 1 and n > 2:
            x, y, w, h = width + 50.0, height / 2, 20.0, 20.0
        else:
            w = rnd.choice((width / 10, width / 6))
            h = w / 2 if rnd.random() < 0.5 else w * 2
            h = min(h, height / 2)
            x = rnd.uniform(w / 2, width - w / 2)
            y = rnd.uniform(h / 2, height - h / 2)
        pred: dict[str, Any] = {
            "x": x,
            "y": y,
            "width": w,
            "height": h,
            "confidence": 0.5 + (i % 5) / 10,
            "class": "plate" if i % 2 else "person",
            "class_id": i % 2,
            "detection_id": f"{frame_id}-{i}",
        }
        if masks and i >= 2 and i % 2 == 0:
            pred["points"] = [
                {"x": x, "y": y - h / 2},
                {"x": x + w / 2, "y": y},
                {"x": x, "y": y + h / 2},
                {"x": x - w / 2, "y": y},
            ]
            pred["keypoints"] = [
                {"x": x, "y": y, "confidence": 0.9, "class_id": 0, "class": "centre"}
            ]
        out.append(pred)
    return out


def site_boxes(frame_id: int, width: int, height: int) -> list[dict[str, Any]]:
    """Roboflow's benchmark case in a `width` x `height` frame: 5 plates of 200x100 and 5 people
    of 300x600 (scaled with the frame from 1920x1080), at fixed places, all inside the frame."""
    sx, sy = width / 1920, height / 1080
    out = []
    for i in range(10):
        plate = i < 5
        w, h = (200 * sx, 100 * sy) if plate else (300 * sx, 600 * sy)
        col = i % 5
        x = (col + 0.5) * width / 5
        y = (0.2 if plate else 0.6) * height
        out.append(
            {
                "x": x,
                "y": y,
                "width": w,
                "height": h,
                "confidence": 0.9,
                "class": "plate" if plate else "person",
                "class_id": 0 if plate else 1,
                "detection_id": f"{frame_id}-{i}",
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
        help="for frames that do not say where their detections go (reply_to); without it, "
        "such frames are counted (no_route) and not answered",
    )
    ap.add_argument(
        "--allow-ipc-reply-to",
        action="store_true",
        help="follow ipc:// reply_to endpoints too (every shard on this host); by default only "
        "tcp:// ones are followed: a tapped frame must not steer detections into local socket "
        "files",
    )
    add_shards_arg(ap)
    ap.add_argument("--boxes", type=int, default=10)
    ap.add_argument("--masks", action="store_true", help="add polygons and keypoints")
    ap.add_argument(
        "--site",
        action="store_true",
        help="answer Roboflow's benchmark case instead: 5 plates and 5 people (site_boxes)",
    )
    ap.add_argument("--pull", action="store_true", help="the tap is PUSH: join its worker pool")
    ap.add_argument(
        "--timestamp",
        action="store_true",
        help="answer with captured_at only, as a detector reading the camera would",
    )
    ap.add_argument("--times", help="append 'frame_id monotonic_send_time' lines to this file")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    frames = FrameSubscriber(
        endpoints_arg(ap, args.tap, args.shards), mode="pull" if args.pull else "sub"
    )
    sender = DetectionSender(args.detections, allow_ipc_reply_to=args.allow_ipc_reply_to)
    times = open(args.times, "a", buffering=1) if args.times else None  # noqa: SIM115
    handled = 0
    try:
        for frame in frames:
            w, h = frame.width, frame.height
            if args.site:
                boxes = site_boxes(frame.frame_id, w, h)
            else:
                boxes = boxes_for(frame.frame_id, w, h, args.boxes, args.masks)
            if args.timestamp:
                sender.send_message(
                    frame,
                    encode_detections(
                        frame.source_id, None, (w, h), boxes, captured_at=frame.captured_at
                    ),
                )
            else:
                sender.send(frame, boxes)
            if times is not None:
                times.write(f"{frame.frame_id} {time.monotonic()}\n")
            handled += 1
    finally:
        print(f"sender {json.dumps(dict(sender.stats))}", flush=True)
        print(f"handled {handled}", flush=True)  # last: tests read the number at the end
        frames.close()
        sender.close()
        if times is not None:
            times.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
