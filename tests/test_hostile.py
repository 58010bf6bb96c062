"""Hostile and buggy detectors against a running pipeline: bad messages between valid ones while
a WebRTC viewer watches, a crop thread that crashes, a handler that raises, a detector that dies.
Every valid crop must still arrive, the process must stay up with bounded memory, and the
counters and /healthz must say what happened."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from streamer.config import parse_config
from streamer.crop.stage import CROP_BUDGET_FRAMES
from streamer.crop_thread import CropThread
from streamer.detections.codec import decode_detections, encode_detections
from streamer.errors import ProtocolError
from streamer.pairing import Pairer
from streamer.pipeline import Pipeline, accounting_balance
from tests.conftest import free_port
from tests.live import until
from tests.test_codec_fuzz import HOSTILE

TOKEN = "hostile-test-token"
W, H = 320, 240
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_PREDICTIONS = 1_000
CAR = {"x": 60, "y": 50, "width": 40, "height": 30, "class": "car", "confidence": 0.9}
PERSON = {
    "x": 200,
    "y": 150,
    "width": 60,
    "height": 80,
    "class": "person",
    "points": [{"x": 175, "y": 115}, {"x": 225, "y": 115}, {"x": 200, "y": 185}],
}
RSS_GROWTH_LIMIT_BYTES = (
    150 * 1024 * 1024
)  # a bad RLE used to cost 1.3 GB per prediction; 3 M empty runs ~180 MB


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _cfg(endpoint: Any, **over: Any) -> dict[str, Any]:
    cfg = {
        # 10 fps and a deep ring: a slow crop thread on a loaded machine evicts nothing.
        "sources": [{"id": "cam", "url": f"lavfi:testsrc2=size={W}x{H}:rate=10"}],
        "detections": {
            "bind": endpoint(),
            "max_message_bytes": MAX_MESSAGE_BYTES,
            "max_predictions": MAX_PREDICTIONS,
        },
        "tap": {"bind": endpoint(), "encoding": "raw-i420"},
        "ring": {"max_frames": 300, "max_age_ms": 30_000},
        "publish": [{"bind": endpoint(), "hwm": 100_000}],
        "preview": {"port": free_port(), "token": TOKEN, "host_candidates": ["127.0.0.1"]},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(autouse=True)
def _loopback_candidates() -> None:
    from streamer.preview.server import limit_host_candidates

    limit_host_candidates(["127.0.0.1"])


async def _viewer(cfg: dict[str, Any], frames: list[int], stop: asyncio.Event) -> None:
    """A WebRTC viewer of "cam" (aiortc, loopback only) counting the frames it receives."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{cfg['preview']['port']}/api/offer"
            body = {"source_id": "cam", "sdp": pc.localDescription.sdp, "type": "offer"}
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(url, json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                answer = await r.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        track = None
        while track is None:
            track = next((t.track for t in pc.getReceivers() if t.track is not None), None)
            await asyncio.sleep(0.02)
        while not stop.is_set():
            await asyncio.wait_for(track.recv(), 10)
            frames[0] += 1
    finally:
        await pc.close()


async def _wait_listening(port: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz"):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


def _run(cfg: dict[str, Any], body: Callable[[Pipeline], Awaitable[None]]) -> Pipeline:
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await _wait_listening(cfg["preview"]["port"])
            await body(pipeline)
            assert not run.done(), "the pipeline stopped by itself"
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 30)

    asyncio.run(asyncio.wait_for(main(), 240))
    return pipeline


class Detector:
    """Answers tapped frames over a PUSH socket; records what it expects to be cropped."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        ctx = zmq.asyncio.Context.instance()
        if cfg["tap"].get("mode", "pub") == "push":
            self.sub = ctx.socket(zmq.PULL)
        else:
            self.sub = ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"frame/cam")
        self.sub.connect(cfg["tap"]["bind"])
        self.push = ctx.socket(zmq.PUSH)
        self.push.connect(cfg["detections"]["bind"])
        self.expected: set[tuple[int, str]] = set()  # (frame_id, detection_id)

    async def next_frame_id(self) -> int:
        assert await self.sub.poll(10_000), "no tapped frame"
        return int(json.loads((await self.sub.recv_multipart())[1])["frame_id"])

    async def answer(self, frame_id: int, preds: list[dict[str, Any]], **kw: Any) -> None:
        named = [{**p, "detection_id": f"{frame_id}-{i}"} for i, p in enumerate(preds)]
        await self.push.send_multipart(encode_detections("cam", frame_id, (W, H), named, **kw))
        self.expected |= {(frame_id, p["detection_id"]) for p in named}

    def close(self) -> None:
        self.sub.close(linger=0)
        self.push.close(linger=0)


class Crops:
    """Subscribes to every crop of "cam"; records (frame_id, detection_id)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"crop/cam/")
        self.sock.connect(cfg["publish"][0]["bind"])
        self.got: set[tuple[int, str]] = set()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            header = json.loads((await self.sock.recv_multipart())[1])
            self.got.add((header["frame_id"], header["detection_id"]))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close(linger=0)


