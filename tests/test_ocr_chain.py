"""The neural chain end to end, with real processes: a generated clip of moving plates ->
`streamer run` -> `streamer detect text` (PP-OCRv4 DBNet on the tap, polygons and tracker ids)
-> crops with the background removed outside each polygon (checked pixel by pixel) ->
`streamer ocr` (PP-OCRv5 recognition) -> readings that match the plates' text."""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import yaml
import zmq

from tests.conftest import load_script, spawn, stop

PLATES = ("KX47WB", "M3ZP9Q")  # no O/0 or I/1: Hershey draws O and 0 alike (bench_ocr.folds_for)
N_FRAMES = 24
FPS = 12
SIZE = (640, 360)
CHAIN_TIMEOUT_S = 60.0
TILT_DEG = 8.0  # the first plate is tilted: its polygon leaves background in its crop's corners
BACKGROUND_BGR = (255, 255, 255)  # crop.background_color below


def write_plate_clip(path: Path) -> None:
    """Two plates (Hershey and DejaVu fonts) drifting right over a textured background, the
    first tilted by TILT_DEG."""
    bench = load_script("bench_ocr")
    fonts = ("hershey-duplex", "DejaVuSans-Bold.ttf")
    plates = [
        bench.draw_text(text, font, 44, (235, 235, 235), (25, 25, 25))
        for text, font in zip(PLATES, fonts, strict=True)
    ]
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    background = np.dstack([(60 + xx // 8) % 256, (90 + yy // 4) % 256, np.full_like(xx, 70)])
    background = background.astype(np.uint8)
    # The tilted plate, drawn over the background through its own mask.
    ph, pw = plates[0].shape[:2]
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), TILT_DEG, 1.0)
    side = int(np.hypot(pw, ph)) + 2
    m[:, 2] += ((side - pw) / 2, (side - ph) / 2)
    tilted = cv2.warpAffine(plates[0], m, (side, side), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.full((ph, pw), 255, np.uint8), m, (side, side)) > 127
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "16"}
        stream.codec_context.time_base = Fraction(1, FPS)
        for i in range(N_FRAMES):
            frame = background.copy()
            x, y = 60 + 3 * i, 40
            frame[y : y + side, x : x + side][inside] = tilted[inside]
            x, y = 100 + 3 * i, 230
            frame[y : y + plates[1].shape[0], x : x + plates[1].shape[1]] = plates[1]
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts = i
            out.mux(stream.encode(vf))
        out.mux(stream.encode())


def test_text_detector_and_ocr_read_the_plates_of_a_clip(tmp_path: Path, endpoint: Any) -> None:
    clip = tmp_path / "plates.mp4"
    write_plate_clip(clip)
    tap, dets, crops, results = endpoint(), endpoint(), endpoint(), endpoint()
    cfg = {
        # Lossless: the file waits for room in the ring, so with a ring of 2 frames it goes at
        # the detector's pace (at the end, streamer waits only 2 s for the last detections),
        # and for the OCR worker to subscribe.
        "sources": [{"id": "cam", "url": str(clip), "realtime": False}],
        "ring": {"max_frames": 2},
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-bgr24", "mode": "push"},
        "crop": {"mask_opacity": 1.0, "background_color": "#ffffff"},
        "publish": [{"bind": crops, "encoding": "raw-bgr24", "wait_for_subscriber": True}],
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"ocr/")
    sub.connect(results)
    # The crops as the worker gets them:
    crop_sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    crop_sub.setsockopt(zmq.SUBSCRIBE, b"crop/")
    crop_sub.connect(crops)
    worker = spawn(
        *("-m", "streamer", "ocr", "--crops", crops, "--results", results, "--votes", "2"),
        "--read-edge",
    )
    detector = spawn(
        *("-m", "streamer", "detect", "text", "--pull", "--tap", tap, "--detections", dets)
    )
    stats_path = tmp_path / "stats.json"
    run = spawn(
        *("-m", "streamer", "run", "-c", str(cfg_path), "--quiet"),
        *("--stats-file", str(stats_path)),
    )
    readings: list[dict[str, Any]] = []
    crop_msgs: list[list[bytes]] = []
    try:
        deadline = time.monotonic() + CHAIN_TIMEOUT_S
        while run.poll() is None and time.monotonic() < deadline:
            if sub.poll(100):
                readings.append(json.loads(sub.recv_multipart()[1]))
            while crop_sub.poll(0):
                crop_msgs.append(crop_sub.recv_multipart())
        assert run.poll() == 0, "streamer run did not finish the clip in time"
        end = time.monotonic() + 10  # the worker's last reads
        while time.monotonic() < end:
            if sub.poll(1000):
                readings.append(json.loads(sub.recv_multipart()[1]))
            else:
                break
        while crop_sub.poll(0):
            crop_msgs.append(crop_sub.recv_multipart())
    finally:
        sub.close(linger=0)
        crop_sub.close(linger=0)
        run_err = stop(run)[1]
        det_err = stop(detector)[1]
        ocr_err = stop(worker)[1]
    stats = json.loads(stats_path.read_text())
    src = stats["sources"]["cam"]
    assert src["decoded"] == N_FRAMES and src["paired"] == N_FRAMES, (src, run_err)
    assert f"text detector: {N_FRAMES} frames" in det_err, det_err
    stable = {(r["tracker_id"], r["reading"]) for r in readings if r["stable"]}
    texts = {t for _, t in stable}
    assert texts == set(PLATES), (stable, ocr_err, det_err)
    # One track per plate: the detector's tracker ids held over the clip.
    assert len({tid for tid, _ in stable}) == len(PLATES), stable
    assert all(r["class"] == "text" for r in readings)
    check_background_removed(crop_msgs)


def check_background_removed(msgs: list[list[bytes]]) -> None:
    """Every crop's pixels outside its polygon are the configured background colour, and those
    inside are not all of it; the tilted plate leaves enough outside for this to mean
    something. A pixel within 1 px of the polygon's edge is left out of both (rounding)."""
    assert msgs, "no crops received"
    outside_px = 0
    for _, header_json, payload in msgs:
        h = json.loads(header_json)
        assert h["encoding"] == "raw-bgr24" and h["points"], h
        img = np.frombuffer(payload, np.uint8).reshape(h["height"], h["width"], 3)
        pts = np.rint([[p["x"], p["y"]] for p in h["points"]]).astype(np.int32)
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(mask, [pts], 255)
        kernel = np.ones((3, 3), np.uint8)
        outside = cv2.dilate(mask, kernel) == 0
        inside = cv2.erode(mask, kernel) > 0
        assert (img[outside] == BACKGROUND_BGR).all(), (h["frame_id"], h["tracker_id"])
        assert inside.any() and (img[inside] != BACKGROUND_BGR).any(axis=1).any(), h
        outside_px += int(outside.sum())
    assert outside_px >= 100 * len(msgs), (outside_px, len(msgs))
