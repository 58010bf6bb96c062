#!/usr/bin/env python3
"""Train the look-alike models of streamer/ocr/lookalikes.py: O or 0, I or 1, by their shape.

PP-OCRv6 small reads O and 0 (and I and 1) from their neighbours as much as from their shape
(docs/benchmarks.md, "OCR"). This script draws lines of random characters, so that neighbours
say nothing, in the fonts of the Debian packages in FONT_PACKAGES: 135 faces, none of them the
OCR benchmark's (its DejaVu and Hershey fonts are excluded by name, and no DejaVu derivative is
in these packages). Colours, heights, spacing, tilt, blur, motion blur, noise and JPEG are
random; none of it is taken from scripts/bench_ocr.py. Each line goes through what `streamer ocr`
runs (streamer.ocr.preprocess.prepare, then the model with its CTC head's input features as a
second output). Where the model read as many characters as the line has, every character it
read as one of a pair whose truth is in that pair gives one sample: the features at the step
where it read it, and the model's log-odds of the two. A logistic regression per pair (L2,
Newton's method) is fitted on them.

It first fits on the fonts of all but every fifth family and reports accuracy on the rest
(fonts it never saw), against the model alone; then fits on all and writes the weights.

    .venv/bin/python scripts/train_lookalikes.py [--lines 20000] [--seed 1]
        [--out streamer/ocr/lookalikes_ppocrv6.npz]

It prints the written file's sha256, which streamer.ocr.recognizers.LOOKALIKES_SHA256 must
then record. 20000 lines take about 10 minutes on one core of the reference machine.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from streamer.ocr.ctc import DEFAULT_CHARSET, best_runs
from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import (
    PPOCRV6_FEATURES,
    RAPIDOCR3_PACKAGE,
    RAPIDOCR3_SHA256,
    PpOcrRecognizer,
    ort_session,
    read_checked,
    with_output,
)

PAIRS = ("O0", "I1")
# Debian package -> the folder its fonts are in.
FONT_PACKAGES = {
    "fonts-liberation2": "/usr/share/fonts/truetype/liberation2",
    "fonts-freefont-ttf": "/usr/share/fonts/truetype/freefont",
    "fonts-urw-base35": "/usr/share/fonts/opentype/urw-base35",
    "fonts-roboto-unhinted": "/usr/share/fonts/truetype/roboto/unhinted",
    "fonts-croscore": "/usr/share/fonts/truetype/croscore",
    "fonts-crosextra-carlito": "/usr/share/fonts/truetype/crosextra",
    "fonts-crosextra-caladea": "/usr/share/fonts/truetype/crosextra",
    "fonts-open-sans": "/usr/share/fonts/truetype/open-sans",
    "fonts-lato": "/usr/share/fonts/truetype/lato",
    "fonts-inconsolata": "/usr/share/fonts/truetype/inconsolata",
    "fonts-noto-mono": "/usr/share/fonts/truetype/noto",
    "fonts-cantarell": "/usr/share/fonts/opentype/cantarell",
    "fonts-firacode": "/usr/share/fonts/truetype/firacode",
}
# Not letters (symbols, dingbats, a script face), lines too thin to read at plate sizes, and the
# OCR benchmark's own fonts.
EXCLUDED = ("D050000L", "StandardSymbols", "Z003", "Hairline", "Thin", "DejaVu")
PAIR_SHARE = 0.3  # share of a line's characters drawn from the pairs (so they are well sampled)


def training_fonts(packages: list[str]) -> list[Path]:
    """The TrueType and OpenType faces of `packages` (keys of FONT_PACKAGES), minus EXCLUDED;
    raises SystemExit naming the packages to install when a folder is missing."""
    missing = [pkg for pkg in packages if not Path(FONT_PACKAGES[pkg]).is_dir()]
    if missing:
        raise SystemExit(f"missing fonts; install: apt-get install {' '.join(missing)}")
    found = {
        p
        for folder in {FONT_PACKAGES[pkg] for pkg in packages}
        for p in Path(folder).rglob("*")
        if p.suffix.lower() in (".ttf", ".otf") and not any(e in p.name for e in EXCLUDED)
    }
    return sorted(found)


def family(font: Path) -> str:
    """The font's family: its name before the style (Roboto-BoldItalic, FreeSansBold: Roboto,
    FreeSans)."""
    return re.sub(r"(Bold|Oblique|Italic)+$", "", font.stem.split("-")[0])


def random_text(rng: random.Random) -> str:
    pair_chars = "".join(PAIRS)
    return "".join(
        rng.choice(pair_chars) if rng.random() < PAIR_SHARE else rng.choice(DEFAULT_CHARSET)
        for _ in range(rng.randint(4, 9))
    )


def colours(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A background and an ink colour whose mean levels differ by more than 80."""
    while True:
        bg = tuple(rng.randrange(256) for _ in range(3))
        ink = tuple(rng.randrange(256) for _ in range(3))
        if abs(sum(bg) - sum(ink)) / 3 > 80:
            return bg, ink


