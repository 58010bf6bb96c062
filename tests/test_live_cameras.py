"""Cameras added and removed while streamer runs: through the control API (POST / DELETE
/api/sources) and by SIGHUP re-reading the config file. The other cameras are untouched."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber
from streamer.config import parse_config
from streamer.errors import ConfigError
from streamer.pipeline import Pipeline, accounting_balance
from tests.conftest import REPO, free_port
from tests.live import until

FPS = 30


def lavfi(sid: str, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "url": f"lavfi:testsrc2=size=160x120:rate={FPS}", **extra}


def _cfg(endpoint: Any, port: int) -> dict[str, Any]:
    return {
        "sources": [lavfi("steady")],
        "detections": {"bind": endpoint()},
        "tap": {"bind": endpoint(), "encoding": "raw-i420"},
        "publish": [{"bind": endpoint()}],
        "preview": {"port": port, "host_candidates": ["127.0.0.1"]},
    }


async def _detector(tap: str, dets: str) -> None:
    """Answers every frame of every camera with one box."""
    async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
        async for frame in frames:
            box = {"x": 20, "y": 20, "width": 10, "height": 10, "class": "a", "confidence": 1}
            await sender.send(frame, [box])


def test_add_and_remove_cameras_through_the_api(endpoint: Any) -> None:
    port = free_port()
    cfg = _cfg(endpoint, port)
    pipeline = Pipeline(parse_config(cfg))
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, Any] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        det = asyncio.create_task(_detector(cfg["tap"]["bind"], cfg["detections"]["bind"]))
        try:
            await until(lambda: pipeline.stats()["sources"]["steady"]["paired"] > 10, 20, "pairs")
            steady0 = pipeline.stats()["sources"]["steady"]
            t0 = time.monotonic()
            async with aiohttp.ClientSession() as http:
                # Bad bodies get check-config's messages, as a 400.
                async with http.post(f"{base}/api/sources", json={"id": "x"}) as r:
                    seen["missing_url"] = (r.status, await r.text())
                async with http.post(f"{base}/api/sources", json=lavfi("steady")) as r:
                    seen["duplicate"] = (r.status, await r.text())
                async with http.post(
                    f"{base}/api/sources", json=lavfi("x"), headers={"Origin": "http://evil"}
                ) as r:
                    seen["cross_site"] = r.status
                # A new camera starts and is served.
                async with http.post(f"{base}/api/sources", json=lavfi("new", max_fps=10)) as r:
                    seen["added"] = (r.status, await r.json())
                await until(
                    lambda: pipeline.stats()["sources"]["new"]["paired"] > 5, 20, "new camera"
                )
                async with http.get(f"{base}/api/sources") as r:
                    seen["listed"] = sorted((await r.json())["sources"])
                # It is removed: stopped, its final counters reported once.
                async with http.delete(f"{base}/api/sources/new") as r:
                    seen["removed"] = (r.status, await r.json())
                async with http.delete(f"{base}/api/sources/new") as r:
                    seen["removed_again"] = r.status
                async with http.get(f"{base}/api/sources") as r:
                    body = await r.json()
                    seen["listed_after"] = sorted(body["sources"])
                    seen["removed_sources"] = [s["id"] for s in body["removed_sources"]]
            await asyncio.sleep(0.5)  # detections still coming for it are unknown_source
            steady1 = pipeline.stats()["sources"]["steady"]
            seen["steady_fps"] = (steady1["decoded"] - steady0["decoded"]) / (time.monotonic() - t0)
            seen["steady"] = steady1
        finally:
            det.cancel()
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 90))
    assert seen["missing_url"][0] == 400 and "url: Field required" in seen["missing_url"][1]
    assert seen["duplicate"][0] == 400 and "already exists" in seen["duplicate"][1]
    assert seen["cross_site"] == 403
    assert seen["added"][0] == 201 and seen["added"][1]["settings"]["max_fps"] == 10
    assert seen["listed"] == ["new", "steady"]
    status, removed = seen["removed"]
    assert status == 200 and removed["final"]["state"] == "stopped"
    assert removed["final"]["paired"] > 5
    assert accounting_balance(removed["final"]) == 0, removed["final"]
    assert seen["removed_again"] == 404
    assert seen["listed_after"] == ["steady"] and seen["removed_sources"] == ["new"]
    # The other camera was untouched: no drop, no reconnect, its frame rate held.
    steady = seen["steady"]
    assert steady["reconnects"] == 0 and steady["dropped_handoff"] == 0, steady
    assert steady["expired"] == 0, steady
    assert seen["steady_fps"] > 0.8 * FPS, seen["steady_fps"]


def test_sighup_applies_the_config_files_sources(endpoint: Any, tmp_path: Path) -> None:
    """A real `streamer run`: the config file is rewritten (one camera removed, one added, one
    with a new max_fps, one with a new stall timeout) and SIGHUP applies it: the max_fps live,
    the stall timeout by a restart; the unchanged camera goes on untouched."""
    port = free_port()
    cfg = _cfg(endpoint, port)
    cfg["sources"] = [
        lavfi("steady"),
        lavfi("going"),
        lavfi("changing", max_fps=10),
        lavfi("restarting"),
    ]
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", "-c", str(path), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    async def sources(http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{base}/api/sources") as r:
            body: dict[str, Any] = await r.json()
            return body

    async def main() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            body: dict[str, Any] = {}

            async def poll() -> None:
                nonlocal body
                try:
                    body = await sources(http)
                except aiohttp.ClientError:
                    body = {}

            deadline = time.monotonic() + 20
            while not body.get("sources", {}).get("steady", {}).get("decoded"):
                assert time.monotonic() < deadline, "streamer did not start"
                await asyncio.sleep(0.1)
                await poll()
            before = body["sources"]["steady"]
            cfg["sources"] = [
                lavfi("steady"),
                lavfi("changing", max_fps=5),
                lavfi("restarting", stall_timeout_s=3),
                lavfi("arriving"),
            ]
            path.write_text(yaml.safe_dump(cfg))
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while "arriving" not in body.get("sources", {}) or (
                not body["sources"]["arriving"]["decoded"]
            ):
                assert time.monotonic() < deadline, f"reload not applied: {body}"
                await asyncio.sleep(0.1)
                await poll()
            async with http.get(f"{base}/api/sources/changing") as r:
                changing = await r.json()
            # A config that does not load leaves the running one as it is.
            path.write_text("sources: [oops")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            await poll()
            return {"before": before, "after": body, "changing": changing}

    try:
        got = asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    after = got["after"]
    assert sorted(after["sources"]) == ["arriving", "changing", "restarting", "steady"]
    assert [s["id"] for s in after["removed_sources"]] == ["going", "restarting"]
    for key in ("decoded", "paired", "not_tapped"):  # running totals of the removed
        assert after["removed_totals"][key] == sum(s[key] for s in after["removed_sources"])
    assert got["changing"]["settings"]["max_fps"] == 5
    assert got["changing"]["reconnects"] == 0  # changed live, not restarted
    steady = after["sources"]["steady"]
    assert steady["reconnects"] == 0 and steady["dropped_handoff"] == 0, steady
    assert steady["decoded"] > got["before"]["decoded"]
    log = err.decode(errors="replace")
    assert (
        "config reload: added ['arriving'], removed ['going'], restarted ['restarting'], "
        "changed live ['changing']" in log
    )
    assert "SIGHUP: config not reloaded, the running one is kept" in log
    assert proc.returncode == 0, log[-2000:]


def test_racing_requests_and_a_lossless_camera_removed_mid_wait(endpoint: Any) -> None:
    """DELETE and POST of one id at once, GET during a DELETE, a bad synthetic URL, and a
    `realtime: false` camera removed while its frames wait for a detector that never came: every
    answer is 2xx or 4xx, never 500, and the frame tap goes on serving the other camera."""
    port = free_port()
    cfg = _cfg(endpoint, port)
    pipeline = Pipeline(parse_config(cfg))
    base = f"http://127.0.0.1:{port}"
    seen: dict[str, Any] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.stats()["sources"]["steady"]["decoded"] > 5, 20, "start")
            async with aiohttp.ClientSession() as http:

                async def status(method: str, path: str, body: Any = None) -> int:
                    async with http.request(method, f"{base}{path}", json=body) as r:
                        await r.read()
                        return r.status

                bad = lavfi("bad")
                bad["url"] = "synthetic:width=abc"
                seen["bad_url"] = await status("POST", "/api/sources", bad)
                seen["huge"] = await status(
                    "POST", "/api/sources", {"id": "huge", "url": "synthetic:width=30000"}
                )
                # A lossless camera: with no detector, its frames wait in the tap worker.
                lossless = lavfi("lossless", realtime=False)
                seen["lossless"] = await status("POST", "/api/sources", lossless)
                await asyncio.sleep(0.5)
                # Its stop takes a second (as a stalled read's would): the POST comes meanwhile,
                # whatever the load on the machine.
                source = pipeline.cameras["lossless"].source
                real_stop = source.stop

                def slow_stop() -> None:
                    time.sleep(1.0)
                    real_stop()

                source.stop = slow_stop  # type: ignore[method-assign]

                async def post_later() -> int:
                    await asyncio.sleep(0.2)
                    return await status("POST", "/api/sources", lavfi("lossless"))

                seen["race"] = await asyncio.gather(
                    status("DELETE", "/api/sources/lossless"),
                    post_later(),
                    status("GET", "/api/sources/lossless"),
                    status("PATCH", "/api/sources/lossless", {"max_fps": 5}),
                )
                await asyncio.sleep(0.5)
                seen["list"] = await status("GET", "/api/sources")
                seen["metrics"] = await status("GET", "/metrics")
            # The tap still serves: a detector that comes now gets frames of "steady".
            got: list[str] = []

            async def detector() -> None:
                async with AsyncFrameSubscriber(cfg["tap"]["bind"]) as frames:
                    async for frame in frames:
                        got.append(frame.source_id)

            task = asyncio.create_task(detector())
            try:
                await until(lambda: got.count("steady") >= 10, 20, "tapped frames of steady")
            finally:
                task.cancel()
            seen["health"] = pipeline.health()[1]
        finally:
            pipeline.stop()
            seen["stats"] = await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 90))
    assert seen["bad_url"] == 400 and seen["huge"] == 400
    assert seen["lossless"] == 201
    delete, post, get, patch = seen["race"]
    assert delete == 200 and post == 400, seen["race"]  # the id was still being removed
    assert get in (200, 404) and patch in (200, 404), seen["race"]
    assert seen["list"] == 200 and seen["metrics"] == 200
    assert "frame_tap" not in seen["health"]["problems"], seen["health"]
    removed = [s for s in seen["stats"]["removed_sources"] if s["id"] == "lossless"]
    assert len(removed) == 1
    assert removed[0]["in_tap"] == removed[0]["in_handoff"] == 0, removed[0]
    assert accounting_balance(removed[0]) == 0, removed[0]


def test_a_shard_refuses_a_camera_of_another_shard(endpoint: Any) -> None:
    from streamer.sharding import Shard, shard_of

    shard = Shard(0, 3)
    mine = next(f"cam-{i}" for i in range(100) if shard_of(f"cam-{i}", 3) == 0)
    other = next(f"cam-{i}" for i in range(100) if shard_of(f"cam-{i}", 3) == 1)
    cfg = _cfg(endpoint, free_port())
    cfg["sources"] = [lavfi(mine)]
    pipeline = Pipeline(parse_config(cfg, shard), shard)
    errors: list[str] = []

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.stats()["sources"][mine]["decoded"] > 0, 20, "start")
            try:
                await pipeline.add_source(lavfi(other))
            except ConfigError as e:
                errors.append(str(e))
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert errors == [f"id: source {other!r} belongs to shard 1 of 3, not to this one (0/3)"]


def test_totals_count_every_removed_camera_not_only_those_listed() -> None:
    """The status line's totals (frames/s from their differences) include every camera ever
    removed: the list keeps the last REMOVED_KEPT; before, the 65th removal made the totals
    drop, and the status line showed a large negative rate."""
    from streamer.cli import _totals
    from streamer.pipeline import REMOVED_KEPT

    p = Pipeline(
        parse_config(
            {
                "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=64x48:rate=5"}],
                "detections": {"bind": "tcp://127.0.0.1:0"},
                "publish": [{"bind": "tcp://127.0.0.1:0"}],
            }
        )
    )
    final = {**p._camera_stats(p.cameras["cam"]), "decoded": 10, "paired": 7}
    final["detections"] = {"late": 1}
    before = _totals(p.stats())
    for i in range(REMOVED_KEPT + 6):
        p._removed.append({"id": f"gone{i}", **final})
        p._add_removed(final)
    after = _totals(p.stats())
    n = REMOVED_KEPT + 6
    assert len(p.stats()["removed_sources"]) == REMOVED_KEPT
    assert (after["decoded"] - before["decoded"], after["paired"] - before["paired"]) == (
        10 * n,
        7 * n,
    )
    assert after["late"] - before["late"] == n


def test_a_reload_that_restarts_a_camera_beside_an_ended_file_does_not_end_the_run(
    endpoint: Any,
) -> None:
    """A camera restarted by a reload (removed, then added) while the only other camera is a
    file that has ended: the run goes on (it ended within 50 ms: the removal saw only ended
    cameras left). The restarted camera's frame ids go on from the old one's; a camera removed
    through the API and added again starts past every removed camera's ids (a late detection
    for an old frame paired the new camera's frame of that id)."""
    cfg = _cfg(endpoint, free_port())
    del cfg["preview"]
    cfg["sources"] = [
        lavfi("live"),
        {"id": "file", "url": "lavfi:testsrc2=size=64x48:rate=10:duration=0.5"},
    ]
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, Any] = {}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.cameras["file"].ended, 20, "the file ended")
            await until(lambda: pipeline.cameras["live"].source.next_frame_id > 5, 20, "live")
            before = pipeline.cameras["live"].source.next_frame_id
            changed = parse_config(
                {**cfg, "sources": [lavfi("live", max_fps=7.0, transport="udp"), cfg["sources"][1]]}
            )
            seen["reload"] = await pipeline.reload(changed)
            await asyncio.sleep(1.0)
            seen["running"] = not run.done()
            seen["ids_on"] = pipeline.cameras["live"].source.next_frame_id >= before
            old_next = pipeline.cameras["live"].source.next_frame_id
            await pipeline.remove_source("live")
            await pipeline.add_source(lavfi("live"))
            seen["readded_from"] = pipeline.cameras["live"].source.next_frame_id - old_next
            await asyncio.sleep(0.5)
            seen["still_running"] = not run.done()
        finally:
            pipeline.stop()
            seen["stats"] = await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert seen["reload"]["restarted"] == ["live"], seen["reload"]
    assert seen["running"] and seen["ids_on"] and seen["still_running"], seen
    assert seen["readded_from"] >= 0, seen


