#!/usr/bin/env python3
"""Development-seed experiments behind the OCR reader's design (docs/benchmarks.md, OCR).

Reads every crop of bench_ocr.py's tracks once per view and model, keeps the per-step
probabilities over blank and the charset (streamer.ocr.ctc.CharsetDecoder.charset_probs), and
then scores ways of turning them into track readings without reading again:

- the reader as `streamer ocr` runs it (PP-OCRv5; polygon-less crops read whole and as the
  located line, the more confident kept; TrackVotes on the raw readings until 3 agree), and
  the same with PP-OCRv4;
- the bench as it was before November 26 (readings folded before the vote);
- two models: PP-OCRv4 + PP-OCRv5, by averaging their per-step probabilities, or by scoring
  each model's reading under both models (CTC likelihood, summed in log) and keeping the best;
- test-time augmentation: the line also read 1.3x wider or with a border of 1/8 of its height,
  the candidates scored under both views as above;
- track-level fusion: each candidate text scored by its CTC likelihood under every crop read
  so far (summed in log, or as soft votes: each crop's likelihoods normalised over the
  candidates), instead of whole-string majority.

And it prints how often O and 0 are read as each other in the DejaVu fonts, by what their
neighbours are (letters or digits).

For development seeds only (16-30); never for the held-out ones.

    .venv/bin/python scripts/ocr_experiments.py --seeds 16:140,17,18,19,20,21,22 \\
        [--cache-dir /tmp/ocr-exp]
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_ocr as b

from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import (
    PPOCRV5_SHA256,
    RAPIDOCR_SHA256,
    PpOcrRecognizer,
    ppocrv4,
    ppocrv5,
)
from streamer.ocr.text_detector import TextDetector, locate_text
from streamer.ocr.tracks import TrackVotes

CHARS = b.ALPHABET
LOG_FLOOR = -30.0  # a crop's log-likelihood for a candidate counts at least this (log fusion)
View = dict[str, Any]  # model/variant name -> (T, 1 + len(CHARS)) probabilities
Crop = dict[str, View]  # "line" (polygon or located) and/or "whole"
TrackData = dict[str, Any]


def posteriors(rec: PpOcrRecognizer, image: np.ndarray) -> np.ndarray:
    return rec.decoder.charset_probs(rec.probabilities(image))


def views(v5: PpOcrRecognizer, v4: PpOcrRecognizer, line: np.ndarray) -> View:
    h, w = line.shape[:2]
    wide = cv2.resize(line, (int(w * 1.3), h), interpolation=cv2.INTER_CUBIC)
    pad = max(1, h // 8)
    padded = cv2.copyMakeBorder(line, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    return {
        "v5": posteriors(v5, line),
        "v4": posteriors(v4, line),
        "v5_wide": posteriors(v5, wide),
        "v5_pad": posteriors(v5, padded),
    }


def cache_tag() -> str:
    """What the cached outputs depend on: the plate generator (bench_ocr.py), this script's
    views, and the models' recorded digests. A change to any of them misses the cache."""
    h = hashlib.sha256(Path(b.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    h.update(repr(sorted({**PPOCRV5_SHA256, **RAPIDOCR_SHA256}.items())).encode())
    return h.hexdigest()[:12]


def prepared(det: TextDetector, t: b.Track) -> list[dict[str, np.ndarray]]:
    """Each crop of track `t` as `streamer ocr` prepares it: "line", straightened by its
    polygon or located by DBNet, and "whole" for a crop without a polygon."""
    crops: list[dict[str, np.ndarray]] = []
    for img, poly in t.crops:
        if t.polygon:
            crops.append({"line": prepare(img, poly)})
            continue
        crop = {"whole": prepare(img, None)}
        located = locate_text(det, img)
        if located is not None:
            crop["line"] = prepare(img, located)
        crops.append(crop)
    return crops


def read_seed(seed: int, n: int, cache_dir: Path | None) -> list[TrackData]:
    """Every view's per-step probabilities for the crops of `n` tracks of `seed` (from
    `cache_dir` when computed before with the same generator, views and models)."""
    path = cache_dir / f"seed{seed}_{n}_{cache_tag()}.pkl" if cache_dir else None
    if path is not None and path.is_file():
        with path.open("rb") as f:
            data: list[TrackData] = pickle.load(f)  # our own file, written below
            return data
    missing = [f for f in b.TTF_FONTS if not (b.DEJAVU_DIR / f).is_file()]
    if missing:  # the development seeds were all made with them (bench_ocr falls back)
        raise SystemExit(f"{', '.join(missing)} missing: apt-get install fonts-dejavu-core")
    fonts = list(b.HERSHEY_FONTS) + list(b.TTF_FONTS)
    v5, v4, det = ppocrv5(1), ppocrv4(1), TextDetector(1)
    data = []
    for t in b.make_tracks(n, 5, seed, fonts):
        crops: list[Crop] = [
            {kind: views(v5, v4, line) for kind, line in lines.items()}
            for lines in prepared(det, t)
        ]
        data.append({"text": t.text, "font": t.font, "crops": crops})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            pickle.dump(data, fh)
    return data


def decode(p: np.ndarray) -> tuple[str, float]:
    """Best path over blank and CHARS, as CharsetDecoder.decode."""
    best, top = p.argmax(1), p.max(1)
    emit = best != 0
    emit[1:] &= best[1:] != best[:-1]
    if not emit.any():
        return "", 0.0
    return "".join(CHARS[i - 1] for i in best[emit]), float(top[emit].mean())


def ctc_log_likelihood(p: np.ndarray, text: str) -> float:
    """log P(text | p) under CTC (forward algorithm; rows renormalised)."""
    lp = np.log(np.clip(p / p.sum(1, keepdims=True), 1e-12, None))
    ext = [0]
    for ch in text:
        ext += [CHARS.index(ch) + 1, 0]
    labels = np.array(ext)
    skip = np.zeros(len(labels), bool)
    skip[2:] = (labels[2:] != 0) & (labels[2:] != labels[:-2])
    alpha = np.full(len(labels), -np.inf)
    alpha[0] = lp[0, 0]
    if len(labels) > 1:
        alpha[1] = lp[0, labels[1]]
    for t in range(1, len(lp)):
        one = np.concatenate([[-np.inf], alpha[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], alpha[:-2]]), -np.inf)
        alpha = np.logaddexp(np.logaddexp(alpha, one), two) + lp[t, labels]
    return float(np.logaddexp(alpha[-1], alpha[-2]) if len(labels) > 1 else alpha[-1])


def chosen(crop: Crop) -> View:
    """The view CropReader keeps: the located line when PP-OCRv5 is more confident there."""
    if "whole" not in crop:
        return crop["line"]
    if "line" not in crop or decode(crop["line"]["v5"])[1] <= decode(crop["whole"]["v5"])[1]:
        return crop["whole"]
    return crop["line"]


def best_scored(ps: list[np.ndarray]) -> tuple[str, float]:
    """The reading, among each view's best path, with the highest summed log-likelihood."""
    cands = {decode(p)[0] for p in ps} - {""}
    if not cands:
        return "", 0.0
    score = {c: sum(ctc_log_likelihood(p, c) for p in ps) for c in cands}
    text = max(score, key=score.__getitem__)
    return text, float(np.exp(score[text] / len(ps)))


CropFn = Callable[[Crop], tuple[str, float]]
TrackFn = Callable[[TrackData], tuple[str, int]]


def one(key: str) -> CropFn:
    def read(crop: Crop) -> tuple[str, float]:
        if "whole" in crop and "line" in crop:  # CropReader: the more confident reading
            whole, line = decode(crop["whole"][key]), decode(crop["line"][key])
            return line if line[1] > whole[1] else whole
        return decode(next(iter(crop.values()))[key])

    return read


def averaged(keys: tuple[str, ...]) -> CropFn:
    return lambda crop: decode(sum(chosen(crop)[k] for k in keys) / len(keys))


def scored(keys: tuple[str, ...]) -> CropFn:
    return lambda crop: best_scored([chosen(crop)[k] for k in keys])


def voted(read: CropFn, fold_first: bool = False) -> TrackFn:
    """Crops read until 3 readings agree (TrackVotes, as streamer ocr); a track whose readings
    never agree that often has no stable reading ("")."""

    def track(t: TrackData) -> tuple[str, int]:
        votes, reading, n = TrackVotes(b.VOTES), "", 0
        folds = b.folds_for(t["font"]) if fold_first else {}
        for crop in t["crops"]:
            if votes.stable(0):
                break
            text, conf = read(crop)
            n += 1
            reading, _ = votes.add(0, b.fold(text, folds), conf)
        return (reading if votes.stable(0) else ""), n

    return track


def fused(mode: str) -> TrackFn:
    """Crops read until 3 agree; the reading is the candidate with the best CTC score over
    all crops read ("log": summed log-likelihood; "soft": likelihoods normalised per crop)."""

    def track(t: TrackData) -> tuple[str, int]:
        votes, reading, n = TrackVotes(b.VOTES), "", 0
        ps: list[np.ndarray] = []
        cands: list[str] = []
        for crop in t["crops"]:
            if votes.stable(0):
                break
            p = chosen(crop)["v5"]
            text, conf = decode(p)
            n += 1
            votes.add(0, text, conf)
            ps.append(p)
            if text and text not in cands:
                cands.append(text)
            if not cands:
                continue
            total = dict.fromkeys(cands, 0.0)
            for q in ps:
                ll = {c: ctc_log_likelihood(q, c) for c in cands}
                if mode == "log":
                    for c in cands:
                        total[c] += max(ll[c], LOG_FLOOR)
                else:
                    top = max(ll.values())
                    z = sum(np.exp(v - top) for v in ll.values())
                    for c in cands:
                        total[c] += float(np.exp(ll[c] - top) / z)
            reading = max(total, key=total.__getitem__)
        return (reading if votes.stable(0) else ""), n

    return track


STRATEGIES: dict[str, TrackFn] = {
    "PP-OCRv5 (streamer ocr)": voted(one("v5")),
    "PP-OCRv5, folded before the vote (old bench)": voted(one("v5"), fold_first=True),
    "PP-OCRv4": voted(one("v4")),
    "v5 + v4, per-step probabilities averaged": voted(averaged(("v5", "v4"))),
    "v5 + v4, readings scored under both (CTC)": voted(scored(("v5", "v4"))),
    "v5, line + 1.3x wider line (CTC)": voted(scored(("v5", "v5_wide"))),
    "v5, line + bordered line (CTC)": voted(scored(("v5", "v5_pad"))),
    "v5, 1.3x wider line only": voted(one("v5_wide")),
    "track fusion, summed CTC log-likelihood": fused("log"),
    "track fusion, soft CTC votes": fused("soft"),
}


def o_zero_by_context(data: list[TrackData]) -> None:
    """How often a DejaVu O is read as 0 and a 0 as O (crops read at the plate's length, by
    PP-OCRv5), by whether their neighbours are letters or digits."""
    counts: Counter[tuple[str, str, bool]] = Counter()
    for t in data:
        if t["font"] not in b.TTF_FONTS:
            continue
        for crop in t["crops"]:
            p = chosen(crop)["v5"]
            best = p.argmax(1)
            emit = best != 0
            emit[1:] &= best[1:] != best[:-1]
            steps = np.nonzero(emit)[0]
            if len(steps) != len(t["text"]):
                continue
            for k, ch in enumerate(t["text"]):
                if ch not in "O0":
                    continue
                near = [t["text"][j] for j in (k - 1, k + 1) if 0 <= j < len(t["text"])]
                digits = sum(c.isdigit() for c in near)
                letters = len(near) - digits
                ctx = "digits" if digits > letters else "letters" if letters > digits else "mixed"
                other = "0" if ch == "O" else "O"
                counts[ch, ctx, CHARS[best[steps[k]] - 1] == other] += 1
    for ch in "O0":
        for ctx in ("letters", "mixed", "digits"):
            wrong, right = counts[ch, ctx, True], counts[ch, ctx, False]
            print(
                f"  {ch} between {ctx:7s}: read as {'0' if ch == 'O' else 'O'} in "
                f"{wrong}/{wrong + right} crops"
            )


def dev_seeds(ap: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    """`--seeds` ("seed[:tracks],...", 70 tracks by default) as (seed, tracks) pairs; exits
    through `ap` on a malformed item or a seed outside the development seeds 16-30."""
    seeds = []
    for item in text.split(","):
        seed, _, n = item.partition(":")
        if not (seed.isdigit() and (n.isdigit() or not n)):
            ap.error(f"--seeds: {item!r} is not seed[:tracks]")
        if not 16 <= int(seed) <= 30:
            ap.error("development seeds only: 16-30")
        seeds.append((int(seed), int(n or 70)))
    return seeds


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", default="16:140,17,18", help="seed[:tracks], 70 tracks by default")
    ap.add_argument("--cache-dir", type=Path, help="keep the models' outputs here")
    args = ap.parse_args()
    groups: list[tuple[str, list[TrackData]]] = [
        (f"seed {seed}", read_seed(seed, n, args.cache_dir))
        for seed, n in dev_seeds(ap, args.seeds)
    ]
    everything = [t for _, data in groups for t in data]
    if len(groups) > 1:
        groups.append(("all", everything))
    print(f"{'tracks exact':48s}" + "".join(f"{name:>18s}" for name, _ in groups))
    for label, track in STRATEGIES.items():
        cells = []
        for _, data in groups:
            ok = 0
            for t in data:
                folds = b.folds_for(t["font"])
                ok += b.fold(track(t)[0], folds) == b.fold(t["text"], folds)
            cells.append(f"{ok}/{len(data)} {ok / len(data):6.1%}")
        print(f"{label:48s}" + "".join(f"{c:>18s}" for c in cells))
    print("O and 0 in the DejaVu fonts, per crop:")
    o_zero_by_context(everything)
    return 0


if __name__ == "__main__":
    sys.exit(main())
