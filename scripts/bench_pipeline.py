#!/usr/bin/env python3
"""Pipeline benchmark: streamer's whole path against bare decoding of the same clip, in one run.

(a) bare PyAV decode of a generated H.264 clip, as fast as possible.
(b) `streamer run` on the same clip, unpaced: tap at 640 px (raw I420), the echo detector
    process answering 10 boxes per frame, a subscriber (this process) receiving every crop.
    The clip is read lossless, and streamer starts decoding once the subscriber's subscription
    has reached it (publish.wait_for_subscriber); the subscriber takes crops until it has every
    one streamer sent (its stats file says how many). Throughput = frames fully served (paired,
    all crops received) per second of the run.
(c) the same paced at 30 fps: latency from the detector sending a detection message to each of
    its crops arriving at the subscriber (p50, p99), streamer's CPU and peak RSS; with --soak S,
    RSS sampled over S seconds to show it stays flat.

    .venv/bin/python scripts/bench_pipeline.py [--sizes 1920x1080,1280x720] [--paced-s 20]
                                               [--soak 300]
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import yaml
import zmq

REPO = Path(__file__).resolve().parent.parent
BOXES = 10
WARMUP_FRAMES = 30
SUBSCRIBE_TIMEOUT_S = 20.0  # for the crop subscriber to connect to streamer
DRAIN_TIMEOUT_S = 10.0  # after streamer exits, for the crops it sent to arrive
CLK_TCK = os.sysconf("SC_CLK_TCK")


_PORTS_AFTER: list[int] = []  # the next port's place in the range: a random start, then + 1


def free_endpoint() -> str:
    """A loopback endpoint nothing listens on, below the kernel's range of ephemeral ports (a
    port the kernel hands out can be taken again as an outgoing connection's source port
    before streamer binds it: "Address already in use"). Ports are handed out in turn from a
    random start, so that one run never gives the same port twice (random draws could: two
    endpoints of one test on one port). tests/conftest.py's free_port is this one too."""
    import random
    import socket

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    first = max(1024, low - 12_000)
    span = low - first
    if span < 1000:  # (a range of ephemeral ports that starts unusually low: any will do)
        first, span = 20_000, 10_000
    if not _PORTS_AFTER:
        _PORTS_AFTER.append(random.randrange(span))
    for _ in range(span):
        port = first + _PORTS_AFTER[0] % span
        _PORTS_AFTER[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return f"tcp://127.0.0.1:{port}"
    raise RuntimeError("no free port below the ephemeral range")


def make_clip(path: Path, w: int, h: int, frames: int) -> None:
    src = av.open(f"testsrc2=size={w}x{h}:rate=30", format="lavfi")
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=30)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        # Like a camera: a keyframe a second. (lavfi marks every picture as a keyframe, which
        # libx264 obeys: without clearing it, the clip would be all-intra.)
        st.options = {"preset": "veryfast", "b": "6M", "g": "30"}
        st.codec_context.time_base = Fraction(1, 30)
        for i, f in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            f.pts = i
            f.pict_type = av.video.frame.PictureType.NONE
            out.mux(st.encode(f))
        out.mux(st.encode())
    src.close()


def bare_decode_fps(path: Path) -> tuple[float, float, int]:
    """Frames/s and CPU % of decoding the clip with PyAV, frame-threaded, as fast as it goes:
    the best over FFmpeg's default thread count and one to four threads; and that count."""
    best = (0.0, 0.0, 0)
    for threads in (0, 1, 2, 3, 4):
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            t, cpu = time.perf_counter(), time.process_time()
            n = sum(1 for _ in c.decode(stream))
            wall = time.perf_counter() - t
            best = max(best, (n / wall, 100 * (time.process_time() - cpu) / wall, threads))
    return best


