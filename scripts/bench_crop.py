#!/usr/bin/env python3
"""Crop-stage benchmark: streamer's crop stage against the usual way, on the same frames.

(a) streamer: `make_crops` on the decoded YUV frame (converts only the crop rectangles; masks
    cut and blended per crop).
(b) baseline: full-frame BGR conversion (`to_ndarray("bgr24")`), supervision's `crop_image`
    per box (a view, nothing copied), and for masked boxes a numpy re-implementation of
    dynamic_crop@v1's blend (a frame-sized mask per detection, broadcasting, `np.where`).

Boxes are plate-sized (200x100) and person-sized (300x600) in turn, every second one with a
polygon mask, background removal at opacity 0.5. Prints per-frame medians and (b)/(a).

    .venv/bin/python scripts/bench_crop.py [--repeat 30] [--sizes 1920x1080,3840x2160]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from fractions import Fraction
from typing import cast

import av
import cv2
import numpy as np
import supervision as sv

from streamer.crop.geometry import centre_to_corners
from streamer.crop.stage import make_crops
from streamer.sources.frames import from_av
from streamer.types import U8, CropParams, Detections, Prediction

OPACITY = 0.5
BG_BGR = (0, 0, 0)


def decoded_frame(w: int, h: int) -> av.VideoFrame:
    """One frame of testsrc2, H.264-encoded and decoded, as a real stream would give it."""
    src = av.open(f"testsrc2=size={w}x{h}:rate=30", format="lavfi")
    raw = next(src.decode(video=0))
    src.close()
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = Fraction(1, 30)
    enc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    dec = av.CodecContext.create("h264", "r")
    raw.pts = 0
    for packet in [*enc.encode(raw), *enc.encode(None)]:
        for out in dec.decode(packet):
            return out
    raise RuntimeError("decoder produced no frame")


def predictions(n: int, w: int, h: int) -> tuple[Prediction, ...]:
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        bw, bh = (200, 100) if i % 2 == 0 else (300, 600)
        bw, bh = min(bw, w), min(bh, h)
        cx = float(rng.uniform(bw / 2, w - bw / 2))
        cy = float(rng.uniform(bh / 2, h - bh / 2))
        points = None
        if i % 4 in (0, 1):  # half of the boxes, both sizes, carry a mask
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            points = np.stack([cx + 0.45 * bw * np.cos(t), cy + 0.45 * bh * np.sin(t)], axis=1)
        out.append(Prediction(cx, cy, bw, bh, 0.9, "obj", 0, f"d{i}", points=points))
    return tuple(out)


def baseline(vf: av.VideoFrame, preds: tuple[Prediction, ...]) -> list[np.ndarray]:
    """Full-frame BGR, supervision's crop per box, v1's masked blend for masked boxes."""
    # av types to_ndarray by every format it supports; bgr24 is always uint8.
    img = cast(U8, vf.to_ndarray(format="bgr24"))
    h, w = img.shape[:2]
    xywh = np.array([(p.x, p.y, p.width, p.height) for p in preds])
    crops = []
    for p, xyxy in zip(preds, centre_to_corners(xywh, (1.0, 1.0), (w, h)), strict=True):
        crop = sv.crop_image(img, xyxy)
        if p.points is not None:
            mask = np.zeros((h, w), dtype=np.uint8)  # v1 builds a frame-sized mask per detection
            cv2.fillPoly(mask, [np.rint(p.points).astype(np.int32)], 1)
            m = sv.crop_image(mask, xyxy).astype(bool)[..., None]
            blended = (OPACITY * np.array(BG_BGR) + (1 - OPACITY) * crop).round().astype(np.uint8)
            crop = np.where(m, crop, blended)
        crops.append(crop)
    return crops


def median_ms(repeat: int, fn: Callable[..., object], *args: object) -> float:
    fn(*args)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--sizes", default="1920x1080,3840x2160")
    ap.add_argument("--boxes", default="1,10,50")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    counts = [int(n) for n in args.boxes.split(",")]
    params = CropParams(OPACITY, BG_BGR)
    print(f"{'frame':>10} {'boxes':>5} {'streamer ms':>12} {'baseline ms':>12} {'(b)/(a)':>8}")
    results: dict[tuple[int, int], float] = {}
    for w, h in sizes:
        vf = decoded_frame(w, h)
        frame = from_av(vf, "bench", 0, 0.0)
        for n in counts:
            preds = predictions(n, min(w, 1920), min(h, 1080))  # the same boxes at every size
            dets = Detections("bench", 0, None, w, h, preds)
            a = median_ms(args.repeat, make_crops, frame, dets, params, ["raw-bgr24"])
            b = median_ms(args.repeat, baseline, vf, preds)
            results[(w, n)] = a
            print(f"{w}x{h:<5} {n:>5} {a:>12.3f} {b:>12.3f} {b / a:>8.1f}")
    if len(sizes) > 1:
        (w1, _), (w2, _) = sizes[0], sizes[-1]
        for n in counts:
            print(
                f"streamer {w2} px / {w1} px cost with {n} boxes: "
                f"{results[(w2, n)] / results[(w1, n)]:.2f}x"
            )


if __name__ == "__main__":
    main()
