"""Pairing, tap and backpressure under real conditions: detector pools, a detector that dies and
comes back, a subscriber that never reads, a detector that only knows capture times. Every test
ends by checking the accounting invariants."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zmq
import zmq.asyncio

from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber
from streamer.config import parse_config
from streamer.pipeline import Pipeline, accounting_balance
from tests.conftest import spawn, stop, write_clip
from tests.live import until

SOURCE = {"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"}


def _check_invariants(stats: dict[str, Any]) -> None:
    for sid, src in stats["sources"].items():
        assert accounting_balance(src) == 0, (sid, src)
    for p in stats["publishers"]:
        drops = p["dropped_no_subscriber"] + p["dropped_hwm"] + p["dropped_timeout"]
        assert p["offered"] == p["sent"] + drops, p


def _run(
    cfg: dict[str, Any], body: Callable[[Pipeline], Awaitable[None]], timeout_s: float = 60
) -> dict[str, Any]:
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await body(pipeline)
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), timeout_s))
    stats = pipeline.stats()
    _check_invariants(stats)
    return stats


def _src(pipeline: Pipeline) -> dict[str, Any]:
    src: dict[str, Any] = pipeline.stats()["sources"]["cam"]
    return src


def _hwm_drops(pipeline: Pipeline) -> int:
    pubs = pipeline.stats()["publishers"]  # empty until the sockets are up
    return int(pubs[0]["dropped_hwm"]) if pubs else 0


def test_two_detector_workers_share_a_push_tap(endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "mode": "push", "encoding": "raw-i420"},
        "publish": [{"bind": pub}],
    }
    workers = [
        spawn(
            "scripts/echo_detector.py", "--pull", "--tap", tap, "--detections", dets, "--boxes", "2"
        )
        for _ in range(2)
    ]

    async def body(p: Pipeline) -> None:
        await until(lambda: _src(p)["paired"] >= 90, 30, "90 frames paired")

    try:
        stats = _run(cfg, body)
    finally:
        outs = [stop(w)[0] for w in workers]
    handled = [int(o.split()[-1]) for o in outs]
    src = stats["sources"]["cam"]
    print(f"workers handled {handled}; paired {src['paired']}")
    assert all(h >= 20 for h in handled)  # both took a share of the frames
    assert src["detections"].get("duplicate", 0) == 0  # and no frame went to both
    assert src["paired"] == sum(handled)  # every answered frame paired exactly once
    assert src["expired"] == 0


def test_detector_killed_midstream_then_back(endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-bgr24"},
        "ring": {"max_age_ms": 1000},
        "publish": [{"bind": pub}],
    }
    args = ("scripts/echo_detector.py", "--tap", tap, "--detections", dets, "--boxes", "1")
    procs = [spawn(*args)]

    async def body(p: Pipeline) -> None:
        await until(lambda: _src(p)["paired"] >= 30, 20, "pairing")
        os.kill(procs[0].pid, signal.SIGKILL)  # no goodbye
        procs[0].wait(5)
        killed = _src(p)
        await until(
            lambda: _src(p)["not_tapped"] > killed["not_tapped"] + 30,
            10,
            "frames not tapped while no detector listens",
        )
        mid = _src(p)
        assert mid["paired"] - killed["paired"] <= 5  # only answers already in flight
        assert mid["state"] == "streaming"  # the pipeline keeps going
        procs.append(spawn(*args))
        await until(lambda: _src(p)["paired"] >= mid["paired"] + 30, 20, "pairing again")

    try:
        stats = _run(cfg, body)
    finally:
        for proc in procs:
            stop(proc)
    src = stats["sources"]["cam"]
    assert src["paired"] >= 60 and src["not_tapped"] >= 30


def test_subscriber_that_never_reads_is_bounded_and_counted(endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=1280x720:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "jpeg", "width": 320},
        "publish": [{"bind": pub, "hwm": 20}],
    }
    detector = spawn(
        "scripts/echo_detector.py", "--tap", tap, "--detections", dets, "--boxes", "10"
    )
    ctx: zmq.Context[Any] = zmq.Context.instance()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 20)
    stuck.setsockopt(zmq.RCVBUF, 64 * 1024)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.connect(pub)  # ...and never reads
    rss_mb: list[float] = []

    def rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    async def body(p: Pipeline) -> None:
        await until(lambda: _hwm_drops(p) > 100, 30, "hwm drops")
        for _ in range(4):  # memory over the next seconds of steady dropping
            rss_mb.append(rss())
            n = _hwm_drops(p)

            def more(n: int = n) -> bool:
                return _hwm_drops(p) > n + 150

            await until(more, 10, "more drops")
        rss_mb.append(rss())

    try:
        stats = _run(cfg, body)
    finally:
        stuck.close(linger=0)
        stop(detector)
    pubst = stats["publishers"][0]
    print(
        f"stalled subscriber: {pubst}, RSS MB {[round(r) for r in rss_mb]}, "
        f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )
    assert pubst["dropped_hwm"] > 0 and pubst["sent"] > 0
    assert max(rss_mb) - rss_mb[0] < 30  # drops, not growth


def test_timestamp_pairing_with_a_detector_that_reads_the_camera(endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets, "pairing": "timestamp", "tolerance_ms": 5},
        "tap": {"bind": tap},
        "publish": [{"bind": pub}],
    }
    detector = spawn(
        "scripts/echo_detector.py",
        "--timestamp",
        "--tap",
        tap,
        "--detections",
        dets,
        "--boxes",
        "3",
    )
    got: list[dict[str, Any]] = []

    async def body(p: Pipeline) -> None:
        ctx = zmq.asyncio.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"crop/")
        sub.connect(pub)
        try:
            while len(got) < 30:
                parts = await asyncio.wait_for(sub.recv_multipart(), 10)
                got.append(json.loads(parts[1]))
        finally:
            sub.close(linger=0)

    try:
        stats = _run(cfg, body)
    finally:
        stop(detector)
    src = stats["sources"]["cam"]
    assert src["detections"]["paired"] >= 10
    assert src["detections"].get("duplicate", 0) == 0
    # Each crop carries the frame the detector meant: box 0 is the same for every frame, and the
    # frame ids run in order.
    ids = [h["frame_id"] for h in got]
    assert ids == sorted(ids)


@pytest.mark.parametrize("mode", ["push", "pub"])
def test_unpaced_file_is_lossless_with_a_slow_late_detector(
    mode: str, endpoint: Any, tmp_path: Any
) -> None:
    """A file read unpaced waits for the pipeline instead of dropping: a detector that connects
    late, is slow, and pauses longer than the stall timeout still gets every frame, once, and
    no frame is evicted from a small ring while its detections are on their way."""
    n_frames = 60
    clip = write_clip(tmp_path / "clip.mp4", n_frames, (320, 240))
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": str(clip), "realtime": False, "stall_timeout_s": 0.5}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "mode": mode, "encoding": "raw-i420", "hwm": 1},
        # Fewer than the frames that fit the sockets' queues on their way to the detector:
        # the source must wait for room, not evict frames still awaiting their detections.
        "ring": {"max_frames": 3},
        "publish": [{"bind": pub}],
    }
    answered: list[int] = []

    async def detector() -> None:
        async with (
            AsyncFrameSubscriber(tap, mode="pull" if mode == "push" else "sub", hwm=1) as frames,
            AsyncDetectionSender(dets) as sender,
        ):
            async for frame in frames:
                await asyncio.sleep(1.2 if frame.frame_id == 20 else 0.01)
                box = {"x": 20, "y": 20, "width": 10, "height": 10, "class": "a", "confidence": 1}
                await sender.send(frame, [box])
                answered.append(frame.frame_id)

    async def body(p: Pipeline) -> None:
        await asyncio.sleep(1.0)  # nobody takes frames yet: the decoder must wait, not drop
        assert _src(p)["decoded"] < n_frames
        task = asyncio.create_task(detector())
        try:
            await until(lambda: _src(p)["paired"] == n_frames, 30, "every frame paired")
        finally:
            task.cancel()

    stats = _run(cfg, body)
    src = stats["sources"]["cam"]
    assert sorted(answered) == list(range(n_frames))
    assert src["decoded"] == src["paired"] == n_frames
    assert src["detections"] == {"paired": n_frames}  # none late, early or twice
    assert src["not_tapped"] == src["dropped_handoff"] == src["expired"] == 0
    assert src["stalls"] == 0  # waiting for the pipeline is not a stall
    # Every frame's box is accounted for: nobody subscribed to the crops, so none was cut.
    assert (src["crops"], src["unwanted"]) == (0, n_frames)


def test_lossless_file_waits_for_a_late_crop_subscriber(endpoint: Any, tmp_path: Any) -> None:
    """With `wait_for_subscriber`, a lossless file starts only once its crop subscriber's
    subscription has reached streamer: a subscriber that connects a second after the detector
    still gets the crops of every frame (without it, PUB drops them as unsubscribed)."""
    n_frames = 30
    clip = write_clip(tmp_path / "clip.mp4", n_frames, (320, 240))
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": str(clip), "realtime": False}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "publish": [{"bind": pub, "wait_for_subscriber": True}],
    }
    got: list[int] = []

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
            async for frame in frames:
                box = {"x": 20, "y": 20, "width": 10, "height": 10, "class": "a", "confidence": 1}
                await sender.send(frame, [box])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await asyncio.sleep(1.0)  # the detector is there; the crop subscriber is not yet
            assert _src(p)["paired"] == 0
            ctx = zmq.asyncio.Context.instance()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"crop/")
            sub.connect(pub)
            try:
                while len(got) < n_frames:
                    parts = await asyncio.wait_for(sub.recv_multipart(), 20)
                    got.append(json.loads(parts[1])["frame_id"])
            finally:
                sub.close(linger=0)
        finally:
            task.cancel()

    stats = _run(cfg, body)
    assert sorted(got) == list(range(n_frames))
    assert stats["publishers"][0]["dropped_no_subscriber"] == 0


def test_a_slow_detector_gets_only_what_it_can_serve(endpoint: Any) -> None:
    """A detector at ~5 frames/s on a 30 fps camera: with `tap.max_in_flight`, frames beyond
    what is in flight are not tapped (counted as not_tapped/busy) instead of being queued for
    the detector and expiring before their answer comes: every tapped frame is served."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "hwm": 16, "max_in_flight": 1},
        "ring": {"max_age_ms": 2000},
        "publish": [{"bind": pub}],
        "health": {"shed_window_s": 2},
    }
    problems: list[str] = []

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap, hwm=16) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await asyncio.sleep(0.2)  # a slow model
                box = {"x": 20, "y": 20, "width": 10, "height": 10, "class": "a", "confidence": 1}
                await out.send(frame, [box])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: _src(p)["paired"] >= 10, 30, "10 frames paired")
            # /healthz names the camera: most of its frames are shed.
            await until(lambda: "cam" in p.health()[1]["problems"], 10, "the camera named")
            problems.append(p.health()[1]["problems"]["cam"])
        finally:
            task.cancel()

    stats = _run(cfg, body)
    src = stats["sources"]["cam"]
    assert problems[0].startswith("overloaded: "), problems
    # No frame was tapped that could not be served in time (what was in flight at the stop is
    # counted apart).
    assert src["expired"] == src["expired_by"]["shutdown"] <= 1, (src["expired_by"], src)
    assert src["not_tapped_by"].get("busy", 0) > src["paired"], src
    assert src["not_tapped"] == sum(src["not_tapped_by"].values())