class Probe:
    """CPU time and RSS of a process, from /proc, sampled over time."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu: list[tuple[float, float]] = [(self.t0, self.cpu_s())]  # (monotonic, CPU s)
        self.rss_samples: list[tuple[float, float]] = []
        self.peak_mb = 0.0

    def cpu_s(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def sample_cpu(self) -> None:
        self.cpu.append((time.monotonic(), self.cpu_s()))

    def sample(self) -> None:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    self.rss_samples.append(
                        (time.monotonic() - self.t0, int(line.split()[1]) / 1024)
                    )
                elif line.startswith("VmHWM:"):
                    self.peak_mb = int(line.split()[1]) / 1024

    def cpu_percent(self, start: float | None = None, end: float | None = None) -> float:
        """Mean CPU % between two monotonic times (default: the whole sampled life)."""

        def at(t: float) -> float:
            i = bisect.bisect_left(self.cpu, t, key=lambda s: s[0])
            if i == 0 or i == len(self.cpu):
                return self.cpu[0][1] if i == 0 else self.cpu[-1][1]
            (t0, c0), (t1, c1) = self.cpu[i - 1], self.cpu[i]
            return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)

        a = self.cpu[0][0] if start is None else start
        b = self.cpu[-1][0] if end is None else end
        return 100 * (at(b) - at(a)) / max(b - a, 1e-9)


def collect(
    endpoint: str,
    arrivals: dict[int, list[float]],
    received: list[int],
    ready: threading.Event,
    done: threading.Event,
) -> None:
    """The crop subscriber: receives every crop (payload uncopied) until `done`, notes each
    one's arrival in `arrivals` (frame id -> arrival times) and counts them in received[0];
    sets `ready` once connected to streamer."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"crop/")
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(endpoint)
    if monitor.poll(int(SUBSCRIBE_TIMEOUT_S * 1000)):
        ready.set()
    sock.disable_monitor()
    monitor.close(linger=0)
    while not done.is_set():
        if sock.poll(100):
            parts = sock.recv_multipart(copy=False)
            now = time.monotonic()
            arrivals.setdefault(json.loads(parts[1].bytes)["frame_id"], []).append(now)
            received[0] += 1
    sock.close(linger=0)


def watch_preview(port: int, done: threading.Event, frames: list[int]) -> None:
    """A WebRTC viewer of the preview (aiortc), receiving until `done`."""
    import asyncio

    import aiohttp
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from streamer.preview.server import limit_host_candidates

    async def main() -> None:
        limit_host_candidates(["127.0.0.1"])
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    body = {"source_id": "bench", "sdp": pc.localDescription.sdp, "type": "offer"}
                    async with http.post(f"http://127.0.0.1:{port}/api/offer", json=body) as r:
                        answer = await r.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        while not pc.getReceivers() or pc.getReceivers()[0].track is None:
            await asyncio.sleep(0.01)
        track = pc.getReceivers()[0].track
        while not done.is_set():
            try:
                await asyncio.wait_for(track.recv(), 1)
                frames[0] += 1
            except TimeoutError:
                pass
            except MediaStreamError:
                break  # streamer has stopped
        await pc.close()

    asyncio.run(main())


