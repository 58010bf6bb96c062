"""`streamer ocr` as a real process: results, /metrics, hostile crops, SIGTERM, and a pool of
two workers behind a PUSH socket."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import numpy as np
import zmq

from tests.conftest import free_port, spawn, stop
from tests.test_ocr import header, ttf_plate

WAIT_S = 60.0  # model loading and a loaded machine; each loop below ends on its event


def _crop(text: str, **over: Any) -> list[bytes]:
    # DejaVu Sans Bold: the default recognizer reads DejaVu Sans Mono's O as 0 (tests/test_ocr.py)
    img = ttf_plate(text, 32, "DejaVuSans-Bold.ttf")
    h = header(width=img.shape[1], height=img.shape[0], **over)
    return [b"crop/cam/plate", json.dumps(h).encode(), np.ascontiguousarray(img).tobytes()]


def _h(**over: Any) -> bytes:
    return json.dumps(header(**over)).encode()


def _results(endpoints: list[str]) -> zmq.Socket[bytes]:
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"ocr/")
    for e in endpoints:
        sub.connect(e)
    return sub


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{body}")


def _terminate(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the worker drains and exits 0."""
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=10) == 0


def _close_and_stop(worker: subprocess.Popen[bytes], *sockets: zmq.Socket[bytes]) -> str:
    """Close the test's sockets, stop the worker if it still runs; its stderr."""
    for sock in sockets:
        sock.close(linger=0)
    return stop(worker)[1]


def test_worker_reads_serves_metrics_survives_bad_crops_and_stops_on_sigterm(endpoint: Any) -> None:
    crops, results, port = endpoint(), endpoint(), free_port()
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(crops)
    worker = spawn(
        *("-m", "streamer", "ocr", "--crops", crops, "--results", results),
        *("--metrics-port", str(port), "--votes", "2"),
    )
    sub = _results([results])
    got: list[dict[str, Any]] = []
    try:
        # Until the worker is up and subscribed: one good crop a poll (PUB drops before that).
        deadline = time.monotonic() + WAIT_S
        while not got and time.monotonic() < deadline and worker.poll() is None:
            pub.send_multipart(_crop("KQ47WB", tracker_id=1, detection_id="warm-up"))
            if sub.poll(500):
                got.append(json.loads(sub.recv_multipart()[1]))
        assert got, "no result from the worker"
        first = got[0]
        assert first["text"] == "KQ47WB" and first["tracker_id"] == 1 and first["class"] == "plate"
        assert first["box"][:2] == [10, 20] and set(first) >= {"reading", "stable", "confidence"}
        # Hostile messages between good ones: none stops the worker, each is counted.
        bad = [
            [b"crop/cam/plate", b"[" * 100_000 + b"]" * 100_000, b""],
            [b"crop/cam/plate", b"{}"],
            [b"crop/cam/plate", json.dumps(header(width="x")).encode(), b""],
            [b"crop/cam/plate", _h(width=4, height=2, tracker_id=5), bytes(5)],
            [b"crop/cam/plate", _h(encoding="png", tracker_id=6), b"\x89PNG junk"],
            [b"crop/cam/plate", json.dumps(header(v=2)).encode(), b""],
        ]
        for msg in bad:
            pub.send_multipart(msg)
        pub.send_multipart(_crop("OXIDE3", tracker_id=2, detection_id="after"))
        after = None
        deadline = time.monotonic() + WAIT_S
        while after is None and time.monotonic() < deadline:
            if sub.poll(500):
                r = json.loads(sub.recv_multipart()[1])
                after = r if r["detection_id"] == "after" else None
        assert after is not None and after["text"] == "OXIDE3", after
        assert _metric(port, 'streamer_ocr_crops_total{outcome="malformed"}') == len(bad)
        assert _metric(port, 'streamer_ocr_crops_total{outcome="read"}') >= 2
        assert _metric(port, "streamer_ocr_read_seconds_count") >= 2
        _terminate(worker)
    finally:
        err = _close_and_stop(worker, sub, pub)
    assert "ocr worker: {" in err and "'malformed': 6" in err and "ms per read" in err, err
    assert "ocr worker (ppocrv6, look-alike models on (O0, I1), charset" in err, err