def test_a_camera_that_cannot_be_served_decodes_less(endpoint: Any, tmp_path: Any) -> None:
    """A camera (a file played in real time, with P- and B-frames) whose frames the pipeline
    turns away (a detector at ~5 frames/s, one frame in flight) skips decoding the frames that
    nothing references, and counts them: decode work is shed before decoded frames are."""
    clip = write_clip(tmp_path / "cam.mp4", 300, (320, 240), gop=30)
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": str(clip), "loop": True}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "max_in_flight": 1},
        "publish": [{"bind": pub}],
    }
    levels: set[str] = set()

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await asyncio.sleep(0.2)
                await out.send(frame, [])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: _src(p)["paired"] >= 3, 30, "the detector answering")
            t0 = asyncio.get_running_loop().time()
            while asyncio.get_running_loop().time() - t0 < 3.0:
                levels.add(_src(p)["skip_level"])
                await asyncio.sleep(0.05)
        finally:
            task.cancel()

    src = _run(cfg, body)["sources"]["cam"]
    assert "NONREF" in levels, levels
    assert src["skipped_decode"] > 20, src  # ~40% of the frames of 3 s at 30 fps
    assert src["not_tapped_by"].get("busy", 0) > 0, src


def test_crops_nobody_subscribed_to_are_not_cut(endpoint: Any) -> None:
    """A subscriber to plates only: the people's boxes are not cut or converted at all
    (counted as unwanted), rather than cut and then dropped as unsubscribed."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "publish": [{"bind": pub}],
    }
    got: list[str] = []

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
            async for frame in frames:
                boxes = [
                    {"x": 20, "y": 20, "width": 10, "height": 10, "class": c, "confidence": 1}
                    for c in ("plate", "person", "person")
                ]
                await sender.send(frame, boxes)

    async def body(p: Pipeline) -> None:
        sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"crop/cam/plate")
        sub.connect(pub)
        task = asyncio.create_task(detector())
        try:
            while len(got) < 20:
                parts = await asyncio.wait_for(sub.recv_multipart(), 20)
                got.append(json.loads(parts[1])["class"])
        finally:
            task.cancel()
            sub.close(linger=0)

    src = _run(cfg, body)["sources"]["cam"]
    assert set(got) == {"plate"}
    assert src["unwanted"] >= 2 * src["crops"] - 2, src  # two people per plate, not cut
    assert src["crops"] >= 20, src


def test_a_camera_larger_than_the_budget_is_refused_and_said_so(
    endpoint: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """One camera's frames (1280x720 I420, 1.3 MiB) are each larger than the whole memory
    budget (1 MiB), beside a small camera: the budget holds (before, each camera could keep one
    frame past it), the large camera's frames are not tapped (`not_tapped` `budget`) and the log
    says why and what to raise; the small camera is served, with no room kept for frames that
    can never fit."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [
            {"id": "big", "url": "lavfi:testsrc2=size=1280x720:rate=10"},
            {"id": "small", "url": "lavfi:testsrc2=size=320x240:rate=10"},
        ],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "width": 320},
        "ring": {"max_total_bytes": 1024 * 1024},
        "publish": [{"bind": pub}],
    }
    most = 0
    health: dict[str, str] = {}

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await out.send(frame, [])

    def stats(p: Pipeline, sid: str) -> dict[str, Any]:
        nonlocal most
        st = p.stats()
        most = max(most, int(st["ring_bytes"]))
        return dict(st["sources"][sid])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: stats(p, "small")["paired"] >= 10, 30, "the small one served")
            await until(lambda: stats(p, "big")["not_tapped_by"]["budget"] >= 10, 30, "refused")
            health["big"] = p.health()[1]["problems"].get("big", "")
        finally:
            task.cancel()

    with caplog.at_level(logging.WARNING, logger="streamer.pipeline"):
        st = _run(cfg, body)
    assert st["sources"]["big"]["paired"] == 0 and most <= 1024 * 1024
    assert health["big"].startswith("its frames (1382400 bytes) are larger than the whole"), health
    assert any(
        "source big: its frames (1382400 bytes) are larger than the whole memory budget"
        in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_no_more_frames_in_flight_than_the_ring_holds(endpoint: Any) -> None:
    """`tap.max_in_flight` (4) above `ring.max_frames` (2) with a detector that never answers:
    a live camera has at most 2 frames tapped and waiting, none evicted unmatched for want of
    room (`expired/full`); the rest are not tapped (`busy`). Before, 4 were tapped and 2 of them
    evicted from the ring before any answer could come."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [SOURCE],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "ring": {"max_frames": 2, "max_age_ms": 60_000},
        "publish": [{"bind": pub}],
    }

    async def silent_detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames:
            async for _ in frames:
                pass

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(silent_detector())
        try:
            await until(lambda: _src(p)["not_tapped_by"].get("busy", 0) >= 30, 20, "30 busy")
        finally:
            task.cancel()

    src = _run(cfg, body)["sources"]["cam"]
    assert src["expired_by"]["full"] == 0 and src["paired"] == 0, src
    assert src["expired_by"]["shutdown"] <= 2, src


def test_a_budget_for_one_frame_is_shared_by_two_cameras_in_turn(endpoint: Any) -> None:
    """Two cameras whose frames (1280x720 I420, 1.3 MiB) fit the budget (2 MiB) one at a time:
    each gets the room in turn, never both at once (a rule that kept room for the other's next
    frame let neither in: 0 and 0 paired), and no frame sent is evicted."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    url = "lavfi:testsrc2=size=1280x720:rate=10"
    cfg = {
        "sources": [{"id": "a", "url": url}, {"id": "b", "url": url}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "width": 320},
        "ring": {"max_total_bytes": 2 * 1024 * 1024},
        "publish": [{"bind": pub}],
    }
    most = 0

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await asyncio.sleep(0.05)
                await out.send(frame, [])

    def paired(p: Pipeline) -> list[int]:
        nonlocal most
        st = p.stats()
        most = max(most, int(st["ring_bytes"]))
        return [int(st["sources"][sid]["paired"]) for sid in ("a", "b")]

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: min(paired(p)) >= 8, 30, "both served")
        finally:
            task.cancel()

    st = _run(cfg, body)
    a, b = (st["sources"][sid] for sid in ("a", "b"))
    assert min(a["paired"], b["paired"]) >= 0.7 * max(a["paired"], b["paired"]), (a, b)
    assert a["expired_by"]["budget"] == b["expired_by"]["budget"] == 0
    assert most <= 2 * 1024 * 1024