def test_a_lossless_camera_without_a_detector_does_not_hold_the_tap_from_the_others(
    endpoint: Any,
) -> None:
    """A `realtime: false` camera whose frames no detector subscribes to waits by itself: the
    live camera's frames still reach a detector subscribed to them alone (none did: the tap
    worker every camera shares was held retrying the lossless frame). Removed, every frame
    of each camera has one outcome."""
    cfg = _cfg(endpoint, free_port())
    del cfg["preview"]
    cfg["sources"] = [lavfi("live"), lavfi("slow", realtime=False)]
    pipeline = Pipeline(parse_config(cfg))
    got: list[str] = []

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(pipeline.run())

        async def detector() -> None:  # answers the live camera's frames alone
            tap, dets = cfg["tap"]["bind"], cfg["detections"]["bind"]
            async with (
                AsyncFrameSubscriber(tap, topics=["frame/live"]) as frames,
                AsyncDetectionSender(dets) as sender,
            ):
                async for frame in frames:
                    got.append(frame.source_id)
                    await sender.send(frame, [])

        task = asyncio.create_task(detector())
        try:
            await until(lambda: len(got) >= 20, 20, "the live camera's frames tapped")
            for sid in ("slow", "live"):
                await pipeline.remove_source(sid)
        finally:
            task.cancel()
            pipeline.stop()
            stats = await asyncio.wait_for(run, 20)
        return stats

    stats = asyncio.run(asyncio.wait_for(main(), 60))
    assert set(got) == {"live"}
    removed = {s["id"]: s for s in stats["removed_sources"]}
    for sid in ("slow", "live"):
        assert accounting_balance(removed[sid]) == 0, removed[sid]
        assert removed[sid]["in_tap"] == 0, removed[sid]


