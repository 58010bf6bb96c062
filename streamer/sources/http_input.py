"""HTTP(S) cameras read by streamer itself, under FFmpeg, with every session's input bounded.

FFmpeg's own HTTP client holds whatever a server sends until a packet is complete: an MJPEG part
that never ends, or an HLS playlist that never ends, grew one camera's memory by gigabytes in
seconds (2.1 GB and 1.7 GB on loopback before its timeouts ended them). Here FFmpeg's demuxers
read every resource of the session (the camera's URL, and each playlist, segment and key an HLS
stream names) through `HttpInput`, FFmpeg's `io_open`:

- **Bytes without a packet**: a session may read at most `max_bytes` between two of the
  video's packets (and before its first), across all its resources; past it, every read ends
  (EOF) and the source ends the session with `refused` as its error (counted in `too_large`).
- **Playlists**: a resource whose body starts as an HLS playlist (``#EXTM3U``) is held to
  `MAX_PLAYLIST_COST`, its bytes and what FFmpeg builds of each line (a segment's URL is kept
  absolute: a 4,000-char playlist URL made a 4 MiB playlist cost 2 GB), and that cost counts
  against the session's bytes too; the session's playlists may name at most `MAX_VARIANTS`
  variants and renditions (each a stream FFmpeg opens: 900 MB for a master playlist of many).
- **Time**: each connect and each receive waits at most the read timeout; a session with no
  video packet for `time_limit_s` (from the open's start, then from each packet) is ended by
  one watch thread for all sessions, which shuts its connections (`expired`).
- Only ``http`` and ``https`` are opened; the camera's URL's credentials (Basic or Digest, as
  the server asks) and its own `headers` go to its origin only; redirects at most
  `MAX_REDIRECTS`; a range asked for must be the range served; a resource that fails reads as
  empty (FFmpeg's HLS demuxer skips a segment that fails) and its error is kept for the
  session's end.

FFmpeg's HTTP options a camera may give in `av_options` are those in `OPTIONS`; the others of
FFmpeg's HTTP and TLS protocols are refused by the config (`refused_option`).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

# An HLS playlist's cost: its bytes, and for each line what FFmpeg keeps of it (a segment's URL,
# made absolute from the playlist's own, its fields, and at most the longest line before it: a
# key's URI is copied to each segment): about 50,000 lines at a 100-char URL and lines.
MAX_PLAYLIST_COST = 16 * 1024 * 1024
LINE_COST = 64  # ... a line's fields, besides the playlist's URL
# A master playlist's variants and renditions: FFmpeg opens each as a stream of its own (its
# playlist, buffers and demuxer: tens of KB at least, before any segment), so a session may
# name at most this many, across its playlists.
MAX_VARIANTS = 16
VARIANT_TAGS = (b"#EXT-X-STREAM-INF", b"#EXT-X-MEDIA:", b"#EXT-X-I-FRAME-STREAM-INF")
# The least `max_bytes` (a session's bound is its max_pixels): above FFmpeg's probe (5 MB).
MIN_PACKET_BYTES = 8 * 1024 * 1024
MAX_REDIRECTS = 8
WATCH_S = 0.25  # how often the sessions' time bounds are looked at
MAX_READ = 256 * 1024  # bytes one read returns at most (FFmpeg asks for its buffer's size)
SKIP_BYTES = 256 * 1024  # a seek forward up to this reads on instead of asking again
HLS_MIME_TYPES = frozenset(
    ("application/vnd.apple.mpegurl", "audio/mpegurl", "audio/x-mpegurl", "application/x-mpegurl")
)
# FFmpeg's options of its HTTP and TLS protocols that streamer does the same for.
OPTIONS = frozenset(
    ("headers", "user_agent", "referer", "tls_verify", "ca_file", "cafile", "cert_file", "key_file")
)
# ... and those it does not: given in `av_options` of an http(s) camera, the config says so.
_REFUSED = frozenset(
    (
        *("auth_type", "chunked_post", "content_type", "cookies", "end_offset", "http_proxy"),
        *("icy", "listen", "location", "max_redirects", "method", "mime_type", "multiple_requests"),
        *("offset", "post_data", "reconnect", "reconnect_at_eof", "reconnect_delay_max"),
        *("reconnect_delay_total_max", "reconnect_max_retries", "reconnect_on_http_error"),
        *("reconnect_on_network_error", "reconnect_streamed", "reply_code", "resource"),
        *("respect_retry_after", "send_expect_100", "seekable", "short_seek_size", "verifyhost"),
        *("http_persistent", "http_multiple", "http_seekable"),  # (HLS's, over FFmpeg's HTTP)
    )
)
_NO_TLS_CHECK = ssl.create_default_context()
_NO_TLS_CHECK.check_hostname = False
_NO_TLS_CHECK.verify_mode = ssl.CERT_NONE  # FFmpeg's default (tls_verify 0): cameras self-sign


def is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def refused_option(name: str) -> str | None:
    """Why an http(s) camera's `av_options` may not hold `name`, or None."""
    if name in _REFUSED:
        return (
            f"{name!r} is an option of FFmpeg's HTTP client, which streamer does not use for "
            f"http(s) cameras (it reads them itself, bounded); those it takes: "
            f"{', '.join(sorted(OPTIONS))}"
        )
    return None


