"""The preview web app (aiohttp): the page, the source list, the crop strip and WebRTC
signalling. One app serves all of it; an optional bearer token guards every route."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Protocol

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from streamer.config import PreviewConfig
from streamer.errors import ConfigError
from streamer.preview.hub import PreviewHub

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
MAX_VIEWERS = 32
COOKIE = "streamer_token"
STATIC = resources.files("streamer.preview") / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROMETHEUS_TYPE = "text/plain; version=0.0.4"
OPEN_PATHS = ("/healthz",)  # for container health checks, which carry no token


class Control(Protocol):
    """What the HTTP API needs from the running pipeline."""

    def stats(self) -> dict[str, Any]: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> bytes: ...
    def source_settings(self, sid: str) -> dict[str, Any]: ...
    def patch_source(self, sid: str, data: Any) -> dict[str, Any]: ...


def limit_host_candidates(addresses: list[str]) -> None:
    """Offer only these local addresses as ICE host candidates (aioice gathers from every
    interface by default; a preview meant for loopback should not advertise the others)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


class PreviewServer:
    """Holds the peer connections. `app` serves the page, the API, /metrics and /healthz;
    `metrics_app` (for its own port) only /metrics and /healthz, without a token."""

    def __init__(self, cfg: PreviewConfig, hub: PreviewHub, control: Control) -> None:
        self.cfg = cfg
        self.hub = hub
        self.control = control
        self.pcs: set[RTCPeerConnection] = set()
        if cfg.host_candidates:
            limit_host_candidates(cfg.host_candidates)
        self.app = web.Application(middlewares=[self._auth], client_max_size=MAX_SDP_BYTES)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/api/sources", self._sources)
        self.app.router.add_get("/api/sources/{sid}", self._source_get)
        self.app.router.add_patch("/api/sources/{sid}", self._source_patch)
        self.app.router.add_get("/api/sources/{sid}/crops", self._crops)
        self.app.router.add_get("/api/sources/{sid}/crops/{key}.jpg", self._crop_jpeg)
        self.app.router.add_post("/api/offer", self._offer)
        self.app.on_shutdown.append(self._close_all)
        self.metrics_app = web.Application()
        self.metrics_app.router.add_get("/metrics", self._metrics)
        self.metrics_app.router.add_get("/healthz", self._healthz)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With a token configured, every route wants it: as ``Authorization: Bearer``, as
        ``?token=`` (opening the page), or as the cookie the page then gets (so its scripts and
        crop images load without the token in every URL)."""
        token = self.cfg.token
        if not token or request.path in OPEN_PATHS:
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        given = (
            auth[len("Bearer ") :]
            if auth.startswith("Bearer ")
            else request.query.get("token") or request.cookies.get(COOKIE, "")
        )
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="a valid token is required\n")
        response = await handler(request)
        if request.query.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {".js": "application/javascript", ".css": "text/css"}
        kind = next((t for ext, t in types.items() if name.endswith(ext)), None)
        path = STATIC / name
        if kind is None or "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(text=path.read_text(), content_type=kind)

    async def _sources(self, request: web.Request) -> web.Response:
        stats = self.control.stats()
        for sid, s in stats["sources"].items():
            s["viewers"] = self.hub.sources[sid].viewers
        return web.json_response(stats)

    async def _source_get(self, request: web.Request) -> web.Response:
        sid = self._source(request)
        body = dict(self.control.stats()["sources"][sid])
        body["id"] = sid
        body["settings"] = self.control.source_settings(sid)
        body["viewers"] = self.hub.sources[sid].viewers
        return web.json_response(body)

    async def _source_patch(self, request: web.Request) -> web.Response:
        sid = self._source(request)
        try:
            data = await request.json()
        except json.JSONDecodeError as e:
            raise web.HTTPBadRequest(text=f"not JSON: {e}\n") from None
        try:
            settings = self.control.patch_source(sid, data)
        except ConfigError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
        return web.json_response({"id": sid, "settings": settings})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.control.metrics_text(), headers={"Content-Type": PROMETHEUS_TYPE}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        ok, body = self.control.health()
        return web.json_response(body, status=200 if ok else 503)

    def _source(self, request: web.Request) -> str:
        sid = request.match_info["sid"]
        if sid not in self.hub.sources:
            raise web.HTTPNotFound(text=f"no source {sid!r}\n")
        return sid

    async def _crops(self, request: web.Request) -> web.Response:
        return web.json_response(self.hub.recent_crops(self._source(request)))

    async def _crop_jpeg(self, request: web.Request) -> web.Response:
        sid = self._source(request)
        try:
            key = int(request.match_info["key"])
        except ValueError:
            raise web.HTTPNotFound() from None
        data = await self.hub.crop_jpeg(sid, key)
        if data is None:
            raise web.HTTPNotFound(text="that crop is gone\n")
        return web.Response(
            body=data, content_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
        )

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            sid, sdp, kind = body["source_id"], body["sdp"], body["type"]
            if not all(isinstance(v, str) for v in (sid, sdp, kind)) or kind != "offer":
                raise ValueError("source_id, sdp and type='offer' are required strings")
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise web.HTTPBadRequest(text=f"bad offer: {e}\n") from None
        if sid not in self.hub.sources:
            raise web.HTTPNotFound(text=f"no source {sid!r}\n")
        if len(self.pcs) >= MAX_VIEWERS:
            raise web.HTTPServiceUnavailable(text="too many viewers\n")
        ice = [RTCIceServer(urls=u) for u in self.cfg.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        self.pcs.add(pc)
        pc.addTrack(self.hub.subscribe(sid))
        closed = False

        async def close() -> None:
            nonlocal closed
            if closed:
                return
            closed = True
            self.pcs.discard(pc)
            self.hub.unsubscribe(sid)
            await pc.close()

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed", "disconnected"):
                await close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await close()
            raise web.HTTPBadRequest(text=f"cannot answer this offer: {e}\n") from None
        log.info("preview: viewer joined %s (%d connection(s))", sid, len(self.pcs))
        desc = pc.localDescription
        return web.json_response({"sdp": desc.sdp, "type": desc.type})

    async def _close_all(self, app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in list(self.pcs)), return_exceptions=True)
        self.pcs.clear()


async def _serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"http: cannot listen on {host}:{port}: {e}") from None
    log.info("http on http://%s:%s/", host, port)
    return runner


async def start(server: PreviewServer) -> list[web.AppRunner]:
    """Listen: the main app, and the metrics app on its own port when configured."""
    runners = [await _serve(server.app, server.cfg.host, server.cfg.port)]
    if server.cfg.metrics_port is not None:
        try:
            runners.append(
                await _serve(server.metrics_app, server.cfg.host, server.cfg.metrics_port)
            )
        except OSError:
            await runners[0].cleanup()
            raise
    return runners
