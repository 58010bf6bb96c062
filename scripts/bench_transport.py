#!/usr/bin/env python3
"""The floor under crop latency: ZeroMQ PUB -> SUB of one 1080p frame's worth of raw BGR crops
(9 crops shaped like bench_pipeline.py's, ~1.9 MB), sent back to back 30 times a second, with no
crop work at all. Prints each message's send -> receive latency (p50, p99), over TCP and ipc://.

    .venv/bin/python scripts/bench_transport.py [--frames 150]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
import zmq
from bench_pipeline import free_endpoint

# Crop sizes (w, h) like one 1080p frame's in bench_pipeline.py: the clamped corner box, then
# each plate and person shape twice; 9 crops, ~1.9 MB of BGR (the bench averages ~1.7 MB).
SUBSCRIBE_TIMEOUT_MS = 60_000
RESULT_TIMEOUT_MS = 10_000
CROPS = [(120, 68)] + [(192, 96), (192, 384), (320, 160), (320, 540)] * 2


def subscriber(endpoint: str, results: str) -> None:
    """Receive crops; report each one's send time and arrival time."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    out = ctx.socket(zmq.PUSH)
    out.connect(results)
    while True:
        parts = sub.recv_multipart(copy=False)
        now = time.monotonic()
        out.send_string(f"{json.loads(parts[1].bytes)['t']} {now}")


def measure(endpoint: str, results: str, frames: int) -> list[float]:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)  # a PUB that tells when the subscriber has subscribed
    pub.setsockopt(zmq.SNDHWM, 100_000)
    pub.bind(endpoint)
    res = ctx.socket(zmq.PULL)
    res.setsockopt(zmq.RCVTIMEO, RESULT_TIMEOUT_MS)  # a lost crop fails the run, never hangs it
    res.bind(results)
    proc = subprocess.Popen([sys.executable, __file__, "--sub", endpoint, results])
    try:
        # Wait for the subscription: a fixed sleep lost the first crops on a loaded machine (the
        # subscriber process took longer to start) and the bench then waited forever.
        if not pub.poll(SUBSCRIBE_TIMEOUT_MS):
            raise RuntimeError("the subscriber process did not subscribe")
        pub.recv()
        rng = np.random.default_rng(0)
        payloads = [rng.integers(0, 255, w * h * 3, np.uint8) for w, h in CROPS]
        lat = []
        for _ in range(frames):
            for p in payloads:
                header = json.dumps({"t": time.monotonic()}).encode()
                pub.send_multipart([b"crop/x", header, p.data], copy=False)
            for _ in payloads:
                sent, got = map(float, res.recv_string().split())
                lat.append((got - sent) * 1000)
            time.sleep(1 / 30)
        return sorted(lat)
    finally:
        proc.kill()
        proc.wait()
        pub.close(linger=0)
        res.close(linger=0)
        ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--sub", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sub:
        subscriber(*args.sub)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for endpoint in (free_endpoint(), f"ipc://{tmp}/crops.sock"):
            lat = measure(endpoint, free_endpoint(), args.frames)
            kind = endpoint.split(":", 1)[0]
            print(
                f"{kind}: {len(CROPS)} crops a frame ({sum(w * h * 3 for w, h in CROPS) / 1e6:.1f}"
                f" MB) at 30 fps, per crop send -> receive p50 {lat[len(lat) // 2]:.2f} ms, "
                f"p99 {lat[int(0.99 * (len(lat) - 1))]:.2f} ms"
            )


if __name__ == "__main__":
    main()
