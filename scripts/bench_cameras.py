#!/usr/bin/env python3
"""How many cameras per box: N cameras through streamer against decoding the same N streams
alone, in one run.

Each camera is a 1080p30 H.264 file played in real time and looped (like a camera). The work per
frame is Roboflow's benchmark case: the tap at 640 px (raw I420, PUB), the echo detector process
answering 5 plates (200x100) and 5 people (300x600) for every tapped frame, every crop published
as raw BGR to one subscriber (this process).

For each N it prints:
  bare:     decoding the N streams alone, paced, in one process: CPU % and frames/s per camera;
  streamer: frames delivered complete (all 10 crops received) per second, per camera (min,
            mean), fairness (min / mean), frames shed by reason (per camera, summed), the CPU of
            streamer, the detector and the subscriber, streamer's peak RSS, and how far
            behind their schedule the decoders were at the end (max and mean over cameras;
            since the clip last started over, which starts the schedule again).

    .venv/bin/python scripts/bench_cameras.py [--cameras 1,2,4,6,8,10] [--seconds 20]
                                              [--size 1920x1080]
                                              [--variants zmq-bgr,shm-bgr,shm-i420] [--shards 1,2]
                                              [--rounds 3] [--stagger] [--trace FILE]
                                              [--bare-seconds S]
    .venv/bin/python scripts/bench_cameras.py --stages [--seconds 20]

By default every camera plays the same clip in step (the worst case: their keyframes and their
cheap seconds come together); `--stagger` starts each at another group of pictures, as real
cameras are out of phase. `--trace FILE` appends about a line a second per run to FILE:
complete frames/s, frames decoded and shed by reason per second (from each streamer's
/metrics, which it then serves on a port of its own), streamer's CPU and RSS: with a long
`--seconds` (and a short `--bare-seconds`), a soak that shows whether memory or delivery drift
over time.

At the end a summary gives, per variant and camera count, the complete frames/s (mean and range
over the runs) against what the cameras offer, the lowest fairness and the share of the
variant's peak; then the capacity (the peak in cameras' worth) and, for each camera count at
twice that or more, whether it kept >= 90% of the peak with every camera >= 80% of the mean
(issue 15's first target). With `--rounds K` every camera count is run K times over (all
counts, then again): two runs of the same code can differ by a quarter on a shared 2-core box.

`--stages` says where one camera's CPU goes: streamer with the stages switched on one after
the other (decoding only; then the tap and the detector's answers, no crop cut because nobody
subscribes; then everything, shm-i420), each against decoding alone, in one run; and last
the floor: streamer's own functions for the tap's picture and the 10 crops (cut into a ring)
called straight from the decode thread, nothing sent, no other thread: what the work itself
costs, without the messages, threads and Python steps around it.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import REPO, Probe, free_endpoint, make_clip
from echo_detector import site_boxes

from streamer.client import RingCache, StaleCropError, parse_crop
from streamer.crop.convert import crop_i420, i420_size
from streamer.crop.geometry import centre_to_corners
from streamer.health import shed_by_reason
from streamer.sources.frames import from_av
from streamer.tap import scaled_i420

WARMUP_S = 3.0  # connections, decoder start-up: not measured (--warmup)
CROP_ENCODINGS = {"bgr": "raw-bgr24", "i420": "raw-i420"}
FIRST_FRAME_TIMEOUT_S = 60.0  # streamer, the detector and the subscriber all up by then
CLIP_FPS = 30  # make_clip's rate
SHM_RING_BYTES = 128 * 1024 * 1024  # ~0.35 s of 8 cameras' I420 crops (the default: 32 MiB)


class FloorWork:
    """streamer's own per-frame work at one camera, with nothing around it: the tap's picture
    (640 px, raw I420) and the 10 crops of Roboflow's case cut as I420 into a ring of
    `ring_bytes` (the shm ring of the row it is compared with), by streamer's own functions
    called straight from the decode thread. No message, socket, other thread, pairing or
    header; the Python of those functions' calls is in it."""

    def __init__(self, width: int, height: int, ring_bytes: int) -> None:
        boxes = site_boxes(0, width, height)
        xywh = np.array([(b["x"], b["y"], b["width"], b["height"]) for b in boxes])
        self.corners = [
            tuple(c) for c in centre_to_corners(xywh, (1.0, 1.0), (width, height)).tolist()
        ]
        self.ring = np.zeros(ring_bytes, np.uint8)
        self.pos = 0

    def __call__(self, vf: av.VideoFrame) -> None:
        frame = from_av(vf, "cam0", 0, 0.0)
        scaled_i420(frame, 640, None)
        for x0, y0, x1, y1 in self.corners:
            size = i420_size(x0, y0, x1, y1)
            if self.pos + size > self.ring.size:
                self.pos = 0
            crop_i420(frame, x0, y0, x1, y1, self.ring[self.pos : self.pos + size])
            self.pos += size


