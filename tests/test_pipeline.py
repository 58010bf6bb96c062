"""The pipeline in-process with real sockets: bad input is counted and never stops it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio

from streamer.config import parse_config
from streamer.detections.codec import encode_detections
from streamer.pipeline import Pipeline, accounting_balance

BOX = {
    "x": 40,
    "y": 30,
    "width": 20,
    "height": 10,
    "class": "car",
    "class_id": 0,
    "confidence": 0.9,
}


def _config(endpoint: Any, **over: Any) -> tuple[dict[str, Any], str, str, str]:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
        "detections": {"bind": dets, "max_predictions": 5, "max_message_bytes": 4096},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "publish": [{"bind": pub}],
        **over,
    }
    return cfg, tap, dets, pub


async def _detector(tap: str, dets: str, pub: str, rounds: int) -> dict[str, Any]:
    """Answer tapped frames, sending a malformed message of each kind between good ones."""
    ctx = zmq.asyncio.Context.instance()
    sub, push, crops = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
        crops.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(tap)
        push.connect(dets)
        crops.connect(pub)
        bad: list[list[bytes]] = [
            [b"det/cam"],
            [b"det/cam", b"not json"],
            [b"det/cam", json.dumps({"v": 2}).encode()],
            encode_detections("cam", 0, (160, 120), [dict(BOX, width=-1)]),
            encode_detections("cam", 0, (160, 120), [BOX] * 6),
            encode_detections("cam", 0, (160, 120), [dict(BOX, x="NaN")]),
            [
                b"det/cam",
                b'{"v":1,"source_id":"cam","frame_id":0,"image":{"width":1,"height":1},'
                b'"predictions":[{"x":NaN,"y":1,"width":1,"height":1,"class":"c"}]}',
            ],
            [b"det/cam", b" " * 5000],
            encode_detections("nope", 0, (160, 120), [BOX]),
        ]
        got_crops = 0
        sent_ids = []
        for i in range(rounds):
            parts = await asyncio.wait_for(sub.recv_multipart(), 5)
            header = json.loads(parts[1])
            assert header["encoding"] == "raw-i420"
            assert len(parts[2]) == header["width"] * header["height"] * 3 // 2
            await push.send_multipart(bad[i % len(bad)])
            await push.send_multipart(
                encode_detections("cam", header["frame_id"], (160, 120), [BOX])
            )
            sent_ids.append(header["frame_id"])
            # Pairing and cropping go on: the crop for this frame arrives.
            crop = await asyncio.wait_for(crops.recv_multipart(), 5)
            assert json.loads(crop[1])["frame_id"] == header["frame_id"]
            got_crops += 1
        # A duplicate of a paired frame, and one for a frame long gone.
        await push.send_multipart(encode_detections("cam", sent_ids[-1], (160, 120), [BOX]))
        await push.send_multipart(encode_detections("cam", 10**9, (160, 120), [BOX]))
        await asyncio.sleep(0.3)
        return {"crops": got_crops}
    finally:
        for s in (sub, push, crops):
            s.close(linger=0)


def test_malformed_messages_are_counted_and_pipeline_keeps_running(endpoint: Any) -> None:
    cfg, tap, dets, pub = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(pipeline.run())
        await asyncio.sleep(0.3)  # let the sockets bind
        try:
            return await _detector(tap, dets, pub, rounds=18)
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    result = asyncio.run(asyncio.wait_for(main(), 60))
    stats = pipeline.stats()
    assert result["crops"] == 18
    assert stats["malformed"] == {
        "bad_framing": 2,
        "not_json": 2,
        "bad_version": 2,
        "negative_size": 2,
        "too_many_predictions": 2,
        "wrong_type": 2,
        "non_finite": 2,
        "oversize": 2,
    }
    assert stats["unknown_source"] == 2
    src = stats["sources"]["cam"]
    assert src["detections"] == {"paired": 18, "duplicate": 1, "unknown_frame": 1}
    assert src["crops"] == 18 and stats["publishers"][0]["sent"] == 18
    assert accounting_balance(src) == 0, src


async def _stop(
    pipeline: Pipeline, run: asyncio.Task[Any], tasks: list[asyncio.Task[Any]], timeout_s: float
) -> None:
    """Cancel a test's helper tasks, then stop the pipeline and wait for its run to end."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipeline.stop()
    await asyncio.wait_for(run, timeout_s)