def test_removing_the_last_running_camera_beside_ended_files_ends_the_run(endpoint: Any) -> None:
    """Every camera left has ended by itself once the last running one is removed through the
    API: the run ends, as before (with the reload fix it ran on for good)."""
    cfg = _cfg(endpoint, free_port())
    del cfg["preview"]
    short = {"id": "file", "url": "lavfi:testsrc2=size=64x48:rate=10:duration=0.5"}
    cfg["sources"] = [lavfi("live"), short]
    pipeline = Pipeline(parse_config(cfg))

    async def main() -> bool:
        run = asyncio.create_task(pipeline.run())
        try:
            await until(lambda: pipeline.cameras["file"].ended, 20, "the file ended")
            await pipeline.remove_source("live")
            await asyncio.wait_for(asyncio.shield(run), 10)
            return True
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    assert asyncio.run(asyncio.wait_for(main(), 60))


def test_a_lossless_cameras_detector_that_leaves_does_not_hold_the_others(
    endpoint: Any,
) -> None:
    """A `realtime: false` camera's detector leaves mid-stream: its frames wait for the next
    one in a task of its camera's, in order, and the live camera's detector goes on getting
    frames (it got none: the tap worker every camera shares retried the lossless frame).
    Removed, every frame of each camera has one outcome."""
    cfg = _cfg(endpoint, free_port())
    del cfg["preview"]
    cfg["sources"] = [lavfi("live"), lavfi("slow", realtime=False)]
    pipeline = Pipeline(parse_config(cfg))
    got: dict[str, list[int]] = {"live": [], "slow": []}

    async def detector(sid: str) -> None:
        tap, dets = cfg["tap"]["bind"], cfg["detections"]["bind"]
        async with (
            AsyncFrameSubscriber(tap, topics=[f"frame/{sid}"]) as frames,
            AsyncDetectionSender(dets) as sender,
        ):
            async for frame in frames:
                got[sid].append(frame.frame_id)
                await sender.send(frame, [])

    async def main() -> dict[str, Any]:
        run = asyncio.create_task(pipeline.run())
        live, slow = asyncio.create_task(detector("live")), asyncio.create_task(detector("slow"))
        try:
            await until(lambda: len(got["slow"]) >= 20 and len(got["live"]) >= 10, 20, "both")
            slow.cancel()
            await asyncio.sleep(0.5)  # its frames now wait for a detector
            before = len(got["live"])
            await until(lambda: len(got["live"]) >= before + 20, 10, "live frames go on")
            slow = asyncio.create_task(detector("slow"))  # another comes: they go on, in order
            start = len(got["slow"])
            await until(lambda: len(got["slow"]) >= start + 10, 20, "slow frames again")
            for sid in ("slow", "live"):
                await pipeline.remove_source(sid)
        finally:
            live.cancel()
            slow.cancel()
            pipeline.stop()
            stats = await asyncio.wait_for(run, 20)
        return stats

    stats = asyncio.run(asyncio.wait_for(main(), 90))
    assert got["slow"] == sorted(got["slow"]), got["slow"]  # in order, across the wait
    removed = {s["id"]: s for s in stats["removed_sources"]}
    for sid in ("slow", "live"):
        assert accounting_balance(removed[sid]) == 0, removed[sid]
        assert removed[sid]["in_tap"] == 0, removed[sid]