def bare_decode(clips: list[Path], seconds: float, floor_ring_bytes: int = 0) -> None:
    """(child process) Decode the clips (a camera each) paced at their frame rate, looped, each in
    its own thread with streamer's decoder settings for cameras (FFmpeg's defaults); with
    `floor_ring_bytes`, each frame also gets FloorWork with a ring that big. Print frames per
    camera as JSON."""
    stop = threading.Event()
    n = len(clips)
    counts = [0] * n

    def run(i: int) -> None:
        work = None
        while not stop.is_set():
            with av.open(str(clips[i])) as c:
                stream = c.streams.video[0]  # FFmpeg's default threading, as streamer's
                start, first = time.monotonic(), None
                for f in c.decode(stream):
                    t = float(f.time or 0.0)
                    first = t if first is None else first
                    delay = start + (t - first) - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        return
                    if floor_ring_bytes:
                        work = work or FloorWork(f.width, f.height, floor_ring_bytes)
                        work(f)
                    counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(WARMUP_S)
    before = list(counts)
    time.sleep(seconds)
    after = list(counts)
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps([(a - b) / seconds for a, b in zip(after, before, strict=True)]))


def measure_bare(clips: list[Path], seconds: float, floor_ring_bytes: int = 0) -> dict[str, Any]:
    n = len(clips)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--bare",
            *(a for c in clips for a in ("--clip", str(c))),
            *(("--floor", str(floor_ring_bytes)) if floor_ring_bytes else ()),
            *("--seconds", str(seconds), "--warmup", str(WARMUP_S)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    probe = Probe(proc.pid)
    time.sleep(WARMUP_S)
    probe.sample_cpu()
    t0 = time.monotonic()
    time.sleep(seconds)
    probe.sample_cpu()
    t1 = time.monotonic()
    out, _ = proc.communicate()
    fps = json.loads(out)
    return {"cpu": probe.cpu_percent(t0, t1), "fps_min": min(fps), "fps_mean": sum(fps) / n}


def camera_clips(clip: Path, n: int, stagger: bool) -> list[Path]:
    """A clip for each of `n` cameras: the same one, or (`stagger`) the clip rotated by a
    different number of groups of pictures for each, spread over its length (made once, next
    to it, by moving packets: nothing is encoded again). Raises ValueError if the clip has
    fewer groups than cameras (some would play in step)."""
    if not stagger:
        return [clip] * n
    with av.open(str(clip)) as c:
        gops = sum(1 for p in c.demux(video=0) if p.is_keyframe)
    if gops < n:
        raise ValueError(f"{clip.name}: {gops} groups of pictures for {n} cameras out of phase")
    clips = []
    for i in range(n):
        k = i * gops // n
        path = clip.with_name(f"{clip.stem}-from-gop{k}{clip.suffix}")
        if k and not path.exists():
            part = path.with_name(f"part-{path.name}")  # (never a half-written clip reused)
            rotated_clip(clip, k, part)
            part.rename(path)
        clips.append(path if k else clip)
    return clips


def rotated_clip(clip: Path, k: int, out_path: Path) -> None:
    """`clip` starting at its `k`-th group of pictures, the groups before it at the end, with
    timestamps made continuous again (each group shifted as a whole). For closed groups of
    pictures (libx264's default, as `make_clip` writes): a frame of an open one would
    reference a group that is no longer before it."""
    with av.open(str(clip)) as inp, av.open(str(out_path), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        groups: list[list[tuple[int, int, Any]]] = []  # (pts, dts, packet), a group each
        for p in inp.demux(ist):
            if p.dts is None or p.pts is None:
                continue  # (the demuxer's empty packet at the end)
            if p.is_keyframe or not groups:
                groups.append([])
            groups[-1].append((int(p.pts), int(p.dts), p))
        starts = [min(pts for pts, _, _ in g) for g in groups]
        every = sorted(pts for g in groups for pts, _, _ in g)
        frame = statistics.median(b - a for a, b in itertools.pairwise(every)) if every[1:] else 1
        ends = [*starts[1:], every[-1] + int(frame)]  # (the last group: a frame past its last)
        t = starts[0]
        for j in [*range(k, len(groups)), *range(k)]:
            delta = t - starts[j]
            for pts, dts, p in groups[j]:
                p.pts, p.dts = pts + delta, dts + delta
                p.stream = ost
                out.mux(p)
            t += ends[j] - starts[j]


def expected_bytes(h: dict[str, Any]) -> int:
    """A raw crop's size from its header (raw-i420: its rectangle widened to even bounds)."""
    w, hh = h["width"], h["height"]
    if h["encoding"] == "raw-bgr24":
        return int(w * hh * 3)
    x0, y0 = h["origin"]["x"], h["origin"]["y"]
    return i420_size(x0, y0, x0 + w, y0 + hh)


def collect(
    endpoints: list[str],
    complete: dict[str, list[float]],
    ready: threading.Event,
    done: threading.Event,
    stale: list[int],
) -> None:
    """The crop subscriber: takes each crop's pixels (out of the shm ring when they are there),
    counts crops per (source, frame); a frame is complete when its `count` crops have all
    arrived, and its completion time is noted per source. Crops overwritten in the ring before
    they were read are counted in `stale`."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 1_000_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"crop/")
    for endpoint in endpoints:
        sock.connect(endpoint)
    rings = RingCache(Path("/dev/shm"))
    ready.set()
    got: dict[tuple[str, int], int] = defaultdict(int)
    while not done.is_set():
        if not sock.poll(100):
            continue
        try:
            crop = parse_crop(sock.recv_multipart(copy=False), rings)
        except StaleCropError:
            stale[0] += 1
            continue
        h = crop.header
        if len(crop.payload) != expected_bytes(h):
            raise AssertionError(f"crop of {len(crop.payload)} bytes for {h}")
        key = (h["source_id"], h["frame_id"])
        got[key] += 1
        if got[key] == h["count"]:
            complete[h["source_id"]].append(time.monotonic())
            del got[key]
    sock.close(linger=0)
    rings.close()


def measure_streamer(
    clips: list[Path],
    seconds: float,
    variant: str,
    shards: int = 1,
    shm_bytes: int = SHM_RING_BYTES,
    trace: Path | None = None,
) -> dict[str, Any]:
    """`variant`: transport and crop encoding, ``zmq-bgr``, ``shm-bgr`` or ``shm-i420``. With
    `shards` > 1 the cameras are split among that many streamer processes (as `--shard I/N`
    would), each with its own endpoints; the detector and the subscriber serve them all; a
    camera per clip in `clips`. With `trace`, a line about every second is appended there
    (`Tracer`), from each streamer's /metrics (served on a port of its own, no preview)."""
    transport, encoding = variant.split("-")
    tmp = Path(tempfile.mkdtemp())
    n = len(clips)
    ids = [f"cam{i}" for i in range(n)]
    urls = dict(zip(ids, (str(c) for c in clips), strict=True))
    taps, pubs, stats_files, configs = [], [], [], []
    metrics_urls: list[str] = []
    for k in range(shards):
        tap, dets, pub = free_endpoint(), free_endpoint(), free_endpoint()
        cfg: dict[str, Any] = {
            "sources": [{"id": sid, "url": urls[sid], "loop": True} for sid in ids[k::shards]],
            "detections": {"bind": dets},  # tapped frames carry it as reply_to
            "tap": {"bind": tap, "encoding": "raw-i420", "width": 640, "hwm": 8},
            "publish": [{"bind": pub, "encoding": CROP_ENCODINGS[encoding], "hwm": 100_000}],
        }
        if transport == "shm":
            cfg["publish"][0]["shm"] = {"bytes": shm_bytes // shards}
        if trace is not None:
            port = int(free_endpoint().rsplit(":", 1)[1])
            cfg["metrics"] = {"port": port}
            metrics_urls.append(f"http://127.0.0.1:{port}/metrics")
        configs.append(tmp / f"cfg{k}.yaml")
        configs[-1].write_text(yaml.safe_dump(cfg))
        taps.append(tap)
        pubs.append(pub)
        stats_files.append(tmp / f"stats{k}.json")
    complete: dict[str, list[float]] = defaultdict(list)
    ready, done = threading.Event(), threading.Event()
    stale = [0]
    collector = threading.Thread(
        target=collect, args=(pubs, complete, ready, done, stale), daemon=True
    )
    collector.start()
    ready.wait(10)
    detector = subprocess.Popen(
        [sys.executable, "scripts/echo_detector.py", "--site", "--tap", *taps],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    streamers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "streamer", "--log-level", "WARNING"),
                *("run", "-c", str(config), "--quiet", "--stats-file", str(stats_file)),
            ],
            cwd=REPO,
        )
        for config, stats_file in zip(configs, stats_files, strict=True)
    ]
    probes = [Probe(p.pid) for p in streamers]
    others = [Probe(detector.pid), Probe(os.getpid())]
    start = time.monotonic()
    # The measured window starts after the warm-up and a second after the first frame came
    # back complete (a loaded machine may start the detector late), and lasts `seconds`; then
    # streamer is stopped (SIGTERM), so a late start never shortens the window.
    t0: float | None = None
    title = f"{variant} x{shards}, {n} cameras"
    tracer = Tracer(trace, metrics_urls, complete, title, probes) if trace else None
    try:
        while t0 is None or time.monotonic() < t0 + seconds:
            if tracer is not None:
                tracer.sample()
            if t0 is None:
                first = min((ts[0] for ts in list(complete.values()) if ts), default=None)
                if first is not None:
                    t0 = max(start + WARMUP_S, first + 1.0)
                elif time.monotonic() - start > FIRST_FRAME_TIMEOUT_S:
                    break
            try:
                for probe in probes + others:
                    probe.sample_cpu()
                for probe in probes:
                    probe.sample()
            except FileNotFoundError:
                break
            time.sleep(0.1)
    finally:  # (also when the run fails: no process left behind)
        if tracer is not None:
            tracer.close(t0, (t0 or 0.0) + seconds)
        for p in streamers:
            p.terminate()
        for p in streamers:
            p.wait(30)
        detector.terminate()
        detector.wait(10)
        done.set()
        collector.join()
    if t0 is None:
        raise SystemExit(f"no frame came back complete within {FIRST_FRAME_TIMEOUT_S} s")
    t1 = t0 + seconds
    sources: dict[str, Any] = {}
    for stats_file in stats_files:
        sources.update(json.loads(stats_file.read_text())["sources"])
    shutil.rmtree(tmp, ignore_errors=True)
    window = t1 - t0
    rates = {sid: sum(t0 <= t < t1 for t in complete.get(sid, [])) / window for sid in ids}
    shed: dict[str, int] = defaultdict(int)
    for src in sources.values():
        for key, count in shed_by_reason(src).items():
            shed[key] += count
    mean = sum(rates.values()) / n
    # How far behind its schedule each camera's decoder was at the end (its last frame against
    # its presentation time, since the clip last started over: each loop starts the schedule
    # again): complete frames/s alone cannot tell less shedding from decoders quietly falling
    # behind. None: a camera that had just started over, or was down.
    behind = [float(s["behind_s"]) for s in sources.values() if s["behind_s"] is not None]
    return {
        "min": min(rates.values()),
        "mean": mean,
        "total": sum(rates.values()),
        "fair": min(rates.values()) / mean if mean else 0.0,
        "cpu": sum(probe.cpu_percent(t0, t1) for probe in probes),
        "det_cpu": others[0].cpu_percent(t0, t1),
        "sub_cpu": others[1].cpu_percent(t0, t1),
        "peak_mb": sum(probe.peak_mb for probe in probes),
        "decoded": sum(int(s["decoded"]) for s in sources.values()),
        "shed": dict(shed),
        "stale": stale[0],
        "behind_n": len(behind),
        "behind_max": max(behind, default=math.nan),
        "behind_mean": statistics.fmean(behind) if behind else math.nan,
    }


