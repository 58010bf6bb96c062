#!/usr/bin/env python3
"""HTTP camera input benchmark: streamer's bounded HTTP input against FFmpeg's own client.

A server process on loopback sends (1) an MJPEG stream of 1080p pictures (`--size`) as fast as
it is read, and (2) a recorded HLS stream (H.264, 1-s segments). This process demuxes and
decodes N frames of each, (a) through FFmpeg's own HTTP client and (b) through streamer's
(`streamer.sources.http_input.HttpInput` as PyAV's `io_open`, as `AvSource` reads an http(s)
camera), in alternating rounds, and prints the CPU time per frame of each (this process only:
the server is another) and (b)/(a): above 1, streamer's input costs more.

    .venv/bin/python scripts/bench_http_input.py [--frames 300] [--rounds 3] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2

from streamer.sources.http_input import HttpInput

SERVER = r"""
import sys, socketserver, threading
from pathlib import Path
root = Path(sys.argv[1])
frames = [p.read_bytes() for p in sorted(root.glob("*.jpg"))]

class H(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline().decode()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        path = line.split(" ")[1]
        try:
            if path == "/video.mjpg":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;"
                                 b"boundary=frame\r\nConnection: close\r\n\r\n")
                i = 0
                while True:
                    pic = frames[i % len(frames)]
                    i += 1
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(pic)).encode() + b"\r\n\r\n" + pic + b"\r\n")
            f = root / path.lstrip("/")
            data = f.read_bytes()
            kind = b"application/vnd.apple.mpegurl" if f.suffix == ".m3u8" else b"video/mp2t"
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                             + str(len(data)).encode() + b"\r\nConnection: close\r\n\r\n" + data)
        except OSError:
            pass

socketserver.ThreadingTCPServer.allow_reuse_address = True
srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def make_media(root: Path, frames: int, size: str) -> None:
    """30 JPEG pictures and an HLS recording of `frames` H.264 frames, of `size`."""
    width, height = (int(v) for v in size.split("x"))
    src = av.open(f"testsrc2=size={size}:rate=30", format="lavfi")
    options = {"hls_time": "1", "hls_list_size": "0", "hls_playlist_type": "vod"}
    with av.open(str(root / "live.m3u8"), "w", options=options) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23", "g": "30"}
        stream.codec_context.time_base = Fraction(1, 30)
        for i, frame in enumerate(src.decode(video=0)):
            if i >= frames:
                break
            if i < 30:
                ok, data = cv2.imencode(".jpg", frame.to_ndarray(format="bgr24"))
                assert ok
                (root / f"{i:03d}.jpg").write_bytes(data.tobytes())
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def cpu_per_frame(url: str, frames: int, ours: bool) -> float:
    """CPU seconds of this process per frame demuxed and decoded."""
    http = None
    kw: dict[str, Any] = {"timeout": (10, 10)}
    if ours:
        http = HttpInput(url, read_timeout_s=10, time_limit_s=10, max_bytes=64 << 20, options={})
        url = http.start()
        kw.update(io_open=http, options={"http_persistent": "0"})
        if http.hls_type:
            kw["format"] = "hls"
    t0 = time.process_time()
    n = 0
    with av.open(url, **kw) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if http is not None:
                http.packet()
            n += len(packet.decode())
            if n >= frames:
                break
    took = time.process_time() - t0
    if http is not None:
        http.close()
    return took / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", default="1920x1080")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_media(root, args.frames, args.size)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(root)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            for name, path in (("MJPEG", "/video.mjpg"), ("HLS", "/live.m3u8")):
                url = f"http://127.0.0.1:{port}{path}"
                got: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.rounds):
                    for ours in (False, True):
                        got[ours].append(cpu_per_frame(url, args.frames, ours))
                a, b = statistics.median(got[False]), statistics.median(got[True])
                print(
                    f"{name} {args.size}: FFmpeg's client {a * 1e3:.2f} ms CPU a frame, streamer's "
                    f"{b * 1e3:.2f} ms (median of {args.rounds}); (b)/(a) {b / a:.3f}"
                )
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
