#!/usr/bin/env python3
"""O, 0, I and 1 in each context, per font: lines read exactly with and without the look-alike
models (streamer/ocr/lookalikes.py).

Each cell draws `--per-cell` plates with scripts/bench_ocr.py's own renderer (its fonts, colours,
heights, tilt, blur and noise; the crop straightened by its polygon): one of O, 0, I, 1 after 1-3
and before 1-3 characters that are all letters or all digits. "O among letters" is the context
where the recognizer's neighbour habit helps, "O among digits" where it misleads. A line counts
as read when it is exact with the benchmark's folds (O as 0 in the Hershey fonts); `strict`
counts it with nothing folded, shown where it differs. Development only: it uses the
benchmark's fonts.

    .venv/bin/python scripts/ocr_contexts.py [--per-cell 12] [--seed 5]
"""

from __future__ import annotations

import argparse
import random
import sys

from bench_ocr import (
    COLOURS,
    HEIGHTS_PX,
    HERSHEY_FONTS,
    RENDER_HEIGHT_PX,
    TTF_FONTS,
    draw_text,
    fold,
    folds_for,
    make_crop,
)

from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import ppocrv6

LETTERS, DIGITS = "ABCDEFGHJKLMNPRSTUVWXYZ", "2345789"  # no O, I, 0 or 1 around the one read
CASES = {
    "O among letters": ("O", LETTERS),
    "0 among digits": ("0", DIGITS),
    "I among letters": ("I", LETTERS),
    "1 among digits": ("1", DIGITS),
    "O among digits": ("O", DIGITS),
    "0 among letters": ("0", LETTERS),
    "I among digits": ("I", DIGITS),
    "1 among letters": ("1", LETTERS),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--per-cell", type=int, default=12)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    recs = {"look-alike models": ppocrv6(), "alone": ppocrv6(pairs=False)}
    fonts = [*HERSHEY_FONTS, *TTF_FONTS]
    print(f"lines read exactly of {args.per_cell} per cell: look-alike models / alone")
    for case, (odd, pool) in CASES.items():
        cells = []
        totals = [0, 0]
        for font in fonts:
            folds = folds_for(font)
            ok, strict = [0, 0], [0, 0]
            for _ in range(args.per_cell):
                before = "".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))
                text = before + odd + "".join(rng.choice(pool) for _ in range(rng.randint(1, 3)))
                colours = COLOURS[rng.randrange(len(COLOURS))]
                plate = draw_text(text, font, RENDER_HEIGHT_PX, *colours)
                tilt = rng.choice((0.0, 0.0, rng.uniform(-15, 15)))
                image, polygon = make_crop(plate, rng.choice(HEIGHTS_PX), tilt, rng)
                line = prepare(image, polygon)
                for i, rec in enumerate(recs.values()):
                    got = rec.read(line).text
                    ok[i] += fold(got, folds) == fold(text, folds)
                    strict[i] += got == text
            totals = [totals[0] + ok[0], totals[1] + ok[1]]
            extra = f" (strict {strict[0]}/{strict[1]})" if strict != ok else ""
            cells.append(f"{font.removesuffix('.ttf')} {ok[0]}/{ok[1]}{extra}")
        print(f"{case}: " + " | ".join(cells) + f" | all {totals[0]}/{totals[1]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