class Tracer:
    """About a line a second into a file: how an overloaded run falls behind, which the totals
    at the end cannot show. Each line: the time (monotonic), the seconds it covers (`dt`), and
    per second over them: complete frames, and what the streamers' /metrics counted (frames
    decoded, and shed by reason, summed over cameras); then the event loop's worst lag of the
    last 5 s (`lag5s`, as /metrics has it), the decoders' largest lag behind schedule, the
    streamers' CPU % over the line's seconds and their RSS (MB, summed; sampled by `probes`,
    which the caller keeps sampling). A scrape that fails is a line saying so (its seconds go
    into the next line). Cheap per line however long the run (a soak)."""

    def __init__(
        self,
        path: Path,
        urls: list[str],
        complete: dict[str, list[float]],
        title: str,
        probes: list[Probe],
    ) -> None:
        self.out = path.open("a")
        self.out.write(f"# {title}\n")
        self.urls, self.complete, self.probes = urls, complete, probes
        self.last: dict[str, float] | None = None  # the counters at `at` (None: not yet read)
        self.at = time.monotonic()
        self.counted: dict[str, int] = defaultdict(int)  # per camera: its times before `at`

    def sample(self) -> None:
        if time.monotonic() - self.at < 1.0:
            return
        totals: dict[str, float] = defaultdict(float)
        lag, behind = 0.0, 0.0
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    text = r.read().decode()
            except (OSError, http.client.HTTPException) as e:
                self.out.write(f"# {time.monotonic():.1f} {url}: {e}\n")
                return
            for line in text.splitlines():
                name, _, value = line.rpartition(" ")
                if name.startswith("streamer_frames_decoded_total"):
                    totals["decoded"] += float(value)
                elif name.startswith("streamer_frames_shed_total"):
                    totals[name.split('reason="')[1].split('"')[0]] += float(value)
                elif name.startswith("streamer_loop_lag_seconds"):
                    lag = max(lag, float(value))
                elif name.startswith("streamer_source_behind_seconds"):
                    behind = max(behind, float(value))
        now = time.monotonic()  # (after the scrapes: the counters are as of about now)
        done = 0  # complete frames in [at, now)
        for sid, ts in list(self.complete.items()):  # (each camera's times come in order)
            upto = bisect.bisect_left(ts, now, lo=self.counted[sid])
            done += upto - self.counted[sid]
            self.counted[sid] = upto
        for p in self.probes:  # (CPU up to now: the line's seconds, none left between lines)
            with contextlib.suppress(FileNotFoundError):  # (a streamer that ended)
                p.sample_cpu()
        if self.last is not None:
            dt = now - self.at
            cpu = sum(p.cpu_percent(self.at, now) for p in self.probes)
            rss = sum(p.rss_samples[-1][1] for p in self.probes if p.rss_samples)
            rates = {k: (v - self.last.get(k, 0.0)) / dt for k, v in totals.items()}
            shed = " ".join(
                f"{k}={v:.1f}" for k, v in sorted(rates.items()) if v and k != "decoded"
            )
            self.out.write(
                f"{now:.1f} dt={dt:.2f} complete={done / dt:.1f} "
                f"decoded={rates.get('decoded', 0.0):.1f} lag5s={lag:.3f} behind={behind:.2f} "
                f"cpu={cpu:.0f} rss_mb={rss:.0f} {shed}\n".rstrip()
                + "\n"
            )
            self.out.flush()
        self.last, self.at = dict(totals), now

    def close(self, t0: float | None, t1: float) -> None:
        """The measured window, then close the file."""
        window = "none (nothing came back complete)" if t0 is None else f"{t0:.1f}-{t1:.1f}"
        self.out.write(f"# measured window {window}\n")
        self.out.close()


