"""Camera credentials out of source errors: passwords in the URL's user info, in its query
string (``?pwd=``, ``&token=``), percent-encoded or not, and in FFmpeg options (``headers``);
checked on the redaction itself and against a real HTTP camera that refuses the login."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest

from streamer.sources.av_source import AvSource
from streamer.sources.redact import redact, url_secrets
from tests.live import Consumer, until


@pytest.mark.parametrize(
    ("url", "options", "secrets"),
    [
        ("rtsp://admin:S3cret%21Pw@cam/x", None, ["S3cret%21Pw", "S3cret!Pw"]),
        ("http://cam/video.cgi?user=admin&pwd=S3cret%2FPw&x=1", None, ["S3cret%2FPw", "S3cret/Pw"]),
        ("http://cam/v.cgi?usr=admin&Password=S3cret+Pw", None, ["S3cret+Pw", "S3cret Pw"]),
        ("https://cam/live.m3u8?access_token=AbCdEf123", None, ["AbCdEf123"]),
        ("http://cam/a;auth=QWxhZGRpbg", None, []),  # a path parameter, not a query
        (
            "rtsp://cam/s",
            {"headers": "User-Agent: x\r\nAuthorization: Basic YWRtaW46UzNj\r\n"},
            ["YWRtaW46UzNj"],
        ),
        ("rtsp://cam/s", {"cookies": "session=Zm9vYmFy; path=/"}, ["Zm9vYmFy"]),
    ],
)
def test_every_form_of_a_secret_is_redacted(
    url: str, options: dict[str, str] | None, secrets: list[str]
) -> None:
    known = url_secrets(url, options)
    text = f"Server returned 401: '{url}' {options} " + " ".join(secrets)
    out = redact(text, known)
    for secret in secrets:
        assert secret not in out, (secret, out)
    assert "***" in out or not secrets
    assert "401" in out and "cam" in out  # the error still says what and where
    assert "User-Agent: x" in out or "User-Agent" not in text  # nothing else garbled


def test_query_credentials_in_any_text_are_redacted() -> None:
    """A URL the source did not know of (an HLS segment's, a redirect's) still loses them."""
    out = redact("Opening 'http://h/seg1.ts?sig=abc123&expires=1&Api_Key=k9' failed")
    assert "abc123" not in out and "k9" not in out and "expires=1" in out, out


class _Refuses(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="cam"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_camera() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_camera_refusing_a_query_password_does_not_leak_it(
    refusing_camera: int, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{refusing_camera}/video.cgi?user=admin&pwd=S3cret%21Pw"
    options = {"headers": "X-Api-Token: T0kenValue\r\n"}

    async def main() -> AvSource:
        src = AvSource("cam", url, stall_timeout_s=2.0, av_options=options)
        c = Consumer(src).start()
        try:
            await until(lambda: src.stats.reconnects >= 1, 20, "the camera refused us")
        finally:
            await c.stop()
        return src

    src = asyncio.run(asyncio.wait_for(main(), 30))
    error = src.stats.last_error or ""
    assert "401" in error and "pwd=***" in error, error
    for secret in ("S3cret%21Pw", "S3cret!Pw", "T0kenValue"):
        assert secret not in error and secret not in caplog.text, (secret, error)


def test_a_url_given_to_opencv_does_not_leak_its_password() -> None:
    """``webcam:`` hands its target to OpenCV as is, a URL included; a password holding an
    ``@`` defeats the pattern alone (``admin:p@ss...``)."""
    from streamer.sources.cv_source import CvSource

    url = "webcam:rtsp://admin:p@ss%40w0rd@127.0.0.1:1/x?pwd=Pw0rd2"

    async def main() -> CvSource:
        src = CvSource("cam", url, open_timeout_s=2.0, stall_timeout_s=1.0)
        c = Consumer(src).start()
        try:
            await until(lambda: src.stats.reconnects >= 1, 20, "OpenCV gave up")
        finally:
            await c.stop()
        return src

    error = asyncio.run(asyncio.wait_for(main(), 30)).stats.last_error or ""
    assert "127.0.0.1" in error, error
    for secret in ("p@ss", "ss%40w0rd", "ss@w0rd", "Pw0rd2"):
        assert secret not in error, (secret, error)