def _expected_kind(parts: list[bytes]) -> str:
    try:
        decode_detections(parts, max_predictions=MAX_PREDICTIONS, max_bytes=MAX_MESSAGE_BYTES)
    except ProtocolError as e:
        return e.kind
    raise AssertionError("a hostile case decoded as valid")


def _heavy_masked_message(frame_id: int) -> list[bytes]:
    """Valid, and as costly as the protocol allows per prediction: the largest image and an RLE
    of that size (one run), full-frame boxes, masking turned on by the message itself. Before
    issue 13 an RLE mask cost its whole declared size per prediction."""
    side = 32_768
    preds = [
        {
            "x": side / 2,
            "y": side / 2,
            "width": side,
            "height": side,
            "class": "heavy",
            "detection_id": f"{frame_id}-heavy-{i}",
            "rle": {"size": [side, side], "counts": [0, side * side]},
        }
        for i in range(20)
    ]
    return encode_detections(
        "cam",
        frame_id,
        (side, side),
        preds,
        params={"mask_opacity": 1.0, "background_color": "#f00"},
    )


def test_hostile_messages_between_valid_ones_while_a_viewer_watches(endpoint: Any) -> None:
    cfg = _cfg(endpoint)
    # The codec's own cases (tests/test_codec_fuzz.py), and what only a socket can send.
    hostile: list[tuple[str, list[bytes], str]] = [
        (name, parts, _expected_kind(parts)) for name, parts in HOSTILE.items()
    ]
    big = b"x" * (1024 * 1024)
    hostile += [
        ("9 MB in 1 MB parts", [b"det/cam", b"{}", *[big] * 9], "oversize"),
        ("5000 parts", [b"det/cam", b"{}", *[b"p"] * 5000], "too_many_parts"),
    ]
    seen: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        crops = Crops(cfg)
        det = Detector(cfg)
        viewer_frames = [0]
        stop_viewer = asyncio.Event()
        viewer = asyncio.create_task(_viewer(cfg, viewer_frames, stop_viewer))
        try:
            await until(lambda: p.stats()["publishers"][0]["subscriptions"] > 0, 10, "crop sub")
            await until(lambda: viewer_frames[0] > 0, 20, "the viewer's first frame")
            for _ in range(5):  # warm-up: everything allocated once
                await det.answer(await det.next_frame_id(), [CAR, PERSON])
            await until(lambda: crops.got >= det.expected, 20, "warm-up crops")
            rss_before = _rss_bytes()
            rss_peak = rss_before
            viewer_before = viewer_frames[0]
            for name, parts, _ in hostile:
                frame_id = await det.next_frame_id()
                await det.push.send_multipart(parts)
                await det.answer(frame_id, [CAR, PERSON])
                rss_peak = max(rss_peak, _rss_bytes())
                seen.setdefault("sent", []).append(name)
            # The message that turns masking on for itself, with the costliest valid masks.
            frame_id = await det.next_frame_id()
            await det.push.send_multipart(_heavy_masked_message(frame_id))
            # 20 whole-frame crops: the first CROP_BUDGET_FRAMES are cut, the rest counted.
            det.expected |= {(frame_id, f"{frame_id}-heavy-{i}") for i in range(CROP_BUDGET_FRAMES)}
            # A part beyond ZMQ_MAXMSGSIZE (2x the limit): that peer is disconnected.
            rogue = zmq.asyncio.Context.instance().socket(zmq.PUSH)
            rogue.connect(cfg["detections"]["bind"])
            await rogue.send_multipart([b"det/cam", b"x" * (2 * MAX_MESSAGE_BYTES + 1)])
            for _ in range(10):
                await det.answer(await det.next_frame_id(), [CAR, PERSON])
                rss_peak = max(rss_peak, _rss_bytes())
            rogue.close(linger=0)
            await until(lambda: crops.got >= det.expected, 60, "every valid crop")
            await until(lambda: viewer_frames[0] > viewer_before + 20, 30, "the viewer's frames")
            seen["rss_growth"] = rss_peak - rss_before
            seen["missing"] = det.expected - crops.got
            seen["health"] = p.health()
            seen["crop_budget"] = p.cameras["cam"].counters.crop_budget
        finally:
            stop_viewer.set()
            await asyncio.gather(viewer, return_exceptions=True)
            det.close()
            await crops.close()

    p = _run(cfg, body)
    stats = p.stats()
    assert seen["missing"] == set()
    assert seen["crop_budget"] == 20 - CROP_BUDGET_FRAMES
    assert seen["rss_growth"] < RSS_GROWTH_LIMIT_BYTES, seen["rss_growth"]
    expected = Counter(kind for _, _, kind in hostile)
    assert Counter(stats["malformed"]) == expected, (stats["malformed"], expected)
    assert stats["handler_failed"] == {} and stats["restarts"] == {
        "expiry": 0,
        "crop_thread": 0,
        "frame_tap": 0,
        "tap_subscriptions": 0,
        "feeder/cam": 0,
        "preview/cam": 0,
    }
    ok, health = seen["health"]
    assert ok, health
    cam = stats["sources"]["cam"]
    assert cam["detections"]["paired"] == 5 + len(hostile) + 1 + 10
    assert accounting_balance(cam) == 0


