#!/usr/bin/env python3
"""Fuzz the detection codec and everything that consumes what it returns.

Each input is one multipart detection message. `exercise` decodes it and, when it is valid,
runs it through every consumer of its values the way the crop thread and the preview do: the
crop stage with background removal on (masks of every form cut and blended), the crop message
framing (topic and JSON header, keypoints included) and the preview's drawing (labels drawn with
OpenCV). The property: only ProtocolError escapes, and each message takes a time bounded by its
size (`time_bound_s`, generous: it catches quadratic or allocation blow-ups, not jitter).

    .venv/bin/python scripts/fuzz_detections.py --minutes 5 [--corpus DIR]

Coverage-guided with atheris (libFuzzer) when it is installed: the seeds are valid messages
(polygon, compressed and list RLE, image- and box-sized bitmaps, keypoints, params); libFuzzer
mutates the header bytes and picks the payload parts. Without atheris it runs the same harness
with hypothesis strategies (random bytes, random JSON, mutated valid messages) until time is up.
tests/test_codec_fuzz.py imports this file and runs the hypothesis part with a fixed budget.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as coco

FRAME_W, FRAME_H = 640, 360  # the frame a valid message is paired with (a realistic size)
IMAGE_W, IMAGE_H = 64, 48  # the detector image of the seed messages
TOPIC = b"det/cam"
MAX_BYTES = 16 << 20  # the default detections.max_message_bytes
ATHERIS_RUN_S = 45  # one libFuzzer process fuzzes at most this long (see main)
MAX_PREDICTIONS = 100
# Per message: a fixed allowance plus a per-byte one (generous for a loaded machine). A valid
# 4 MB header decodes in ~0.1 s; the old quadratic RLE decoder took ~100 s for 2 MB, a polygon
# zig-zagging to y = +-1e9 ~12 s for 40 KB, far beyond this.
TIME_BASE_S = 1.0
TIME_PER_BYTE_S = 2e-6
# Python allocations (tracemalloc, numpy's included) while one message is decoded, cut and
# drawn: the frame's worth of crops and drawing plus a small multiple of the message's size.
ALLOC_BASE_BYTES = 48 * 1024 * 1024
ALLOC_PER_BYTE = 16
REPORT_EVERY_S = 30.0


def time_bound_s(parts: list[bytes]) -> float:
    return TIME_BASE_S + TIME_PER_BYTE_S * sum(len(p) for p in parts)


def alloc_bound_bytes(parts: list[bytes]) -> int:
    return ALLOC_BASE_BYTES + ALLOC_PER_BYTE * sum(len(p) for p in parts)


def _mask() -> np.ndarray:
    m = np.zeros((IMAGE_H, IMAGE_W), np.uint8)
    m[10:30, 12:40] = 1
    m[20:44, 30:36] = 1
    return m


def seed_predictions() -> tuple[list[dict[str, Any]], list[bytes]]:
    """Valid predictions with every optional part, and the payload parts they refer to."""
    m = _mask()
    rle = coco.encode(np.asfortranarray(m))
    rle_text = rle["counts"].decode()
    flat = m.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    base = {"x": 26.0, "y": 27.0, "width": 30.0, "height": 36.0, "confidence": 0.8}
    square = [{"x": 14, "y": 12}, {"x": 38, "y": 12}, {"x": 38, "y": 40}, {"x": 14, "y": 40}]
    # Valid, but each edge spans 2e9 rows: rasterised unclipped it took seconds per prediction.
    zigzag = [{"x": 14 + i * 0.25, "y": 1e9 if i % 2 else -1e9} for i in range(96)]
    preds = [
        {**base, "class": "car", "class_id": 2, "detection_id": "d-0", "tracker_id": 7},
        {**base, "class": "poly", "class_id": 1, "points": square},
        {**base, "class": "far-poly", "class_id": 1, "points": zigzag},
        {**base, "class": "rle-s", "rle": {"size": [IMAGE_H, IMAGE_W], "counts": rle_text}},
        {**base, "class": "rle-l", "rle_mask": {"size": [IMAGE_H, IMAGE_W], "counts": runs}},
        {**base, "class": "bitmap", "mask_part": 0},
        {**base, "class": "boxmask", "mask_part": 1, "mask_layout": "box", "mask_size": [9, 8]},
        {
            **base,
            "class": "person",
            "keypoints": [
                {"x": 20.5, "y": 15, "confidence": 0.9, "class_id": 0, "class": "nose"},
                {"x": 30, "y": 25.25, "confidence": 0.4, "class_id": 1, "class": "eye"},
            ],
        },
    ]
    payload = [(m * 255).tobytes(), bytes(range(72))]
    return preds, payload


def seed_messages() -> list[list[bytes]]:
    """Valid messages: one per prediction form, all together, with params, and empty."""
    preds, payload = seed_predictions()
    headers: list[dict[str, Any]] = [{"predictions": [p]} for p in preds]
    headers.append({"predictions": preds})
    headers.append(
        {"predictions": preds, "params": {"mask_opacity": 0.5, "background_color": "#102030"}}
    )
    headers.append({"predictions": preds[:2], "params": {"background_color": [1, 2, 3]}})
    headers.append({"predictions": [], "captured_at": 1764085000.5})
    out = []
    for extra in headers:
        header = {
            "v": 1,
            "source_id": "cam",
            "frame_id": 3,
            "image": {"width": IMAGE_W, "height": IMAGE_H},
            **extra,
        }
        out.append([TOPIC, json.dumps(header).encode(), *payload])
    return out


def _frame() -> Any:
    from streamer.types import Frame

    y = (np.arange(FRAME_W * FRAME_H, dtype=np.uint32).reshape(FRAME_H, FRAME_W) % 251).astype(
        np.uint8
    )
    u = np.full((FRAME_H // 2, FRAME_W // 2), 90, np.uint8)
    v = np.full((FRAME_H // 2, FRAME_W // 2), 160, np.uint8)
    return Frame("cam", 3, 3, 0.0, FRAME_W, FRAME_H, "yuv420p", (y, u, v), y.nbytes * 3 // 2)


_FRAME: Any = None


def exercise(parts: list[bytes]) -> str:
    """Decode one message and, if valid, cut, frame and draw it. Returns ``ok`` or the
    ProtocolError's kind; any other exception propagates (that is a bug)."""
    from streamer.crop.stage import CropResult, iter_crops, message_params
    from streamer.detections.codec import decode_detections
    from streamer.errors import ProtocolError
    from streamer.preview.draw import annotate
    from streamer.publish.wire import crop_message
    from streamer.types import CropParams

    global _FRAME
    if _FRAME is None:
        _FRAME = _frame()
    try:
        dets = decode_detections(parts, max_predictions=MAX_PREDICTIONS, max_bytes=MAX_BYTES)
    except ProtocolError as e:
        return e.kind
    for base in (CropParams(), CropParams(0.5, (10, 20, 30))):
        params = message_params(base, dets)
        for crop in iter_crops(_FRAME, dets, params, ("raw-bgr24",), CropResult()):
            crop_message(crop.header, "raw-bgr24", crop.payloads["raw-bgr24"])
    annotate(_FRAME, dets, FRAME_W)
    return "ok"