def draw_line(rng: random.Random, font: Path, text: str) -> np.ndarray:
    """`text` in `font` at 64 px, each character placed with random extra spacing, on a plain
    background, with a border half the time; RGB uint8."""
    from PIL import Image, ImageDraw, ImageFont

    size = 64
    face = ImageFont.truetype(str(font), size)
    spacing = rng.uniform(-0.02, 0.25) * size
    boxes = [face.getbbox(ch) for ch in text]
    width = int(sum(b[2] - b[0] for b in boxes) + spacing * (len(text) - 1)) + size
    height = int(size * rng.uniform(1.3, 1.8))
    bg, ink = colours(rng)
    image = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(image)
    cap = face.getbbox("H")
    y = (height - (cap[3] - cap[1])) / 2 - cap[1]
    x = size / 2
    for ch, box in zip(text, boxes, strict=True):
        draw.text((x - box[0], y), ch, font=face, fill=ink)
        x += box[2] - box[0] + spacing
    out = np.asarray(image).copy()
    if rng.random() < 0.5:
        cv2.rectangle(out, (0, 0), (width - 1, height - 1), ink, max(2, height // 24))
    return out


def observe(rng: random.Random, line: np.ndarray) -> np.ndarray:
    """`line` as a camera might crop it, then prepared as `streamer ocr` prepares crops: on a
    margin, tilted, scaled to 16-56 px high, blurred, noised, JPEG-compressed; then straightened
    by its corners (a segmenting detector's polygon) or, a third of the time, cut by its
    bounding box with some margin."""
    h, w = line.shape[:2]
    m = h // 3
    canvas = np.full((h + 2 * m, w + 2 * m, 3), [rng.randrange(256) for _ in range(3)], np.uint8)
    canvas[m : m + h, m : m + w] = line
    corners = np.array([[m, m], [m + w, m], [m + w, m + h], [m, m + h]], np.float32)
    if rng.random() < 0.4:
        rot = cv2.getRotationMatrix2D(
            (canvas.shape[1] / 2, canvas.shape[0] / 2), rng.uniform(-12, 12), 1.0
        )
        canvas = cv2.warpAffine(canvas, rot, canvas.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        corners = corners @ rot[:, :2].T + rot[:, 2]
    target_h = rng.uniform(16, 56)
    f = target_h / h
    canvas = cv2.resize(canvas, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    corners *= f
    if rng.random() < 0.3:
        k = max(2, int(target_h * rng.uniform(0.05, 0.2)))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1 / k
        canvas = cv2.filter2D(canvas, -1, kernel)
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.3, 1.0))
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 8), canvas.shape)
    canvas = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        _, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, rng.randrange(40, 90)])
        canvas = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    if rng.random() < 2 / 3:
        return prepare(canvas, corners.astype(np.float32))
    x0, y0 = corners.min(axis=0)
    x1, y1 = corners.max(axis=0)
    pad = rng.uniform(0, 0.15) * (y1 - y0)
    crop = canvas[
        max(0, int(y0 - pad)) : int(y1 + pad) + 1, max(0, int(x0 - pad)) : int(x1 + pad) + 1
    ]
    return prepare(crop, None)