def _answer_with_no_boxes(
    pipeline: Pipeline, tap: str, dets: str, frames: int, settle_s: float = 0.0
) -> list[int]:
    """Run `pipeline`, answer its first `frames` tapped frames with an empty prediction list
    (for source "cam", 160x120), wait `settle_s`, stop it; the answered frame ids."""
    got: list[int] = []

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        ctx = zmq.asyncio.Context.instance()
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
            sub.connect(tap)
            push.connect(dets)
            while len(got) < frames:
                parts = await asyncio.wait_for(sub.recv_multipart(), 5)
                got.append(json.loads(parts[1])["frame_id"])
                await push.send_multipart(encode_detections("cam", got[-1], (160, 120), []))
            await asyncio.sleep(settle_s)
        finally:
            sub.close(linger=0)
            push.close(linger=0)
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    return got


def test_empty_prediction_list_pairs_with_zero_crops(endpoint: Any) -> None:
    cfg, tap, dets, _ = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))
    _answer_with_no_boxes(pipeline, tap, dets, 5, settle_s=0.2)
    src = pipeline.stats()["sources"]["cam"]
    assert src["detections"]["paired"] == 5 and src["crops"] == 0
    assert accounting_balance(src) == 0


def test_message_params_override_config_for_that_message_only(endpoint: Any) -> None:
    cfg, tap, dets, pub = _config(
        endpoint, crop={"mask_opacity": 1.0, "background_color": "#0000ff"}
    )
    pipeline = Pipeline(parse_config(cfg))
    square = dict(
        BOX, points=[{"x": 35, "y": 27}, {"x": 45, "y": 27}, {"x": 45, "y": 33}, {"x": 35, "y": 33}]
    )
    got: list[tuple[int, tuple[int, ...]]] = []

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        ctx = zmq.asyncio.Context.instance()
        sub, push, crops = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
            crops.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(tap)
            push.connect(dets)
            crops.connect(pub)
            for _ in range(200):  # until streamer's XPUB has our subscription
                pubs = pipeline.stats()["publishers"]
                if pubs and pubs[0]["subscriptions"]:
                    break
                await asyncio.sleep(0.02)
            for i in range(6):
                fid = json.loads((await asyncio.wait_for(sub.recv_multipart(), 5))[1])["frame_id"]
                params = {"background_color": "#ff0000"} if i % 2 else None
                await push.send_multipart(
                    encode_detections("cam", fid, (160, 120), [square], params=params)
                )
                parts = await asyncio.wait_for(crops.recv_multipart(), 5)
                header = json.loads(parts[1])
                img = np.frombuffer(parts[2], np.uint8).reshape(
                    header["height"], header["width"], 3
                )
                got.append((i, tuple(int(v) for v in img[0, 0])))
        finally:
            for s in (sub, push, crops):
                s.close(linger=0)
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    # Config: blue (RGB #0000ff -> BGR (255, 0, 0)); odd messages ask for red, for themselves.
    assert got == [(i, (0, 0, 255) if i % 2 else (255, 0, 0)) for i in range(6)]