class _Redirects(urllib.request.HTTPRedirectHandler):
    """At most `MAX_REDIRECTS`; the camera's own headers (`headers`: tokens) go to its origin
    only; a redirect's body is not read."""

    max_redirections = MAX_REDIRECTS
    max_repeats = 2

    def __init__(self, owner: HttpInput) -> None:
        self._owner = owner

    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> Any:
        fp.close()  # (urllib reads a redirect's whole body otherwise: any size)
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != self._owner.origin:
            for name in self._owner.own_headers:
                new.remove_header(name.capitalize())
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) of `url`, the port given or the scheme's; ValueError if it is bad."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(scheme)


class _Passwords(urllib.request.HTTPPasswordMgr):
    """The camera URL's user and password, for any path of its origin (an HLS camera's
    segments beside its playlist), never another's."""

    def __init__(
        self, origin: tuple[str, str | None, int | None], user: str, password: str
    ) -> None:
        super().__init__()
        self._origin, self._user, self._password = origin, user, password

    def find_user_password(self, realm: Any, authuri: str) -> tuple[str | None, str | None]:
        try:
            same = _origin(authuri if "://" in authuri else "http://" + authuri) == self._origin
        except ValueError:
            same = False
        return (self._user, self._password) if same else (None, None)


def _printable(text: str, limit: int = 200) -> str:
    """A server's text for a log line: control characters escaped, at most `limit` chars."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def _tracking(owner: HttpInput, base: type[http.client.HTTPConnection]) -> Any:
    """`base` with each socket it opens told to `owner` (its `close` shuts them)."""

    class Tracked(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            create = self._create_connection  # type: ignore[has-type]
            self._create_connection = lambda *a, **k: owner._track(create(*a, **k))

        def connect(self) -> None:
            super().connect()
            owner._track(self.sock)  # (TLS: the wrapped socket)

    return Tracked


class _Http(urllib.request.HTTPHandler):
    def __init__(self, owner: HttpInput) -> None:
        super().__init__()
        self._connection = _tracking(owner, http.client.HTTPConnection)

    def http_open(self, req: Any) -> Any:
        return self.do_open(self._connection, req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, owner: HttpInput, context: ssl.SSLContext) -> None:
        super().__init__(context=context)
        self._tls = context
        self._connection = _tracking(owner, http.client.HTTPSConnection)

    def https_open(self, req: Any) -> Any:
        return self.do_open(self._connection, req, context=self._tls)


class _Watch:
    """One thread for every session's time bound: a session with no packet for its
    `time_limit_s` is refused and its connections shut (a read blocked in a server's endless
    trailer or 100-Continue lines, which no receive timeout ends, returns)."""

    def __init__(self) -> None:
        self._inputs: set[HttpInput] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, one: HttpInput) -> None:
        with self._lock:
            self._inputs.add(one)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="http-input-watch", daemon=True
                )
                self._thread.start()

    def remove(self, one: HttpInput) -> None:
        with self._lock:
            self._inputs.discard(one)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_S)
            with self._lock:
                inputs = list(self._inputs)
                if not inputs:
                    self._thread = None
                    return
            now = time.monotonic()
            for one in inputs:
                try:
                    if now - one.meter.since > one.time_limit_s:
                        one.expire()
                except Exception:  # (never the watch's end: every session relies on it)
                    log.exception("the HTTP input's time bound failed for %s", one.name)


_WATCH = _Watch()


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header's name


def check_options(url: str, options: Mapping[str, str]) -> None:
    """ValueError (saying no value: they may be secrets) if an http(s) camera's URL or
    options cannot be used."""
    _origin(url)  # (a port out of range)
    for name in options:
        if (why := refused_option(name)) is not None:
            raise ValueError(f"av_options: {why}")
    _request_headers(options)


def _request_headers(options: Mapping[str, str]) -> dict[str, str]:
    """FFmpeg's `headers` (``Name: value`` lines), `user_agent` and `referer`, as headers."""
    headers = {"User-Agent": options.get("user_agent", "streamer"), "Accept": "*/*"}
    if "referer" in options:
        headers["Referer"] = options["referer"]
    for n, line in enumerate(options.get("headers", "").replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name.strip()) or any(c in line for c in "\r\0"):
            # (the line's text is not said: it may hold a secret)
            raise ValueError(f"av_options headers: line {n} is not 'Name: value'")
        headers[name.strip()] = value.strip()
    return headers


