"""The preview web app (aiohttp): the page, the source list, the crop strip and WebRTC
signalling. One app serves all of it; an optional bearer token guards every route."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import aioice.ice
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from streamer.config import PreviewConfig, is_loopback_host
from streamer.errors import ConfigError
from streamer.http_metrics import Listener, health_response, metrics_app, metrics_response, serve
from streamer.preview.hub import PreviewHub, PreviewSource, PreviewTrack

log = logging.getLogger(__name__)

MAX_SDP_BYTES = 64 * 1024
BODY_TIMEOUT_S = 10.0  # a request body (JSON: offers, camera changes) must have come by then
MAX_OFFER_CODECS = 64  # payload types in the offer's video section (a browser's: 20-40)
MAX_OFFER_CANDIDATES = 128  # ICE candidates in it, each checked (a browser's: a few a NIC)
MAX_VIEWERS = 32
MAX_CONNECTING_PER_CLIENT = 4  # offers from one address still connecting at once
WEBRTC_LIBS = ("aiortc", "aioice")  # packages whose failed tasks are counted, not logged each
# A viewer's video that stops with its connection up for this long has stopped for good (its
# encoder failed); a lost connection fails within it.
VIDEO_STOPPED_AFTER_S = 1.0
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = "application/json"
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
COOKIE = "streamer_token"
STATIC = resources.files("streamer.preview") / "static"
STATIC_FILES = {"app.js": "application/javascript", "style.css": "text/css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = ("/healthz",)  # for container health checks, which carry no token


class Control(Protocol):
    """What the HTTP API needs from the running pipeline."""

    def stats(self) -> dict[str, Any]: ...
    def health(self) -> tuple[bool, dict[str, Any]]: ...
    def metrics_text(self) -> bytes: ...
    def source_settings(self, sid: str) -> dict[str, Any]: ...
    def patch_source(self, sid: str, data: Any) -> dict[str, Any]: ...
    async def add_source(self, data: Any) -> dict[str, Any]: ...
    async def remove_source(self, sid: str) -> dict[str, Any]: ...


def limit_host_candidates(addresses: list[str]) -> None:
    """Offer only these local addresses as ICE host candidates (aioice gathers from every
    interface by default; a preview meant for loopback should not advertise the others)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


