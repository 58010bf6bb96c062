"""http(s) cameras read through streamer's own bounded HTTP input (streamer/sources/http_input.py),
against real HTTP servers on loopback: real MJPEG and files over HTTP, Basic and Digest
passwords, and hostile servers (an MJPEG part or a playlist that never ends, a trickle, schemes
other than http in a playlist, fuzzed answers). What a hostile server sends is counted by the
server itself: the bound is on what the camera's session took before it stopped reading."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from streamer.config import SourceConfig, format_validation_error
from streamer.errors import SourceError
from streamer.sources import http_input
from streamer.sources.av_source import AvSource
from streamer.sources.base import RetryPolicy
from tests.conftest import write_clip
from tests.live import Consumer, until

FAST_RETRY = RetryPolicy(base_s=0.1, cap_s=0.5, healthy_after_s=1.0)
SMALL = 256 * 256  # max_pixels: the session's byte bound is then http_input.MIN_PACKET_BYTES
# What the kernel's socket buffers on loopback may hold beyond what the reader took.
SLACK = 8 * 1024 * 1024


class Server:
    """A threaded TCP server on loopback whose `handler(sock, request_bytes)` answers each
    connection; `sent` counts the bytes it wrote, `requests` the requests' heads."""

    def __init__(self, handler: Callable[[Server, socket.socket, bytes], None]) -> None:
        outer = self
        self.sent = 0
        self.requests: list[bytes] = []
        self.lock = threading.Lock()

        class H(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                head = b""
                sock.settimeout(10)
                try:
                    while b"\r\n\r\n" not in head and len(head) < 65536:
                        chunk = sock.recv(4096)
                        if not chunk:
                            return
                        head += chunk
                    with outer.lock:
                        outer.requests.append(head)
                    handler(outer, sock, head)
                except OSError:
                    pass

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    def send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self.lock:
            self.sent += len(data)

    def url(self, path: str = "/video") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(handler: Callable[[Server, socket.socket, bytes], None]) -> Server:
        servers.append(Server(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def source(url: str, **kw: Any) -> AvSource:
    kw.setdefault("stall_timeout_s", 2.0)
    kw.setdefault("open_timeout_s", 3.0)
    return AvSource("cam", url, retry=FAST_RETRY, **kw)


def jpeg(i: int, size: tuple[int, int] = (160, 120)) -> bytes:
    """A real JPEG picture, different for each `i`."""
    w, h = size
    img = np.full((h, w, 3), (i * 37) % 256, np.uint8)
    img[: h // 2, : w // 2] = 255 - img[0, 0]
    ok, data = cv2.imencode(".jpg", img)
    assert ok
    return data.tobytes()


def mjpeg_head(boundary: bytes = b"frame") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: multipart/x-mixed-replace;boundary="
        + boundary
        + b"\r\nConnection: close\r\n\r\n"
    )


def mjpeg_camera(
    frames: int = 10_000, fps: float = 30.0
) -> Callable[[Server, socket.socket, bytes], None]:
    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, mjpeg_head())
        for i in range(frames):
            pic = jpeg(i)
            srv.send(
                sock,
                b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(pic)
                + pic
                + b"\r\n",
            )
            time.sleep(1 / fps)

    return handler


async def run_until(
    src: AvSource, cond: Callable[[Consumer], bool], timeout_s: float, what: str
) -> Consumer:
    c = Consumer(src).start()
    try:
        await until(lambda: cond(c), timeout_s, what)
    finally:
        await c.stop()
    return c


def assert_refused(
    src: AvSource, srv: Server, stop: threading.Event, said: str, bound: int
) -> None:
    """Run `src` until a session is refused (`too_large`), then stop the server's sending:
    the error says `said`, and each session took at most `bound` bytes (and what the socket
    buffers hold)."""
    try:
        asyncio.run(run_until(src, lambda c: src.stats.too_large >= 1, 30, "a session refused"))
    finally:
        stop.set()
    assert said in (src.stats.last_error or ""), src.stats
    assert srv.sent / len(srv.requests) <= bound + SLACK, (srv.sent, len(srv.requests))


def test_mjpeg_camera_over_http_is_read(serve: Callable[..., Server]) -> None:
    srv = serve(mjpeg_camera())
    src = source(srv.url("/video.mjpg"))
    c = asyncio.run(run_until(src, lambda c: len(c.frames) >= 20, 20, "20 MJPEG frames"))
    frame = c.frames[-1][1]
    assert (frame.width, frame.height) == (160, 120)
    assert src.stats.too_large == 0 and src.stats.last_error is None, src.stats


def test_an_mjpeg_part_that_never_ends_is_cut_off_at_the_byte_bound(
    serve: Callable[..., Server],
) -> None:
    """The part's header, then bytes without end (no boundary, no Content-Length): FFmpeg
    holds them all while it waits for the part's end; before this bound, 2 GB in 13 s."""
    stop = threading.Event()

    def endless(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, mjpeg_head() + b"--frame\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8")
        chunk = b"\x00" * 65536
        while not stop.is_set() and srv.sent < 1024 * 1024 * 1024:
            srv.send(sock, chunk)

    srv = serve(endless)
    src = source(srv.url("/video.mjpg"), max_pixels=SMALL)
    assert_refused(src, srv, stop, "bytes of input without a packet", http_input.MIN_PACKET_BYTES)


def test_a_playlist_that_never_ends_is_cut_off(serve: Callable[..., Server]) -> None:
    """A live playlist (known by its type: a name that is not .m3u8) whose lines never end:
    FFmpeg keeps several times a playlist's bytes while it parses one (1.7 GB in 10 s)."""
    stop = threading.Event()

    def endless(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(
            sock,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.apple.mpegurl\r\n\r\n"
            b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n",
        )
        i = 0
        while not stop.is_set() and srv.sent < 1024 * 1024 * 1024:
            srv.send(sock, b"".join(b"#EXTINF:2.0,\nseg%09d.ts\n" % (i + k) for k in range(1000)))
            i += 1000

    srv = serve(endless)
    src = source(srv.url("/live"))  # (max_pixels: the default; the playlist's own bound holds)
    assert_refused(src, srv, stop, "a playlist over", http_input.MAX_PLAYLIST_COST)


def test_a_trickle_that_never_makes_a_packet_ends_the_session(
    serve: Callable[..., Server],
) -> None:
    """A byte every 0.3 s: no receive ever times out, and no frame ever comes. The session
    ends at its time bound (the open's timeout here), not never."""
    stop = threading.Event()

    def trickle(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, mjpeg_head() + b"--frame\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8")
        while not stop.wait(0.3):
            srv.send(sock, b"\x00")

    srv = serve(trickle)
    src = source(srv.url("/video.mjpg"), open_timeout_s=1.5, stall_timeout_s=1.0)
    t0 = time.monotonic()
    try:
        asyncio.run(
            run_until(src, lambda c: src.stats.last_error is not None, 20, "the trickle ended")
        )
    finally:
        stop.set()
    assert time.monotonic() - t0 < 10
    assert "no packet in 1.5 s of input" in (src.stats.last_error or ""), src.stats
    assert src.stats.too_large == 0


def _file_server(
    root: Path, *, ranges: bool = True, auth: str | None = None
) -> Callable[[Server, socket.socket, bytes], None]:
    """Files under `root`, with Range requests if `ranges`; with `auth` ("basic" or "digest"),
    user "admin", password "S3cret pw"."""
    nonce = "abc123"

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1].split("?")[0]
        headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        if auth is not None and not _authorized(
            headers.get("authorization", ""), auth, path, nonce
        ):
            challenge = (
                'Basic realm="cam"'
                if auth == "basic"
                else f'Digest realm="cam", nonce="{nonce}", qop="auth"'
            )
            srv.send(
                sock,
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: %s\r\n"
                b"Content-Length: 0\r\nConnection: close\r\n\r\n" % challenge.encode(),
            )
            return
        file = root / path.lstrip("/")
        if not file.is_file():
            srv.send(
                sock, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        data = file.read_bytes()
        start = 0
        rng = headers.get("range", "")
        if ranges and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            status = b"206 Partial Content"
        else:
            status = b"200 OK"
        kind = b"application/vnd.apple.mpegurl" if file.suffix == ".m3u8" else b"video/mp4"
        extra = b"Accept-Ranges: bytes\r\n" if ranges else b""
        if start:
            extra += b"Content-Range: bytes %d-%d/%d\r\n" % (start, len(data) - 1, len(data))
        srv.send(
            sock,
            b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close\r\n\r\n"
            % (status, kind, len(data) - start, extra)
            + data[start:],
        )

    return handler


def _authorized(value: str, auth: str, path: str, nonce: str) -> bool:
    if auth == "basic":
        return value == "Basic " + base64.b64encode(b"admin:S3cret pw").decode()
    if not value.startswith("Digest "):
        return False
    fields = dict(
        (k.strip(), v.strip().strip('"'))
        for k, _, v in (p.partition("=") for p in value[7:].split(","))
    )

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5("admin:cam:S3cret pw")
    ha2 = md5(f"GET:{fields.get('uri', '')}")
    want = md5(f"{ha1}:{nonce}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
    return fields.get("username") == "admin" and fields.get("response") == want


@pytest.mark.parametrize("auth", [None, "basic", "digest"])
def test_a_file_over_http_that_needs_seeking_is_read_with_its_password(
    tmp_path: Path, serve: Callable[..., Server], auth: str | None
) -> None:
    """An MP4 written with its index at the end (FFmpeg reads it, then seeks back: ranges), on
    a server that asks for a password (in the URL, percent-encoded) when `auth` is given."""
    write_clip(tmp_path / "clip.mp4", 60, (160, 120))
    srv = serve(_file_server(tmp_path, auth=auth))
    url = srv.url("/clip.mp4")
    if auth is not None:
        url = url.replace("http://", "http://admin:S3cret%20pw@")
    src = source(url)
    asyncio.run(run_until(src, lambda c: len(c.frames) >= 30, 20, "30 frames of the file"))
    assert src.stats.too_large == 0
    assert any(b"Range: bytes=" in r for r in srv.requests), "the file was not read by ranges"
    if auth is not None:
        assert all(b"S3cret" not in r for r in srv.requests)  # (Basic: base64; Digest: a hash)


def test_a_wrong_password_is_a_clear_retried_error(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    write_clip(tmp_path / "clip.mp4", 30, (160, 120))
    srv = serve(_file_server(tmp_path, auth="digest"))
    src = source(srv.url("/clip.mp4").replace("http://", "http://admin:wrong@"))
    asyncio.run(run_until(src, lambda c: src.stats.last_error is not None, 20, "an error"))
    assert "401" in (src.stats.last_error or ""), src.stats
    assert "wrong" not in (src.stats.last_error or "")


def test_a_playlist_naming_other_schemes_reads_none_of_them(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    """A playlist's segments named as file:// (or any scheme but http and https) are not
    opened: the camera fails with that said, and no local file is read."""
    secret = tmp_path / "secret.ts"
    write_clip(tmp_path / "real.mp4", 10, (160, 120))
    secret.write_bytes((tmp_path / "real.mp4").read_bytes())
    (tmp_path / "live.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\nfile://{secret}\n#EXTINF:1.0,\nftp://127.0.0.1/x.ts\n#EXT-X-ENDLIST\n"
    )
    srv = serve(_file_server(tmp_path, ranges=False))
    src = source(srv.url("/live.m3u8"))
    c = asyncio.run(run_until(src, lambda c: src.stats.last_error is not None, 20, "an error"))
    assert c.frames == []
    assert "only http and https are read, not 'file'" in (src.stats.last_error or ""), src.stats


def test_options_of_ffmpegs_http_client_are_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="reconnect"):
        SourceConfig(id="c", url="http://cam/video.mjpg", av_options={"reconnect": "1"})
    SourceConfig(
        id="c", url="http://cam/video.mjpg", av_options={"user_agent": "x", "probesize": "32"}
    )
    SourceConfig(id="c", url="rtsp://cam/stream", av_options={"reconnect": "1"})  # (not http)


def test_request_headers_from_options_are_sent_and_bad_ones_refused(
    serve: Callable[..., Server],
) -> None:
    srv = serve(mjpeg_camera())
    src = source(
        srv.url("/video.mjpg"),
        av_options={"headers": "X-Token: abc\r\nX-Other: 1\r\n", "user_agent": "cam-reader"},
    )
    asyncio.run(run_until(src, lambda c: len(c.frames) >= 3, 20, "frames"))
    head = srv.requests[0]
    assert b"X-Token: abc" in head and b"User-Agent: cam-reader" in head, head
    with pytest.raises(ValueError, match="Name: value"):
        http_input.HttpInput(
            "http://x/",
            read_timeout_s=1,
            time_limit_s=1,
            max_bytes=1,
            options={"headers": "no colon"},
        )


# -- fuzzing: hostile answers, whatever their bytes --------------------------------------------

_GOOD = [
    mjpeg_head()
    + b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: 4\r\n\r\n\xff\xd8\xff\xd9\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/vnd.apple.mpegurl\r\n\r\n10\r\n#EXTM3U\n#EXTINF:1\r\n0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: file:///etc/passwd\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /video\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 401 Unauthorized\r\n"
    b'WWW-Authenticate: Digest realm="x", nonce="n", algorithm=SHA-256\r\n\r\n',
    b"HTTP/1.1 206 Partial Content\r\nContent-Length: 99999999999\r\n"
    b"Accept-Ranges: bytes\r\n\r\nabc",
    b"HTTP/1.0 200 OK\r\nContent-Length: -5\r\n\r\n",
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2:
            del b[i : i + rng.randint(1, 16)]
        elif op == 3:
            b[i:i] = rng.choice(
                [
                    b"\r\n",
                    b"\r\n\r\n",
                    b":",
                    b"9" * 40,
                    b"-1",
                    b"\x00",
                    b"Location: ftp://x/\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                ]
            )
        else:
            b[i:i] = b"X-Pad: " + b"a" * rng.choice([10, 70000]) + b"\r\n"
    return bytes(b)


def test_fuzzed_answers_end_in_a_clear_error_or_frames_never_a_crash(
    serve: Callable[..., Server],
) -> None:
    """200 mutated HTTP answers (status lines, headers, chunking, redirects, auth challenges,
    lengths): each open ends in OSError or SourceError (the source's own errors: retried), or
    opens; nothing else escapes, and each takes a bounded time."""
    rng = random.Random(20261128)
    answers: list[bytes] = []

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, answers[-1])

    srv = serve(handler)
    outcomes: dict[str, int] = {}
    for _ in range(200):
        answers.append(_mutate(rng, rng.choice(_GOOD)))
        src = source(srv.url("/video"), open_timeout_s=1.0, stall_timeout_s=0.5)
        t0 = time.monotonic()
        try:
            container = src._open()
        except (OSError, SourceError) as e:
            outcomes[type(e).__name__] = outcomes.get(type(e).__name__, 0) + 1
        else:
            container.close()
            outcomes["opened"] = outcomes.get("opened", 0) + 1
        finally:
            if src._http is not None:
                src._http.close()
        assert time.monotonic() - t0 < 5, answers[-1][:200]
    assert outcomes.get("OSError", 0) > 100, outcomes


@pytest.mark.parametrize(
    "answer, then",
    [
        (b"", b"HTTP/1.1 100 Continue\r\n\r\n"),  # 1xx answers without end: no receive waits
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            b"X-Trailer: more\r\n",  # a trailer without end
        ),
    ],
)
def test_answers_that_never_end_inside_the_http_client_end_at_the_time_bound(
    serve: Callable[..., Server], answer: bytes, then: bytes
) -> None:
    """Where http.client itself loops for as long as a server sends (1xx answers, trailer
    lines), no receive timeout ends it: the session's time bound shuts the connection."""
    stop = threading.Event()

    def endless(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, answer)
        while not stop.is_set() and srv.sent < 1024 * 1024 * 1024:
            srv.send(sock, then * 64)
            time.sleep(0.001)

    srv = serve(endless)
    src = source(srv.url("/video"), open_timeout_s=1.0, stall_timeout_s=0.5)
    t0 = time.monotonic()
    try:
        with pytest.raises(OSError):
            src._open()
    finally:
        stop.set()
    assert time.monotonic() - t0 < 1.0 + 2.0, time.monotonic() - t0


def test_a_playlist_whose_lines_cost_more_than_their_bytes_is_cut_off(
    serve: Callable[..., Server],
) -> None:
    """FFmpeg keeps every segment's URL made absolute from the playlist's own: through a
    redirect to a 3,900-char path, a 1 MiB playlist of 13-byte lines would have cost it
    hundreds of MB (a 4 MiB one 2 GB). Its cost is counted, line by line."""
    long_path = "/" + "a" * 3900 + "/live.m3u8"
    body = b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n" + b"#EXTINF:1,\nx.ts\n" * 70_000

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        if head.startswith(b"GET /cam "):
            location = long_path.encode()
            srv.send(sock, b"HTTP/1.1 302 Found\r\nLocation: %s\r\n\r\n" % location)
            return
        kind = b"application/vnd.apple.mpegurl"
        srv.send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n" % kind + body)

    srv = serve(handler)
    src = source(srv.url("/cam"))
    with pytest.raises(SourceError, match="with what its lines cost"):
        src._open()
    assert src.stats.too_large == 1


@pytest.mark.parametrize("way", ["a long URL redirected to a short one", "a long key URI"])
def test_what_ffmpeg_copies_to_each_line_is_counted(serve: Callable[..., Server], way: str) -> None:
    """FFmpeg makes a variant's names absolute from the URL it asked for (a redirect does not
    reach it through this input), and copies a key's URI to every segment after it: a 1.3 MB
    playlist of short lines cost it 700 MB either way before they were counted (here 100,000
    lines: within the bound counted at the short URL and line, far over it counted right)."""
    long = "/" + "a" * 3900
    lines = [b"#EXTM3U", b"#EXT-X-TARGETDURATION:1"]
    if way == "a long key URI":
        lines.append(b'#EXT-X-KEY:METHOD=AES-128,URI="%s/k"' % long.encode())
    media = b"\n".join(lines) + b"\n" + b"#EXTINF:1,\nx.ts\n" * 50_000
    master = b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\n%s/v.m3u8\n" % long.encode()

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        kind = b"application/vnd.apple.mpegurl"
        if head.startswith(b"GET /a"):  # (the variant's long URL)
            srv.send(sock, b"HTTP/1.1 302 Found\r\nLocation: /s.m3u8\r\n\r\n")
            return
        body = master if head.startswith(b"GET /master") else media
        srv.send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n" % kind + body)

    srv = serve(handler)
    path = "/master.m3u8" if way == "a long URL redirected to a short one" else "/cam.m3u8"
    with pytest.raises((SourceError, OSError), match="with what its lines cost"):
        source(srv.url(path))._open()


def test_an_hls_camera_with_a_password_plays_and_the_password_stays_at_its_origin(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    """Segments beside the playlist get the password (any path of the camera's origin); the
    camera's own headers (a token) are not sent to another origin it redirects to."""
    write_clip(tmp_path / "live.m3u8", 60, (160, 120), gop=15, options={"hls_time": "1"})
    srv = serve(_file_server(tmp_path, ranges=False, auth="basic"))
    url = srv.url("/live.m3u8").replace("http://", "http://admin:S3cret%20pw@")
    src = source(url, av_options={"headers": "X-Token: t0k3n"})
    asyncio.run(run_until(src, lambda c: len(c.frames) >= 30, 20, "30 frames of HLS"))
    segments = [r for r in srv.requests if b".ts " in r.split(b"\r\n")[0]]
    assert any(b"Authorization: Basic" in r for r in segments), segments[:2]

    other = serve(mjpeg_camera())

    def redirect(srv: Server, sock: socket.socket, head: bytes) -> None:
        srv.send(sock, b"HTTP/1.1 302 Found\r\nLocation: %s\r\n\r\n" % other.url().encode())

    away = serve(redirect)
    src = source(away.url(), av_options={"headers": "X-Token: t0k3n"})
    asyncio.run(run_until(src, lambda c: len(c.frames) >= 3, 20, "frames after a redirect"))
    assert b"X-Token" in away.requests[0]
    assert all(b"X-Token" not in r and b"t0k3n" not in r for r in other.requests), other.requests


def test_a_server_that_answers_another_range_than_asked_is_an_error(
    tmp_path: Path, serve: Callable[..., Server]
) -> None:
    """A file whose index is at its end is read by seeking; a server that answers a seek with
    the file's start (206, but not the range asked for) would feed FFmpeg the wrong bytes."""
    write_clip(tmp_path / "clip.mp4", 30, (160, 120))
    data = (tmp_path / "clip.mp4").read_bytes()

    def lying(srv: Server, sock: socket.socket, head: bytes) -> None:
        status = b"206 Partial Content" if b"Range:" in head else b"200 OK"
        srv.send(
            sock,
            b"HTTP/1.1 %s\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n\r\n"
            % (status, len(data))
            + data,
        )

    srv = serve(lying)
    with pytest.raises((OSError, SourceError)):
        source(srv.url("/clip.mp4"))._open()
    assert any(b"Range: bytes=" in r for r in srv.requests)


def _ts_packets(pid: int, payload: bytes, start: bool, counters: dict[int, int]) -> bytes:
    """MPEG-TS packets of `payload` on `pid` (adaptation-field stuffing at the end)."""
    out, first = [], True
    while payload or first:
        chunk, payload = payload[:184], payload[184:]
        c = counters.get(pid, 0)
        counters[pid] = (c + 1) & 15
        head = bytes([0x47, (0x40 if start and first else 0) | (pid >> 8), pid & 0xFF])
        if len(chunk) < 184:
            stuff = 184 - len(chunk) - 1
            field = bytes([stuff]) + (b"\x00" + b"\xff" * (stuff - 1) if stuff > 0 else b"")
            out.append(head + bytes([0x30 | c]) + field + chunk)
        else:
            out.append(head + bytes([0x10 | c]) + chunk)
        first = False
    return b"".join(out)


def _psi(table_id: int, ext: int, body: bytes) -> bytes:
    section = (
        bytes([table_id])
        + (0xB000 | (len(body) + 9)).to_bytes(2, "big")
        + ext.to_bytes(2, "big")
        + b"\xc1\x00\x00"
        + body
    )
    crc = 0xFFFFFFFF
    for byte in section:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return b"\x00" + section + crc.to_bytes(4, "big")


def _pts(t: float) -> bytes:
    v = int(t * 90000)
    high = [0x21 | ((v >> 29) & 0x0E), (v >> 22) & 0xFF, 0x01 | ((v >> 14) & 0xFE)]
    return bytes([*high, (v >> 7) & 0xFF, 0x01 | ((v << 1) & 0xFE)])


def test_a_video_frame_that_never_ends_between_data_packets_is_cut_off(
    serve: Callable[..., Server],
) -> None:
    """MPEG-TS with a KLV data stream: small data packets keep coming while one H.264 frame's
    bytes never end. FFmpeg's parser keeps the frame's bytes (2 GB in 12 s, when each data
    packet started the bound again); only the video's packets count as packets."""
    stop = threading.Event()

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        cc: dict[int, int] = {}
        pat = _ts_packets(0, _psi(0x00, 1, b"\x00\x01\xf0\x00"), True, cc)
        streams = b"\x1b\xe1\x00\xf0\x00" + b"\x06\xe1\x01\xf0\x06\x05\x04KLVA"
        pmt = _ts_packets(0x1000, _psi(0x02, 1, b"\xe1\x00\xf0\x00" + streams), True, cc)
        srv.send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
        start = b"\x00\x00\x01\xe0\x00\x00\x80\x80\x05" + _pts(0) + b"\x00\x00\x00\x01\x09\xf0"
        start += b"\x00\x00\x00\x01\x65\x88"
        srv.send(sock, pat + pmt + _ts_packets(0x100, start + b"\xff" * 100, True, cc))
        t, junk = 0.0, b"\xff" * (184 * 64)
        while not stop.is_set() and srv.sent < 1024 * 1024 * 1024:
            t += 0.01
            data = b"\x06\x0e\x2b\x34" + b"\x00" * 12 + b"\x04abcd"
            klv = b"\x00\x00\x01\xbd" + (len(data) + 8).to_bytes(2, "big") + b"\x80\x80\x05"
            klv += _pts(t) + data
            srv.send(sock, pat + pmt + _ts_packets(0x101, klv, True, cc))
            srv.send(sock, _ts_packets(0x100, junk, False, cc))

    srv = serve(handler)
    src = source(srv.url("/video.ts"), max_pixels=SMALL, stall_timeout_s=15.0)
    assert_refused(src, srv, stop, "bytes of input without a packet", http_input.MIN_PACKET_BYTES)


def test_config_refuses_a_bad_port_and_headers_without_saying_their_values() -> None:
    with pytest.raises(ValueError, match="Port out of range"):
        SourceConfig(id="c", url="http://cam:99999/video.mjpg")
    with pytest.raises(ValidationError) as e:
        SourceConfig(
            id="c", url="http://cam/v.mjpg", av_options={"headers": "A: b\r\nX-Api-Key S3cr3t"}
        )
    said = format_validation_error(e.value)  # (what check-config, the log and the API say)
    assert "headers: line 2 is not 'Name: value'" in said and "S3cr3t" not in said, said


def test_a_master_playlist_of_many_variants_is_refused(serve: Callable[..., Server]) -> None:
    """FFmpeg opens every variant and rendition of a master playlist as a stream of its own
    (a master of many, each a few hundred bytes, held 900 MB): a session may name 16."""
    lines = [b"#EXTM3U"]
    for i in range(40):
        lines += [b"#EXT-X-STREAM-INF:BANDWIDTH=%d" % (1000 + i), b"v%d.m3u8" % i]
    master = b"\n".join(lines) + b"\n"

    def handler(srv: Server, sock: socket.socket, head: bytes) -> None:
        kind = b"application/vnd.apple.mpegurl"
        srv.send(sock, b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n\r\n" % kind + master)

    srv = serve(handler)
    with pytest.raises(SourceError, match="more than 16 variants and renditions"):
        source(srv.url("/master.m3u8"))._open()
    assert len(srv.requests) == 1  # (no variant was asked for)
