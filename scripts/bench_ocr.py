#!/usr/bin/env python3
"""OCR accuracy and speed on plates the recognizers were never tuned to.

Generates tracks of plate crops: random 5-8 character texts over all 36 of A-Z 0-9 (each
character used about equally often), drawn with several fonts (OpenCV's Hershey fonts, and
DejaVu TrueType fonts through Pillow when Debian's fonts-dejavu-core is installed), at several
heights, plate colours, tilts (the crop then carries the plate's polygon, as a detector with
masks would send it), blur, motion blur and noise. Each track is a few crops of one plate, each
with its own jitter, as a moving plate gives. Every recognizer reads every track the way
`streamer ocr` does (straighten by the polygon, enlarge, read, vote; a track stops being read
once 3 readings agree, voting on the raw readings with the worker's own TrackVotes) and the
script reports exact matches per crop and per track (the track's
final reading), and ms per plate (prepare + recognize).

O/0 and I/1 are folded only for fonts that draw them alike, measured on the rendered glyphs
(folds_for: a zero without dot or slash and an O at most 15% wider; a 1 without a flag): O/0 in
the four Hershey fonts, nothing in the DejaVu ones, I/1 in none. The script prints the folds,
and the per-track rate with nothing folded too.
Nothing here is shared with the demo's plate renderer, and the recognizers get no hint beyond
their default charset (A-Z and 0-9, every plate character here; nothing per font or position).

With `--texts plates` the texts are plate-like instead: alternating blocks of letters and of
digits, where the neighbours say whether a character is a letter or a digit. `--engines
ppocrv6:plain` is PP-OCRv6 without its look-alike models (streamer/ocr/lookalikes.py).

    .venv/bin/python scripts/bench_ocr.py [--tracks 120] [--crops 5]
        [--engines ppocrv6,ppocrv6:plain,ppocrv5,rapidocr,tesseract] [--seed 16]
        [--texts random|plates]
"""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamer.ocr.reader import CropReader
from streamer.ocr.recognizers import make_recognizer
from streamer.ocr.text_detector import TextDetector
from streamer.ocr.tracks import TrackVotes
from streamer.ocr.worker import WorkerOptions

ALPHABET = string.ascii_uppercase + string.digits
LETTERS, DIGITS = string.ascii_uppercase, string.digits
DEJAVU_DIR = Path("/usr/share/fonts/truetype/dejavu")
TTF_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif-Bold.ttf")
HERSHEY_FONTS = {
    "hershey-simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "hershey-duplex": cv2.FONT_HERSHEY_DUPLEX,
    "hershey-complex": cv2.FONT_HERSHEY_COMPLEX,
    "hershey-triplex": cv2.FONT_HERSHEY_TRIPLEX,
}
# (background, ink) in BGR: white, yellow, blue, black, red, green plates.
COLOURS = (
    ((235, 235, 235), (25, 25, 25)),
    ((40, 200, 245), (20, 20, 20)),
    ((150, 60, 20), (245, 245, 245)),
    ((25, 25, 25), (230, 230, 230)),
    ((40, 40, 190), (250, 250, 250)),
    ((235, 240, 235), (40, 110, 30)),
)
HEIGHTS_PX = (20, 24, 32, 40, 48)  # plate heights in the crops (characters ~60% of that)
RENDER_HEIGHT_PX = 96  # plates are drawn this high, then scaled to the track's height
VOTES = WorkerOptions.votes  # readings that must agree, as `streamer ocr` by default


