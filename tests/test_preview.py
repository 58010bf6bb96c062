"""The WebRTC preview: an aiortc client sees the detections drawn, a real headless Chromium plays
the page, the token guards everything, and viewers that come and go leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from zmq.utils.garbage import GarbageCollectorThread

from streamer.config import parse_config
from streamer.detections.codec import encode_detections
from streamer.pipeline import CPU_WORKERS, Pipeline
from tests.conftest import REPO, free_port, spawn, stop
from tests.live import until

CHROMIUM = "/usr/lib/chromium/chromium"
FRAMES_DECODED = """async () => {
    const pc = window.streamerPreview.pc;
    if (!pc) return 0;
    for (const s of (await pc.getStats()).values())
        if (s.type === "inbound-rtp" && s.kind === "video") return s.framesDecoded || 0;
    return 0;
}"""
TOKEN = "s3cret-token"
BOX = {
    "x": 160,
    "y": 120,
    "width": 100,
    "height": 60,
    "class": "car",
    "class_id": 0,
    "confidence": 0.9,
    "tracker_id": 7,
}  # corners (110, 90) - (210, 150); class 0 is green


def _cfg(endpoint: Any, port: int, token: str | None = None) -> dict[str, Any]:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    return {
        "sources": [
            {"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"},
            {"id": "idle", "url": "lavfi:testsrc=size=160x120:rate=10"},
        ],
        "detections": {"bind": dets},
        "tap": {"bind": tap},
        "publish": [{"bind": pub}],
        "preview": {"port": port, "token": token, "host_candidates": ["127.0.0.1"]},
    }


async def _detector(cfg: dict[str, Any], stop: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context.instance()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/cam")
    sub.connect(cfg["tap"]["bind"])
    push.connect(cfg["detections"]["bind"])
    try:
        while not stop.is_set():
            if await sub.poll(100):
                header = json.loads((await sub.recv_multipart())[1])
                await push.send_multipart(
                    encode_detections("cam", header["frame_id"], (320, 240), [BOX])
                )
    finally:
        sub.close(linger=0)
        push.close(linger=0)


def _with_pipeline(cfg: dict[str, Any], body: Callable[[Pipeline], Awaitable[None]]) -> Pipeline:
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        stop = asyncio.Event()
        det = asyncio.create_task(_detector(cfg, stop))
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{cfg['preview']['port']}/api/sources"
                for _ in range(100):  # until the server listens
                    try:
                        async with http.get(url, headers=_auth(cfg)) as r:
                            if r.status in (200, 401):
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
            await body(pipeline)
        finally:
            stop.set()
            await det
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 120))
    return pipeline


def _auth(cfg: dict[str, Any]) -> dict[str, str]:
    token = cfg["preview"]["token"]
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _connect(cfg: dict[str, Any], source: str = "cam") -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{cfg['preview']['port']}/api/offer"
        body = {"source_id": source, "sdp": pc.localDescription.sdp, "type": "offer"}
        async with http.post(url, json=body, headers=_auth(cfg)) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    return pc


@pytest.fixture(autouse=True)
def _loopback_candidates() -> None:
    from streamer.preview.server import limit_host_candidates

    limit_host_candidates(["127.0.0.1"])  # the client side of these tests too


def test_aiortc_viewer_sees_the_boxes_drawn(endpoint: Any) -> None:
    cfg = _cfg(endpoint, free_port())
    seen: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        pc = await _connect(cfg)
        track = await asyncio.wait_for(_first_track(pc), 10)
        try:
            for _ in range(300):
                img = (await asyncio.wait_for(track.recv(), 5)).to_ndarray(format="bgr24")
                top = img[89:93, 120:200].reshape(-1, 3).astype(int)  # the box's top edge
                green = (top[:, 1] > 170) & (top[:, 0] < 90) & (top[:, 2] < 90)
                if green.mean() > 0.8:
                    seen["frame"] = img
                    break
        finally:
            await pc.close()
        assert p.hub is not None
        seen["rendered"] = p.hub.sources["cam"].rendered
        seen["idle_rendered"] = p.hub.sources["idle"].rendered

    _with_pipeline(cfg, body)
    assert "frame" in seen, "never saw the green box at (110, 90)-(210, 150)"
    img = seen["frame"]
    inside = img[100:140, 120:200].reshape(-1, 3).astype(int)  # the picture, not the colour
    assert not ((inside[:, 1] > 170) & (inside[:, 0] < 90) & (inside[:, 2] < 90)).all()
    assert seen["rendered"] > 0 and seen["idle_rendered"] == 0  # nobody watched "idle"


async def _first_track(pc: RTCPeerConnection) -> Any:
    while True:
        for t in pc.getReceivers():
            if t.track is not None:
                return t.track
        await asyncio.sleep(0.02)


def test_token_required_everywhere(endpoint: Any) -> None:
    port = free_port()
    cfg = _cfg(endpoint, port, token=TOKEN)
    statuses: dict[str, int] = {}

    async def body(p: Pipeline) -> None:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/api/sources", "/api/sources/cam/crops", "/static/app.js"):
                async with http.get(base + path) as r:
                    statuses[f"GET {path}"] = r.status
                async with http.get(base + path, headers={"Authorization": "Bearer wrong"}) as r:
                    statuses[f"GET {path} wrong"] = r.status
            async with http.post(base + "/api/offer", json={}) as r:
                statuses["POST /api/offer"] = r.status
            async with http.get(base + "/api/sources", headers=_auth(cfg)) as r:
                statuses["GET /api/sources bearer"] = r.status
            async with http.get(base + f"/?token={TOKEN}") as r:
                statuses["GET / query"] = r.status

    _with_pipeline(cfg, body)
    assert statuses.pop("GET /api/sources bearer") == 200
    assert statuses.pop("GET / query") == 200
    assert set(statuses.values()) == {401}, statuses


def test_fifty_viewers_come_and_go_without_leaks(endpoint: Any) -> None:
    cfg = _cfg(endpoint, free_port())
    result: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        assert p.hub is not None
        # Count threads from when the pipeline is fully up (the HTTP server starts first; the
        # crop thread and the sources after it) and one viewer has come and gone (thread pools
        # start their threads on first use: bounded, not leaks).
        await until(lambda: p.stats()["sources"]["cam"]["decoded"] > 0, 10, "frames flow")
        # The default executor (aiortc encodes there) with a size this test knows.
        pool = ThreadPoolExecutor(_DEFAULT_WORKERS, thread_name_prefix="asyncio")
        asyncio.get_running_loop().set_default_executor(pool)
        base: set[threading.Thread] = set()
        for i in range(51):
            if i == 1:
                base = set(threading.enumerate())
            pc = await _connect(cfg, "cam" if i % 2 else "idle")
            for _ in range(200):
                if pc.connectionState == "connected":
                    break
                await asyncio.sleep(0.02)
            assert pc.connectionState == "connected"
            await pc.close()
        server_pcs = _server(p)
        for _ in range(200):  # the server notices each close over DTLS/ICE
            if not server_pcs.pcs and all(s.viewers == 0 for s in p.hub.sources.values()):
                break
            await asyncio.sleep(0.05)
        result["pcs"] = len(server_pcs.pcs)
        result["viewers"] = {k: s.viewers for k, s in p.hub.sources.items()}
        result["tracks"] = [len(s.tracks) for s in p.hub.sources.values()]
        new = [t for t in threading.enumerate() if t not in base]
        result["new"] = sorted(t.name for t in new)
        result["leaked"] = sorted(t.name for t in new if not _pooled(t))
        # ... and no work left in the pools: every worker free to take a job at once (a job per
        # viewer that never ends would hold one, which no thread count shows).
        loop = asyncio.get_running_loop()
        await _all_workers_free(loop, pool, _DEFAULT_WORKERS)
        await _all_workers_free(loop, p._executor, CPU_WORKERS)

    _with_pipeline(cfg, body)
    assert result["pcs"] == 0
    assert result["viewers"] == {"cam": 0, "idle": 0}
    assert result["tracks"] == [0, 0]
    # Threads started since the first viewer: only lazily started pools with a fixed bound, and
    # never more than those bounds. A thread per viewer (or per any 25 of them) would show here.
    assert result["leaked"] == [], result["new"]
    assert len(result["new"]) <= _POOL_BOUND, result["new"]


# Pools started on first use, each with a fixed bound: asyncio's default executor (aiortc
# encodes there; set by the test), the pipeline's CPU pool, and pyzmq's one garbage-collector
# thread for zero-copy sends.
_DEFAULT_WORKERS = 6
_POOL_BOUND = _DEFAULT_WORKERS + CPU_WORKERS + 1


async def _all_workers_free(
    loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor | None, workers: int
) -> None:
    """Fails (BrokenBarrierError) unless `workers` jobs run in `executor` at the same time."""
    barrier = threading.Barrier(workers)
    await asyncio.gather(
        *(loop.run_in_executor(executor, barrier.wait, 10) for _ in range(workers))
    )


def _pooled(t: threading.Thread) -> bool:
    pool = t.name.startswith(("asyncio_", "streamer-cpu_"))
    return pool or isinstance(t, GarbageCollectorThread)


def _server(p: Pipeline) -> Any:
    assert p.preview_server is not None
    return p.preview_server


def test_chromium_plays_the_preview_and_shows_crops(endpoint: Any) -> None:
    from playwright.async_api import async_playwright

    port = free_port()
    cfg = _cfg(endpoint, port, token=TOKEN)
    out: dict[str, Any] = {}
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)

    async def body(p: Pipeline) -> None:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-features=WebRtcHideLocalIpsWithMdns",
                    "--autoplay-policy=no-user-gesture-required",
                    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                ],
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                await page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
                await page.click("button[data-source=cam]", timeout=10_000)
                frames = 0
                for _ in range(120):  # framesDecoded, from the browser's own WebRTC stats
                    frames = await page.evaluate(FRAMES_DECODED)
                    if frames > 30:
                        break
                    await asyncio.sleep(0.25)
                await page.wait_for_function(
                    """() => [...document.querySelectorAll('#crops img')]
                              .some((i) => i.complete && i.naturalWidth > 0)""",
                    timeout=15_000,
                )
                out["frames"] = await page.evaluate(FRAMES_DECODED)
                out["crops"] = await page.locator("#crops img").count()
                await page.screenshot(path=str(artifacts / "preview.png"))
            finally:
                await browser.close()

    _with_pipeline(cfg, body)
    assert out["frames"] > 30 and out["crops"] >= 1
    assert (artifacts / "preview.png").stat().st_size > 10_000


DRAW_SURROGATE = """
import numpy as np
from streamer.preview.draw import annotate
from streamer.types import Detections, Frame, Prediction
y = np.zeros((48, 64), np.uint8)
u = v = np.full((24, 32), 128, np.uint8)
frame = Frame("cam", 0, 0, 0.0, 64, 48, "yuv420p", (y, u, v), y.nbytes * 3 // 2)
names = ["\\ud800", "a\\x00b", "\\udfff" * 1000, "\\u00e9\\u4e2d", "c" * 100_000]
preds = tuple(Prediction(32, 24, 20, 10, 0.5, n, 0, "d") for n in names)
annotate(frame, Detections("cam", 0, None, 64, 48, preds), 64)
print("drawn")
"""


def test_labels_with_any_code_point_are_drawn_without_crashing() -> None:
    """cv2.putText dies with SIGSEGV on a lone surrogate: the preview's labels never pass one
    (checked in a child process, whatever the codec lets through)."""
    proc = spawn("-c", DRAW_SURROGATE)
    try:
        proc.wait(60)
    finally:
        out, err = stop(proc)
    assert proc.returncode == 0, err
    assert "drawn" in out


def test_the_crop_strip_keeps_only_what_it_shows() -> None:
    """Every crop of every source, watched or not, passes through the strip: it keeps the image
    and the fields the page shows, never the rest of the header (keypoints, polygons)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from streamer.preview.hub import SHOWN_FIELDS, PreviewSource

    with ThreadPoolExecutor(1) as pool:
        source = PreviewSource("cam", 320, 5.0, pool)
        header = {
            "frame_id": 3,
            "class": "car",
            "confidence": 0.5,
            "tracker_id": None,
            "width": 4,
            "height": 2,
            "keypoints": [{"x": 1.0, "y": 2.0}] * 256,
            "points": [{"x": 1.0, "y": 2.0}] * 1024,
        }
        source.on_crop(7, header, np.zeros((2, 4, 3), np.uint8))
    (kept,) = source.crops
    assert kept.key == 7 and set(vars(kept)) == {"key", "shown", "image", "jpeg"}
    assert kept.jpeg is None  # (encoded when first asked for)
    assert kept.shown == {k: header[k] for k in SHOWN_FIELDS}


def test_every_viewer_gets_frames_of_its_own() -> None:
    """Each viewer's encoder writes into the frames it is given, in a worker thread (PyAV
    rebases pts and time base in place; aiortc's H.264 encoder sets the picture type). So no
    frame is handed out twice or to two viewers: here an H.264 viewer's encoder does not change
    the frame a VP8 viewer's encoder gets (a frame the H.264 encoder had rebased to 1/30 s
    could go back in time for libvpx, which then fails, and that viewer's video stops)."""
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    from streamer.preview.hub import PreviewHub

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            hub = PreviewHub(["cam"], 320, 50.0, pool)
            (source, h264_viewer), (_, vp8_viewer) = hub.subscribe("cam"), hub.subscribe("cam")
            h264, vp8 = H264Encoder(), Vp8Encoder()
            handed: list[Any] = []
            for _ in range(3):  # nothing drawn: the black picture, again after 1/50 s each
                a, b = await h264_viewer.recv(), await vp8_viewer.recv()
                stamp = (b.pts, b.time_base, b.pict_type)
                h264.encode(a)
                assert (b.pts, b.time_base, b.pict_type) == stamp
                vp8.encode(b)
                handed += [a, b]
            assert len({id(f) for f in handed}) == len(handed)  # (all still referenced)
            assert all((f.to_ndarray() == handed[0].to_ndarray()).all() for f in handed)
            source.detach(h264_viewer, connected=False)
            source.detach(vp8_viewer, connected=False)
            assert source.attached == 0 and vp8_viewer.readyState == "ended"

    asyncio.run(main())


def test_pictures_of_any_even_height_reach_the_viewer_whole() -> None:
    """A 2688x1520 camera previewed 640 wide is drawn 640x362: a height that is not a multiple
    of 4, which PyAV's from_numpy_buffer reads 2 rows short, with the colour planes shifted.
    The viewer's frame is the picture drawn, row for row and in colour."""
    import numpy as np

    from streamer.preview.draw import annotate
    from streamer.preview.hub import PreviewSource
    from streamer.types import Frame

    w, h = 2688, 1520
    y = np.tile(np.linspace(16, 235, w).astype(np.uint8), (h, 1))
    u = np.tile(np.linspace(16, 240, h // 2).astype(np.uint8)[:, None], (1, w // 2))
    v = np.full((h // 2, w // 2), 200, np.uint8)
    frame = Frame("cam", 0, 0, 0.0, w, h, "yuv420p", (y, u, v), y.nbytes * 3 // 2)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            source = PreviewSource("cam", 640, 50.0, pool)
            track = source.attach()
            source._output = source._render(frame, None)
            got = (await track.recv()).to_ndarray(format="bgr24").astype(int)
            want = annotate(frame, None, 640).astype(int)  # 640x362
            assert want.shape == (362, 640, 3) and got.shape == (360, 640, 3)
            diff = np.abs(got - want[:360])  # (I420 and back: a few levels at most)
            assert diff.max() <= 8, (diff.max(), diff.mean())  # shifted planes: up to 255
            # A camera 250 times as wide as high is drawn 2 rows high: shown 4 rows high.
            sy, suv = np.full((16, 4000), 100, np.uint8), np.full((8, 2000), 128, np.uint8)
            strip = Frame("cam", 1, 0, 0.0, 4000, 16, "yuv420p", (sy, suv, suv), 96_000)
            source._output = source._render(strip, None)
            assert (await track.recv()).to_ndarray(format="bgr24").shape == (4, 640, 3)
            track.stop()

    asyncio.run(main())


def test_a_viewer_whose_source_goes_is_closed_and_not_counted_as_video_stopped(
    endpoint: Any,
) -> None:
    """A source removed while its viewer is connected (here its preview alone, as when a viewer
    joins between the pipeline closing the source's viewers and removing its preview): the
    viewer's track ends with its connection up, and it is closed as the source's, not counted
    as a viewer whose video stopped."""
    cfg = _cfg(endpoint, free_port())
    out: dict[str, Any] = {}

    async def body(p: Pipeline) -> None:
        assert p.hub is not None
        server = _server(p)
        pc = await _connect(cfg, "idle")
        try:
            await until(lambda: p.hub is not None and p.hub.sources["idle"].viewers == 1, 10, "up")
            await p.hub.remove_source("idle")
            await until(lambda: not server.viewers, 10, "the viewer closed")
            await asyncio.sleep(1.5)  # past VIDEO_STOPPED_AFTER_S
            out["stopped"] = p.stats()["preview_video_stopped"]
        finally:
            await pc.close()

    _with_pipeline(cfg, body)
    assert out["stopped"] == 0


async def until_page(page: Any, fn: str, above: float, what: str, timeout_s: float = 30) -> None:
    """Until the page function `fn` gives more than `above`."""
    deadline = time.monotonic() + timeout_s
    while await page.evaluate(fn) <= above:
        assert time.monotonic() < deadline, f"not in {timeout_s} s: {what}"
        await asyncio.sleep(0.1)


def test_chromium_connects_again_when_its_video_stops(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer whose video sender fails (aiortc logs the error and stops sending, leaving the
    connection up and the picture frozen) is closed by the server and counted; the page then
    connects again by itself and plays."""
    from aiortc.rtcrtpsender import RTCRtpSender
    from playwright.async_api import async_playwright

    port = free_port()
    cfg = _cfg(endpoint, port)
    out: dict[str, Any] = {}
    fail = threading.Event()
    next_encoded = RTCRtpSender._next_encoded_frame

    async def failing(self: RTCRtpSender, codec: Any) -> Any:
        if fail.is_set():
            fail.clear()
            raise RuntimeError("an encoder failure, injected")
        return await next_encoded(self, codec)

    monkeypatch.setattr(RTCRtpSender, "_next_encoded_frame", failing)

    async def body(p: Pipeline) -> None:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{port}/")
                await page.click("button[data-source=cam]", timeout=10_000)
                await until_page(page, FRAMES_DECODED, 10, "the first frames")
                await page.evaluate("() => { window.firstPc = window.streamerPreview.pc; }")
                fail.set()
                await until(lambda: p.stats()["preview_video_stopped"] == 1, 10, "closed")
                # Chromium notices the closed connection in ~5 s (ICE consent), then the page
                # waits 3 s for it to come back and 1 s more: ~9.5 s here.
                new_pc = "() => window.streamerPreview.pc !== window.firstPc ? 1 : 0"
                await until_page(page, new_pc, 0, "a new connection")
                await until_page(page, FRAMES_DECODED, 10, "frames again")
                out["title"] = await page.text_content("#title")
                out["viewers"] = p.hub.sources["cam"].viewers if p.hub is not None else -1
                # Leaving normally (here: watching another source) is not counted.
                await page.click("button[data-source=idle]")
                await until(
                    lambda: p.hub is not None and p.hub.sources["cam"].attached == 0, 10, "left"
                )
                await until_page(page, FRAMES_DECODED, 10, "the other source's frames")
                await page.click("button[data-source=cam]")  # and back
                await until_page(page, FRAMES_DECODED, 10, "cam's frames again")
                out["stopped_after_leaving"] = p.stats()["preview_video_stopped"]
                crops = "() => document.querySelectorAll('#crops figure').length"
                await until_page(page, crops, 0, "cam's crops shown")
                # The watched source removed: the server closes its viewer, the page tries
                # again, finds it gone (404) and stops trying.
                removed = "() => fetch('/api/sources/cam', {method: 'DELETE'}).then(r => r.status)"
                out["removed"] = await page.evaluate(removed)
                title = "document.querySelector('#title').textContent"
                gone = f"() => {title}.endsWith('no such source') ? 1 : 0"
                await until_page(page, gone, 0, "the page sees the source gone")
                out["stopped_at_end"] = p.stats()["preview_video_stopped"]
                await asyncio.sleep(2)  # two of the page's refreshes
                out["pc_at_end"] = await page.evaluate("() => window.streamerPreview.pc")
                out["crops_at_end"] = await page.locator("#crops figure").count()
                out["status_at_end"] = await page.text_content("#status")
                url = f"http://127.0.0.1:{port}/metrics"
                async with aiohttp.ClientSession() as http, http.get(url) as r:
                    out["metrics"] = await r.text()
            finally:
                await browser.close()

    _with_pipeline(cfg, body)
    assert not fail.is_set()  # the failure was injected, once
    assert out["title"] == "cam"  # connected again: no "connecting again" left
    assert out["viewers"] == 1  # the closed viewer left; its replacement watches
    assert out["stopped_after_leaving"] == 1
    assert out["removed"] == 200 and out["stopped_at_end"] == 1
    # ... and then stopped watching: no connection, no crops, no errors from refreshing.
    assert out["pc_at_end"] is None and out["crops_at_end"] == 0
    assert out["status_at_end"].startswith("up "), out["status_at_end"]
    assert "streamer_preview_video_stopped_total 1.0" in out["metrics"]
