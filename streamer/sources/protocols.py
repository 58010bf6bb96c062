"""Which of FFmpeg's protocols a source's URL reaches, and what streamer does with each.

FFmpeg picks a URL's protocol by its scheme alone, with or without ``//`` (``http:host/x`` is
HTTP), and some protocols wrap another's URL (``cache:``, ``concat:``, ``crypto+``...). So:

- A network protocol is taken only as ``scheme://``, where streamer knows it (a camera, with
  its timeouts and, for http(s), its bounded input; or a file on another host, `ftp://` and
  `gopher(s)://`, with timeouts); any other spelling, and the network protocols streamer does
  not read, are refused by the config (`refused_protocol`).
- Everything else is a local file and is opened with FFmpeg's `protocol_whitelist` set to the
  local protocols (`LOCAL_PROTOCOLS`): whatever it names or nests, FFmpeg reaches no network.
  A camera other than http(s) gets `LIVE_WHITELIST` (no http, no file), an http(s) camera
  streamer's own input (streamer/sources/http_input.py), a file on another host its protocol.
- A ``lavfi:`` test graph may use only filters that open nothing (`LAVFI_FILTERS`).
"""

from __future__ import annotations

import re

# The schemes a camera has (with their ``//``): read live, with timeouts, reconnected when they
# end (a ``tcp://`` MPEG-TS camera taken for a file once had no timeout: a silent peer held it).
LIVE_PROTOCOLS = frozenset(
    ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "srt", "udp", "tcp", "tls", "rtp")
) | frozenset(("srtp", "unix"))
# What a camera other than http(s) may use (a playlist or SDP it serves names no http, file or
# other protocol: FFmpeg's own HTTP client is not bounded).
LIVE_WHITELIST = ",".join(sorted(LIVE_PROTOCOLS - {"http", "https"}))
# A file on another host: opened and read with the source's timeouts, played as a file.
NETWORK_FILE_PROTOCOLS = frozenset(("ftp", "gopher", "gophers"))
# FFmpeg's other network protocols (in PyAV's build): not read by streamer. ipfs and ipns go
# through FFmpeg's own HTTP client to a gateway (give the gateway's http URL instead).
# rtmpt and rtmpts tunnel RTMP through FFmpeg's HTTP client.
_OTHER_NETWORK = frozenset(
    ("ipfs", "ipns", "httpproxy", "ffrtmphttp", "mmsh", "mmst", "udplite", "dtls", "icecast")
) | frozenset(("rtmpt", "rtmpts"))
# What streamer and FFmpeg look up by its scheme (the rest of a URL is theirs, or a path); the
# wrappers keep theirs (a local file's: FFmpeg refuses them in capitals).
_BY_NAME = (
    LIVE_PROTOCOLS
    | NETWORK_FILE_PROTOCOLS
    | frozenset(("webcam", "lavfi", "synthetic", "file", "pipe", "fd", "data"))
)
# Wrappers whose only use is around a network URL (``cache:`` writes all it reads to disk).
_NETWORK_WRAPPERS = frozenset(("cache", "async"))
# Wrappers that may nest a network URL: what they nest is looked at.
_WRAPPERS = frozenset(("concat", "concatf", "crypto", "subfile"))
# What a local file may use: FFmpeg refuses every other protocol, nested ones too.
LOCAL_PROTOCOLS = "file,pipe,fd,data,concat,concatf,subfile,crypto"
_SCHEME = re.compile(r"[A-Za-z0-9+.-]+(?=:)")  # FFmpeg's URL_SCHEME_CHARS, up to the colon
# A protocol's name nested in a wrapper's URL: at its start or after a separator.
_NESTED = re.compile(r"(?:^|(?<=[|:,+]))([A-Za-z][A-Za-z0-9.+-]*)(?=:)")
# lavfi test graphs: generators and transforms that open no file or URL (movie, amovie and
# removelogo do, and psnr, ssim and metadata write files; life and cellauto read one), in
# PyAV's build.
LAVFI_FILTERS = frozenset(
    (
        "testsrc",
        "testsrc2",
        "color",
        "smptebars",
        "smptehdbars",
        "rgbtestsrc",
        "yuvtestsrc",
        "pal75bars",
        "pal100bars",
        "mandelbrot",
        "gradients",
        "sierpinski",
        "zoneplate",
        "colorspectrum",
        "colorchart",
        "allrgb",
        "allyuv",
        "nullsrc",
        "scale",
        "format",
        "fps",
        "setpts",
        "settb",
        "trim",
        "hflip",
        "vflip",
        "transpose",
        "crop",
        "pad",
        "noise",
        "gblur",
        "hue",
        "negate",
        "null",
        "split",
        "overlay",
        "hstack",
        "vstack",
        "drawbox",
        "drawgrid",
        "setsar",
        "setdar",
        "framerate",
        "loop",
        "tpad",
    )
)


