"""The whole path with real processes and sockets: streamer runs a config on a generated clip,
a detector process answers the tap with known boxes, and a subscriber checks every crop."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
import zmq

from streamer.client import Crop, CropSubscriber
from streamer.crop.geometry import centre_to_corners
from streamer.pipeline import accounting_balance
from tests.conftest import REPO, decode_bgr, free_port, load_script, spawn, stop

N_BOXES = 6
MAX_CODEC_DIFF = 4  # our crop-only I420->BGR vs FFmpeg's full-frame conversion
RUN_TIMEOUT_S = 30.0  # for streamer to serve the 60-frame clip and exit
SILENCE_S = 2.0  # after streamer exits: no crop for this long means no more are coming


def _collect(endpoint: str, out: list[Crop], ready: threading.Event, done: threading.Event) -> None:
    with CropSubscriber(endpoint) as sub:
        # Ready once the ZMTP handshake with streamer's bound socket is done: the subscription
        # goes out right after it, so crops published from then on reach us.
        monitor = sub.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        if monitor.poll(20_000):
            ready.set()
        sub.sock.disable_monitor()
        monitor.close(linger=0)
        while not done.is_set():
            crop = sub.recv(timeout_s=0.2)
            if crop is not None:
                out.append(crop)


def _until_all_or_silent(crops: list[Crop], expected: int) -> None:
    """Waits until `crops` (filled by another thread) holds `expected` crops, or none has
    arrived for SILENCE_S."""
    n, changed_at = len(crops), time.monotonic()
    while len(crops) < expected and time.monotonic() - changed_at < SILENCE_S:
        time.sleep(0.02)
        if len(crops) != n:
            n, changed_at = len(crops), time.monotonic()


@pytest.mark.parametrize("masks", [False, True], ids=["boxes", "masks-keypoints"])
def test_clip_to_crops_end_to_end(tmp_path: Path, clip: Path, endpoint: Any, masks: bool) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg: dict[str, Any] = {
        # Lossless (realtime: false): the file waits for the detector and for this test's crop
        # subscriber, so every frame is served however long the processes take to start.
        "sources": [{"id": "cam1", "url": str(clip), "realtime": False}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-bgr24"},
        "publish": [{"bind": pub, "encoding": "raw-bgr24", "wait_for_subscriber": True}],
    }
    if masks:
        cfg["crop"] = {"mask_opacity": 1.0, "background_color": "#00ff00"}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    stats_path = tmp_path / "stats.json"

    crops: list[Crop] = []
    ready, done = threading.Event(), threading.Event()
    streamer = spawn(
        "-m", "streamer", "run", "-c", str(cfg_path), "--quiet", "--stats-file", str(stats_path)
    )
    collector = threading.Thread(target=_collect, args=(pub, crops, ready, done))
    collector.start()
    detector = None
    try:
        assert ready.wait(20), "no connection to streamer's crop publisher"
        detector = spawn(
            "scripts/echo_detector.py",
            "--tap",
            tap,
            "--detections",
            dets,
            "--boxes",
            str(N_BOXES),
            *(["--masks"] if masks else []),
        )
        try:
            _, err_bytes = streamer.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _, err = stop(streamer)
            pytest.fail(f"streamer still running after {RUN_TIMEOUT_S} s; its stderr:\n{err}")
        err = err_bytes.decode(errors="replace")
        assert streamer.returncode == 0, err
        stats = json.loads(stats_path.read_text())
        # Crops sent just before streamer exited may still be on their way.
        _until_all_or_silent(crops, stats["publishers"][0]["sent"])
    finally:
        done.set()
        collector.join(5)
        stop(streamer)
        if detector is not None:
            stop(detector)
    src = stats["sources"]["cam1"]

    # Every frame is accounted for and paired.
    assert src["decoded"] == 60
    assert accounting_balance(src) == 0, src
    assert src["paired"] == 60, src
    assert src["detections"] == {"paired": src["paired"]}
    assert src["empty_box"] == src["paired"]  # box 1 lies outside every frame
    # With masks on, the boxes without a polygon (0, 3, 5) are counted as unmasked.
    assert src["no_mask"] == (src["paired"] * 3 if masks else 0)
    assert src["crops"] == src["paired"] * (N_BOXES - 1)
    assert stats["publishers"][0]["sent"] == src["crops"]
    assert stats["malformed"] == {}

    # The subscriber got every crop, with the right headers and the frame's pixels.
    assert len(crops) == src["crops"]
    frames = decode_bgr(clip)
    boxes_for = load_script("echo_detector").boxes_for
    by_frame: dict[int, list[Crop]] = {}
    for c in crops:
        by_frame.setdefault(c.frame_id, []).append(c)
    assert len(by_frame) == src["paired"]
    for frame_id, got in by_frame.items():
        ref = frames[frame_id]
        h, w = ref.shape[:2]
        boxes = boxes_for(frame_id, w, h, N_BOXES, masks)
        xywh = np.array([[b["x"], b["y"], b["width"], b["height"]] for b in boxes])
        corners = centre_to_corners(xywh, (1.0, 1.0), (w, h))
        expected = [
            (b, c)
            for b, c in zip(boxes, corners.tolist(), strict=True)
            if c[2] > c[0] and c[3] > c[1]
        ]
        assert [c.header["index"] for c in got] == list(range(len(expected)))
        for crop, (box, (x0, y0, x1, y1)) in zip(got, expected, strict=True):
            hd = crop.header
            assert hd["v"] == 1 and hd["source_id"] == "cam1" and hd["encoding"] == "raw-bgr24"
            assert hd["detection_id"] == box["detection_id"]
            assert hd["class"] == box["class"] and hd["confidence"] == box["confidence"]
            assert hd["count"] == len(expected)
            assert hd["origin"] == {"x": x0, "y": y0, "frame_width": w, "frame_height": h}
            assert (hd["width"], hd["height"]) == (x1 - x0, y1 - y0)
            assert crop.image.shape == (y1 - y0, x1 - x0, 3)
            region = ref[y0:y1, x0:x1].astype(int)
            inside = np.ones((y1 - y0, x1 - x0), bool)
            if "points" in box:
                # Background removal at opacity 1: outside the polygon is exactly the colour.
                full = np.zeros((h, w), np.uint8)
                poly = np.rint([[p["x"], p["y"]] for p in box["points"]]).astype(np.int32)
                cv2.fillPoly(full, [poly], 255)
                inside = full[y0:y1, x0:x1] > 0
                assert (crop.image[~inside] == (0, 255, 0)).all()
                shifted = [(p["x"] - x0, p["y"] - y0) for p in box["points"]]
                got_points = [(p["x"], p["y"]) for p in hd["points"]]
                assert np.allclose(got_points, shifted)
                (kp,) = hd["keypoints"]
                assert (kp["x"] + x0, kp["y"] + y0) == pytest.approx((box["x"], box["y"]))
                assert kp["class"] == "centre"
            else:
                assert "points" not in hd and "keypoints" not in hd
            diff = np.abs(crop.image.astype(int) - region)[inside]
            assert diff.max() <= MAX_CODEC_DIFF, (frame_id, hd["index"], diff.max())


def test_demo_runs_and_publishes_crops(endpoint: Any) -> None:
    pub, tap, dets = endpoint(), endpoint(), endpoint()
    demo = spawn(
        "-m",
        "streamer",
        "demo",
        "--duration",
        "5",
        "--publish",
        pub,
        "--tap",
        tap,
        "--detections",
        dets,
        "--preview",
        f"127.0.0.1:{free_port()}",
    )
    try:
        got = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamer",
                "crops",
                pub,
                "--count",
                "20",
                "--timeout",
                "8",
                "--topic",
                "crop/demo/",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        demo.wait(timeout=20)
    finally:
        _, err = stop(demo)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert len(lines) == 20
    assert {line.split()[4] for line in lines} <= {"plate", "blob"}
    assert any(" plate " in line for line in lines)
    assert demo.returncode == 0, err
    assert "totals: frames" in err
    assert "frames" in err and "/s" in err  # the live status line
    # The consumer it suggests is a command that runs from where the demo was started.
    hint = re.search(rf"\(try: (.+) {re.escape(pub)}\)", err)
    assert hint is not None, err
    suggested = subprocess.run(
        [*shlex.split(hint[1]), "--help"], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert suggested.returncode == 0 and "--save-dir" in suggested.stdout, (hint[1], suggested)


def test_a_demo_preview_beyond_loopback_gets_a_token_of_its_own(endpoint: Any) -> None:
    """`demo --preview 0.0.0.0:PORT` (a preview beyond loopback must want a token): the demo
    makes one and prints the URL with it; the page wants it."""
    import urllib.error
    import urllib.request

    port = free_port()
    demo = spawn(
        *("-m", "streamer", "demo", "--duration", "30", "--quiet"),
        *("--publish", endpoint(), "--tap", endpoint(), "--detections", endpoint()),
        *("--preview", f"0.0.0.0:{port}"),
    )
    try:
        deadline = time.monotonic() + 20
        status = None
        while status is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sources", timeout=2)
                status = 200
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError:
                time.sleep(0.2)
    finally:
        _, err = stop(demo)
    assert status == 401, status  # no token, no API
    found = re.search(rf"preview on http://0\.0\.0\.0:{port}/\?token=([\w-]{{20,}})", err)
    assert found is not None, err
