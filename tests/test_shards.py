"""The local proof of sharding, with real processes: 3 `streamer run --shard I/3` processes over a
6-camera config, one detector process connected to all 3 taps (answering each frame where its
reply_to says), one `streamer crops` consumer connected to all 3 crop endpoints.

Every camera is served by exactly one shard (the one rendezvous hashing names), every paired
frame's crops arrive once, killing a shard (SIGKILL, as a crashed pod) darkens only its cameras,
and restarting it brings them back; the time they were dark is printed (docs/scaling.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import IO

import pytest
import yaml

from streamer.config import load_config
from streamer.sharding import Shard, assign
from tests.conftest import REPO

# Chosen so that each of 3 shards serves two cameras (six arbitrary ids can leave a shard
# empty: cam-0..cam-5 give shard 2 none), so killing any shard has something to darken.
CAMERAS = ["cam-0", "cam-4", "cam-1", "cam-2", "cam-12", "cam-20"]
SHARDS = 3
FPS = 10
BOXES = 2  # echo_detector: box 0 over the top-left corner (clamped), box 1 inside: 2 crops
START_TIMEOUT_S = 30.0  # every camera's first crop, on a loaded 2-core machine
RESTART_TIMEOUT_S = 20.0
OBSERVE_S = 2.0  # window in which the other cameras must keep going
IN_FLIGHT_S = 0.5  # after a kill: crops already on the wire may still arrive


class Consumer:
    """`streamer crops` over every shard's endpoint; each printed crop stamped on arrival."""

    def __init__(self, endpoint_template: str, log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer",
                "crops",
                endpoint_template,
                "--shards",
                str(SHARDS),
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
        )
        # (arrival time, camera, frame_id, index, count)
        self.crops: list[tuple[float, str, int, int, int]] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            # "cam-0 frame 12 #1/2 person 20x10 conf 0.60"
            parts = raw.decode().split()
            index, count = parts[3].lstrip("#").split("/")
            with self.lock:
                self.crops.append(
                    (time.monotonic(), parts[0], int(parts[2]), int(index), int(count))
                )

    def since(self, t: float) -> list[tuple[float, str, int, int, int]]:
        with self.lock:
            return [c for c in self.crops if c[0] >= t]

    def wait_for(self, cameras: set[str], since: float, timeout_s: float) -> dict[str, float]:
        """Arrival time of the first crop of each camera after `since`; fails on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            first: dict[str, float] = {}
            for t, cam, *_ in self.since(since):
                first.setdefault(cam, t)
            if cameras <= first.keys():
                return {c: first[c] for c in cameras}
            assert time.monotonic() < deadline, f"no crops from {cameras - first.keys()}"
            time.sleep(0.05)


def _spawn_shard(cfg: Path, index: int, life: int, tmp: Path) -> subprocess.Popen[bytes]:
    stats = tmp / f"stats-{index}-{life}.json"
    log = open(tmp / f"shard-{index}-{life}.log", "wb")  # noqa: SIM115 (closed by the child's end)
    try:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer",
                "run",
                "-c",
                str(cfg),
                "--shard",
                f"{index}/{SHARDS}",
                "--quiet",
                "--stats-file",
                str(stats),
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
    finally:
        log.close()


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _check_life(
    stats_path: Path,
    crops: list[tuple[float, str, int, int, int]],
    cameras: list[str],
    started_at: float,
) -> None:
    """One shard process's counters against the crops the consumer got from it: every crop
    sent arrived exactly once, every frame's crops complete; the only crops not sent are those
    not cut (unwanted) or cut and dropped before the consumer's subscription reached the new
    process (its first frames)."""
    stats = json.loads(stats_path.read_text())
    assert sorted(stats["sources"]) == sorted(cameras)
    (pub,) = stats["publishers"]
    assert pub["dropped_hwm"] == pub["dropped_timeout"] == 0, pub
    mine = [(c, fid, idx, count) for _, c, fid, idx, count in crops if c in cameras]
    assert len(mine) == len(set(mine)), "a crop arrived twice"
    assert len(mine) == pub["sent"], (len(mine), pub)
    cut = unwanted = 0
    for cam in cameras:
        src = stats["sources"][cam]
        # Tapped frames were paired: none waited in vain for its detections.
        assert src["paired"] > 0 and src["expired"] == 0 and src["in_ring"] == 0, (cam, src)
        assert src["crops"] + src["unwanted"] == BOXES * src["paired"], (cam, src)
        cut += src["crops"]
        unwanted += src["unwanted"]
        per_frame: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for c, fid, idx, count in mine:
            if c == cam:
                per_frame[fid].append((idx, count))
        for fid, got in per_frame.items():
            assert sorted(got) == [(i, BOXES) for i in range(BOXES)], (cam, fid, got)
        # Paired frames whose crops did not arrive: only those cut before it subscribed.
        missed = pub["dropped_no_subscriber"] + src["unwanted"]
        assert len(per_frame) >= src["paired"] - missed // BOXES
    assert cut == pub["sent"] + pub["dropped_no_subscriber"], (cut, pub)
    # Crops are lost only until the consumer's subscription reaches the new process: no more
    # than its cameras make from the process's start to the first crop that arrived, plus a
    # second (a loaded machine starts the consumer late: 1.4 s was seen).
    first_s = min(t for t, cam, *_ in crops if cam in cameras) - started_at
    allowed = BOXES * FPS * len(cameras) * (first_s + 1.0)
    assert pub["dropped_no_subscriber"] + unwanted <= allowed, (pub, unwanted, first_s)


@pytest.mark.timeout(120)
def test_three_shards_one_detector_one_consumer(tmp_path: Path) -> None:
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {"id": cam, "url": f"lavfi:testsrc2=size=160x120:rate={FPS}"} for cam in CAMERAS
                ],
                # One file for every shard: {shard} keeps their endpoints apart, and each
                # tapped frame carries its shard's detections endpoint (reply_to).
                "detections": {"bind": f"ipc://{tmp_path}/dets-{{shard}}"},
                "tap": {"bind": f"ipc://{tmp_path}/tap-{{shard}}", "encoding": "raw-i420"},
                "publish": [{"bind": f"ipc://{tmp_path}/crops-{{shard}}"}],
            }
        )
    )
    expected = assign(CAMERAS, SHARDS)
    served = {i: [c for c in CAMERAS if expected[c] == i] for i in range(SHARDS)}
    assert all(served.values()), served

    logs = open(tmp_path / "clients.log", "wb")  # noqa: SIM115
    consumer = Consumer(f"ipc://{tmp_path}/crops-{{shard}}", logs)
    detector = subprocess.Popen(
        [
            sys.executable,
            "scripts/echo_detector.py",
            "--tap",
            f"ipc://{tmp_path}/tap-{{shard}}",
            "--boxes",
            str(BOXES),
            "--allow-ipc-reply-to",  # every shard on this host, over ipc://
        ],  # no --detections: every answer goes where its frame's reply_to says
        stdout=subprocess.PIPE,
        stderr=logs,
        cwd=REPO,
        env={**os.environ, "STREAMER_SHARDS": str(SHARDS)},  # the detector's {shard} count
    )
    t_spawn = time.monotonic()
    shards = {i: _spawn_shard(cfg_path, i, 0, tmp_path) for i in range(SHARDS)}
    victim = 1
    try:
        t0 = time.monotonic()
        consumer.wait_for(set(CAMERAS), t0, START_TIMEOUT_S)

        # Kill one shard: its cameras go dark, the others keep going.
        shards[victim].kill()
        shards[victim].wait(10)
        t_kill = time.monotonic()
        time.sleep(IN_FLIGHT_S + OBSERVE_S)
        window = Counter(cam for _, cam, *_ in consumer.since(t_kill + IN_FLIGHT_S))
        for cam in CAMERAS:
            if expected[cam] == victim:
                assert window[cam] == 0, (cam, window)
            else:  # 2 s at 10 fps, 2 crops a frame: ~40; leave room for a loaded machine
                assert window[cam] >= 10, (cam, window)

        # Restart it: its cameras come back (the detector and consumer reconnect by themselves).
        t_restart = time.monotonic()
        shards[victim] = _spawn_shard(cfg_path, victim, 1, tmp_path)
        first = consumer.wait_for(set(served[victim]), t_restart, RESTART_TIMEOUT_S)
        dark = {cam: round(t - t_kill, 2) for cam, t in first.items()}
        restart = {cam: round(t - t_restart, 2) for cam, t in first.items()}
        print(
            f"shard {victim} restart: cameras dark {dark} s after the kill; first crop "
            f"{restart} s after the new process started"
        )
        time.sleep(1.0)
    finally:
        t_end = time.monotonic()
        for proc in shards.values():
            _terminate(proc)
        time.sleep(0.5)  # the consumer takes the last crops the shards flushed on exit
        _terminate(detector)
        _terminate(consumer.proc)
        consumer.reader.join(5)
        logs.close()
    det_out = detector.stdout.read().decode() if detector.stdout else ""

    # Every camera was served by exactly the shard rendezvous hashing names, by no other.
    for i in range(SHARDS):
        assert load_config(cfg_path, Shard(i, SHARDS)).sources == [
            s for s in load_config(cfg_path).sources if s.id in served[i]
        ]
    # Each life of each shard: its crops arrived once each, every paired frame complete.
    for i in range(SHARDS):
        if i == victim:
            life = consumer.since(t_restart)
            _check_life(tmp_path / f"stats-{i}-1.json", life, served[i], t_restart)
            assert not (tmp_path / f"stats-{i}-0.json").exists()  # killed: no final counters
            before = [c[1:4] for c in consumer.crops if c[0] < t_kill and c[1] in served[i]]
            assert before and len(before) == len(set(before))  # its first life: none twice
        else:
            _check_life(tmp_path / f"stats-{i}-0.json", consumer.since(0.0), served[i], t_spawn)
    assert all(t <= t_end + 5 for t, *_ in consumer.crops)

    # The detector routed by reply_to alone: one socket per shard, nothing unroutable.
    sender = json.loads(det_out.split("sender ", 1)[1].splitlines()[0])
    assert sender["routes_opened"] == SHARDS, sender
    assert "no_route" not in sender and "bad_reply_to" not in sender, sender


def test_going_to_four_shards_moves_at_most_two_of_these_cameras() -> None:
    """The shard processes serve exactly `assign(ids, N)` (checked against real processes
    above, through the same load_config), so the cameras that move from 3 to 4 shards are
    those whose assignment changes: rendezvous hashing moves only cameras to the new shard."""
    three, four = assign(CAMERAS, 3), assign(CAMERAS, 4)
    moved = [c for c in CAMERAS if three[c] != four[c]]
    assert len(moved) <= 2, moved
    assert all(four[c] == 3 for c in moved)


def test_a_shard_with_no_camera_runs_until_stopped(tmp_path: Path) -> None:
    """More shards than cameras (or an unlucky draw): the empty shard stays up, healthy and
    idle, instead of exiting (which a StatefulSet would restart in a loop)."""
    only = "cam-0"
    empty = next(i for i in range(2) if assign([only], 2)[only] != i)
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "sources": [{"id": only, "url": "lavfi:testsrc2=size=64x48:rate=5"}],
                "detections": {"bind": f"ipc://{tmp_path}/dets-{{shard}}"},
                "tap": {"bind": f"ipc://{tmp_path}/tap-{{shard}}"},
                "publish": [{"bind": f"ipc://{tmp_path}/crops-{{shard}}"}],
            }
        )
    )
    stats_path = tmp_path / "stats.json"
    res = subprocess.run(
        [
            *(sys.executable, "-m", "streamer", "run", "-c", str(cfg_path), "--quiet"),
            *("--shard", f"{empty}/2", "--duration", "1.5", "--stats-file", str(stats_path)),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    stats = json.loads(stats_path.read_text())
    assert stats["uptime_s"] >= 1.4  # ran for its duration, did not return at once
    assert stats["sources"] == {}
    assert f"shard {empty}/2: 0 source(s): none" in res.stderr