def samples(
    rec: PpOcrRecognizer, text: str, image: np.ndarray
) -> tuple[str, list[tuple[str, np.ndarray, float, int]]]:
    """What the model read in `image`, and its samples: (pair, features at the run's most
    probable step, log-odds second vs first, 1 when the truth is the pair's second)."""
    probs, features = rec.outputs(image)
    assert features is not None
    summed = rec.decoder.charset_probs(probs)
    runs = best_runs(summed)
    read = rec.decoder.text(column for column, _, _ in runs)
    out = []
    if len(runs) != len(text):
        return read, out
    for (column, t0, t1), truth in zip(runs, text, strict=True):
        ch = DEFAULT_CHARSET[column - 1]
        pair = next((p for p in PAIRS if ch in p and truth in p), None)
        if pair is None:
            continue
        a, b = (DEFAULT_CHARSET.index(c) + 1 for c in pair)
        seg = summed[t0 : t1 + 1]
        peak = t0 + int(np.argmax(seg[:, column]))
        log_odds = float(np.log(seg[:, b].sum() + 1e-12) - np.log(seg[:, a].sum() + 1e-12))
        out.append((pair, features[peak].copy(), log_odds, int(truth == pair[1])))
    return read, out


def fit(x: np.ndarray, y: np.ndarray, lam: float = 1e-2, steps: int = 30) -> dict[str, np.ndarray]:
    """L2-regularised logistic regression by Newton's method on standardised `x`."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], lam)
    reg[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) / len(y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z / len(y) + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"mean": mean, "scale": scale, "weights": w[:-1], "bias": np.array(w[-1])}


def accuracy(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    score = ((x - model["mean"]) / model["scale"]) @ model["weights"] + model["bias"]
    return float(((score > 0) == y).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="streamer/ocr/lookalikes_ppocrv6.npz")
    ap.add_argument(
        "--packages",
        default=",".join(FONT_PACKAGES),
        help="comma-separated font packages to draw with (default: all of FONT_PACKAGES)",
    )
    args = ap.parse_args()
    packages = args.packages.split(",")
    unknown = [pkg for pkg in packages if pkg not in FONT_PACKAGES]
    if unknown:
        ap.error(f"unknown font packages {unknown}; choose from {list(FONT_PACKAGES)}")
    fonts = training_fonts(packages)
    families = sorted({family(f) for f in fonts})
    unseen = set(families[4::5] or families[-1:])  # every fifth family is kept for validation
    print(f"{len(fonts)} fonts in {len(families)} families; validation families: {sorted(unseen)}")
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rapidocr is not installed: uv sync --locked --extra ocr")
    root = Path(next(iter(spec.submodule_search_locations))) / "models"
    model = read_checked(root, "PP-OCRv6_rec_small.onnx", RAPIDOCR3_SHA256, RAPIDOCR3_PACKAGE)
    session = ort_session(with_output(model, PPOCRV6_FEATURES), 1)
    words = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    rec = PpOcrRecognizer("ppocrv6", session, words, DEFAULT_CHARSET)
    rng = random.Random(args.seed)
    data: dict[str, list[tuple[np.ndarray, float, int, bool]]] = defaultdict(list)
    exact = 0
    t0 = time.monotonic()
    for _ in range(args.lines):
        font = rng.choice(fonts)
        text = random_text(rng)
        line = draw_line(rng, font, text)
        read, found = samples(rec, text, observe(rng, line[:, :, ::-1].copy()))
        exact += read == text
        for pair, feats, log_odds, y in found:
            data[pair].append((feats, log_odds, y, family(font) in unseen))
    print(
        f"{args.lines} lines in {time.monotonic() - t0:.0f} s; the model read "
        f"{exact / args.lines:.1%} of them exactly"
    )
    out: dict[str, np.ndarray] = {"pairs": np.array(PAIRS)}
    for pair in PAIRS:
        rows = data[pair]
        if not rows:
            raise SystemExit(f"no samples of {pair}: draw more lines (--lines)")
        x = np.array([np.append(f, lo) for f, lo, _, _ in rows], np.float64)
        y = np.array([r[2] for r in rows], np.float64)
        held = np.array([r[3] for r in rows])
        by_model = (x[:, -1] > 0) == y
        trial = fit(x[~held], y[~held])
        unseen_acc = accuracy(trial, x[held], y[held])
        print(
            f"{pair}: {len(rows)} samples; on the {held.sum()} from unseen families: the model "
            f"alone {by_model[held].mean():.1%}, the pair model {unseen_acc:.1%}"
        )
        final = fit(x, y)
        print(f"{pair}: fitted on all, {accuracy(final, x, y):.1%} of its training samples")
        for k, v in final.items():
            out[f"{pair}_{k}"] = v.astype(np.float32)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        np.savez(fh, **out)
    digest = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    print(f"wrote {args.out}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
