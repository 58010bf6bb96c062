#!/usr/bin/env python3
"""Detection codec benchmark: decoding valid messages, this code against a baseline revision.

Messages of 10 and 1,000 predictions, each with a 24-point polygon (and, as a second set, a
compressed COCO RLE mask), are decoded by (a) streamer's current `decode_detections` and (b) the
codec as it was at `--baseline` (a git revision, loaded from git into its own module), in the
same run. Prints per-message medians and (b)/(a): above 1 means the current code is faster;
then the JSON parse alone, json.loads against orjson.loads, on the same headers.

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
import orjson
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
    return paired_medians_us(repeat, fn, fn, *args, **kw)[0]


def paired_medians_us(
    repeat: int, fa: Callable[..., object], fb: Callable[..., object], *args: object, **kw: object
) -> tuple[float, float]:
    """Medians of `fa` and `fb` on the same arguments, timed in alternation so that load from
    other processes on the machine weighs on both alike."""
    fa(*args, **kw)  # warm-up
    fb(*args, **kw)
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeat):
        for fn, times in ((fa, ta), (fb, tb)):
            t = time.perf_counter()
            fn(*args, **kw)
            times.append(time.perf_counter() - t)
    return statistics.median(ta) * 1e6, statistics.median(tb) * 1e6


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
    parse_rows: list[tuple[str, int, bytes]] = []
    for mask in ("polygon", "rle"):
        for n in (int(c) for c in args.counts.split(",")):
            parts = message(n, mask)
            kw = {"max_predictions": max(n, 1), "max_bytes": 1 << 30}
            repeat = args.repeat * 10 if n <= 100 else args.repeat
            size = sum(len(p) for p in parts)
            parse_rows.append((mask, n, parts[1]))
            if old is None:
                a = median_us(repeat, decode_detections, parts, **kw)
                print(f"{mask:>8} {n:>6} {size:>9} {a:>11.1f}")
                continue
            a, b = paired_medians_us(repeat, decode_detections, old, parts, **kw)
            print(f"{mask:>8} {n:>6} {size:>9} {a:>11.1f} {b:>12.1f} {b / a:>8.2f}")
    # The JSON parser alone, on the same headers: why orjson.
    print("\nparsing the header alone (us): json.loads, orjson.loads, ratio")
    for mask, n, body in parse_rows:
        repeat = args.repeat * 10 if n <= 100 else args.repeat
        j, o = paired_medians_us(repeat, json.loads, orjson.loads, body)
        print(f"{mask:>8} {n:>6} {j:>11.1f} {o:>11.1f} {j / o:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