def test_accounting_invariant_holds_at_every_moment_of_a_busy_run(
    endpoint: Any, tmp_path: Any
) -> None:
    """Sampled about every millisecond from the loop, not only at the end: an unpaced file that
    waits for room (in the hand-off and before the ring), a live source skipping frames for
    max_fps, a tap too small for the detector, which answers only some frames."""
    from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber
    from tests.conftest import write_clip
    from tests.live import until

    clip = write_clip(tmp_path / "clip.mp4", 30, (320, 240))
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [
            {"id": "file", "url": str(clip), "realtime": False, "loop": True},
            {"id": "live", "url": "lavfi:testsrc2=size=160x120:rate=60", "max_fps": 25},
        ],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "hwm": 2},
        "ring": {"max_frames": 4, "max_age_ms": 200},
        "publish": [{"bind": pub}],
    }
    pipeline = Pipeline(parse_config(cfg))
    off: list[tuple[str, int, dict[str, Any]]] = []
    samples = 0

    async def sampler() -> None:
        nonlocal samples
        while True:
            for sid, s in pipeline.stats()["sources"].items():
                if accounting_balance(s) != 0:
                    off.append((sid, accounting_balance(s), s))
            samples += 1
            await asyncio.sleep(0.001)

    async def detector() -> None:
        async with (
            AsyncFrameSubscriber(tap, hwm=2) as frames,
            AsyncDetectionSender(dets) as sender,
        ):
            async for frame in frames:
                if frame.frame_id % 3:  # the rest expire
                    await sender.send(frame, [BOX])
                await asyncio.sleep(0.002)

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        tasks = [asyncio.create_task(sampler()), asyncio.create_task(detector())]
        try:
            await until(
                lambda: all(s["paired"] > 50 for s in pipeline.stats()["sources"].values()),
                30,
                "both sources paired",
            )
        finally:
            await _stop(pipeline, run, tasks, 20)

    asyncio.run(asyncio.wait_for(main(), 60))
    stats = pipeline.stats()
    assert samples > 100
    assert not off, f"{len(off)} of {samples} samples off, first: {off[0]}"
    for s in stats["sources"].values():
        assert accounting_balance(s) == 0, s
    assert stats["sources"]["live"]["skipped_fps"] > 0


def _one_message_through_a_crop_thread(cameras: dict[str, Any], **hooks: Any) -> Any:
    """A real crop thread, fed over a real socket: one frame of "cam" waits in the ring, one
    detection message for it (a box) is sent. Returns (the thread, stopped, once it handled
    the message; the pairer)."""
    import threading

    from streamer.config import DetectionsConfig
    from streamer.crop_thread import CropThread
    from streamer.pairing import Pairer
    from streamer.types import Frame
    from tests.conftest import free_port

    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(endpoint)
    push.connect(endpoint)
    pairer = Pairer(["cam"], max_frames=8, max_bytes=1 << 20, max_age_s=60.0)
    y = np.zeros((120, 160), np.uint8)
    uv = np.full((60, 80), 128, np.uint8)
    frame = Frame("cam", 0, 0, 0.0, 160, 120, "yuv420p", (y, uv, uv), 28_800)
    pairer.add_frame(frame, time.monotonic())
    crops = CropThread(
        pull,
        [],
        pairer,
        threading.Lock(),
        cameras,
        DetectionsConfig(bind=endpoint),
        (),
        lambda sid, s: None,
        **hooks,
    )
    crops.start()
    try:
        push.send_multipart(encode_detections("cam", 0, (160, 120), [BOX]))
        for _ in range(500):
            if crops.handled:
                break
            threading.Event().wait(0.01)
    finally:
        crops.stop()
        assert crops.join(5)
        pull.close(linger=0)
        push.close(linger=0)
        ctx.term()
    return crops, pairer


def test_a_failed_crop_leaves_its_message_counted_once() -> None:
    """A paired message whose cropping fails (a bug, here a preview hook that raises) is
    counted paired, and the failure on its own counter: one outcome per message."""
    from streamer.metrics import SourceCounters
    from streamer.types import CropParams

    @dataclasses.dataclass
    class Cam:
        counters: SourceCounters
        crop: tuple[CropParams, frozenset[str] | None] = (CropParams(0.0, (0, 0, 0)), None)

    def broken_preview(header: dict[str, Any], image: Any) -> None:
        raise RuntimeError("injected bug")

    counters = SourceCounters()
    crops, _ = _one_message_through_a_crop_thread(
        {"cam": Cam(counters)},
        on_crop=broken_preview,
        preview_watches=lambda sid: True,  # a viewer: every crop is cut for it
    )
    assert crops.handled == 1
    assert dict(counters.detections) == {"paired": 1}
    assert counters.crop_failed == 1


def test_a_camera_being_removed_has_its_frames_expire_not_paired() -> None:
    """A camera is out of the pipeline's cameras before its ring goes (remove_source): a
    detection for one of its waiting frames is counted as for an unknown source and leaves
    the frame to expire with the ring (before: the frame was taken out as paired, and never
    cropped)."""
    crops, pairer = _one_message_through_a_crop_thread({})  # "cam" already removed
    assert crops.handled == 1 and crops.unknown_source == 1
    ring = pairer.stats("cam")
    assert (ring.paired, ring.in_ring) == (0, 1), ring