def test_without_a_tap_the_budget_holds_for_lossless_and_live_cameras(endpoint: Any) -> None:
    """Timestamp pairing (no tap: frames go straight into the rings). Lossless cameras' frames
    wait for room in the budget (they held 126x it: never evicted, never waiting), and a live
    camera's frame makes room from the fullest ring, another camera's only frame too (three
    live cameras held 2x it: each kept one)."""
    url = "lavfi:testsrc2=size=1280x720:rate=30"
    for sources in (
        [{"id": f"l{i}", "url": url, "realtime": False} for i in range(3)],
        [{"id": f"c{i}", "url": url} for i in range(3)],
    ):
        cfg = {
            "sources": sources,
            "detections": {"bind": endpoint(), "pairing": "timestamp"},
            "ring": {"max_total_bytes": 2 * 1024 * 1024},
            "publish": [{"bind": endpoint()}],
        }
        most = 0

        async def body(p: Pipeline) -> None:
            nonlocal most
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2:
                st = p.stats()
                most = max(most, int(st["ring_bytes"]))
                await asyncio.sleep(0.005)
            assert sum(int(s["decoded"]) for s in p.stats()["sources"].values()) >= 6

        _run(cfg, body)
        assert 0 < most <= 2 * 1024 * 1024, (sources[0], most)


