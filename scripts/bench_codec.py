#!/usr/bin/env python3
"""Detection codec benchmark: decoding valid messages, this code against a baseline revision.

Messages of 10 and 1,000 predictions, each with a 24-point polygon (and, as a second set, a
compressed COCO RLE mask), are decoded by (a) streamer's current `decode_detections` and (b) the
codec as it was at `--baseline` (a git revision, loaded from git into its own module), in the
same run. Prints per-message medians and (b)/(a): above 1 means the current code is faster.

    .venv/bin/python scripts/bench_codec.py [--repeat 30] [--baseline 750bfe1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco

from streamer.detections.codec import decode_detections

REPO = Path(__file__).resolve().parent.parent
# The last revision before the codec was hardened (issue 13): json + per-point validation.
DEFAULT_BASELINE = "750bfe1"
IMAGE_W, IMAGE_H = 640, 360


def baseline_decoder(rev: str) -> Callable[..., Any]:
    """`decode_detections` from streamer/detections/codec.py at git revision `rev`."""
    source = subprocess.run(
        ["git", "show", f"{rev}:streamer/detections/codec.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("codec_baseline")
    exec(compile(source, f"codec@{rev}", "exec"), module.__dict__)
    return module.__dict__["decode_detections"]  # type: ignore[no-any-return]


def message(n: int, mask: str) -> list[bytes]:
    rng = np.random.default_rng(n)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    preds = []
    rle_text = ""
    if mask == "rle":
        m = np.zeros((IMAGE_H, IMAGE_W), np.uint8)
        m[100:180, 200:260] = 1
        m[150:200, 240:250] = 1
        rle_text = coco.encode(np.asfortranarray(m))["counts"].decode()
    for i in range(n):
        cx, cy = float(rng.uniform(60, 580)), float(rng.uniform(60, 300))
        p: dict[str, Any] = {
            "x": round(cx, 2),
            "y": round(cy, 2),
            "width": 80.5,
            "height": 120.25,
            "confidence": 0.87,
            "class": "person",
            "class_id": 0,
            "detection_id": f"det-{i:06d}",
            "tracker_id": i,
        }
        if mask == "polygon":
            p["points"] = [
                {"x": round(cx + 40 * np.cos(a), 2), "y": round(cy + 60 * np.sin(a), 2)} for a in t
            ]
        else:
            p["rle"] = {"size": [IMAGE_H, IMAGE_W], "counts": rle_text}
        preds.append(p)
    header = {
        "v": 1,
        "source_id": "cam",
        "frame_id": 7,
        "image": {"width": IMAGE_W, "height": IMAGE_H},
        "predictions": preds,
    }
    return [b"det/cam", json.dumps(header).encode()]


def median_us(repeat: int, fn: Callable[..., object], *args: object, **kw: object) -> float:
    fn(*args, **kw)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the baseline")
    ap.add_argument("--counts", default="10,1000")
    args = ap.parse_args()
    try:
        old: Callable[..., Any] | None = baseline_decoder(args.baseline)
    except (subprocess.CalledProcessError, OSError) as e:  # e.g. a shallow clone
        print(f"baseline {args.baseline} unavailable ({e}); current code only")
        old = None
    cols = ("mask", "preds", "bytes", "current us", "baseline us", "(b)/(a)")
    print(" ".join(f"{c:>{w}}" for c, w in zip(cols, (8, 6, 9, 11, 12, 8), strict=True)))
    for mask in ("polygon", "rle"):
        for n in (int(c) for c in args.counts.split(",")):
            parts = message(n, mask)
            kw = {"max_predictions": max(n, 1), "max_bytes": 1 << 30}
            repeat = args.repeat if n <= 100 else max(3, args.repeat // 5)
            a = median_us(repeat * 10 if n <= 100 else repeat, decode_detections, parts, **kw)
            size = sum(len(p) for p in parts)
            if old is None:
                print(f"{mask:>8} {n:>6} {size:>9} {a:>11.1f}")
                continue
            b = median_us(repeat * 10 if n <= 100 else repeat, old, parts, **kw)
            print(f"{mask:>8} {n:>6} {size:>9} {a:>11.1f} {b:>12.1f} {b / a:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