def measure_stage(clip: Path, seconds: float, tap: bool) -> float:
    """CPU % of streamer at one camera with crops that nobody subscribes to (so none is cut):
    decoding only, or (`tap`) with the tap and the echo detector answering every frame.
    Raises SystemExit if streamer decoded nothing, or (`tap`) if the detector did not answer
    at the clip's rate through the measured window (the stage would not be what it says)."""
    tmp = Path(tempfile.mkdtemp())
    tap_at, dets, pub = free_endpoint(), free_endpoint(), free_endpoint()
    cfg: dict[str, Any] = {
        "sources": [{"id": "cam0", "url": str(clip), "loop": True}],
        "detections": {"bind": dets},
        "publish": [{"bind": pub, "encoding": "raw-i420"}],
    }
    if tap:
        cfg["tap"] = {"bind": tap_at, "encoding": "raw-i420", "width": 640, "hwm": 8}
    config, stats_file, times = tmp / "cfg.yaml", tmp / "stats.json", tmp / "answers.txt"
    config.write_text(yaml.safe_dump(cfg))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if tap:
            procs.append(
                subprocess.Popen(
                    [
                        *(sys.executable, "scripts/echo_detector.py", "--site"),
                        *("--tap", tap_at, "--times", str(times)),
                    ],
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                )
            )
        streamer = subprocess.Popen(
            [
                *(sys.executable, "-m", "streamer", "--log-level", "ERROR"),
                *("run", "-c", str(config), "--quiet", "--stats-file", str(stats_file)),
            ],
            cwd=REPO,
        )
        procs.append(streamer)
        probe = Probe(streamer.pid)
        time.sleep(2 * WARMUP_S)  # started, connected, the detector answering
        probe.sample_cpu()
        t0 = time.monotonic()
        time.sleep(seconds)
        probe.sample_cpu()
        t1 = time.monotonic()
        cpu = probe.cpu_percent(t0, t1)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    try:
        decoded = int(json.loads(stats_file.read_text())["sources"]["cam0"]["decoded"])
        sent = [float(line.split()[1]) for line in times.read_text().splitlines()] if tap else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not decoded:
        raise SystemExit("stage: streamer decoded no frame")
    answered = sum(t0 <= t < t1 for t in sent)
    if tap and answered < 0.8 * CLIP_FPS * seconds:
        raise SystemExit(f"stage: the detector answered {answered} frames in {seconds:.0f} s")
    return cpu


