"""/metrics and /healthz over HTTP, without a token: on the preview's `metrics_port`, or on
their own (`metrics` in the config) for a site that runs no preview; and /metrics of the
processes without an event loop (the OCR worker, the text detector: `serve_in_thread`). Every
listener bounds its connections and the wait for a request's headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections import Counter
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from aiohttp import web

from streamer.metrics import LogOnce

log = logging.getLogger(__name__)

PROMETHEUS_TYPE = "text/plain; version=0.0.4"
MAX_CONNECTIONS = 256  # open at once, per listener; more are closed at once (counted)
MAX_CONNECTIONS_PER_CLIENT = 32  # of those from one address (one client cannot take them all)
HEADER_TIMEOUT_S = 10.0  # a new connection's first request must have sent its headers by then
KEEPALIVE_S = 15.0  # an idle connection is closed after this (aiohttp's default: an hour)


class Observed(Protocol):
    """What the two routes need from the running pipeline."""

    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> bytes: ...


def metrics_response(observed: Observed) -> web.Response:
    return web.Response(body=observed.metrics_text(), headers={"Content-Type": PROMETHEUS_TYPE})


def health_response(observed: Observed) -> web.Response:
    ok, body = observed.health()
    return web.json_response(body, status=200 if ok else 503)


def metrics_app(observed: Observed) -> web.Application:
    """An app of /metrics and /healthz only."""

    async def metrics(request: web.Request) -> web.Response:
        return metrics_response(observed)

    async def healthz(request: web.Request) -> web.Response:
        return health_response(observed)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


class Listener:
    """A listening app (`serve`): `cleanup()` stops it."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server) -> None:
        self.runner, self.server = runner, server

    async def cleanup(self) -> None:
        self.server.close()
        await self.runner.cleanup()


class _Slots:
    """A listener's open connections: at most MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT from
    one address (safe from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.clients: Counter[str] = Counter()

    def take(self, client: str) -> bool:
        """A slot for a new connection from `client`; False when there is none."""
        with self.lock:
            if self.open >= MAX_CONNECTIONS or self.clients[client] >= MAX_CONNECTIONS_PER_CLIENT:
                return False
            self.open += 1
            self.clients[client] += 1
            return True

    def give_back(self, client: str) -> None:
        with self.lock:
            self.open -= 1
            self.clients[client] -= 1
            if not self.clients[client]:
                del self.clients[client]


class _Guard:
    """Two bounds aiohttp's server lacks, per listener: the connections open at once, and the
    time a new connection may take to send its first request's headers. Without them a client
    that opened connections and sent nothing, or its headers a byte at a time, held a file
    descriptor for each for good (400 of them after 120 s), descriptors the cameras' and
    ZeroMQ's sockets need. Idle connections after a response are aiohttp's (`KEEPALIVE_S`)."""

    def __init__(self, factory: Any, refused: Counter[str], what: str) -> None:
        self.factory, self.refused, self.what = factory, refused, what
        self.slots = _Slots()
        self.log = LogOnce(log)

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self.factory())


class _Guarded(asyncio.Protocol):
    """One connection's aiohttp protocol, within its listener's `_Guard`."""

    def __init__(self, guard: _Guard, inner: asyncio.Protocol) -> None:
        self.guard, self.inner = guard, inner
        self.transport: asyncio.BaseTransport | None = None  # (None: refused, inner unused)
        self.client = ""
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""  # the last bytes seen while the first headers are awaited

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        g = self.guard
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not g.slots.take(client):
            g.refused["connections"] += 1
            g.log("connections", "%s: too many connections open: closing new ones", g.what)
            transport.abort()  # type: ignore[attr-defined]
            return
        self.client = client
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(HEADER_TIMEOUT_S, self._too_slow)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.tail + data
            if b"\r\n\r\n" in seen:
                self.timer.cancel()
                self.timer = None
            self.tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is None:
            return
        self.guard.slots.give_back(self.client)
        if self.timer is not None:
            self.timer.cancel()
        self.inner.connection_lost(exc)

    def _too_slow(self) -> None:
        self.timer = None
        self.guard.refused["slow_headers"] += 1
        self.guard.log(
            "slow",
            "%s: a connection sent no request within %.0f s: closed",
            self.guard.what,
            HEADER_TIMEOUT_S,
        )
        assert self.transport is not None
        self.transport.abort()  # type: ignore[attr-defined]


async def serve(
    app: web.Application,
    host: str,
    port: int,
    what: str = "http",
    path: str = "/",
    refused: Counter[str] | None = None,
) -> Listener:
    """Listen on host:port (0: any free port); raises OSError saying where it could not. Logs
    `what` is served where: the port bound, and `path` (the route a user opens first).
    Connections beyond MAX_CONNECTIONS, and ones whose first request's headers take longer than
    HEADER_TIMEOUT_S, are closed and counted in `refused` ("connections", "slow_headers")."""
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_S)
    await runner.setup()
    assert runner.server is not None
    guard = _Guard(runner.server, Counter() if refused is None else refused, what)
    try:
        server = await asyncio.get_running_loop().create_server(
            guard, host or None, port, reuse_address=True
        )
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"{what}: cannot listen on {host}:{port}: {e}") from None
    for sock in server.sockets:  # (each family's socket, "" listening on both)
        address = sock.getsockname()
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("%s on http://%s:%s%s", what, shown, address[1], path)
    return Listener(runner, server)


class _QuietHandler(WSGIRequestHandler):
    """One connection: answered within HEADER_TIMEOUT_S of its start, or shut (a socket
    timeout alone is per read: a client sending a byte every few seconds held it for ever)."""

    timeout = HEADER_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.deadline = threading.Timer(HEADER_TIMEOUT_S, self._expire)
        self.deadline.daemon = True
        self.deadline.start()

    def _expire(self) -> None:
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self.deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """prometheus_client's server started a thread per connection and waited on each for
    ever: 300 half-sent requests held 300 threads. Here each connection has HEADER_TIMEOUT_S to
    be answered, and past MAX_CONNECTIONS (MAX_CONNECTIONS_PER_CLIENT from one address) a new
    one is closed at once."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = _Slots()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        client = str(client_address[0])
        if not self.slots.take(client):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.give_back(client)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.give_back(str(client_address[0]))


def serve_in_thread(port: int, host: str, registry: Any) -> WSGIServer:
    """Serve prometheus_client's `registry` at /metrics on host:port from a daemon thread (for
    processes without an event loop); `shutdown()` and `server_close()` stop it."""
    from prometheus_client import make_wsgi_app

    class Server(_BoundedServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, make_wsgi_app(registry), Server, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