def check(
    parts: list[bytes], outcomes: Counter[str] | None = None, *, trace_memory: bool = False
) -> None:
    """`exercise` one message and assert its time bound, and with `trace_memory` its bound on
    Python allocations (tracemalloc: slower, so not for every fuzzed message)."""
    if trace_memory:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome = exercise(parts)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else 0
    finally:
        if trace_memory:
            tracemalloc.stop()
    size = sum(len(p) for p in parts)
    bound = time_bound_s(parts)
    if took > bound and not trace_memory:  # (tracing slows everything down)
        raise AssertionError(f"{size}-byte message took {took:.2f} s (bound {bound:.2f} s)")
    if peak > alloc_bound_bytes(parts):
        raise AssertionError(
            f"{size}-byte message allocated {peak / 1e6:.0f} MB at peak"
            f" (bound {alloc_bound_bytes(parts) / 1e6:.0f} MB)"
        )
    if outcomes is not None:
        outcomes[outcome] += 1


# -- structural mutation of JSON trees (used by atheris' mutator and the hypothesis test) --------


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON tree (the root included)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def get(tree: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def replace(tree: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of `tree` with the value at `path` replaced by `new`."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: replace(tree[head], rest, new)}
    copy = list(tree)
    copy[head] = replace(copy[head], rest, new)
    return copy


def delete(tree: Any, path: tuple[Any, ...]) -> Any:
    """A copy of `tree` without the value at `path` (not the root)."""
    head, rest = path[0], path[1:]
    if rest:
        copy = dict(tree) if isinstance(tree, dict) else list(tree)
        copy[head] = delete(tree[head], rest)
        return copy
    if isinstance(tree, dict):
        return {k: v for k, v in tree.items() if k != head}
    return [v for i, v in enumerate(tree) if i != head]


FIELD_NAMES = [
    "v", "source_id", "frame_id", "captured_at", "image", "width", "height", "predictions",
    "params", "mask_opacity", "background_color", "x", "y", "confidence", "class", "class_id",
    "detection_id", "tracker_id", "points", "keypoints", "rle", "rle_mask", "size", "counts",
    "mask_part", "mask_layout", "mask_size",
]  # fmt: skip
HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, 1, 2, 3, 0.5, 1.0, -0.0, 2**31, 2**53 + 1, 2**63 - 1, 2**63,
    2**64 - 1, 1e9, 1e9 + 1, 1e300, -1e300, "", "a", "\u0000", "\u00e9", "\ud800", "x" * 300,
    "#fff", "(1, 2, 3)", "box", "image", "0", "o", "PP0", [], {}, [0], [1, 2], [32768, 32768],
    [32769, 1], [0, 0], [{"x": 1, "y": 2}] * 3, {"x": 1}, {"size": [2, 2], "counts": [4]},
]  # fmt: skip


def mutate_tree(tree: Any, rng: random.Random, donors: list[Any]) -> Any:
    """One structural mutation: replace a value (by a hostile one, a random subtree of a seed,
    or a deep nest), delete one, insert a known field, or duplicate a list element."""
    all_paths = paths(tree)
    path = rng.choice(all_paths)
    op = rng.randrange(5)
    if op == 0:
        return replace(tree, path, rng.choice(HOSTILE_VALUES))
    if op == 1:
        donor = rng.choice(donors)
        return replace(tree, path, get(donor, rng.choice(paths(donor))))
    if op == 2 and path:
        return delete(tree, path)
    if op == 3:
        dicts = [p for p in all_paths if isinstance(get(tree, p), dict)]
        if dicts:
            target = rng.choice(dicts)
            value = rng.choice(HOSTILE_VALUES + [get(d, rng.choice(paths(d))) for d in donors])
            return replace(tree, target, {**get(tree, target), rng.choice(FIELD_NAMES): value})
    lists = [p for p in all_paths if isinstance(get(tree, p), list) and get(tree, p)]
    if lists:
        target = rng.choice(lists)
        items = get(tree, target)
        return replace(tree, target, items + [rng.choice(items)] * rng.choice([1, 2, 50]))
    return tree


# -- atheris (coverage-guided) ----------------------------------------------------------------


def run_atheris(seconds: int, corpus: Path) -> int:
    import atheris
    import cv2  # noqa: F401  (imported before instrumenting: only streamer is instrumented)

    with atheris.instrument_imports(include=["streamer"]):
        import streamer.colors
        import streamer.crop.masks
        import streamer.crop.stage
        import streamer.detections.codec
        import streamer.preview.draw
        import streamer.publish.wire  # noqa: F401

    seeds = seed_messages()
    donors = [json.loads(m[1]) for m in seeds]
    corpus.mkdir(parents=True, exist_ok=True)
    for i, msg in enumerate(seeds):
        # The first byte picks the payload parts (see one_input); the rest is the header.
        (corpus / f"seed-{i}").write_bytes(bytes([2]) + msg[1])
    payload = seeds[0][2:]
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    next_report = [started + min(REPORT_EVERY_S, seconds - 1.0)]

    def report() -> None:
        print(
            f"atheris: {time.monotonic() - started:.0f} s, {sum(outcomes.values())} messages, "
            f"outcomes {dict(outcomes.most_common())}",
            flush=True,
        )

    def one_input(data: bytes) -> None:
        # libFuzzer ends the process with _exit: report as we go (the last within a second).
        now = time.monotonic()
        if now >= next_report[0]:
            report()
            final_at = started + seconds - 1.0
            next_report[0] = now + REPORT_EVERY_S if now < final_at else math.inf
            if next_report[0] > final_at > now:
                next_report[0] = final_at
        if not data:
            return
        # Low bits: how many of the seed payload parts follow; bit 2: a stray 5 kB part.
        parts = [TOPIC, data[1:], *payload[: data[0] & 3]]
        if data[0] & 4:
            parts.append(b"\0" * 5000)
        check(parts, outcomes)

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        """Half the time libFuzzer's byte-level mutation; else a structural JSON one."""
        rng = random.Random(seed)
        if len(data) < 2 or rng.random() < 0.5:
            return bytes(atheris.Mutate(data, max_size))
        try:
            tree = json.loads(data[1:])
        except ValueError:
            return bytes(atheris.Mutate(data, max_size))
        for _ in range(rng.randint(1, 3)):
            tree = mutate_tree(tree, rng, donors)
        body = json.dumps(tree).encode("utf-8", "surrogatepass")
        return (bytes([data[0] ^ (rng.random() < 0.1)]) + body)[:max_size]

    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            "-timeout=30",
            # One allocation over 2 GB is a finding; the process as a whole may grow further
            # (atheris' own leak, see main) within the time one process runs.
            "-malloc_limit_mb=2048",
            "-rss_limit_mb=4096",
            "-max_len=65536",
            str(corpus),
        ],
        one_input,
        custom_mutator=mutator,
    )
    atheris.Fuzz()
    return 0


