#!/usr/bin/env python3
"""The tap's downscale by whole factors: (a) FFmpeg's swscale area filter (what the tap used
before) against (b) streamer's block mean in C (`streamer._box`, what `scaled_i420` uses now),
in the same run, on the same decoded H.264 frames.

The frames are kept out of the CPU's caches as in a running camera, where the tap reads a frame
some time after it was decoded: `--frames` distinct frames (60 at 1080p: 187 MB) are taken in
turn. Prints, per size, the CPU time a frame of each (median of `--rounds` rounds, each over
every frame) and (a)/(b): above 1 means the block mean is cheaper. Also the same picture's
memcpy (3 planes), what reading the frame alone costs.

    .venv/bin/python scripts/bench_downscale.py [--sizes 1920x1080,1280x720,3840x2160]
        [--frames 60] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

from streamer._box import box_down
from streamer.sources.frames import from_av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import make_clip

TAP_WIDTH, TAP_HEIGHT = 640, 360


def frames_of(clip: Path, n: int) -> list[av.VideoFrame]:
    with av.open(str(clip)) as c:
        out = []
        for f in c.decode(video=0):
            out.append(f)
            if len(out) == n:
                break
    return out


def cpu_ms_a_frame(work: Callable[[int], None], n: int, rounds: int) -> float:
    """Median over `rounds` of the CPU time (this thread) a call, each round calling `work`
    for frames 0..n-1 in turn."""
    per_round = []
    for _ in range(rounds):
        t = time.thread_time()
        for i in range(n):
            work(i)
        per_round.append((time.thread_time() - t) / n * 1000)
    return statistics.median(per_round)


def bench(size: tuple[int, int], n_frames: int, rounds: int) -> None:
    w, h = size
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / f"clip{w}x{h}.mp4"
        make_clip(clip, w, h, n_frames)
        frames = frames_of(clip, n_frames)
    views = [from_av(f, "bench", i, 0.0).planes for i, f in enumerate(frames)]  # (as the tap)
    out = np.empty(TAP_WIDTH * TAP_HEIGHT * 3 // 2, np.uint8)
    n_luma, n_chroma = TAP_WIDTH * TAP_HEIGHT, TAP_WIDTH * TAP_HEIGHT // 4
    dst = [
        out[:n_luma].reshape(TAP_HEIGHT, TAP_WIDTH),
        out[n_luma : n_luma + n_chroma].reshape(TAP_HEIGHT // 2, TAP_WIDTH // 2),
        out[n_luma + n_chroma :].reshape(TAP_HEIGHT // 2, TAP_WIDTH // 2),
    ]
    scaler = VideoReformatter()
    copies = [np.empty_like(p) for p in views[0]]

    def swscale(i: int) -> None:
        scaler.reformat(
            frames[i],
            width=TAP_WIDTH,
            height=TAP_HEIGHT,
            format="yuv420p",
            interpolation="AREA",
            dst_color_range=ColorRange.MPEG,
            threads=1,
        )

    def block_mean(i: int) -> None:
        for src, d in zip(views[i], dst, strict=True):
            box_down(src, d)

    def memcpy(i: int) -> None:
        for src, d in zip(views[i], copies, strict=True):
            np.copyto(d, src)

    n = len(frames)
    a = cpu_ms_a_frame(swscale, n, rounds)
    b = cpu_ms_a_frame(block_mean, n, rounds)
    c = cpu_ms_a_frame(memcpy, n, rounds)
    print(
        f"{w}x{h} to {TAP_WIDTH}x{TAP_HEIGHT}, {n} frames out of cache: (a) swscale area "
        f"{a:.3f} ms, (b) block mean {b:.3f} ms, (a)/(b) {a / b:.2f}; memcpy {c:.3f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="1920x1080,1280x720,3840x2160")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.frames < 1 or args.rounds < 1:
        ap.error("--frames and --rounds must be 1 or more")
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        if w % TAP_WIDTH or h % TAP_HEIGHT:
            ap.error(f"{size}: not a whole multiple of {TAP_WIDTH}x{TAP_HEIGHT}")
        bench((w, h), args.frames, args.rounds)


if __name__ == "__main__":
    main()