def draw_text(
    text: str, font: str, height: int, bg: tuple[int, ...], ink: tuple[int, ...]
) -> np.ndarray:
    """A plate: `text` in `font`, centred with a margin and a thin border; BGR uint8."""
    text_h = int(height * 0.62)
    if font in HERSHEY_FONTS:
        face = HERSHEY_FONTS[font]
        scale = cv2.getFontScaleFromHeight(face, text_h, 3)
        thick = max(2, text_h // 12)
        (tw, th), _ = cv2.getTextSize(text, face, scale, thick)
        img = np.full((height, tw + height // 2, 3), bg, np.uint8)
        org = (height // 4, (height + th) // 2)
        cv2.putText(img, text, org, face, scale, ink, thick, cv2.LINE_AA)
    else:
        from PIL import Image, ImageDraw, ImageFont

        f = ImageFont.truetype(str(DEJAVU_DIR / font), text_h)
        left, top, right, bottom = f.getbbox(text)
        im = Image.new("RGB", (int(right - left) + height // 2, height), tuple(reversed(bg)))
        pos = (height // 4 - left, (height - (bottom - top)) // 2 - top)
        ImageDraw.Draw(im).text(pos, text, font=f, fill=tuple(reversed(ink)))
        img = np.asarray(im)[:, :, ::-1].copy()
    border = max(2, height // 24)
    cv2.rectangle(img, (0, 0), (img.shape[1] - 1, height - 1), ink, border)
    return img


# When two characters count as drawn alike (folds_for). Measured on glyphs drawn GLYPH_PX high.
GLYPH_PX = 96
MARKED_CENTRE_INK = 0.2  # a zero with this share of ink in its middle is dotted or slashed
# O and 0 are folded only when O is at most this much wider than 0. The Hershey fonts' O is 11%
# wider (5 px in 44 at GLYPH_PX): at the benchmark's characters (12-30 px high, a zero 9-21 px
# wide) that is 1-2 px, which the crops' blur and rescaling smear, and a reader cannot tell the
# two apart without a plate-wide width reference. DejaVu Sans and Serif Bold draw O 26% and 31%
# wider (3-7 px here): a visibly rounder letter, so counting it as 0 would hide real errors.
MAX_FOLD_WIDTH_RATIO = 1.15
# A 1 whose top leans left of its stem by this share of its height has a flag; an I has none.
FLAG_LEAN = 0.015


def glyph_ink(ch: str, font: str) -> np.ndarray:
    """The ink (bool, cropped to its box) of `ch` drawn alone by draw_text, dark on light."""
    img = draw_text(ch, font, GLYPH_PX, (235, 235, 235), (25, 25, 25))
    b = max(2, GLYPH_PX // 24) + 2  # inside the plate's border
    ink = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[b:-b, b:-b] < 128
    ys, xs = np.nonzero(ink)
    return np.asarray(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def centre_ink(ink: np.ndarray) -> float:
    """The share of ink in the middle fifth (each way) of a glyph's ink box."""
    h, w = ink.shape
    return float(ink[2 * h // 5 : 3 * h // 5, 2 * w // 5 : 3 * w // 5].mean())


def flag_lean(ink: np.ndarray) -> float:
    """How far left of the stem (the middle third's mean ink column) the top quarter's ink
    lies, as a share of the glyph's height: a 1's flag makes it positive, an I's serifs
    balance out."""
    h, w = ink.shape
    cols = ink[h // 3 : 2 * h // 3].sum(axis=0)
    stem_x = float((cols * np.arange(w)).sum() / cols.sum())
    _, xs = np.nonzero(ink[: h // 4])
    return float((stem_x - float(xs.mean())) / h)


def folds_for(font: str) -> dict[str, str]:
    """Character folds for `font`, measured on its rendered glyphs: O is counted as 0 when the
    zero has no dot or slash (centre_ink under MARKED_CENTRE_INK) and O is at most
    MAX_FOLD_WIDTH_RATIO times as wide as 0; I as 1 when the 1 has no flag (flag_lean under
    FLAG_LEAN) and their widths are as close. For these fonts: O/0 in the four Hershey fonts
    only; I/1 in none. tests/test_ocr.py checks the outcome."""
    folds = {}
    o, zero, i, one = (glyph_ink(ch, font) for ch in "O0I1")
    if centre_ink(zero) < MARKED_CENTRE_INK and o.shape[1] <= MAX_FOLD_WIDTH_RATIO * zero.shape[1]:
        folds["O"] = "0"
    ratio = i.shape[1] / one.shape[1]
    if flag_lean(one) < FLAG_LEAN and 1 / MAX_FOLD_WIDTH_RATIO <= ratio <= MAX_FOLD_WIDTH_RATIO:
        folds["I"] = "1"
    return folds


@dataclass
class Track:
    text: str
    font: str
    height: int
    colour: int
    tilt_deg: float
    polygon: bool  # whether the crops come with the plate's polygon (a segmenting detector)
    crops: list[tuple[np.ndarray, np.ndarray]]  # (image, polygon in its pixels)


def make_crop(
    plate: np.ndarray, height: int, tilt_deg: float, rng: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """One observed crop of `plate`: rotated by `tilt_deg` on a background with a margin,
    scaled to about `height` px of plate, blurred, motion-blurred and noised. Returns the crop
    and the plate's corners in it (the polygon a segmenting detector would send)."""
    ph, pw = plate.shape[:2]
    margin = ph // 3
    canvas_bg = tuple(rng.randrange(40, 200) for _ in range(3))
    w, h = pw + 2 * margin, ph + 2 * margin
    m = cv2.getRotationMatrix2D((w / 2, h / 2), tilt_deg, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(w * cos + h * sin), int(w * sin + h * cos)
    m[0, 2] += nw / 2 - w / 2 + margin
    m[1, 2] += nh / 2 - h / 2 + margin
    canvas = np.full((nh, nw, 3), canvas_bg, np.uint8)
    cv2.warpAffine(
        plate, m, (nw, nh), dst=canvas, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT
    )
    corners = np.array([[0, 0], [pw, 0], [pw, ph], [0, ph]], np.float32) @ m[:, :2].T + m[:, 2]
    # Scale so the plate is `height` px high (with a little jitter from frame to frame).
    f = height * rng.uniform(0.92, 1.08) / ph
    crop = cv2.resize(canvas, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    corners = corners * f
    # Blur in proportion to the plate (a 7 px smear on a 16 px plate leaves nothing to read).
    motion = round(height * rng.choice((0.0, 0.0, 0.1, 0.2)))
    if motion > 1:
        k = np.zeros((motion, motion), np.float32)
        k[motion // 2, :] = 1.0 / motion
        crop = cv2.filter2D(crop, -1, k)
    sigma = rng.choice((0.0, 0.0, 0.5, 0.8))
    if sigma:
        crop = cv2.GaussianBlur(crop, (0, 0), sigma)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(0, 6), crop.shape)
    crop = np.clip(crop + noise, 0, 255).astype(np.uint8)
    return crop, corners.astype(np.float32)


def make_tracks(
    n: int, crops_per_track: int, seed: int, fonts: list[str], texts: str = "random"
) -> list[Track]:
    """`n` tracks; their texts use every character of ALPHABET about equally often. `texts`:
    "random" (any character anywhere: the neighbours say nothing) or "plates" (2-3 blocks of
    1-4 letters or digits, kinds alternating, as most plates are written: the neighbours say
    whether a character is a letter or a digit)."""
    rng = random.Random(seed)
    pools: dict[str, list[str]] = {}

    def draw(kind: str) -> str:
        if not pools.get(kind):
            pools[kind] = list(kind)
            rng.shuffle(pools[kind])
        return pools[kind].pop()

    tracks = []
    for i in range(n):
        if texts == "random":
            text = "".join(draw(ALPHABET) for _ in range(rng.randint(5, 8)))
        else:
            lengths = [0]
            while not 5 <= sum(lengths) <= 8:
                lengths = [rng.randint(1, 4) for _ in range(rng.randint(2, 3))]
            kinds = [LETTERS, DIGITS] if rng.random() < 0.5 else [DIGITS, LETTERS]
            text = "".join(
                draw(kinds[b % 2]) for b, size in enumerate(lengths) for _ in range(size)
            )
        font = fonts[i % len(fonts)]
        colour = rng.randrange(len(COLOURS))
        height = rng.choice(HEIGHTS_PX)
        tilt = rng.choice((0.0, 0.0, rng.uniform(-15, 15)))
        polygon = rng.random() < 0.5
        plate = draw_text(text, font, RENDER_HEIGHT_PX, *COLOURS[colour])
        crops = [make_crop(plate, height, tilt, rng) for _ in range(crops_per_track)]
        tracks.append(Track(text, font, height, colour, tilt, polygon, crops))
    return tracks


def fold(text: str, folds: dict[str, str]) -> str:
    return "".join(folds.get(ch, ch) for ch in text)


@dataclass
class EngineResult:
    crops_exact: float  # fraction of crops read exactly
    tracks_exact: float  # fraction of tracks with a stable reading that is exact
    tracks_final_exact: float  # ... whose last reading is exact, stable or not
    ms_median: float  # per plate: prepare + recognize
    ms_mean: float
    n_crops: int
    groups: dict[str, Counter[str]]  # per font and per polygon/box: crops, crops_ok, tracks, ...
    misses: list[tuple[str, str, str]]  # (truth, reading, font)
    also_exact: dict[str, float]  # tracks exact under each of run_engine's `also` fold tables


def run_engine(
    engine: str,
    tracks: list[Track],
    folds: dict[str, dict[str, str]],
    threads: int,
    locate: bool,
    also: dict[str, dict[str, dict[str, str]]] | None = None,
) -> EngineResult:
    """Read every track as `streamer ocr` does: the worker's TrackVotes on the raw readings,
    until VOTES of them agree. A track is exact when its reading became stable (what the
    worker's users act on: `stable` in its results, `--listen`) and is right; a reading that
    is right but never got VOTES agreeing readings is counted apart (`tracks_final_exact`).
    `locate`: find the text line with DBNet in crops without a polygon. Readings are folded
    only to be compared with the truth: `folds` (per font) decide what counts as exact, and
    each of `also` (name -> per-font folds) scores the same readings once more."""
    also = also or {}
    name, _, variant = engine.partition(":")
    recognizer = make_recognizer(name, threads, pairs=variant != "plain")
    rec = CropReader(recognizer, TextDetector(threads) if locate else None)
    rec.read(tracks[0].crops[0][0], None)  # warm-up, not timed
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    ms: list[float] = []
    misses: list[tuple[str, str, str]] = []
    also_ok: Counter[str] = Counter()
    for t in tracks:
        votes = TrackVotes(VOTES)
        fd = folds[t.font]
        truth = fold(t.text, fd)
        reading, stable = "", False
        kinds = (t.font, "with polygon" if t.polygon else "box only", "all")
        for img, poly in t.crops:
            if votes.stable(0):
                break
            t0 = time.perf_counter()
            got = rec.read(img, poly if t.polygon else None)
            ms.append((time.perf_counter() - t0) * 1000)
            for k in kinds:
                groups[k]["crops"] += 1
                groups[k]["crops_ok"] += fold(got.text, fd) == truth
            reading, stable = votes.add(0, got.text, got.confidence)
        right = fold(reading, fd) == truth
        for k in kinds:
            groups[k]["tracks"] += 1
            groups[k]["tracks_ok"] += stable and right
            groups[k]["tracks_final_ok"] += right
        if not (stable and right):
            misses.append((t.text, reading if stable else f"{reading} (not stable)", t.font))
        for name, table in also.items():
            also_ok[name] += stable and fold(reading, table[t.font]) == fold(t.text, table[t.font])
    total = groups["all"]
    return EngineResult(
        crops_exact=total["crops_ok"] / total["crops"],
        tracks_exact=total["tracks_ok"] / total["tracks"],
        tracks_final_exact=total["tracks_final_ok"] / total["tracks"],
        ms_median=float(np.median(ms)),
        ms_mean=float(np.mean(ms)),
        n_crops=total["crops"],
        groups=groups,
        misses=misses,
        also_exact={name: also_ok[name] / len(tracks) for name in also},
    )


def bench_detector(sizes: list[tuple[int, int]], threads: int, repeat: int) -> None:
    """Print the text detector's median ms per frame at each tap size (frames with 4 plates)."""
    rng = random.Random(1)
    det = TextDetector(threads)
    for w, h in sizes:
        frame = np.full((h, w, 3), (90, 110, 100), np.uint8)
        for k in range(4):
            plate = draw_text(f"AB{k}CD{k}", "hershey-duplex", max(16, h // 12), *COLOURS[k])
            y, x = h // 8 + k * h // 5, rng.randrange(0, w - plate.shape[1])
            frame[y : y + plate.shape[0], x : x + plate.shape[1]] = plate
        det.detect(frame)  # warm-up
        ms = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            det.detect(frame)
            ms.append((time.perf_counter() - t0) * 1000)
        med = float(np.median(ms))
        print(
            f"text detector {w}x{h}, {threads} thread(s): {med:.0f} ms per frame (median of "
            f"{repeat}), keeps up with tap.max_fps <= {1000 / med:.1f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tracks", type=int, default=120)
    ap.add_argument("--crops", type=int, default=5, help="crops per track (read until stable)")
    ap.add_argument(
        "--engines",
        default="ppocrv6,ppocrv5,rapidocr,tesseract",
        help="recognizers; ppocrv6:plain is ppocrv6 without its look-alike models",
    )
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    ap.add_argument("--no-locate", action="store_true", help="as streamer ocr --no-locate")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument(
        "--texts",
        choices=("random", "plates"),
        default="random",
        help="random: any character anywhere (the target's plates); plates: blocks of letters "
        "and of digits, as most real plates",
    )
    ap.add_argument("--detector-sizes", default="640x360,1280x720", help="'' to skip")
    ap.add_argument("--detector-repeat", type=int, default=10)
    ap.add_argument("--save-dir", help="write each track's first crop here as PNG")
    ap.add_argument(
        "--only-fonts", help="comma-separated fonts: read only their tracks (same plates)"
    )
    args = ap.parse_args()
    for engine in args.engines.split(","):
        name, sep, variant = engine.partition(":")
        if sep and (name != "ppocrv6" or variant != "plain"):
            ap.error(f"--engines: {engine!r}: the only variant is ppocrv6:plain")
    fonts = list(HERSHEY_FONTS)
    if all((DEJAVU_DIR / f).is_file() for f in TTF_FONTS):
        fonts += list(TTF_FONTS)
    else:
        print(f"no DejaVu fonts in {DEJAVU_DIR} (Debian: fonts-dejavu-core): Hershey only")
    folds = {f: folds_for(f) for f in fonts}
    unfolded: dict[str, dict[str, str]] = {f: {} for f in fonts}
    for f in fonts:
        print(
            f"font {f:24s} folded: {', '.join(f'{a}={b}' for a, b in folds[f].items()) or 'none'}"
        )
    tracks = make_tracks(args.tracks, args.crops, args.seed, fonts, args.texts)
    if args.only_fonts:
        only = set(args.only_fonts.split(","))
        tracks = [t for t in tracks if t.font in only]
        print(f"only the {len(tracks)} tracks in {sorted(only)}")
    used = Counter(ch for t in tracks for ch in t.text)
    print(
        f"{len(tracks)} tracks x up to {args.crops} crops, {len(fonts)} fonts, all 36 characters: "
        f"{len(used) == 36} (each used {min(used.values())}-{max(used.values())} times)"
    )
    if args.save_dir:
        out = Path(args.save_dir)
        out.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(tracks):
            cv2.imwrite(str(out / f"{i:03d}_{t.text}_{t.font}.png"), t.crops[0][0])
    results: dict[str, EngineResult] = {}
    for engine in args.engines.split(","):
        r = results[engine] = run_engine(
            engine, tracks, folds, args.threads, not args.no_locate, {"nothing folded": unfolded}
        )
        n_ok = round(r.tracks_exact * len(tracks))
        print(
            f"{engine:10s} exact per crop {r.crops_exact:6.1%} ({r.n_crops} crops read)  "
            f"per track (stable and exact) {r.tracks_exact:6.1%} ({n_ok}/{len(tracks)}; "
            f"nothing folded {r.also_exact['nothing folded']:.1%}; last reading exact, stable "
            f"or not, {r.tracks_final_exact:.1%})  {r.ms_median:.1f} ms per plate "
            f"(median; mean {r.ms_mean:.1f})"
        )
        for k in [*fonts, "with polygon", "box only"]:
            c = r.groups[k]
            print(
                f"    {k:24s} crops {c['crops_ok']:3d}/{c['crops']:3d}  "
                f"tracks {c['tracks_ok']:3d}/{c['tracks']:3d}"
            )
        for text, reading, font in r.misses:
            print(f"    missed: {text} read {reading!r} ({font})")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.detector_sizes.split(",") if s]
    for w, h in sizes:
        bench_detector([(w, h)], args.threads, args.detector_repeat)
    if len(results) > 1:
        base_name = list(results)[-1]
        base = results[base_name]
        for engine, r in results.items():
            if engine != base_name:
                print(
                    f"{engine} vs {base_name}: tracks exact "
                    f"x{r.tracks_exact / max(base.tracks_exact, 1e-9):.2f}, "
                    f"time per plate x{r.ms_median / base.ms_median:.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