def stages(clip: Path, seconds: float, shm_bytes: int) -> None:
    """Print streamer's CPU at one camera stage by stage, each against decoding alone (measured
    first and last; the ratios are to the mean), then the floor."""
    first = measure_bare([clip], seconds)["cpu"]
    rows = [
        ("decoding only (no tap)", measure_stage(clip, seconds, tap=False)),
        ("+ tap 640 px, detector's answers", measure_stage(clip, seconds, tap=True)),
        (
            "+ 10 crops cut and sent (shm-i420)",
            measure_streamer([clip], seconds, "shm-i420", 1, shm_bytes)["cpu"],
        ),
    ]
    floor = measure_bare([clip], seconds, shm_bytes)
    if floor["fps_min"] < 0.95 * CLIP_FPS:
        raise SystemExit(f"floor: {floor['fps_min']:.1f} frames/s, not the clip's {CLIP_FPS}")
    last = measure_bare([clip], seconds)["cpu"]
    bare = (first + last) / 2
    print(f"bare decode {bare:.1f}% CPU (first {first:.1f}%, last {last:.1f}%)")
    before = bare
    for name, cpu in rows:
        print(f"   {name:36s} {cpu:5.1f}% (x{cpu / max(bare, 1e-9):.2f} bare, {cpu - before:+.1f})")
        before = cpu
    print(
        f"floor: decoding, the tap's picture and the 10 crops cut into a ring, in one thread, "
        f"nothing sent {floor['cpu']:.1f}% (x{floor['cpu'] / max(bare, 1e-9):.2f} bare)"
    )


