"""Shared fixtures: free loopback endpoints, generated media, helpers to run streamer."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A loopback port nothing listens on: scripts/bench_pipeline.py's `free_endpoint` (below
    the kernel's range of ephemeral ports, handed out in turn, never twice in one test run)."""
    return int(_bench_pipeline().free_endpoint().rsplit(":", 1)[1])


@functools.cache
def _bench_pipeline() -> ModuleType:
    return load_script("bench_pipeline")


@pytest.fixture(autouse=True)
def _kill_live_leftovers() -> Iterator[None]:
    """Whatever a test does, no RTSP server or RTP feeder it started outlives it."""
    yield
    from tests.live import kill_leftovers  # tests.live imports this module

    kill_leftovers()


@pytest.fixture
def endpoint() -> Iterator[object]:
    """A factory of fresh ``tcp://127.0.0.1:<port>`` endpoints."""
    yield lambda: f"tcp://127.0.0.1:{free_port()}"


def write_clip(
    path: Path,
    n_frames: int,
    size: tuple[int, int] = (640, 360),
    fps: int = 30,
    gop: int | None = None,
    options: Mapping[str, str] | None = None,
    until: threading.Event | None = None,
    wall_fps: float | None = None,
) -> Path:
    """Encode `n_frames` of FFmpeg's testsrc2 picture to H.264 at `path`, in the container
    its name says (MP4; an HLS playlist and its segments for ``.m3u8``), with the muxer's
    `options`; with `gop`, like a camera: a keyframe every `gop` frames, P- and B-frames
    between (otherwise every frame is a keyframe, as lavfi marks them). With `until`, the
    frames are written in real time, as a live stream's, until it is set (at `wall_fps` frames a
    second of the wall clock if given: a camera whose clock runs fast or slow)."""
    w, h = size
    src = av.open(f"testsrc2=size={w}x{h}:rate={fps}", format="lavfi")
    start = time.monotonic()
    with av.open(str(path), "w", options=dict(options or {})) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18"}
        if gop is not None:
            stream.options = {"preset": "veryfast", "crf": "18", "g": str(gop)}
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= n_frames:
                break
            at = start + i / (wall_fps or fps)
            if until is not None and until.wait(max(0.0, at - time.monotonic())):
                break
            frame.pts = i
            if gop is not None:
                frame.pict_type = av.video.frame.PictureType.NONE
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    src.close()
    return path


def decode_bgr(path: Path) -> list[np.ndarray]:
    """Every frame of a clip as BGR, the reference the crops are compared with."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", 60)


def load_script(name: str) -> ModuleType:
    """Import a file from scripts/ as a module (they are runnable tools, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while it executes
    spec.loader.exec_module(mod)
    return mod


def spawn(*args: str) -> subprocess.Popen[bytes]:
    """Start a Python process with this interpreter (stdout/stderr captured)."""
    return subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO
    )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> tuple[str, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out.decode(errors="replace"), err.decode(errors="replace")


def uv_binary() -> Path:
    """The uv `make venv` installed: the Makefile's UV_VERSION (an older one may linger)."""
    (version,) = re.findall(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    uv = REPO / ".tools" / f"uv-{version}" / "bin" / "uv"
    assert uv.exists(), "make venv installs uv into .tools/"
    return uv
