"""Real servers and feeders for the live-source tests: GStreamer's RTSP server in its own
process (scripts/rtsp_server.py, on the system python3 with PyGObject) and a gst-launch RTP
sender for its relay path. While they run, `until` watches them: one that dies fails the wait
at once with its stderr, and a wait that times out reports their stderr."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streamer.errors import EndOfStream
from streamer.sources.base import Source
from streamer.sources.shedding import DecodeShedder, SkipLevel
from streamer.types import Frame
from tests.conftest import REPO, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
READY_TIMEOUT_S = 15.0
STDERR_TAIL_CHARS = 4000


class _Watched:
    """A server or feeder process of a test: its stderr goes to a file (a pipe nobody reads
    could fill and block it), and while it is watched `until` fails as soon as it dies (with its
    stderr) and adds its stderr to a timeout's message."""

    name = "process"
    proc: subprocess.Popen[bytes] | None

    def __init__(self) -> None:
        self.proc = None
        self.errors = tempfile.TemporaryFile("w+b")  # noqa: SIM115 (lives as long as self)

    def stderr_tail(self) -> str:
        """The last STDERR_TAIL_CHARS of what the process wrote to stderr."""
        self.errors.flush()
        self.errors.seek(0)
        text = self.errors.read().decode(errors="replace")
        return text[-STDERR_TAIL_CHARS:] or "(nothing)"

    def died(self) -> str | None:
        """A report if the process has exited on its own, else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited (code {self.proc.returncode}); its stderr:\n" + (
            self.stderr_tail()
        )

    def kill(self) -> None:
        """Stops watching and kills the process (also a stopped one); safe to call twice."""
        self._unwatch()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def _watch(self) -> None:
        _WATCHED.append(self)

    def _unwatch(self) -> None:
        if self in _WATCHED:
            _WATCHED.remove(self)


# The servers and feeders started and not yet killed (tests run one at a time).
_WATCHED: list[_Watched] = []


def kill_leftovers() -> None:
    """Kills every server and feeder a test left running (conftest calls it after each test)."""
    for w in list(_WATCHED):
        w.kill()


class RtspServer(_Watched):
    script = REPO / "scripts" / "rtsp_server.py"

    def __init__(
        self,
        port: int | None = None,
        relay_port: int = 0,
        size: str = "320x240",
        env: dict[str, str] | None = None,
        login: tuple[str, str] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        """`login` (user, password): every path wants these credentials."""
        super().__init__()
        self.port = port or free_port()
        self.name = f"RTSP server on port {self.port}"
        self.env = env
        self.relay_port = relay_port
        self.size = size
        self.login = login
        self.ready_timeout_s = ready_timeout_s
        self.ready_at = 0.0

    def url(self, path: str = "test", login: tuple[str, str] | None = None) -> str:
        userinfo = f"{login[0]}:{login[1]}@" if login else ""
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{path}"

    def start(self) -> RtspServer:
        """Starts the server and returns once it says READY; raises RuntimeError with its
        stderr if it exits first or stays silent for `ready_timeout_s`."""
        self.proc = subprocess.Popen(
            [
                SYSTEM_PYTHON,
                str(self.script),
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
            env=self.env,
        )
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        out = b""
        deadline = time.monotonic() + self.ready_timeout_s
        # select, not readline: a live server that prints nothing must not block past the
        # deadline.
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:  # stdout closed: the server has exited
                break
            out += chunk
            if any(line.startswith(b"READY") for line in out.splitlines()):
                self.ready_at = time.monotonic()
                self._watch()
                return self
        timed_out = self.proc.poll() is None
        self.kill()
        why = f"said nothing within {self.ready_timeout_s} s, killed" if timed_out else "exited"
        raise RuntimeError(
            f"RTSP server did not start ({why}; exit code {self.proc.returncode}); its stderr:\n"
            f"{self.stderr_tail()}"
        )

    def video(self, on: bool) -> None:
        """Stop (or start again) the video of /test-audio; its audio keeps flowing."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGUSR2 if on else signal.SIGUSR1)


def feeder_launch(port: int) -> list[str]:
    """The gst-launch pipeline of RtpFeeder: H.264 RTP of a test picture to UDP `port`."""
    return [
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
    ]


class RtpFeeder(_Watched):
    """H.264 RTP to the server's relay port; SIGSTOP stalls the stream without closing it.
    If gst-launch dies, the next `until` fails at once with its stderr."""

    def __init__(self, port: int, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.name = f"RTP feeder to port {port}"
        self.proc = subprocess.Popen(
            ["gst-launch-1.0", "-q", *feeder_launch(port)],
            stdout=subprocess.DEVNULL,
            stderr=self.errors,
            env=env,
        )
        self._watch()

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


class ScriptedShedder(DecodeShedder):
    """A decoder's shedder that answers the level its `script` says, whatever the stream does
    (it stands in for a decoder far behind, or one the pipeline sheds)."""

    def script(self) -> SkipLevel:
        raise NotImplementedError

    def update(
        self,
        now: float,
        lag_s: float,
        shed_downstream: bool,
        keyframe: bool = True,
        to_keyframe_s: float | None = None,
    ) -> SkipLevel:
        return self.script()


@dataclass
class Consumer:
    """Takes every frame a started source hands over, with its arrival time."""

    source: Source
    frames: list[tuple[float, Frame]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    cost_s: float = 0.0  # the loop's time on each frame, as a pipeline's stages would take

    def start(self) -> Consumer:
        self.source.start(asyncio.get_running_loop())
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        try:
            while True:
                frame = await self.source.recv()
                self.frames.append((time.monotonic(), frame))
                if self.cost_s:
                    time.sleep(self.cost_s)  # (holds the loop, as work on it does)
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
    """Wait for a condition, polling every 20 ms; returns the time it took. Fails at once if
    a running server or feeder dies, and a timeout's message carries their stderr."""
    t = time.monotonic()
    while not cond():
        for w in _WATCHED:
            if (report := w.died()) is not None:
                raise AssertionError(f"while waiting for {what}: {report}")
        if time.monotonic() - t > timeout_s:
            logs = "".join(f"\n--- stderr of {w.name}:\n{w.stderr_tail()}" for w in _WATCHED)
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{logs}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t