def cameras(clip: Path, args: argparse.Namespace) -> None:
    """Print, for each camera count, decoding alone and then each variant and shard count
    (with `--rounds` K, all of that K times over); then `summary`, also after a failed run."""
    counts = list(dict.fromkeys(int(v) for v in args.cameras.split(",")))
    runs = list(
        dict.fromkeys((v, int(k)) for k in args.shards.split(",") for v in args.variants.split(","))
    )
    results: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    failed = True
    try:
        for _ in range(args.rounds):
            for n in counts:
                clips = camera_clips(clip, n, args.stagger)
                bare_s = args.seconds if args.bare_seconds is None else args.bare_seconds
                bare = measure_bare(clips, bare_s)
                print(
                    f"{n:2d} cameras: bare decode {bare['cpu']:.0f}% CPU, "
                    f"{bare['fps_min']:.1f}-{bare['fps_mean']:.1f} fps/camera",
                    flush=True,
                )
                for variant, shards in runs:
                    name = variant if shards == 1 else f"{variant} x{shards}"
                    s = measure_streamer(
                        clips, args.seconds, variant, shards, args.shm_bytes, args.trace
                    )
                    results[name, n].append((s["total"], s["fair"]))
                    print_run(name, s, bare["cpu"])
        failed = False
    finally:  # (what was measured before a failed run too)
        print("\n".join(summary(results, CLIP_FPS, partial=failed)), flush=True)


