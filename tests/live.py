"""Real servers and feeders for the live-source tests: GStreamer's RTSP server in its own
process (scripts/rtsp_server.py, on the system python3 with PyGObject) and a gst-launch RTP
sender for its relay path."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamer.errors import EndOfStream
from streamer.sources.base import Source
from streamer.types import Frame
from tests.conftest import REPO, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
READY_TIMEOUT_S = 15.0


class RtspServer:
    def __init__(
        self,
        port: int | None = None,
        relay_port: int = 0,
        size: str = "320x240",
        env: dict[str, str] | None = None,
        login: tuple[str, str] | None = None,
    ) -> None:
        """`login` (user, password): every path wants these credentials."""
        self.port = port or free_port()
        self.env = env
        self.relay_port = relay_port
        self.size = size
        self.login = login
        self.proc: subprocess.Popen[str] | None = None
        self.ready_at = 0.0
        # The server's stderr goes to a file (a pipe nobody reads could fill and block it); a
        # failure to start is reported with it.
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (lives as long as the server)

    def url(self, path: str = "test", login: tuple[str, str] | None = None) -> str:
        userinfo = f"{login[0]}:{login[1]}@" if login else ""
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{path}"

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(REPO / "scripts" / "rtsp_server.py"),
                "--port",
                str(self.port),
                "--relay-port",
                str(self.relay_port),
                "--size",
                self.size,
                *(["--user", self.login[0], "--password", self.login[1]] if self.login else []),
            ],
            stdout=subprocess.PIPE,
            stderr=self.errors,
            text=True,
            env=self.env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                self.ready_at = time.monotonic()
                return self
            if not line and self.proc.poll() is not None:
                break
        self.kill()
        self.errors.seek(0)
        raise RuntimeError(
            f"RTSP server did not start (exit code {self.proc.returncode}); its stderr:\n"
            f"{self.errors.read()[-4000:]}"
        )

    def video(self, on: bool) -> None:
        """Stop (or start again) the video of /test-audio; its audio keeps flowing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGUSR2 if on else signal.SIGUSR1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class RtpFeeder:
    """H.264 RTP to the server's relay port; SIGSTOP stalls the stream without closing it."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [
                "gst-launch-1.0",
                "-q",
                "videotestsrc",
                "is-live=true",
                "!",
                "video/x-raw,width=320,height=240,framerate=30/1",
                "!",
                "x264enc",
                "tune=zerolatency",
                "speed-preset=ultrafast",
                "key-int-max=15",
                "!",
                "rtph264pay",
                "config-interval=1",
                "!",
                "udpsink",
                "host=127.0.0.1",
                f"port={port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Consumer:
    """Takes every frame a started source hands over, with its arrival time."""

    source: Source
    frames: list[tuple[float, Frame]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def start(self) -> Consumer:
        self.source.start(asyncio.get_running_loop())
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                self.frames.append((time.monotonic(), frame))
        except EndOfStream:
            return

    def count_since(self, t: float) -> int:
        return sum(1 for at, _ in self.frames if at >= t)

    async def stop(self) -> float:
        """Stop the source; returns how long the stop took."""
        t = time.monotonic()
        await asyncio.to_thread(self.source.stop)
        took = time.monotonic() - t
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        return took


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait for a condition, polling every 20 ms; returns the time it took."""
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t
