"""The preview web app (aiohttp): the page, the source list, the crop strip and WebRTC
signalling. One app serves all of it; an optional bearer token guards every route."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from streamer.config import PreviewConfig
from streamer.preview.hub import PreviewHub

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
MAX_VIEWERS = 32
COOKIE = "streamer_token"
STATIC = resources.files("streamer.preview") / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
StatsFn = Callable[[], dict[str, Any]]


def limit_host_candidates(addresses: list[str]) -> None:
    """Offer only these local addresses as ICE host candidates (aioice gathers from every
    interface by default; a preview meant for loopback should not advertise the others)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


class PreviewServer:
    """Holds the peer connections; `app` is the aiohttp application."""

    def __init__(self, cfg: PreviewConfig, hub: PreviewHub, stats: StatsFn) -> None:
        self.cfg = cfg
        self.hub = hub
        self.stats = stats
        self.pcs: set[RTCPeerConnection] = set()
        if cfg.host_candidates:
            limit_host_candidates(cfg.host_candidates)
        self.app = web.Application(middlewares=[self._auth], client_max_size=MAX_SDP_BYTES)
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/api/sources", self._sources)
        self.app.router.add_get("/api/sources/{sid}/crops", self._crops)
        self.app.router.add_get("/api/sources/{sid}/crops/{key}.jpg", self._crop_jpeg)
        self.app.router.add_post("/api/offer", self._offer)
        self.app.on_shutdown.append(self._close_all)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With a token configured, every route wants it: as ``Authorization: Bearer``, as
        ``?token=`` (opening the page), or as the cookie the page then gets (so its scripts and
        crop images load without the token in every URL)."""
        token = self.cfg.token
        if not token:
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
        stats = self.stats()
        for sid, s in stats["sources"].items():
            s["viewers"] = self.hub.sources[sid].viewers
        return web.json_response(stats)

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


async def start(server: PreviewServer) -> web.AppRunner:
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, server.cfg.host, server.cfg.port)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(
            f"preview: cannot listen on {server.cfg.host}:{server.cfg.port}: {e}"
        ) from None
    log.info("preview on http://%s:%s/", server.cfg.host, server.cfg.port)
    return runner
