#!/usr/bin/env python3
"""Train the look-alike models of streamer/ocr/lookalikes.py: O or 0, I or 1.

PP-OCRv6 small reads O and 0 (and I and 1) from their neighbours as much as from their shape
(docs/benchmarks.md, "OCR"). On real plates, whose letters and digits come in blocks, the
neighbours are mostly right; on random texts they mislead. The models learn when to trust the
shape and when the model's own reading (its log-odds, neighbours included) from two kinds of
lines, half each:
- random characters, where the neighbours say nothing;
- plate-like blocks of letters and of digits, with O and I only among letters and 0 and 1 only
  among digits, where they are right.

The lines are drawn in the fonts of the Debian packages in FONT_PACKAGES (135 faces, the files
each package lists, `dpkg-query -L`), none of them the OCR benchmark's: DejaVu is excluded by
name, and no DejaVu derivative is in these packages.

The renderer is this script's own, but its idioms follow scripts/bench_ocr.py's generator, and
its ranges cover the benchmark's (heights 16-56 px against 20-48, tilt up to 12 degrees against
15): a margin of a third of the line's height, a border, horizontal motion blur, Gaussian noise,
and a crop straightened by its polygon or cut by its box. It also varies colours freely,
spacing and JPEG.

Each line goes through what `streamer ocr` runs (streamer.ocr.preprocess.prepare, then the model
with its CTC head's input features as a second output). Where the model read as many characters
as the line has, every character it read as one of a pair whose truth is in that pair gives one
sample: the features at the step where it read it, the mean features of the line's characters
(the font's style) and the model's log-odds of the two (streamer.ocr.lookalikes.pair_inputs, as
`streamer ocr` computes them). A logistic regression per pair (L2, Newton's method) is fitted
on them.

It first validates, leaving out one lineage of related fonts at a time (LINEAGES: Liberation
with Croscore, which it derives from; the URW fonts with FreeFont, derived from them; Lato with
Carlito; ...), and scores every sample by a fit that never saw its lineage. On those scores it
chooses each pair's gate (choose_gate): the smallest margin from 0 at which GATE_PRECISION of
the pair model's overrulings of the recognizer are right. It reports accuracy per kind of line,
fixed-pitch and proportional faces and lineage: the model alone, the pair model ungated and
gated. Then it fits on all and writes the weights with the gates and the recognizer model's
sha256. With one lineage nothing is validated and the gate is 0 (ungated): such weights are
for trying the script, not for shipping.

    .venv/bin/python scripts/train_lookalikes.py [--lines 16000] [--seed 1]
        [--out streamer/ocr/lookalikes_ppocrv6.npz] [--packages fonts-liberation2,...]

It prints the written file's sha256, which streamer.ocr.recognizers.LOOKALIKES_SHA256 must
then record. 16000 lines take about 8 minutes on one core of the reference machine. The full
run needs every package of FONT_PACKAGES (it names the missing ones); `make test` installs only
fonts-liberation2, for its smoke test.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import cast

import cv2
import numpy as np

from streamer.ocr.ctc import DEFAULT_CHARSET, best_runs
from streamer.ocr.lookalikes import line_style, pair_inputs
from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import (
    PPOCRV6_FEATURES,
    PPOCRV6_MODEL,
    RAPIDOCR3_SHA256,
    PpOcrRecognizer,
    ppocrv6_session,
)
from streamer.types import U8

PAIRS = ("O0", "I1")
FONT_PACKAGES = (
    "fonts-liberation2",
    "fonts-freefont-ttf",
    "fonts-urw-base35",
    "fonts-roboto-unhinted",
    "fonts-croscore",
    "fonts-crosextra-carlito",
    "fonts-crosextra-caladea",
    "fonts-open-sans",
    "fonts-lato",
    "fonts-inconsolata",
    "fonts-noto-mono",
    "fonts-cantarell",
    "fonts-firacode",
)
# Not letters (symbols, dingbats, a script face), lines too thin to read at plate sizes, and the
# OCR benchmark's own fonts.
EXCLUDED = ("D050000L", "StandardSymbols", "Z003", "Hairline", "Thin", "DejaVu")
# An overruling of the recognizer must be right this often on fonts the fit never saw
# (choose_gate): where the shape is ambiguous (O and 0 drawn alike) the recognizer's reading,
# helped by the neighbours, stands.
GATE_PRECISION = 0.95
PAIR_SHARE = 0.3  # share of a line's characters drawn from the pairs (so they are well sampled)
# Families that share a design, left out together when validating: Croscore's Arimo, Tinos and
# Cousine are Liberation's designs; FreeFont derives from the URW fonts; Carlito from Lato.
LINEAGES = {
    "Liberation": ("Liberation", "Arimo", "Tinos", "Cousine"),
    "URW": ("Nimbus", "Free", "C059", "P052", "URW"),
    "Lato": ("Lato", "Carlito"),
    "Roboto": ("Roboto",),
    "Noto": ("Noto",),
    "OpenSans": ("OpenSans",),
    "Caladea": ("Caladea",),
    "Inconsolata": ("Inconsolata",),
    "Cantarell": ("Cantarell",),
    "FiraCode": ("FiraCode",),
}
# Share of lines drawn in a fixed-pitch font. Plate fonts are mostly fixed-pitch, and there an O
# is drawn as narrow as a 0: the shape alone then says less, and a proportional font's habits
# (a narrow round letter is a 0) mislead. 26 of the 135 faces are fixed-pitch.
FIXED_PITCH_SHARE = 0.5
LETTERS = "".join(ch for ch in DEFAULT_CHARSET if ch.isalpha())
DIGITS = "".join(ch for ch in DEFAULT_CHARSET if ch.isdigit())


def training_fonts(packages: list[str]) -> list[Path]:
    """The TrueType and OpenType faces each of `packages` installs (dpkg-query -L), minus
    EXCLUDED; raises SystemExit naming the packages to install when one is not installed."""
    found: set[Path] = set()
    missing: list[str] = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-L", pkg], capture_output=True, text=True, timeout=30, check=False
        )
        files = [Path(line) for line in res.stdout.splitlines()]
        faces = [f for f in files if f.suffix.lower() in (".ttf", ".otf") and f.is_file()]
        if res.returncode != 0 or not faces:
            missing.append(pkg)
        found.update(f for f in faces if not any(e in f.name for e in EXCLUDED))
    if missing:
        raise SystemExit(f"missing fonts; install: apt-get install {' '.join(missing)}")
    return sorted(found)


def fixed_pitch(font: Path) -> bool:
    """Whether `font` draws every character of the charset equally wide."""
    from PIL import ImageFont

    face = ImageFont.truetype(str(font), 64)
    return len({face.getlength(ch) for ch in DEFAULT_CHARSET}) == 1


def lineage(font: Path) -> str:
    """The LINEAGES group of `font` (its own name when it is in none)."""
    return next(
        (group for group, prefixes in LINEAGES.items() if font.name.startswith(prefixes)),
        font.stem.split("-")[0],
    )


def random_text(rng: random.Random) -> str:
    """4-9 characters, any of the charset anywhere (the pairs' characters more often)."""
    pair_chars = "".join(PAIRS)
    return "".join(
        rng.choice(pair_chars) if rng.random() < PAIR_SHARE else rng.choice(DEFAULT_CHARSET)
        for _ in range(rng.randint(4, 9))
    )


def block_text(rng: random.Random) -> str:
    """A plate-like text: 2-3 blocks of 1-4 letters or digits, kinds alternating, with O and I
    only among letters and 0 and 1 only among digits (more often than their share)."""
    out = []
    letters = rng.random() < 0.5
    for _ in range(rng.randint(2, 3)):
        pool, pair = (LETTERS, "OI") if letters else (DIGITS, "01")
        out += [
            rng.choice(pair) if rng.random() < PAIR_SHARE else rng.choice(pool)
            for _ in range(rng.randint(1, 4))
        ]
        letters = not letters
    return "".join(out)


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
        decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        assert decoded is not None  # a JPEG that cv2.imencode has just written
        canvas = cast(U8, decoded)  # 8-bit in, 8-bit out
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
) -> tuple[str, list[tuple[str, np.ndarray, int, int]]]:
    """What the model read in `image`, and its samples: (pair, pair_inputs, 1 when the truth
    is the pair's second, 1 when the model read the pair's second)."""
    probs, features = rec.outputs(image)
    assert features is not None
    summed = rec.decoder.charset_probs(probs)
    runs = best_runs(summed)
    read = rec.decoder.text(column for column, _, _ in runs)
    out: list[tuple[str, np.ndarray, int, int]] = []
    if len(runs) != len(text):
        return read, out
    style = line_style(summed, features)
    for run, truth in zip(runs, text, strict=True):
        ch = DEFAULT_CHARSET[run[0] - 1]
        pair = next((p for p in PAIRS if ch in p and truth in p), None)
        if pair is None:
            continue
        a, b = (DEFAULT_CHARSET.index(c) + 1 for c in pair)
        x = pair_inputs(summed, features, style, run, a, b)
        out.append((pair, x, int(truth == pair[1]), int(run[0] == b)))
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