def test_timestamp_pairing_never_pairs_a_frame_the_tap_withdraws(endpoint: Any) -> None:
    """Nobody subscribes to the tap, so every frame is put in the ring for its send and taken
    back: none may be paired meanwhile by a detector that reads the camera itself and sends
    timestamps (it was then counted both paired and not_tapped). Thread switches are made as
    frequent as possible to give the crop thread every chance."""
    import sys
    import threading
    import time as clock

    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=64x48:rate=240"}],
        "detections": {"bind": dets, "pairing": "timestamp", "tolerance_ms": 10_000},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "publish": [{"bind": pub}],
    }
    pipeline = Pipeline(parse_config(cfg))
    stop = threading.Event()

    def detector() -> None:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.connect(dets)
        try:
            while not stop.is_set():
                msg = encode_detections("cam", None, (64, 48), [BOX], captured_at=clock.time())
                push.send_multipart(msg)
                clock.sleep(0.0002)
        finally:
            push.close(linger=0)

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        thread = threading.Thread(target=detector)
        old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        thread.start()
        try:
            await asyncio.sleep(3.0)  # a fixed stretch of racing: nothing to wait for
        finally:
            sys.setswitchinterval(old)
            stop.set()
            thread.join(5)
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 60))
    src = pipeline.stats()["sources"]["cam"]
    assert src["not_tapped"] > 100
    assert src["paired"] == 0 and sum(src["detections"].values()) > 100, src
    assert accounting_balance(src) == 0, src


def test_a_tap_header_that_cannot_be_written_is_counted_and_the_tap_goes_on(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame whose tap header cannot be serialised is shed as ``encode_failed`` with its
    place in the tap given back: the tap keeps sending the frames after it (a failure there
    once left the frame counted as in the tap for ever, and enough of them stopped the tap)."""
    import streamer.pipeline as pipeline_module
    from streamer.publish.wire import dumps as real_dumps

    def dumps(header: dict[str, Any]) -> bytes:
        if header["frame_id"] % 2:
            raise TypeError("Integer exceeds 64-bit range")  # what orjson says for 2**64
        return real_dumps(header)

    monkeypatch.setattr(pipeline_module, "dumps", dumps)
    cfg, tap, dets, _ = _config(endpoint)  # (two stuck frames would fill the tap's queue)
    pipeline = Pipeline(parse_config(cfg))
    # Answered (no boxes), so that no frame waits in the ring at the stop.
    got = _answer_with_no_boxes(pipeline, tap, dets, 10)
    assert all(frame_id % 2 == 0 for frame_id in got)
    src = pipeline.stats()["sources"]["cam"]
    assert src["not_tapped_by"]["encode_failed"] >= 5, src
    assert src["in_tap"] == 0 and accounting_balance(src) == 0, src


@pytest.mark.parametrize(("mode", "reason"), [("pub", "no_subscriber"), ("push", "full")])
def test_no_picture_is_made_for_a_tap_nobody_takes(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch, mode: str, reason: str
) -> None:
    """With no detector (PUB: none subscribed; PUSH: none connected), the tap turns frames
    away before making their picture (a JPEG at 960 px costs milliseconds): they are counted
    by that reason, and the picture is never made. Before, each was encoded, then dropped."""
    import streamer.pipeline as pipeline_module
    from streamer.tap import tap_image as real_tap_image
    from tests.live import until

    made = [0]

    def tap_image(*args: Any) -> Any:
        made[0] += 1
        return real_tap_image(*args)

    monkeypatch.setattr(pipeline_module, "tap_image", tap_image)
    cfg, _, _, _ = _config(endpoint)
    cfg["tap"]["mode"] = mode
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(
                lambda: pipeline.stats()["sources"]["cam"]["not_tapped_by"].get(reason, 0) >= 20,
                20,
                f"20 frames not tapped ({reason})",
            )
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 40))
    src = pipeline.stats()["sources"]["cam"]
    assert made[0] == 0, (made, src)
    assert src["not_tapped_by"][reason] >= 20 and accounting_balance(src) == 0, src


def test_a_lossless_feeder_that_raises_is_restarted(
    endpoint: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lossless camera's frames go through its feeder on the loop (they wait there for
    room): a bug there once (injected) is counted (``error``), the feeder is restarted
    (counted), and the frames after it still reach the ring."""
    from tests.conftest import write_clip
    from tests.live import until

    clip = write_clip(tmp_path / "clip.mp4", 30, (160, 120))
    cfg = {
        "sources": [{"id": "file", "url": str(clip), "realtime": False, "loop": True}],
        "detections": {"bind": endpoint()},
        "ring": {"max_frames": 4},
        "publish": [{"bind": endpoint()}],
    }
    real_feed = Pipeline._feed_one
    failed: list[int] = []

    async def fail_once(self: Pipeline, *args: Any) -> None:
        if not failed:
            failed.append(1)
            raise RuntimeError("injected bug in the feeder")
        await real_feed(self, *args)

    monkeypatch.setattr(Pipeline, "_feed_one", fail_once)
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(
                lambda: pipeline.stats()["sources"]["file"]["in_ring"] == 4, 20, "a full ring"
            )
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 60))
    stats = pipeline.stats()
    src = stats["sources"]["file"]
    assert stats["restarts"]["feeder/file"] == 1
    assert src["not_tapped_by"]["error"] == 1 and accounting_balance(src) == 0, src