def print_run(variant: str, s: dict[str, Any], bare_cpu: float) -> None:
    """One run's line."""
    shed = ", ".join(f"{k} {v}" for k, v in s["shed"].items() if v) or "none"
    print(
        f"   {variant:11s}: streamer delivered "
        f"{s['total']:.0f} frames/s, per camera min {s['min']:.1f} mean {s['mean']:.1f} "
        f"(fairness {s['fair']:.2f}), CPU streamer {s['cpu']:.0f}% "
        f"(x{s['cpu'] / max(bare_cpu, 1e-9):.2f} bare) detector {s['det_cpu']:.0f}% "
        f"subscriber {s['sub_cpu']:.0f}%, peak RSS {s['peak_mb']:.0f} MB; decoders behind at "
        f"the end: max {s['behind_max']:.2f} s, mean {s['behind_mean']:.2f} s "
        f"({s['behind_n']} cameras said); "
        f"shed of {s['decoded']} decoded: {shed}; stale in the ring {s['stale']}",
        flush=True,
    )


def summary(
    results: dict[tuple[str, int], list[tuple[float, float]]], fps: float, partial: bool = False
) -> list[str]:
    """Per variant and camera count, over its runs (total complete frames/s, fairness): the
    mean and range against the `fps` x N offered, the lowest fairness, and the mean as a share
    of the variant's peak (its highest mean). Then issue 15's first target per variant: the
    capacity is the peak in cameras' worth (peak / fps), and each camera count run at twice
    that or more holds if its mean is >= 90% of the peak and every run's fairness (every
    camera >= 80% of the mean) is >= 0.80; decided on the figures as printed. One run can
    differ from the next by a quarter on a shared 2-core box: hence `--rounds`."""
    head = "summary (complete frames/s over the runs: mean, range; of what was offered)"
    if partial:
        head += ", partial: a run failed"
    if not results:
        return [f"{head}: nothing measured"]
    lines = [f"{head}:"]
    for variant in dict.fromkeys(v for v, _ in results):
        rows = {n: r for (v, n), r in results.items() if v == variant}
        means = {n: statistics.fmean(t for t, _ in r) for n, r in rows.items()}
        peak = max(means.values())
        for n, r in rows.items():
            totals = [t for t, _ in r]
            share = f"{100 * means[n] / peak:.1f}%" if peak > 0 else "-"
            lines.append(
                f"   {variant:11s} {n:2d} cameras: {means[n]:.1f} ({min(totals):.1f}-"
                f"{max(totals):.1f}) of {fps * n:.0f}, fairness >= {min(f for _, f in r):.2f}, "
                f"{share} of the peak ({peak:.1f}), {len(r)} run(s)"
            )
        if peak <= 0:
            lines.append(f"   {variant}: nothing delivered")
            continue
        capacity = peak / fps
        head_v = f"   {variant}: capacity {capacity:.1f} cameras' worth ({peak:.1f} frames/s)"
        judged = [n for n in rows if n >= 2 * capacity]
        if not judged:
            lines.append(f"{head_v}; twice that ({2 * capacity:.1f} cameras) not run")
        for n in judged:
            share_pct = round(100 * means[n] / peak, 1)
            fair = round(min(f for _, f in rows[n]), 2)
            held = share_pct >= 90.0 and fair >= 0.80
            lines.append(
                f"{head_v}; {n} cameras (twice or more): {share_pct:.1f}% of the peak, "
                f"fairness >= {fair:.2f}: {'held' if held else 'not held'} (>= 90%, >= 0.80)"
            )
    return lines