def _tls(options: Mapping[str, str]) -> ssl.SSLContext:
    if options.get("tls_verify", "0") in ("0", ""):
        ctx = _NO_TLS_CHECK
        if "cert_file" not in options:
            return ctx
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    else:
        ca = options.get("ca_file") or options.get("cafile")
        ctx = ssl.create_default_context(cafile=ca or None)
    if "cert_file" in options:
        ctx.load_cert_chain(options["cert_file"], options.get("key_file") or None)
    return ctx


class Meter:
    """A session's input since its last packet: bytes read and when it began."""

    def __init__(self) -> None:
        self.bytes = 0
        self.since = time.monotonic()

    def packet(self) -> None:
        self.bytes = 0
        self.since = time.monotonic()


class HttpInput:
    """One session's HTTP(S) reads: FFmpeg's `io_open` for every resource it opens, each read
    held to the session's bounds (module docstring). `refused` and `error` say why input
    stopped, for the session's end to report."""

    def __init__(
        self,
        url: str,
        *,
        read_timeout_s: float,
        time_limit_s: float,
        max_bytes: int,
        options: Mapping[str, str],
        name: str = "HTTP input",
        redact: Callable[[str], str] = str,
    ) -> None:
        self.name = name
        self.redact = redact  # (what is logged: a camera's secrets out)
        check_options(url, options)
        parts = urlsplit(url)
        self.origin = _origin(url)
        self.url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.read_timeout_s = read_timeout_s
        self.time_limit_s = time_limit_s
        probe = options.get("probesize", "")
        self.max_bytes = max(
            MIN_PACKET_BYTES, max_bytes, int(probe) + MIN_PACKET_BYTES if probe.isdigit() else 0
        )
        self.headers = _request_headers(options)
        self.own_headers = frozenset(self.headers) - {"User-Agent", "Accept", "Referer"}
        passwords = _Passwords(
            self.origin if parts.username is not None else ("", None, None),
            unquote(parts.username or ""),
            unquote(parts.password or ""),
        )
        self._opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.ProxyHandler(),  # http_proxy/no_proxy, as FFmpeg's client reads them
            _Http(self),
            _Https(self, _tls(options)),
            urllib.request.HTTPDefaultErrorHandler(),
            _Redirects(self),
            urllib.request.HTTPErrorProcessor(),
            urllib.request.HTTPBasicAuthHandler(passwords),
            urllib.request.HTTPDigestAuthHandler(passwords),
        ):
            self._opener.add_handler(handler)
        self.meter = Meter()
        self.variants = 0  # variants and renditions its playlists named
        self.refused: str | None = None  # past a byte bound
        self.expired: str | None = None  # past the time bound
        self.error: str | None = None  # the last resource that failed
        self.hls_type = False  # the camera's URL answered as an HLS playlist, by its type
        self._first: Body | None = None
        self._bodies: list[Body] = []
        self._sockets: list[socket.socket] = []  # (open ones: a closed one goes at the next)
        self._lock = threading.Lock()
        self._closed = False
        _WATCH.add(self)

    # -- the camera's URL, opened before FFmpeg is (its type says which demuxer) --

    def start(self) -> str:
        """GET the camera's URL (raises OSError) and keep the answer for FFmpeg's first open;
        returns the URL it came from (after redirects: what an HLS playlist's names are
        relative to)."""
        body = self._get(self.url, 0)
        self._first = body
        self.hls_type = body.content_type in HLS_MIME_TYPES
        return body.url

    def __call__(self, url: str, flags: int, options: dict[str, str]) -> Body:
        """FFmpeg's `io_open`: the camera's answer from `start` first, then a new request per
        resource. A resource that cannot be had reads as empty; its error is kept."""
        if flags & 2:  # AVIO_FLAG_WRITE
            raise OSError("streamer's HTTP input does not write")
        first, self._first = self._first, None
        if first is not None and url == first.url:
            return first
        if first is not None:
            first.close()
        try:
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise OSError(f"only http and https are read, not {url.split(':', 1)[0]!r}")
            return self._get(url, 0)
        except (OSError, ValueError) as e:  # (ValueError: a port or an address that is not one)
            self._fail(f"{_printable(url)}: {e}")
            return Body(self, None, url)

    def packet(self) -> None:
        """A packet came out: the bounds start again."""
        self.meter.packet()

    def close(self) -> None:
        """End every read now (a blocked receive, or one in a connect, returns): the session
        is over."""
        _WATCH.remove(self)
        with self._lock:
            self._closed = True
            bodies, self._bodies = self._bodies, []
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for body in bodies:
            body.close()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets = [s for s in self._sockets if s.fileno() != -1] + [sock]
            closed = self._closed
        if closed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return sock

    def expire(self) -> None:
        """The time bound passed with no packet: every read ends."""
        if self.expired is None:
            self.expired = f"no packet in {self.time_limit_s:g} s of input"
        self.close()

    def _fail(self, why: str) -> None:
        if self.error is None:
            log.warning("%s: %s (logged once a session)", self.name, self.redact(why))
        self.error = why

    def _refuse(self, why: str) -> None:
        if self.refused is None:
            self.refused = why

    def _get(self, url: str, offset: int = 0, length: int | None = None) -> Body:
        """GET `url` (from byte `offset` of `length`: a range), as a Body; OSError if not."""
        if self._closed:
            raise OSError("the session is over")
        headers = dict(self.headers)
        if _origin(url) != self.origin:
            for name in self.own_headers:
                del headers[name]  # (the camera's tokens: to its origin only)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = self._opener.open(request, timeout=self.read_timeout_s)
        except urllib.error.HTTPError as e:
            e.close()
            raise OSError(f"HTTP {e.code} {_printable(str(e.reason), 80)}") from None
        except urllib.error.URLError as e:
            raise OSError(_printable(str(e.reason))) from None
        except Exception as e:  # (http.client's, and whatever a hostile answer makes of it)
            raise OSError(f"bad HTTP answer ({type(e).__name__}: {_printable(str(e))})") from None
        body = Body(self, response, response.geturl(), asked=url)
        if offset and not _serves_range(response, offset, length):
            body.close()
            raise OSError(f"the server did not serve the range asked for (HTTP {response.status})")
        body.pos = offset
        with self._lock:
            if self._closed:
                body.close()
                raise OSError("the session is over")
            self._bodies = [b for b in self._bodies if not b.closed] + [body]
        return body