def test_no_lookalikes_reaches_the_recognizer(endpoint: Any) -> None:
    """`--no-lookalikes` starts the worker with PP-OCRv6 alone: its start line, which states
    what the recognizer it made has, says no look-alike models; it still reads."""
    crops, results = endpoint(), endpoint()
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(crops)
    worker = spawn(
        *("-m", "streamer", "ocr", "--crops", crops, "--results", results, "--no-lookalikes")
    )
    sub = _results([results])
    got = None
    try:
        deadline = time.monotonic() + WAIT_S
        while got is None and time.monotonic() < deadline and worker.poll() is None:
            pub.send_multipart(_crop("KQ47WB", tracker_id=1))
            if sub.poll(500):
                got = json.loads(sub.recv_multipart()[1])
        assert got is not None and got["text"] == "KQ47WB", got
        _terminate(worker)
    finally:
        err = _close_and_stop(worker, sub, pub)
    assert "ocr worker (ppocrv6, charset" in err and "look-alike" not in err, err


def test_a_pool_of_two_pull_workers_reads_each_crop_once(endpoint: Any) -> None:
    crops = endpoint()
    results = [endpoint(), endpoint()]
    push: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
    push.bind(crops)
    workers = [
        spawn("-m", "streamer", "ocr", "--pull", "--crops", crops, "--results", r) for r in results
    ]
    sub = _results(results)
    seen: dict[str, list[dict[str, Any]]] = {}
    try:
        # Both workers connected and answering: probe until each result endpoint has spoken.
        answered: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        n = 0
        while len(answered) < 2 and time.monotonic() < deadline:
            push.send_multipart(_crop("KQ47WB", tracker_id=1000 + n, detection_id=f"probe-{n}"))
            n += 1
            while sub.poll(300):
                r = json.loads(sub.recv_multipart()[1])
                answered.add(r["worker"])
        assert len(answered) == 2, f"workers answering: {answered}"
        texts = ["AB23CD", "XY34ZQ", "MN56KP", "GH78EJ", "RS95TU", "VW27KL"] * 3
        for i, t in enumerate(texts):
            push.send_multipart(_crop(t, tracker_id=i, detection_id=f"crop-{i}"))
        deadline = time.monotonic() + WAIT_S
        while len([k for k in seen if k.startswith("crop-")]) < len(texts):
            assert time.monotonic() < deadline, sorted(seen)
            if sub.poll(500):
                r = json.loads(sub.recv_multipart()[1])
                seen.setdefault(r["detection_id"], []).append(r)
        time.sleep(0.5)  # anything read twice would arrive now
        while sub.poll(0):
            r = json.loads(sub.recv_multipart()[1])
            seen.setdefault(r["detection_id"], []).append(r)
    finally:
        sub.close(linger=0)
        push.close(linger=0)
        errs = [stop(w)[1] for w in workers]
    real = {k: v for k, v in seen.items() if k.startswith("crop-")}
    assert all(len(v) == 1 for v in real.values()), {k: len(v) for k, v in real.items()}
    by_worker = {r[0]["worker"] for r in real.values()}
    assert len(by_worker) == 2, "both workers must have read some crops"
    assert all(w.returncode == 0 for w in workers), errs
    right = sum(r[0]["text"] == texts[int(k.split("-")[1])] for k, r in real.items())
    assert right >= len(texts) - 1, {k: r[0]["text"] for k, r in real.items()}