def run_pipeline(
    clip: Path,
    realtime: bool,
    duration_s: float | None,
    soak_s: float = 0,
    viewer: bool = False,
    ipc: bool = False,
) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp())
    if ipc:  # Unix domain sockets: what a consumer on the same host would use
        tap, dets, pub = (f"ipc://{tmp}/{name}.sock" for name in ("tap", "dets", "crops"))
    else:
        tap, dets, pub = free_endpoint(), free_endpoint(), free_endpoint()
    cfg: dict[str, Any] = {
        "sources": [{"id": "bench", "url": str(clip), "realtime": realtime, "loop": soak_s > 0}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "width": 640, "hwm": 8},
        "publish": [
            # Lossless runs start once this subscriber's subscription has reached streamer.
            {"bind": pub, "encoding": "raw-bgr24", "hwm": 100_000, "wait_for_subscriber": True}
        ],
    }
    viewed = [0]
    if viewer:
        port = int(free_endpoint().rsplit(":", 1)[1])
        cfg["preview"] = {"port": port, "host_candidates": ["127.0.0.1"]}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    stats_file, times_file = tmp / "stats.json", tmp / "times.txt"
    cmd = [
        sys.executable,
        "-m",
        "streamer",
        "--log-level",
        "WARNING",
        "run",
        "-c",
        str(tmp / "cfg.yaml"),
        "--quiet",
        "--stats-file",
        str(stats_file),
    ]
    run_s = soak_s or duration_s
    if run_s:
        cmd += ["--duration", str(run_s)]
    arrivals: dict[int, list[float]] = {}
    received = [0]
    ready, done = threading.Event(), threading.Event()
    # The detector and the subscriber connect first (ZeroMQ retries until streamer binds), so
    # frames are not decoded before anyone listens.
    collector = threading.Thread(target=collect, args=(pub, arrivals, received, ready, done))
    collector.start()
    detector = subprocess.Popen(
        [
            sys.executable,
            "scripts/echo_detector.py",
            "--boxes",
            str(BOXES),
            "--tap",
            tap,
            "--detections",
            dets,
            "--times",
            str(times_file),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # the detector's imports
    streamer = subprocess.Popen(cmd, cwd=REPO)
    if not ready.wait(SUBSCRIBE_TIMEOUT_S + 1):
        for proc in (streamer, detector):
            proc.kill()
            proc.wait(10)
        done.set()
        collector.join()
        sys.exit(f"bench: the crop subscriber never connected to {pub} in {SUBSCRIBE_TIMEOUT_S} s")
    if viewer:
        viewer_thread = threading.Thread(target=watch_preview, args=(port, done, viewed))
        viewer_thread.start()
    probe, det_probe, sub_probe = Probe(streamer.pid), Probe(detector.pid), Probe(os.getpid())
    t0 = time.monotonic()
    next_sample = 0.0
    while streamer.poll() is None:
        try:
            for p in (probe, det_probe, sub_probe):
                p.sample_cpu()
            if time.monotonic() - t0 >= next_sample:
                probe.sample()
                next_sample += 10.0 if soak_s else 0.5
        except FileNotFoundError:
            break
        time.sleep(0.05)
    wall = time.monotonic() - t0
    streamer.wait()
    detector.terminate()
    detector.wait(10)
    stats = json.loads(stats_file.read_text())
    # Crops streamer sent may still be in flight: wait (bounded) until every one has arrived.
    sent = sum(p["sent"] for p in stats["publishers"])
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while received[0] < sent and time.monotonic() < deadline:
        time.sleep(0.02)
    done.set()
    collector.join()
    if received[0] != sent:
        print(f"bench: streamer sent {sent} crops, {received[0]} arrived", file=sys.stderr)
    if viewer:
        viewer_thread.join()
    sent_at = {}
    for line in times_file.read_text().splitlines():
        fid, t = line.split()
        sent_at[int(fid)] = float(t)
    full = [
        fid for fid, ts in arrivals.items() if len(ts) >= BOXES - 2
    ]  # 2 boxes are clamped/empty
    # Latency in the steady state: not the first second, while connections are still made
    # (a detection sent before the detector's connection is up waits for ZeroMQ's reconnect).
    warm = min(sent_at, default=0) + WARMUP_FRAMES
    lat = sorted(
        (t - sent_at[fid]) * 1000
        for fid, ts in arrivals.items()
        if fid in sent_at and fid >= warm
        for t in ts
    )
    src = stats["sources"]["bench"]
    # Throughput and CPU over the steady state: from the first fully served frame to the last.
    ends = sorted(max(arrivals[fid]) for fid in full)
    span = ends[-1] - ends[0] if len(ends) > 1 else float("nan")
    window = (ends[0], ends[-1]) if len(ends) > 1 else (None, None)
    return {
        "wall_s": wall,
        "served": len(full),
        "served_fps": (len(ends) - 1) / span,
        "stats": src,
        "cpu": probe.cpu_percent(*window),
        "det_cpu": det_probe.cpu_percent(*window),
        "sub_cpu": sub_probe.cpu_percent(*window),
        "peak_mb": probe.peak_mb,
        "rss": probe.rss_samples,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan"),
        "crops": sum(len(v) for v in arrivals.values()),
        "sent": sent,
        "viewer_frames": viewed[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1920x1080,1280x720")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--paced-s", type=float, default=20.0)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of paced running for RSS")
    ap.add_argument("--viewer", action="store_true", help="also run with a preview viewer")
    ap.add_argument("--ipc", action="store_true", help="also run (b) and (c) over ipc://")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for size in args.sizes.split(","):
        w, h = (int(v) for v in size.split("x"))
        clip = tmp / f"clip{w}.mp4"
        make_clip(clip, w, h, args.frames)
        a, a_cpu, a_threads = bare_decode_fps(clip)
        b = run_pipeline(clip, realtime=False, duration_s=None)
        s = b["stats"]
        print(
            f"{w}x{h}: (a) bare decode {a:.1f} fps ({a_threads or 'default'} threads); "
            f"(b) streamer served {b['served_fps']:.1f} "
            f"fps with {BOXES} boxes ({b['served']} of {s['decoded']} frames fully served, "
            f"paired {s['paired']}, not_tapped {s['not_tapped']}, expired {s['expired']}, "
            f"{b['crops']} of {b['sent']} crops sent received) -> (b)/(a) = "
            f"{b['served_fps'] / a:.2f}; peak RSS {b['peak_mb']:.0f} MB"
        )
        fps = b["served_fps"]
        print(
            f"{w}x{h}: CPU while serving: streamer {b['cpu']:.0f}%, detector {b['det_cpu']:.0f}%, "
            f"subscriber {b['sub_cpu']:.0f}% = ms per frame {10 * b['cpu'] / fps:.2f} + "
            f"{10 * b['det_cpu'] / fps:.2f} + {10 * b['sub_cpu'] / fps:.2f}; bare decode "
            f"{10 * a_cpu / a:.2f} ms per frame ({a_cpu:.0f}%)"
        )
        if args.viewer:
            v = run_pipeline(clip, realtime=False, duration_s=None, viewer=True)
            print(
                f"{w}x{h}: with one preview viewer attached: served {v['served_fps']:.1f} fps "
                f"({v['served_fps'] / b['served_fps']:.2f}x of none), viewer received "
                f"{v['viewer_frames']} video frames; CPU {v['cpu']:.0f}%"
            )
        c = run_pipeline(clip, realtime=True, duration_s=args.paced_s)
        print(
            f"{w}x{h} @30 fps: detection sent -> crop received p50 {c['p50_ms']:.2f} ms, "
            f"p99 {c['p99_ms']:.2f} ms over {c['crops']} crops; streamer CPU {c['cpu']:.0f}%, "
            f"peak RSS {c['peak_mb']:.0f} MB"
        )
        if args.ipc:
            i = run_pipeline(clip, realtime=False, duration_s=None, ipc=True)
            ci = run_pipeline(clip, realtime=True, duration_s=args.paced_s, ipc=True)
            print(
                f"{w}x{h} over ipc://: served {i['served_fps']:.1f} fps -> (b)/(a) = "
                f"{i['served_fps'] / a:.2f}; streamer {10 * i['cpu'] / i['served_fps']:.2f} ms "
                f"of CPU per frame; at 30 fps p50 {ci['p50_ms']:.2f} ms, p99 {ci['p99_ms']:.2f} ms"
            )
    if args.soak:
        w, h = (int(v) for v in args.sizes.split(",")[0].split("x"))
        d = run_pipeline(tmp / f"clip{w}.mp4", realtime=True, duration_s=None, soak_s=args.soak)
        rss = d["rss"]
        warm = [r for t, r in rss if t >= 30] or [r for _, r in rss]
        print(
            f"soak {args.soak:.0f} s at 30 fps: RSS after warm-up {warm[0]:.0f} MB -> "
            f"{warm[-1]:.0f} MB (max {max(warm):.0f}, {100 * (max(warm) / warm[0] - 1):.1f}% "
            f"over the first sample); p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, "
            f"CPU {d['cpu']:.0f}%"
        )


if __name__ == "__main__":
    main()