def test_a_send_that_raises_in_the_decode_thread_is_counted_and_the_tap_goes_on(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live camera's frames are tapped in its decode thread: a bug while sending one
    (injected for every odd frame) is counted (``error``) with its place in the tap and its
    room in the memory budget given back, and the frames after it are still tapped."""
    real_send = Pipeline._send_tapped
    failed: list[int] = []

    def fail_odd(self: Pipeline, camera: Any, frame: Any, message: Any) -> Any:
        if frame.frame_id % 2:
            failed.append(frame.frame_id)
            raise RuntimeError("injected bug in the send")
        return real_send(self, camera, frame, message)

    monkeypatch.setattr(Pipeline, "_send_tapped", fail_odd)
    cfg, tap, dets, _ = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))
    got = _answer_with_no_boxes(pipeline, tap, dets, 10)
    assert all(frame_id % 2 == 0 for frame_id in got) and len(failed) >= 5
    src = pipeline.stats()["sources"]["cam"]
    assert src["not_tapped_by"]["error"] == len(failed), src
    assert src["in_tap"] == 0 and accounting_balance(src) == 0, src
    assert pipeline.pairer.coming_bytes == 0  # (every reservation given back)
    assert src["reconnects"] == 0, src  # (the decoder went on)


def test_a_frame_handed_on_after_its_camera_was_removed_is_not_counted(endpoint: Any) -> None:
    """A removed camera's decode thread may outlive its stop (a read that does not return):
    a frame it hands on after the camera's final counters were taken changes nothing, and
    touches no ring (the camera's is gone)."""
    from tests.live import until

    cfg, _, _, _ = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, Any] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.stats()["sources"]["cam"]["decoded"] > 3, 10, "frames")
            camera = pipeline.cameras["cam"]
            seen["final"] = await pipeline.remove_source("cam")
            seen["removed"] = camera.removed
            pipeline._take(camera, _frame(10_000))  # the lingering thread's frame
            seen["after"] = (camera.source.counts()[0], camera.counters.not_tapped)
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen["removed"]
    final = seen["final"]
    assert accounting_balance(final) == 0, final
    assert seen["after"] == (final["decoded"], final["not_tapped"]), (seen["after"], final)


@pytest.mark.parametrize("tap", [None, "pub", "push"])
def test_a_frame_handed_on_after_the_run_ended_changes_nothing(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch, tap: str | None
) -> None:
    """A camera's decode thread may outlive the run (a read that does not return): a frame it
    hands on after the final counters were taken is not counted, goes into no ring and does
    not touch the tap's closed socket. And the run started OpenCV's threads itself."""
    import streamer.pipeline as pipeline_module
    from tests.live import until

    started: list[int] = []
    monkeypatch.setattr(pipeline_module, "_start_opencv_pool", lambda: started.append(1))
    cfg, _, _, _ = _config(endpoint)
    if tap is None:
        del cfg["tap"]
    else:
        cfg["tap"]["mode"] = tap
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.stats()["sources"]["cam"]["decoded"] > 3, 10, "frames")
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    before = pipeline.stats()["sources"]["cam"]
    pipeline._take(pipeline.cameras["cam"], _frame(10_000))  # the lingering thread's frame
    after = pipeline.stats()["sources"]["cam"]
    assert after == before and accounting_balance(after) == 0, (before, after)
    assert started == [1]