def _serves_range(response: Any, offset: int, length: int | None) -> bool:
    """Whether `response` is the range from `offset` of the `length` bytes asked for."""
    found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("Content-Range") or "")
    return (
        response.status == 206
        and found is not None
        and int(found[1]) == offset
        and int(found[3]) == length
    )


class Body:
    """One resource's answer, read as FFmpeg reads: `read`, and `seek` where the server serves
    ranges of a known length (a file over HTTP)."""

    def __init__(self, owner: HttpInput, response: Any, url: str, asked: str = "") -> None:
        self.owner = owner
        self.response = response
        self.url = url
        # What a playlist's relative names are made absolute from: FFmpeg knows only the URL
        # it asked for (no redirect reaches it through this input); counted at the longer.
        self._base = max(len(url), len(asked))
        self._line = 0  # (a playlist's line being read: its length so far)
        self._longest = 0  # ... and its longest line (an attribute FFmpeg copies to each line)
        self.pos = 0
        self.closed = response is None
        self.length: int | None = None
        self.content_type = ""
        self._head = b""
        self._playlist = False
        self._cost = 0  # (a playlist's: its bytes and its lines)
        self._tail = b""  # (a playlist's last bytes: a tag split between two reads)
        if response is not None:
            self.content_type = (response.headers.get("Content-Type") or "").split(";")[0]
            self.content_type = self.content_type.strip().lower()
            size = response.headers.get("Content-Length")
            ranges = (response.headers.get("Accept-Ranges") or "").lower()
            if size is not None and size.isdigit() and ranges == "bytes" and response.status == 200:
                self.length = int(size)

    def read(self, n: int) -> bytes:
        owner = self.owner
        if self.closed or owner.refused is not None:
            return b""
        meter = owner.meter
        try:
            data: bytes = self.response.read1(max(1, min(n, MAX_READ)))
        except Exception as e:  # (http.client's, and whatever a hostile answer makes of it)
            if not self.closed:
                owner._fail(f"{_printable(self.url)}: {type(e).__name__}: {_printable(str(e))}")
            self.close()
            return b""
        self.pos += len(data)
        if len(self._head) < 10:
            self._head += data[: 10 - len(self._head)]
            self._playlist = self._head.removeprefix(b"\xef\xbb\xbf").startswith(b"#EXTM3U")
        cost = len(data)
        if self._playlist:  # (what FFmpeg keeps of each line: a line ends at CR, LF or CRLF)
            lines = data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
            parts = data.replace(b"\r", b"\n").split(b"\n")
            self._line += len(parts[0])
            self._longest = max(self._longest, self._line, *(len(p) for p in parts[1:-1]))
            self._line = len(parts[-1]) if len(parts) > 1 else self._line
            # Each line: the base URL, its fields, and the longest line before it (a key's
            # URI is copied to every segment after it).
            cost += lines * (self._base + self._longest + LINE_COST)
            seen = self._tail + data
            variants = sum(seen.count(tag) for tag in VARIANT_TAGS)
            variants -= sum(self._tail.count(tag) for tag in VARIANT_TAGS)
            self._tail = seen[-32:]
            if variants:
                owner.variants += variants
                if owner.variants > MAX_VARIANTS:
                    owner._refuse(
                        f"more than {MAX_VARIANTS} variants and renditions ({_printable(self.url)})"
                    )
                    return b""
        self._cost += cost
        meter.bytes += cost
        if meter.bytes > owner.max_bytes:
            owner._refuse(f"more than {owner.max_bytes:,} bytes of input without a packet")
            return b""
        if self._playlist and self._cost > MAX_PLAYLIST_COST:
            owner._refuse(
                f"a playlist over {MAX_PLAYLIST_COST:,} bytes with what its lines cost "
                f"({_printable(self.url)})"
            )
            return b""
        return data

    def seekable(self) -> bool:
        return self.length is not None

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if self.length is None:
            raise OSError("not seekable")
        target = {0: offset, 1: self.pos + offset, 2: self.length + offset}.get(whence)
        if target is None or target < 0:
            raise OSError(f"bad seek ({offset}, {whence})")
        target = min(target, self.length)
        if 0 <= target - self.pos <= SKIP_BYTES and not self.closed:
            while self.pos < target:
                if not self.read(target - self.pos):
                    raise OSError("the answer ended before the seek's place")
            return self.pos
        self.close()
        fresh = self.owner._get(self.url, target, self.length) if target < self.length else None
        self.response, self.closed, self.pos = (
            (fresh.response, False, target) if fresh is not None else (None, True, target)
        )
        return self.pos

    def close(self) -> None:
        self.closed = True
        response = self.response
        if response is not None:
            with contextlib.suppress(Exception):
                response.close()