def test_listen_prints_stable_readings(endpoint: Any) -> None:
    results = endpoint()
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    pub.bind(results)
    listener = subprocess.Popen(
        [sys.executable, "-m", "streamer", "ocr", "--listen", results],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        msg = {"source_id": "cam", "tracker_id": 4, "detection_id": "d", "reading": "AB1"}
        deadline = time.monotonic() + WAIT_S
        line = b""
        assert listener.stdout is not None
        while not line and time.monotonic() < deadline:
            pub.send_multipart([b"ocr/cam", json.dumps({**msg, "stable": False}).encode()])
            pub.send_multipart([b"ocr/cam", b"not json"])
            bad: dict[str, Any]
            for bad in ({"tracker_id": [1]}, {"tracker_id": {}}, {"source_id": None}):
                # an unhashable id used to kill the listener (TypeError outside its try)
                pub.send_multipart(
                    [b"ocr/cam", json.dumps({**msg, "stable": True, **bad}).encode()]
                )
            pub.send_multipart([b"ocr/cam", json.dumps({**msg, "stable": True}).encode()])
            if select.select([listener.stdout], [], [], 0.3)[0]:
                line = listener.stdout.readline()
        assert b"cam track 4: AB1" in line, line
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(timeout=10) == 0
    finally:
        pub.close(linger=0)
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_text_detector_process_survives_bad_tap_frames_serves_metrics_and_stops_on_sigterm(
    endpoint: Any,
) -> None:
    """Hostile tapped frames (not JSON, wrong part count, a picture of the wrong size, a
    non-integer frame_id) are counted; good frames between them are answered with text
    polygons; /metrics counts both and the time per frame; SIGTERM ends it with exit 0."""
    tap, dets, port = endpoint(), endpoint(), free_port()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pub: zmq.Socket[bytes] = ctx.socket(zmq.PUB)
    pub.bind(tap)
    pull: zmq.Socket[bytes] = ctx.socket(zmq.PULL)
    pull.bind(dets)
    detector = spawn(
        # the model after --tap's endpoints (argparse gives --tap both words; taken back)
        *("-m", "streamer", "detect", "--tap", tap, "text", "--detections", dets),
        *("--metrics-port", str(port)),
    )
    frame = np.full((180, 320, 3), 90, np.uint8)
    plate = ttf_plate("KQ47WB", 32)
    frame[60 : 60 + plate.shape[0], 40 : 40 + plate.shape[1]] = plate

    def tap_header(**over: Any) -> bytes:
        h = {"v": 1, "source_id": "cam", "frame_id": 5, "pts": 5, "captured_at": 1.0}
        h.update({"width": 320, "height": 180, "encoding": "raw-bgr24", **over})
        return json.dumps(h).encode()

    bad = [
        [b"frame/cam", b"[" * 50_000 + b"]" * 50_000, b""],
        [b"frame/cam", tap_header()],
        [b"frame/cam", tap_header(), bytes(100)],
        [b"frame/cam", tap_header(frame_id="x"), frame.tobytes()],
        [b"frame/cam", tap_header(width=100_000), frame.tobytes()],
    ]
    got = None
    try:
        deadline = time.monotonic() + WAIT_S
        while got is None and time.monotonic() < deadline:
            for msg in bad:
                pub.send_multipart(msg)
            pub.send_multipart([b"frame/cam", tap_header(), frame.tobytes()])
            if pull.poll(500):
                got = json.loads(pull.recv_multipart()[1])
        assert got is not None, "no detections from the text detector"
        (pred,) = got["predictions"]
        assert pred["class"] == "text" and len(pred["points"]) == 4 and pred["tracker_id"] == 1
        assert got["frame_id"] == 5 and got["image"] == {"width": 320, "height": 180}
        # After more bad frames it still answers (a frame may be dropped by the tap's
        # high-water mark while the detector is busy, so frame 6 is sent until answered).
        again = None
        deadline = time.monotonic() + WAIT_S
        while again is None and time.monotonic() < deadline:
            for msg in bad:
                pub.send_multipart(msg)
            pub.send_multipart([b"frame/cam", tap_header(frame_id=6), frame.tobytes()])
            while pull.poll(500):
                r = json.loads(pull.recv_multipart()[1])
                again = r if r["frame_id"] == 6 else again
        assert again is not None and again["predictions"][0]["tracker_id"] == 1, again
        answered = _metric(port, "streamer_text_detector_frames_answered_total")
        n_bad = _metric(port, 'streamer_text_detector_errors_total{kind="bad_frame"}')
        received = _metric(port, "streamer_text_detector_frames_received_total")
        assert answered >= 2 and n_bad >= 1, (answered, n_bad)
        assert received >= answered + n_bad, (received, answered, n_bad)
        assert _metric(port, "streamer_text_detector_detect_seconds_count") >= answered
        assert _metric(port, "streamer_text_detector_detect_seconds_sum") > 0
        assert _metric(port, "streamer_text_detector_regions_total") >= answered
        assert _metric(port, 'streamer_text_detector_errors_total{kind="detect_failed"}') == 0
        detector.send_signal(signal.SIGTERM)
        assert detector.wait(timeout=10) == 0
    finally:
        pub.close(linger=0)
        pull.close(linger=0)
        _, err = stop(detector)
    assert int(err.split(" bad frames")[0].rsplit(" ", 1)[1]) >= n_bad, err
    assert " ms per frame" in err, err