def main() -> None:
    global WARMUP_S
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cameras", default="1,2,4,6,8,10")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured, after a warm-up")
    ap.add_argument(
        "--bare-seconds",
        type=float,
        help="decoding alone is measured this long (default: --seconds; shorter for a soak)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_S,
        help="seconds before each run's measured window (connections, decoders starting)",
    )
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument(
        "--variants",
        default="zmq-bgr,shm-bgr,shm-i420",
        help="each in turn: crops in their messages (zmq) or in a shared-memory ring (shm), "
        "as raw BGR (bgr) or raw I420 (i420)",
    )
    ap.add_argument(
        "--shm-bytes",
        type=int,
        default=SHM_RING_BYTES,
        help="the shm ring's size, split among the shards (it must fit /dev/shm)",
    )
    ap.add_argument(
        "--shards",
        default="1",
        help="streamer processes sharing the cameras (comma-separated: each in turn)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every camera count this many times over (the summary at the end is over all "
        "of a row's runs)",
    )
    ap.add_argument(
        "--stagger",
        action="store_true",
        help="cameras out of phase: each plays the clip started at a different group of "
        "pictures (by default they all play it in step, the worst case: their keyframes and "
        "their cheap seconds come together)",
    )
    ap.add_argument(
        "--trace",
        type=Path,
        help="append about a line a second per run here: complete frames/s, frames decoded and "
        "shed by reason per second (from each streamer's /metrics, on a port of its own)",
    )
    ap.add_argument("--stages", action="store_true", help="one camera, stage by stage (see above)")
    ap.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clip", action="append", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--floor", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    WARMUP_S = args.warmup
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.seconds <= 0 or (args.bare_seconds is not None and args.bare_seconds <= 0):
        ap.error("--seconds and --bare-seconds must be above 0")
    if args.warmup < 0:
        ap.error("--warmup must be 0 or more")
    if args.bare:
        if not args.clip:
            ap.error("--bare needs --clip")
        bare_decode(args.clip, args.seconds, args.floor)
        return
    w, h = (int(v) for v in args.size.split("x"))
    clip = Path(tempfile.mkdtemp()) / f"clip{w}x{h}.mp4"
    try:
        # A keyframe a second; out of phase, a group of pictures for every camera at least.
        counts = [int(v) for v in args.cameras.split(",")]
        make_clip(clip, w, h, 30 * max(10, *counts) if args.stagger else 300)
        print(f"{w}x{h} 30 fps, 10 crops a frame, {args.seconds:.0f} s measured per run")
        if args.stages:
            stages(clip, args.seconds, args.shm_bytes)
        else:
            cameras(clip, args)
    finally:
        shutil.rmtree(clip.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
