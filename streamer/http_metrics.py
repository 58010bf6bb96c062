"""/metrics and /healthz over HTTP, without a token: on the preview's `metrics_port`, or on
their own (`metrics` in the config) for a site that runs no preview."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aiohttp import web

log = logging.getLogger(__name__)

PROMETHEUS_TYPE = "text/plain; version=0.0.4"


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


async def serve(
    app: web.Application, host: str, port: int, what: str = "http", path: str = "/"
) -> web.AppRunner:
    """Listen on host:port (0: any free port); raises OSError saying where it could not. Logs
    `what` is served where: the port bound, and `path` (the route a user opens first)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"{what}: cannot listen on {host}:{port}: {e}") from None
    for address in runner.addresses:  # (each family's socket, "" listening on both)
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("%s on http://%s:%s%s", what, shown, address[1], path)
    return runner