def test_every_snapshot_balances_while_live_cameras_come_and_go(endpoint: Any) -> None:
    """Live cameras' frames are counted in their decode threads: stats sampled from the loop
    as often as it can, while cameras are removed and added again under the same ids and a
    detector answers, never find a frame counted twice or nowhere; every removed camera's
    final counters balance; nothing is left in the tap or reserved at the end."""
    import random
    from collections import Counter

    from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber

    def lavfi(sid: str) -> dict[str, Any]:
        return {"id": sid, "url": "lavfi:testsrc2=size=160x120:rate=60"}

    tap, dets = endpoint(), endpoint()
    cfg = {
        "sources": [lavfi("a"), lavfi("b")],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "max_in_flight": 2},
        "ring": {"max_frames": 4},
        "publish": [{"bind": endpoint()}],
    }
    pipeline = Pipeline(parse_config(cfg))
    off: list[Any] = []
    ops: Counter[str] = Counter()
    samples = 0

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
            async for frame in frames:
                await sender.send(frame, [BOX])

    async def churn() -> None:
        rnd = random.Random(1)
        while True:
            sid = rnd.choice(["b", "c", "d"])
            if sid in pipeline.cameras:
                final = await pipeline.remove_source(sid)
                ops["removed"] += 1
                if accounting_balance(final) != 0 or final["in_tap"] != 0:
                    off.append(("final", sid, final))
            else:
                await pipeline.add_source(lavfi(sid))
                ops["added"] += 1
            await asyncio.sleep(rnd.uniform(0.0, 0.3))

    async def sample() -> None:
        nonlocal samples
        while True:
            for sid, src in pipeline.stats()["sources"].items():
                if accounting_balance(src) != 0 or src["in_tap"] < 0:
                    off.append(("snapshot", sid, src))
            samples += 1
            await asyncio.sleep(0)

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        tasks = [asyncio.create_task(detector())]
        try:
            await asyncio.sleep(1.0)
            tasks += [asyncio.create_task(churn()), asyncio.create_task(sample())]
            await asyncio.sleep(4.0)
        finally:
            await _stop(pipeline, run, tasks, 30)

    asyncio.run(asyncio.wait_for(main(), 90))
    stats = pipeline.stats()
    assert samples > 1000 and ops["removed"] >= 3 and ops["added"] >= 3, (samples, ops)
    assert not off, f"{len(off)} of {samples} samples off, first: {off[0]}"
    for src in stats["sources"].values():
        assert accounting_balance(src) == 0 and src["in_tap"] == 0, src
    assert stats["sources"]["a"]["paired"] > 50, stats["sources"]["a"]
    assert pipeline.pairer.coming_bytes == 0