def score(model: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The pair model's score for each row of `x`: above 0 for the pair's second."""
    return np.asarray(((x - model["mean"]) / model["scale"]) @ model["weights"] + model["bias"])


def gated(scores: np.ndarray, read: np.ndarray, gate: float) -> np.ndarray:
    """The decisions: the pair model's where it agrees with the recognizer's reading `read`
    or its score is at least `gate` from 0, else the recognizer's."""
    return np.where(np.abs(scores) >= gate, scores > 0, read)


def choose_gate(scores: np.ndarray, read: np.ndarray, truth: np.ndarray) -> float:
    """The smallest gate at which the overrulings left (the pair model disagreeing with the
    recognizer, its score at least the gate from 0) are right GATE_PRECISION of the time."""
    overrule = (scores > 0) != read
    for gate in np.arange(0.0, 12.01, 0.25):
        kept = overrule & (np.abs(scores) >= gate)
        if not kept.any() or ((scores[kept] > 0) == truth[kept]).mean() >= GATE_PRECISION:
            return float(gate)
    return float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=16000)
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
    groups = sorted({lineage(f) for f in fonts})
    print(f"{len(fonts)} fonts in {len(groups)} lineages: {', '.join(groups)}")
    session, words = ppocrv6_session(1, features=True)
    rec = PpOcrRecognizer("ppocrv6", session, words, DEFAULT_CHARSET, PPOCRV6_FEATURES)
    fixed = [f for f in fonts if fixed_pitch(f)]
    proportional = [f for f in fonts if f not in fixed]
    print(f"{len(fixed)} of them fixed-pitch, drawn in {FIXED_PITCH_SHARE:.0%} of the lines")
    rng = random.Random(args.seed)
    # pair -> (pair_inputs, truth is second, model read second, lineage, kind of line, fixed)
    data: dict[str, list[tuple[np.ndarray, int, int, str, str, bool]]] = defaultdict(list)
    exact: dict[str, list[bool]] = defaultdict(list)
    t0 = time.monotonic()
    for i in range(args.lines):
        use_fixed = fixed and (not proportional or rng.random() < FIXED_PITCH_SHARE)
        font = rng.choice(fixed if use_fixed else proportional)
        kind = "random" if i % 2 == 0 else "blocks"
        text = random_text(rng) if kind == "random" else block_text(rng)
        line = draw_line(rng, font, text)
        text_read, found = samples(rec, text, observe(rng, line[:, :, ::-1].copy()))
        exact[kind].append(text_read == text)
        for pair, x, second, read_second in found:
            data[pair].append((x, second, read_second, lineage(font), kind, bool(use_fixed)))
    print(
        f"{args.lines} lines in {time.monotonic() - t0:.0f} s; the model read exactly "
        + ", ".join(f"{np.mean(v):.1%} of the {k} lines" for k, v in exact.items())
    )
    out: dict[str, np.ndarray] = {
        "pairs": np.array(PAIRS),
        "model_sha256": np.array(RAPIDOCR3_SHA256[PPOCRV6_MODEL]),
    }
    for pair in PAIRS:
        rows = data[pair]
        if not rows:
            raise SystemExit(f"no samples of {pair}: draw more lines (--lines)")
        x = np.array([r[0] for r in rows], np.float64)
        truth = np.array([r[1] for r in rows], bool)
        read = np.array([r[2] for r in rows], bool)
        group = np.array([r[3] for r in rows])
        kinds = np.array([r[4] for r in rows])
        fixed_rows = np.array([r[5] for r in rows])
        # Each sample scored by a fit that never saw its lineage.
        scores = np.zeros(len(rows))
        validated = np.zeros(len(rows), bool)
        for g in groups:
            left_out = group == g
            if left_out.all() or not left_out.any():
                continue  # nothing to fit on, or nothing to check
            trial = fit(x[~left_out], truth[~left_out])
            scores[left_out] = score(trial, x[left_out])
            validated |= left_out
        if not validated.any():
            print(f"{pair}: not validated (one lineage): no gate; not weights to ship")
            gate = 0.0
        else:
            gate = choose_gate(scores[validated], read[validated], truth[validated])
        decided = gated(scores, read, gate)
        print(
            f"{pair}: gate {gate:.2f} (the recognizer is overruled only by a score this far "
            f"from 0, where {GATE_PRECISION:.0%} of overrulings are right)"
        )
        for name, sel in (
            ("random lines", kinds == "random"),
            ("plate-like lines", kinds == "blocks"),
            ("fixed-pitch faces", fixed_rows),
            ("proportional faces", ~fixed_rows),
            *((f"  lineage {g}", group == g) for g in groups),
        ):
            sel = sel & validated
            if sel.any():
                print(
                    f"    {name:22s} {sel.sum():5d} samples from lineages left out: the model "
                    f"alone {(read[sel] == truth[sel]).mean():.1%}, ungated "
                    f"{((scores[sel] > 0) == truth[sel]).mean():.1%}, gated "
                    f"{(decided[sel] == truth[sel]).mean():.1%}"
                )
        final = fit(x, truth)
        print(
            f"{pair}: fitted on all, {((score(final, x) > 0) == truth).mean():.1%} of its samples"
        )
        for k, v in final.items():
            out[f"{pair}_{k}"] = v.astype(np.float32)
        out[f"{pair}_gate"] = np.array(gate, np.float32)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "wb") as fh:
        np.savez(fh, **out)  # type: ignore[arg-type]
    digest = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    print(f"wrote {args.out}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