def test_a_lossless_file_under_a_tap_rate_waits_rather_than_drops(
    endpoint: Any, tmp_path: Any
) -> None:
    """`tap.max_fps` on a `realtime: false` file: its frames wait for their slot, as they wait
    for room, and every one is paired (before, 2 of 60 were, the rest counted `rate`)."""
    n_frames = 20
    clip = write_clip(tmp_path / "clip.mp4", n_frames, (320, 240))
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": str(clip), "realtime": False}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "max_fps": 20},
        "publish": [{"bind": pub}],
    }

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await out.send(frame, [])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: _src(p)["paired"] >= n_frames, 30, "every frame paired")
        finally:
            task.cancel()

    stats = _run(cfg, body)
    assert stats["sources"]["cam"]["not_tapped_by"].get("rate", 0) == 0


def test_a_ring_smaller_than_the_frames_in_flight_evicts_none_that_was_sent(
    endpoint: Any,
) -> None:
    """`ring.max_bytes` holds one 720p frame, `tap.max_in_flight` four: a frame is tapped only
    while the ring has room for it, so none sent is evicted before its detections come
    (before: 145 of 150 evicted as `expired` `full`, their answers `late`)."""
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=1280x720:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420", "width": 320},
        "ring": {"max_bytes": 2 * 1024 * 1024},
        "publish": [{"bind": pub}],
    }

    async def detector() -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as out:
            async for frame in frames:
                await asyncio.sleep(0.1)
                await out.send(frame, [])

    async def body(p: Pipeline) -> None:
        task = asyncio.create_task(detector())
        try:
            await until(lambda: _src(p)["paired"] >= 10, 30, "frames paired")
        finally:
            task.cancel()

    src = _run(cfg, body)["sources"]["cam"]
    assert src["expired_by"]["full"] == 0 and src["detections"].get("late", 0) == 0, src
    assert src["not_tapped_by"]["busy"] > 0, src