def _one_frame_camera(endpoint: Any) -> tuple[Pipeline, str]:
    """A pipeline whose camera gives a frame a second (its own frames leave the tests' direct
    calls alone); the tap's endpoint."""
    cfg, tap, _, _ = _config(
        endpoint, sources=[{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=1"}]
    )
    return Pipeline(parse_config(cfg)), tap


def _frame(frame_id: int) -> Any:
    from streamer.types import Frame

    y, uv = np.zeros((120, 160), np.uint8), np.zeros((60, 80), np.uint8)
    return Frame("cam", frame_id, None, 0.0, 160, 120, "yuv420p", (y, uv, uv), 28_800)


def test_a_fence_between_a_frames_two_steps_counts_it_once(endpoint: Any) -> None:
    """A live frame is admitted (counted in the tap, its room reserved), then its camera is
    fenced (the end of a run) before its tap step ends: counted once (``stopping``), its
    reservation given back, nothing left in the tap."""
    from tests.live import until

    pipeline, _ = _one_frame_camera(endpoint)
    seen: dict[str, Any] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.stats()["sources"]["cam"]["decoded"] >= 1, 10, "a frame")
            camera, frame = pipeline.cameras["cam"], _frame(10_000)
            seen["admitted"] = pipeline._place_counted(camera, frame)
            pipeline._fence(camera)
            pipeline._tap_live(camera, frame)
            seen["stats"] = pipeline.stats()["sources"]["cam"]
            seen["coming"] = pipeline.pairer.coming_bytes
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    src = seen["stats"]
    assert seen["admitted"] and src["in_tap"] == 0 and accounting_balance(src) == 0, src
    assert src["not_tapped_by"]["stopping"] >= 1 and seen["coming"] == 0, (src, seen)


def test_a_frame_whose_tap_closes_during_its_step_is_stopping_and_not_sent(
    endpoint: Any,
) -> None:
    """The tap closes (the end of a run) between a live frame's picture and its send: it is
    counted ``stopping``, not sent on the closed socket, and out of the ring."""
    from streamer.client import AsyncFrameSubscriber

    pipeline, tap = _one_frame_camera(endpoint)
    seen: dict[str, Any] = {}
    real_encode = pipeline._tap_encode

    def encode_then_close(frame: Any) -> Any:
        message = real_encode(frame)
        with pipeline._tap_lock:
            pipeline._tap_open = False
        return message

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            async with AsyncFrameSubscriber(tap) as frames:
                await asyncio.wait_for(frames.recv(), 10)  # subscribed: frames are sent
                before = pipeline.stats()
                camera, frame = pipeline.cameras["cam"], _frame(10_000)
                pipeline._tap_encode = encode_then_close  # type: ignore[method-assign]
                assert pipeline._place_counted(camera, frame)
                pipeline._tap_live(camera, frame)
                seen["before"], seen["after"] = before, pipeline.stats()
                with pipeline._tap_lock:
                    pipeline._tap_open = True
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    before, after = seen["before"], seen["after"]
    assert after["tap"]["sent"] == before["tap"]["sent"], (before["tap"], after["tap"])
    src, was = after["sources"]["cam"], before["sources"]["cam"]
    assert src["not_tapped_by"]["stopping"] == was["not_tapped_by"].get("stopping", 0) + 1, src
    assert src["in_ring"] == was["in_ring"] and accounting_balance(src) == 0, (was, src)


def test_a_bug_after_a_frame_was_sent_leaves_it_counted_once(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a frame is sent on the tap, the detector has it: a bug in bounding the ring
    afterwards (injected once) is logged, and the frame stays in the ring, counted once (it
    was counted ``error`` as well, and the totals were off by one)."""
    from streamer.pairing import Pairer

    real_bound = Pairer.bound
    failed: list[int] = []

    def bound_once(self: Pairer, *args: Any, **kwargs: Any) -> None:
        real_bound(self, *args, **kwargs)
        if not failed:
            failed.append(1)
            raise RuntimeError("injected bug after the send")

    monkeypatch.setattr(Pairer, "bound", bound_once)
    cfg, tap, dets, _ = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))
    got = _answer_with_no_boxes(pipeline, tap, dets, 6)
    src = pipeline.stats()["sources"]["cam"]
    assert failed and len(got) == 6
    assert "error" not in src["not_tapped_by"] and accounting_balance(src) == 0, src


def test_a_detector_that_subscribes_is_noticed_at_once(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tap's subscriptions are read when a decode thread sees them waiting, not only at
    the tracker's slow poll: with that poll at 5 s, a detector that subscribes gets a frame
    within a second."""
    import streamer.pipeline as pipeline_module
    from streamer.client import AsyncFrameSubscriber

    monkeypatch.setattr(pipeline_module, "TAP_SUBSCRIPTIONS_POLL_S", 5.0)
    cfg, tap, _, _ = _config(endpoint)
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, float] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await asyncio.sleep(1.0)  # (the tracker has read once, and waits its 5 s)
            async with AsyncFrameSubscriber(tap) as frames:
                started = time.monotonic()
                await asyncio.wait_for(frames.recv(), 10)
                seen["first_s"] = time.monotonic() - started
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen["first_s"] < 1.0, seen