# -- hypothesis (random, not coverage-guided) -------------------------------------------------


def run_hypothesis(seconds: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.test_codec_fuzz import messages

    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:

        @settings(
            max_examples=2_000,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def round_(data: st.DataObject) -> None:
            check(data.draw(messages()), outcomes)

        round_()
        rounds += 1
    print(f"hypothesis: {seconds} s, {rounds} rounds, outcomes {dict(outcomes)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--corpus", type=Path, default=None, help="atheris corpus directory")
    ap.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    seconds = max(1, int(args.minutes * 60))
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            print("atheris is not installed: running the hypothesis harness instead")
            engine = "hypothesis"
    if engine == "atheris":
        corpus = args.corpus or Path(tempfile.mkdtemp(prefix="fuzz-detections-"))
        print(f"atheris corpus: {corpus}")
        if args.one_run or seconds <= ATHERIS_RUN_S:
            return run_atheris(seconds, corpus)
        # atheris 3.0 leaks what an instrumented comparison that gives no bool compares: every
        # NumPy `array > 0` of the crop stage keeps its array (a 3-line module comparing a
        # 10,000-byte array leaks 10 kB a call, 4 GB in 10 s), so one libFuzzer process
        # reaches its 2 GB limit in one to two minutes. (streamer does not: this corpus
        # replayed without atheris, and the hypothesis harness, stay flat.) Longer runs go on
        # in fresh processes, on the same corpus: at ~15-25 MB/s here, one of ATHERIS_RUN_S
        # stays well under libFuzzer's RSS limit (run_atheris).
        deadline = time.monotonic() + seconds
        try:
            while (left := deadline - time.monotonic()) >= 1:
                run_s = min(left, ATHERIS_RUN_S)
                argv = [sys.executable, __file__, "--engine", "atheris", "--one-run"]
                argv += ["--corpus", str(corpus), "--minutes", f"{run_s / 60:.4f}"]
                if rc := subprocess.call(argv):
                    return rc
        except KeyboardInterrupt:
            return 130
        return 0
    random.seed()
    return run_hypothesis(seconds)


if __name__ == "__main__":
    sys.exit(main())