def test_a_crashed_crop_thread_is_restarted_and_crops_flow_again(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(endpoint)
    original = CropThread._drain_detections
    crashes = 0

    def crash_once(self: CropThread) -> None:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("injected crash")
        original(self)

    monkeypatch.setattr(CropThread, "_drain_detections", crash_once)
    seen: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        crops = Crops(cfg)
        det = Detector(cfg)
        try:
            await until(lambda: p.stats()["publishers"][0]["subscriptions"] > 0, 10, "crop sub")
            for _ in range(8):
                await det.answer(await det.next_frame_id(), [CAR])
            # The first message woke the thread, which crashed; once restarted it takes them all.
            await until(lambda: crops.got >= det.expected, 30, "crops after the restart")
            await until(lambda: p.health()[0], 10, "healthy again")
            seen["health"] = p.health()[1]
        finally:
            det.close()
            await crops.close()

    p = _run(cfg, body)
    assert crashes == 1
    assert p.stats()["restarts"]["crop_thread"] == 1
    assert 'streamer_restarts_total{component="crop_thread"} 1.0' in p.metrics_text().decode()
    assert seen["health"]["restarts"]["crop_thread"] == 1
    assert p.stats()["sources"]["cam"]["detections"]["paired"] == 8


def test_a_frame_hand_on_expiry_or_subscription_tracker_that_raises_goes_on(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in handing a live camera's frame on (in its decode thread), in the expiry task or
    in the tap's subscription tracker (each injected once) ended that work for good: the
    camera's frames stopped going anywhere, frames stopped expiring, the tap's subscribers
    stopped being known. Now the frame is counted (``error``) and the next goes on, and the
    tasks are restarted and counted; the totals balance."""
    cfg = _cfg(endpoint)
    failed: Counter[str] = Counter()

    def once(name: str, real: Callable[..., Any], after: bool = False) -> Callable[..., Any]:
        def maybe_fail(*args: Any, **kwargs: Any) -> Any:
            if failed[name]:
                return real(*args, **kwargs)
            failed[name] += 1
            if after:  # (the subscription noted, then the bug: not lost with it)
                real(*args, **kwargs)
            raise RuntimeError(f"injected bug in {name}")

        return maybe_fail

    from streamer.publish.zmq_out import OutSocket

    real_place = Pipeline._place
    monkeypatch.setattr(Pipeline, "_place", once("place", real_place))
    real_note = OutSocket._note
    monkeypatch.setattr(OutSocket, "_note", once("note", real_note, after=True))
    real_expire = Pairer.expire
    monkeypatch.setattr(Pairer, "expire", once("expire", real_expire))
    seen: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        det = Detector(cfg)
        try:
            for _ in range(3):  # frames keep coming, through the restarted tap tracker too
                await det.answer(await det.next_frame_id(), [])
            await until(lambda: sum(failed.values()) == 3, 10, "every injected failure")
            await until(lambda: p.health()[0], 15, "healthy again")
            seen["health"] = p.health()[1]
        finally:
            det.close()

    p = _run(cfg, body)
    stats = p.stats()
    restarts = stats["restarts"]
    assert (restarts["feeder/cam"], restarts["expiry"], restarts["tap_subscriptions"]) == (0, 1, 1)
    cam = stats["sources"]["cam"]
    assert cam["not_tapped_by"]["error"] == 1 and accounting_balance(cam) == 0, cam
    assert cam["reconnects"] == 0 and cam["last_error"] is None, cam  # (the decoder went on)
    assert 'streamer_restarts_total{component="expiry"} 1.0' in p.metrics_text().decode()


def test_an_exception_while_one_message_is_handled_is_counted_and_the_next_goes_on(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(endpoint)
    original = CropThread._crop_and_publish
    calls = 0

    def fail_odd(self: CropThread, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise KeyError("injected bug")
        original(self, *args)

    monkeypatch.setattr(CropThread, "_crop_and_publish", fail_odd)

    async def body(p: Pipeline) -> None:
        crops = Crops(cfg)
        det = Detector(cfg)
        try:
            await until(lambda: p.stats()["publishers"][0]["subscriptions"] > 0, 10, "crop sub")
            for _ in range(6):
                await det.answer(await det.next_frame_id(), [CAR])
            await until(lambda: calls == 6 and len(crops.got) == 3, 30, "the even messages' crops")
        finally:
            det.close()
            await crops.close()

    p = _run(cfg, body)
    stats = p.stats()
    # Each message keeps its one outcome (paired); the failed cropping has its own counter.
    src = stats["sources"]["cam"]
    assert src["crop_failed"] == 3 and src["detections"]["paired"] >= 6
    assert stats["handler_failed"] == {}
    metrics = p.metrics_text().decode()
    assert 'streamer_crops_total{kind="failed",source="cam"} 3.0' in metrics
    assert stats["restarts"]["crop_thread"] == 0
    # Logged once for the kind, with its traceback.
    logged = [r for r in caplog.records if "failed (KeyError" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


def test_healthz_names_a_source_whose_detector_stopped_answering(endpoint: Any) -> None:
    cfg = _cfg(endpoint, health={"unpaired_after_s": 0.5})
    seen: dict[str, Any] = {}

    async def healthz() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{cfg['preview']['port']}/healthz") as r,
        ):
            return r.status, await r.json()

    async def body(p: Pipeline) -> None:
        det = Detector(cfg)
        try:
            # A detector that finds nothing still answers: empty lists pair, health stays ok.
            for _ in range(15):
                await det.answer(await det.next_frame_id(), [])
            seen["answering"] = await healthz()
            # It dies: frames are still tapped, nothing pairs.
            await until(lambda: not p.health()[0], 10, "unhealthy")
            seen["dead"] = await healthz()
            # It comes back.
            for _ in range(5):
                await det.answer(await det.next_frame_id(), [])
            await until(lambda: p.health()[0], 10, "healthy again")
        finally:
            det.close()

    _run(cfg, body)
    status, health = seen["answering"]
    assert status == 200 and health["ok"], health
    status, health = seen["dead"]
    assert status == 503 and list(health["problems"]) == ["cam"], health
    assert "none paired for" in health["problems"]["cam"]


def test_a_preview_render_failure_is_restarted_and_the_viewer_keeps_getting_frames(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.preview.hub import PreviewSource

    cfg = _cfg(endpoint)
    original = PreviewSource._render
    failures = 0

    def fail_twice(self: PreviewSource, *args: Any) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise ValueError("injected render bug")
        return original(self, *args)

    monkeypatch.setattr(PreviewSource, "_render", fail_twice)
    seen: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        assert p.hub is not None
        preview = p.hub.sources["cam"]
        frames = [0]
        stop = asyncio.Event()
        viewer = asyncio.create_task(_viewer(cfg, frames, stop))
        try:
            await until(lambda: preview.rendered >= 10, 30, "frames rendered after the failures")
            await until(lambda: frames[0] >= 10, 30, "frames at the viewer")
            seen["health"] = p.health()[1]
        finally:
            stop.set()
            await asyncio.gather(viewer, return_exceptions=True)

    p = _run(cfg, body)
    assert failures == 2
    assert p.stats()["restarts"]["preview/cam"] == 2
    assert seen["health"]["restarts"]["preview/cam"] == 2


@pytest.mark.parametrize("mode", ["pub", "push"])
def test_healthz_names_a_source_whose_detector_died(endpoint: Any, mode: str) -> None:
    """The detector process dies (its sockets close): frames are no longer tapped (PUB: no
    subscriber; PUSH: no peer, the socket is full), so none enters the ring; /healthz says so,
    and keeps saying it, for both kinds of tap."""
    cfg = _cfg(endpoint, health={"unpaired_after_s": 0.5})
    cfg["tap"]["mode"] = mode
    seen: dict[str, Any] = {}

    async def healthz() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{cfg['preview']['port']}/healthz") as r,
        ):
            return r.status, await r.json()

    def decoded(p: Pipeline) -> int:
        return int(p.stats()["sources"]["cam"]["decoded"])

    async def body(p: Pipeline) -> None:
        det = Detector(cfg)
        for _ in range(5):
            await det.answer(await det.next_frame_id(), [])
        seen["answering"] = await healthz()
        det.close()
        await until(lambda: not p.health()[0], 10, "unhealthy")
        seen["dead"] = []
        for _ in range(5):  # it persists: checked as frames keep being decoded
            before = decoded(p)

            def three_more(b: int = before) -> bool:
                return decoded(p) >= b + 3

            await until(three_more, 10, "3 more frames decoded")
            seen["dead"].append(await healthz())

    _run(cfg, body)
    status, health = seen["answering"]
    assert status == 200 and health["ok"], health
    for status, health in seen["dead"]:
        assert status == 503 and list(health["problems"]) == ["cam"], health
        assert health["problems"]["cam"].startswith("no detector takes the tap's frames"), health