def _split_host(header: str) -> str:
    """The name or address of a Host (or Origin netloc) value, lower case, without its port."""
    h = header.strip().lower()
    if h.startswith("["):  # [v6]:port
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Which ``Host`` headers the app answers (against DNS rebinding: a page on an attacker's
    name that resolves to us carries that name). Accepted: the bound address; ``localhost``
    when bound to loopback; when bound to every interface, any IP address literal (a literal
    cannot be rebound), ``localhost`` and this machine's host name; and `allowed` names
    (``*``: any Host, for a reverse proxy that checks it)."""

    def __init__(self, bind_host: str, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.wildcard = bind_host in WILDCARD_HOSTS
        names = {_split_host(h) for h in allowed if h != "*"}
        bind = _split_host(bind_host) if bind_host else ""
        names.add(bind)
        if self.wildcard:
            names.update(("localhost", socket.gethostname().lower()))
        elif is_loopback_host(bind):
            names.add("localhost")
        names.discard("")
        self.names = frozenset(names)
        self.extra = frozenset(_split_host(h) for h in allowed if h != "*")

    def allows(self, host: str) -> bool:
        name = _split_host(host)
        return self.any or name in self.names or (self.wildcard and _is_ip(name))

    def same_origin(self, origin: str, host: str) -> bool:
        """An ``Origin`` is ours when it names the host the request was sent to, or an allowed
        name (a reverse proxy may rewrite Host but not Origin)."""
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            return False
        ours = netloc == host.strip().lower() or _split_host(netloc) in self.extra
        return bool(netloc) and ours


async def json_body(request: web.Request) -> Any:
    """The request's JSON body: ``Content-Type: application/json`` (what a cross-site form
    cannot send without a CORS preflight, which this app never grants), UTF-8, no lone
    surrogates, all of it within BODY_TIMEOUT_S (a body trickled in held its connection, one of
    the listener's few, for as long as its client liked). Raises 415, 400 or 408 with the
    reason."""
    if request.content_type != JSON_TYPE:
        raise web.HTTPUnsupportedMediaType(text=f"Content-Type must be {JSON_TYPE}\n")
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the body took over {BODY_TIMEOUT_S:.0f} s\n") from None
    try:
        data = json.loads(raw.decode("utf-8"))
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates (\\udXXX)
    except UnicodeError as e:
        raise web.HTTPBadRequest(text=f"not UTF-8 text: {e}\n") from None
    except RecursionError:
        raise web.HTTPBadRequest(text="JSON nested too deeply\n") from None
    except ValueError as e:
        raise web.HTTPBadRequest(text=f"not JSON: {e}\n") from None
    return data


@dataclass(eq=False)
class Viewer:
    """One peer connection, from its offer until it closes."""

    pc: RTCPeerConnection
    source_id: str
    preview: PreviewSource  # this viewer's: a source removed and added again has a new one
    track: PreviewTrack
    client: str
    connected: bool = False
    closed: bool = False
    deadline: asyncio.TimerHandle | None = None
    deadline_video: asyncio.TimerHandle | None = None  # its video stopped: counted unless it closes
    closing: set[asyncio.Task[None]] = field(default_factory=set)


class PreviewServer:
    """Holds the peer connections. `app` serves the page, the API, /metrics and /healthz;
    `metrics_app` (for its own port) only /metrics and /healthz, without a token."""

    def __init__(self, cfg: PreviewConfig, hub: PreviewHub, control: Control) -> None:
        self.cfg = cfg
        self.hub = hub
        self.control = control
        self.viewers: set[Viewer] = set()
        self.connecting: Counter[str] = Counter()  # per client address
        self.refused: Counter[str] = Counter()  # answered 4xx or 5xx, per reason or status
        self.video_stopped = 0  # viewers closed because their video stopped under them
        self._offer_errors_logged: set[str] = set()  # exception types (finitely many)
        # aiortc's and aioice's own tasks that failed (a peer's hostile traffic, or their bugs),
        # by exception type: asyncio would log each with its traceback.
        self.webrtc_failed: Counter[str] = Counter()
        self.hosts = HostCheck(cfg.host, cfg.allowed_hosts)
        if cfg.host_candidates:
            limit_host_candidates(cfg.host_candidates)
        self.app = web.Application(
            middlewares=[self._guard, self._auth], client_max_size=MAX_SDP_BYTES
        )
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/static/{name}", self._static)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/api/sources", self._sources)
        self.app.router.add_get("/api/sources/{sid}", self._source_get)
        self.app.router.add_patch("/api/sources/{sid}", self._source_patch)
        self.app.router.add_post("/api/sources", self._source_add)
        self.app.router.add_delete("/api/sources/{sid}", self._source_delete)
        self.app.router.add_get("/api/sources/{sid}/crops", self._crops)
        self.app.router.add_get("/api/sources/{sid}/crops/{key}.jpg", self._crop_jpeg)
        self.app.router.add_post("/api/offer", self._offer)
        self.app.on_shutdown.append(self._close_all)
        self.metrics_app = metrics_app(control)

    @property
    def pcs(self) -> set[RTCPeerConnection]:
        return {v.pc for v in self.viewers}

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Refuse a Host we do not serve (DNS rebinding), and a state-changing request from a
        foreign Origin (cross-site), token or not."""
        host = request.headers.get("Host", "")
        if host and not self.hosts.allows(host):
            self.refused["host"] += 1
            raise web.HTTPForbidden(
                text=f"Host {host[:100]!r} is not served here (see preview.allowed_hosts)\n"
            )
        origin = request.headers.get("Origin")
        if (
            request.method in STATE_CHANGING
            and origin is not None
            and not self.hosts.same_origin(origin, host)
        ):
            self.refused["origin"] += 1
            raise web.HTTPForbidden(text=f"cross-origin request from {origin[:100]!r} refused\n")
        try:
            return await handler(request)
        except web.HTTPError as e:  # refused with its reason (4xx; 503: too many viewers)
            self.refused[str(e.status)] += 1
            raise
        except Exception:  # a fault of ours: aiohttp logs it and answers 500; counted too
            self.refused["500"] += 1
            raise

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With a token configured, every route wants it: as ``Authorization: Bearer``, as
        ``?token=`` (opening the page), or as the cookie the page then gets (so its scripts and
        crop images load without the token in every URL)."""
        token = self.cfg.token
        if not token or request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = (
            credentials.strip()
            if scheme.lower() == "bearer"  # a scheme name is case-insensitive (RFC 9110)
            else request.query.get("token") or request.cookies.get(COOKIE, "")
        )
        try:
            ok = hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
        except UnicodeError:  # a header or query value that is not text
            ok = False
        if not ok:
            raise web.HTTPUnauthorized(text="a valid token is required\n")
        response = await handler(request)
        if request.query.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text=(STATIC / "index.html").read_text(), content_type="text/html")

    async def _static(self, request: web.Request) -> web.Response:
        kind = STATIC_FILES.get(request.match_info["name"])  # (no other name reaches the disk)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(
            text=(STATIC / request.match_info["name"]).read_text(), content_type=kind
        )

    async def _sources(self, request: web.Request) -> web.Response:
        stats = self.control.stats()
        for sid, s in stats["sources"].items():
            preview = self.hub.sources.get(sid)
            s["viewers"] = preview.viewers if preview is not None else 0
        return web.json_response(stats)

    async def _source_get(self, request: web.Request) -> web.Response:
        sid = self._source(request)
        try:
            body = dict(self.control.stats()["sources"][sid])
            body["settings"] = self.control.source_settings(sid)
        except KeyError:  # being removed
            raise web.HTTPNotFound(text=f"no source {sid!r}\n") from None
        body["id"] = sid
        preview = self.hub.sources.get(sid)
        body["viewers"] = preview.viewers if preview is not None else 0
        return web.json_response(body)

    async def _source_patch(self, request: web.Request) -> web.Response:
        sid = self._source(request)
        data = await json_body(request)
        try:
            settings = self.control.patch_source(sid, data)
        except ConfigError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
        except KeyError:  # being removed
            raise web.HTTPNotFound(text=f"no source {sid!r}\n") from None
        return web.json_response({"id": sid, "settings": settings})

    async def _source_add(self, request: web.Request) -> web.Response:
        """Start a camera: the body is one entry of the config's `sources`."""
        data = await json_body(request)
        try:
            settings = await self.control.add_source(data)
        except ConfigError as e:
            raise web.HTTPBadRequest(text=f"{e}\n") from None
        return web.json_response({"id": data["id"], "settings": settings}, status=201)

    async def _source_delete(self, request: web.Request) -> web.Response:
        """Stop a camera; the answer carries its final counters."""
        sid = self._source(request)
        try:
            final = await self.control.remove_source(sid)
        except KeyError:  # removed meanwhile by another request
            raise web.HTTPNotFound(text=f"no source {sid!r}\n") from None
        return web.json_response({"id": sid, "final": final})

    async def _metrics(self, request: web.Request) -> web.Response:
        return metrics_response(self.control)

    async def _healthz(self, request: web.Request) -> web.Response:
        return health_response(self.control)

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
        body = await json_body(request)
        try:
            sid, sdp, kind = body["source_id"], body["sdp"], body["type"]
            if not all(isinstance(v, str) for v in (sid, sdp, kind)) or kind != "offer":
                raise ValueError("source_id, sdp and type='offer' are required strings")
        except (ValueError, KeyError, TypeError) as e:
            raise web.HTTPBadRequest(text=f"bad offer: {e}\n") from None
        if sid not in self.hub.sources:
            raise web.HTTPNotFound(text=f"no source {sid[:100]!r}\n")
        problem = offer_problem(sdp)
        if problem is not None:
            raise web.HTTPBadRequest(text=f"bad offer: {problem}\n")
        if len(self.viewers) >= MAX_VIEWERS:
            raise web.HTTPServiceUnavailable(text="too many viewers\n")
        client = request.remote or "?"
        if self.connecting[client] >= MAX_CONNECTING_PER_CLIENT:
            raise web.HTTPTooManyRequests(text="too many viewers still connecting from here\n")
        ice = [RTCIceServer(urls=u) for u in self.cfg.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
        preview, track = self.hub.subscribe(sid)
        viewer = Viewer(pc, sid, preview, track, client)
        self.viewers.add(viewer)
        self.connecting[client] += 1
        pc.addTrack(track)
        loop = asyncio.get_running_loop()

        @track.on("ended")
        def on_ended() -> None:
            # The track ends when the viewer leaves (the client closed: aiortc stops its
            # sender, which stops the track), when the connection is lost (aiortc's sender
            # stops on the send that fails, and the connection fails just after), when its
            # source is removed, or when its sender failed: aiortc logs why and stops sending,
            # and the connection stays up with the picture frozen. That last one is closed
            # here and counted, once it has stayed up for a moment, and the page connects again.
            if viewer.closed or pc.signalingState == "closed":
                return
            if viewer.preview.closed:
                self._close_soon(viewer, "source removed")
                return
            viewer.deadline_video = loop.call_later(VIDEO_STOPPED_AFTER_S, video_stopped)

        def video_stopped() -> None:
            if not viewer.closed and pc.signalingState != "closed":
                self.video_stopped += 1
                self._close_soon(viewer, "its video stopped")

        viewer.deadline = loop.call_later(
            self.cfg.connect_timeout_s, self._close_later, viewer, "not connected in time"
        )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected" and not viewer.connected and not viewer.closed:
                viewer.connected = True
                self._done_connecting(viewer)
                viewer.preview.connect()
            elif pc.connectionState in ("failed", "closed", "disconnected"):
                await self._close(viewer, pc.connectionState)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            # aiortc refuses what it cannot parse or negotiate with ValueError, and fails on
            # some malformed offers with other exceptions of its own (AttributeError,
            # AssertionError, ...). Either way the offer is what failed: 400, with the reason.
            # The others are logged once per type: they may also be a fault of ours.
            await self._close(viewer, "bad offer")
            kind = type(e).__name__
            if not isinstance(e, ValueError) and kind not in self._offer_errors_logged:
                self._offer_errors_logged.add(kind)
                log.warning("preview: an offer failed with %s (logged once)", kind, exc_info=True)
            reason = str(e)[:200]
            raise web.HTTPBadRequest(text=f"cannot answer this offer: {kind}: {reason}\n") from None
        log.info("preview: viewer joined %s (%d connection(s))", sid, len(self.viewers))
        desc = pc.localDescription
        return web.json_response({"sdp": desc.sdp, "type": desc.type})

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The loop's handler of exceptions nobody retrieved: a failed task of aiortc's or
        aioice's (they start tasks of their own and never look at them) is counted and logged
        once per exception type; anything else goes on to asyncio's handler."""
        exc, task = context.get("exception"), context.get("future")
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        where = getattr(getattr(coro, "cr_code", None), "co_filename", "")
        if exc is None or not any(f"{os.sep}{lib}{os.sep}" in where for lib in WEBRTC_LIBS):
            loop.default_exception_handler(context)
            return
        kind = type(exc).__name__
        self.webrtc_failed[kind] += 1
        if self.webrtc_failed[kind] == 1:
            log.warning("preview: a WebRTC task failed with %s (logged once)", kind, exc_info=exc)

    def _done_connecting(self, viewer: Viewer) -> None:
        if viewer.deadline is not None:
            viewer.deadline.cancel()
            viewer.deadline = None
            self.connecting[viewer.client] -= 1
            if self.connecting[viewer.client] <= 0:
                del self.connecting[viewer.client]

    def _close_later(self, viewer: Viewer, why: str) -> None:
        viewer.deadline = None  # (fired) so _done_connecting must still release the slot
        self.connecting[viewer.client] -= 1
        if self.connecting[viewer.client] <= 0:
            del self.connecting[viewer.client]
        self._close_soon(viewer, why)

    def _close_soon(self, viewer: Viewer, why: str) -> None:
        task = asyncio.ensure_future(self._close(viewer, why))
        viewer.closing.add(task)
        task.add_done_callback(viewer.closing.discard)

    async def _close(self, viewer: Viewer, why: str) -> None:
        """Close a viewer's connection and free its slot (once)."""
        if viewer.closed:
            return
        viewer.closed = True
        if viewer.deadline_video is not None:
            viewer.deadline_video.cancel()
        self._done_connecting(viewer)
        self.viewers.discard(viewer)
        viewer.preview.detach(viewer.track, viewer.connected)
        log.info("preview: viewer of %s left (%s)", viewer.source_id, why)
        await viewer.pc.close()

    async def close_viewers(self, source_id: str, why: str) -> None:
        """Close every viewer of a source (it is being removed)."""
        viewers = [v for v in list(self.viewers) if v.source_id == source_id]
        await asyncio.gather(*(self._close(v, why) for v in viewers), return_exceptions=True)

    async def _close_all(self, app: web.Application) -> None:
        await asyncio.gather(
            *(self._close(v, "shutting down") for v in list(self.viewers)), return_exceptions=True
        )


def offer_problem(sdp: str) -> str | None:
    """Why an offer is not answered: what the preview page sends is one video section it
    receives on (recvonly), with a DTLS fingerprint, a bounded list of codecs and candidates;
    None if it is that. Anything else would cost without bound or run work nobody asked for:
    aiortc builds a transceiver per section (a 59 KB offer of 526 sections held the event loop
    1.2 s and 65 MB), starts a decoder thread for each section the peer sends on and queues its
    decoded frames unread, checks connectivity to every candidate, and fails in a task of its
    own on a section without a fingerprint."""
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as e:  # aiortc's parser, on any text
        return f"cannot read it ({type(e).__name__}: {str(e)[:200]})"
    if len(parsed.media) != 1:
        return f"{len(parsed.media)} media sections: the preview offers one video section"
    (media,) = parsed.media
    if media.kind != "video":
        return f"a section of {str(media.kind)[:20]}: the preview offers one video section"
    if media.direction != "recvonly":
        return f"its video is {str(media.direction)[:20]}: a viewer only receives (recvonly)"
    if media.dtls is None or not media.dtls.fingerprints:
        return "its video section has no DTLS fingerprint"
    if len(media.rtp.codecs) > MAX_OFFER_CODECS:
        return f"{len(media.rtp.codecs)} codecs, more than {MAX_OFFER_CODECS}"
    if len(media.ice_candidates) > MAX_OFFER_CANDIDATES:
        return f"{len(media.ice_candidates)} ICE candidates, more than {MAX_OFFER_CANDIDATES}"
    return None


async def start(server: PreviewServer) -> list[Listener]:
    """Listen: the main app, and the metrics app on its own port when configured. Failures of
    aiortc's own tasks are counted from here on (`PreviewServer.loop_exception`)."""
    asyncio.get_running_loop().set_exception_handler(server.loop_exception)
    cfg, refused = server.cfg, server.refused
    listeners = [await serve(server.app, cfg.host, cfg.port, "preview", refused=refused)]
    if cfg.metrics_port is not None:
        try:
            listeners.append(
                await serve(
                    server.metrics_app, cfg.host, cfg.metrics_port, "metrics", "/metrics", refused
                )
            )
        except OSError:
            await listeners[0].cleanup()
            raise
    return listeners