def protocol(url: str) -> str | None:
    """The protocol FFmpeg opens `url` with (lower case; ``crypto`` for ``crypto+http:``),
    or None for a path (one letter before the colon: a Windows drive, taken for a path)."""
    if url.startswith("subfile,") and ":" in url:
        return "subfile"  # (its options come before the colon: FFmpeg's one exception)
    found = _SCHEME.match(url)
    if found is None or len(found[0]) < 2:
        return None
    return found[0].split("+", 1)[0].lower()


def lower_scheme(url: str) -> str:
    """`url` with its scheme in lower case where it names something streamer reads by name (a
    camera's or a remote file's protocol, ``webcam:``, ``lavfi:``, ``synthetic:``, ``file:``
    and FFmpeg's other local ones but the wrappers): schemes are
    case-insensitive (RFC 3986), FFmpeg's and streamer's lookups are not, so ``RTSP://cam/1``
    failed at open. Anything else, a path above all, is left as it is."""
    proto = protocol(url)
    name = url.split(":", 1)[0]
    if proto is None or proto not in _BY_NAME or "+" in name:
        return url
    return proto + url[len(name) :]


def _spelled(url: str, proto: str) -> bool:
    """Whether `url` is written ``proto://`` (``unix:`` takes a path: ``unix:/run/cam.sock``)."""
    return url[len(proto) :].startswith("://" if proto != "unix" else ":")


def is_live(url: str) -> bool:
    """A camera: a live protocol, written as streamer reads it."""
    proto = protocol(url)
    return proto in LIVE_PROTOCOLS and _spelled(url, proto)


def is_network_file(url: str) -> bool:
    proto = protocol(url)
    return proto in NETWORK_FILE_PROTOCOLS and _spelled(url, proto)


def refused_protocol(url: str) -> str | None:
    """Why a source may not have `url` (FFmpeg would reach the network where streamer does
    not bound it), or None."""
    proto = protocol(url)
    if proto is None:
        return None
    name = url.split(":", 1)[0]
    if proto in LIVE_PROTOCOLS or proto in NETWORK_FILE_PROTOCOLS:
        if "+" in name or not _spelled(url, proto):
            return f"write a {proto} URL as {proto}://...: it was written {name[:20]}:..."
        return None
    if proto == "lavfi":
        return _lavfi(url[len(name) + 1 :])
    if proto == "webcam":  # (OpenCV opens whatever it is given: a device, nothing else)
        if not re.fullmatch(r"\d+|/dev/[A-Za-z0-9_./-]+", url[len(name) + 1 :]):
            return (
                "webcam: takes a device's number or its /dev/ path (webcam:0, webcam:/dev/video2)"
            )
        return None
    if proto in _NETWORK_WRAPPERS:
        return f"{proto}: wraps a network URL, which streamer reads itself; give the URL"
    if proto in _OTHER_NETWORK:
        return (
            f"{proto}: a network protocol streamer does not read (bounded, with timeouts); "
            f"give the camera's rtsp://, http(s):// or other URL"
        )
    if proto not in _WRAPPERS:
        return None  # (a local file: opened with LOCAL_PROTOCOLS only)
    nested = {m.lower().split("+", 1)[0] for m in _NESTED.findall(url[len(name) + 1 :])}
    nested |= {part.lower() for part in name.split("+")[1:]}  # (crypto+http:)
    network = nested & (LIVE_PROTOCOLS | NETWORK_FILE_PROTOCOLS | _OTHER_NETWORK)
    if network:
        return (
            f"{proto}: a network URL ({', '.join(sorted(network))}) inside one of FFmpeg's "
            f"wrapping protocols would be read without streamer's bounds and timeouts; give "
            f"the camera's URL itself"
        )
    return None


def _lavfi(graph: str) -> str | None:
    """Why a lavfi test graph is refused: a filter not in LAVFI_FILTERS (its name as FFmpeg
    reads it: no quotes or escapes, which could hide one)."""
    if any(c in graph for c in "\\'\""):
        return "lavfi: a graph with quotes or backslashes is not read; write its filters plainly"
    for spec in re.split(r"[,;]", re.sub(r"\[[^\]]*\]", "", graph)):
        name = spec.split("=", 1)[0].split("@", 1)[0].strip()
        if name and name not in LAVFI_FILTERS:
            return (
                f"lavfi: filter {name[:40]!r} is not one streamer reads (some open files or URLs "
                f"themselves); it reads {', '.join(sorted(LAVFI_FILTERS))}"
            )
    return None