def test_lossless_frames_waiting_at_the_end_of_their_file_get_the_drain(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `realtime: false` file whose last frames find the detector's queue full for a moment
    (0.5 s): they wait in order and are sent within the drain, none given up as stopping, and
    nothing is left in the tap at the end (the first version cancelled the wait at once and
    lost 1-2 of them, and a wait started during the drain ran on after the run)."""
    from streamer.publish.zmq_out import OutSocket

    full_until: list[float] = []
    sent: list[int] = []

    def attempt(self: OutSocket, parts: Any) -> str:
        frame_id = json.loads(bytes(parts[1]))["frame_id"]
        if frame_id >= 28 and not full_until:  # (the last two: the file then ends)
            full_until.append(time.monotonic() + 0.5)
        if full_until and time.monotonic() < full_until[0]:
            return "full"
        sent.append(frame_id)
        return "sent"

    monkeypatch.setattr(OutSocket, "attempt", attempt)
    monkeypatch.setattr(OutSocket, "refuses", lambda self, topic: None)
    cfg = _cfg(endpoint, free_port())
    del cfg["preview"]
    cfg["sources"] = [
        {"id": "file", "url": "lavfi:testsrc2=size=64x48:rate=30:duration=1", "realtime": False}
    ]
    cfg["tap"]["max_in_flight"] = 60
    stats = asyncio.run(asyncio.wait_for(Pipeline(parse_config(cfg)).run(), 60))
    s = stats["sources"]["file"]
    assert sent == list(range(30)), sent  # every frame, in order
    assert "stopping" not in s["not_tapped_by"] and s["in_tap"] == 0, s
    assert accounting_balance(s) == 0, s
