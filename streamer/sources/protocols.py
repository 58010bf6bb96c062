"""Which of FFmpeg's protocols a source's URL reaches, and what streamer does with each.

FFmpeg picks a URL's protocol by its scheme alone, with or without ``//`` (``http:host/x`` is
HTTP), and some protocols wrap another's URL (``cache:``, ``concat:``, ``crypto+``...). So:

- A network protocol is taken only as ``scheme://``, where streamer knows it (a camera, with
  its timeouts and, for http(s), its bounded input; or a file on another host, `ftp://` and
  `gopher(s)://`, with timeouts); any other spelling, and the network protocols streamer does
  not read, are refused by the config (`refused_protocol`).
- Everything else is a local file and is opened with FFmpeg's `protocol_whitelist` set to the
  local protocols (`LOCAL_PROTOCOLS`): whatever it names or nests, FFmpeg reaches no network.
"""

from __future__ import annotations

import re

# The schemes a camera has (with their ``//``): read live, with timeouts, reconnected when they
# end (a ``tcp://`` MPEG-TS camera taken for a file once had no timeout: a silent peer held it).
LIVE_PROTOCOLS = frozenset(
    ("rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "rtmpt", "rtmpts", "srt", "udp")
) | frozenset(("tcp", "tls", "rtp", "srtp", "unix"))
# A file on another host: opened and read with the source's timeouts, played as a file.
NETWORK_FILE_PROTOCOLS = frozenset(("ftp", "gopher", "gophers"))
# FFmpeg's other network protocols (in PyAV's build): not read by streamer. ipfs and ipns go
# through FFmpeg's own HTTP client to a gateway (give the gateway's http URL instead).
_OTHER_NETWORK = frozenset(
    ("ipfs", "ipns", "httpproxy", "ffrtmphttp", "mmsh", "mmst", "udplite", "dtls", "icecast")
)
# What a local file may use: FFmpeg refuses every other protocol, nested ones too.
LOCAL_PROTOCOLS = "file,pipe,fd,data,concat,concatf,subfile,crypto"
_SCHEME = re.compile(r"[A-Za-z0-9+.-]+(?=:)")  # FFmpeg's URL_SCHEME_CHARS, up to the colon
_NAMED = re.compile(r"[A-Za-z][A-Za-z0-9.-]*(?=:)")  # a protocol's name anywhere in a URL
_MOVIE = re.compile(r"(?<![A-Za-z0-9_])a?movie(?![A-Za-z0-9_])")  # lavfi's filters that open URLs


def protocol(url: str) -> str | None:
    """The protocol FFmpeg opens `url` with (lower case; ``crypto`` for ``crypto+http:``),
    or None for a path (one letter before the colon: a Windows drive, taken for a path)."""
    if url.startswith("subfile,") and ":" in url:
        return "subfile"  # (its options come before the colon: FFmpeg's one exception)
    found = _SCHEME.match(url)
    if found is None or len(found[0]) < 2:
        return None
    return found[0].split("+", 1)[0].lower()


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
        if "+" in name or not _spelled(url, name):
            return f"write a {proto} URL as {proto}://...: FFmpeg reads {name}: as {proto} too"
        return None
    if proto == "lavfi" and _MOVIE.search(url):
        return (
            "lavfi: the movie and amovie filters open files and URLs themselves, around "
            "streamer's bounds; give the file or camera as the source's URL"
        )
    if proto in _OTHER_NETWORK:
        return (
            f"{proto}: a network protocol streamer does not read (bounded, with timeouts); "
            f"give the camera's rtsp://, http(s):// or other URL"
        )
    nested = {m.lower() for m in _NAMED.findall(url[len(name) + 1 :])}
    nested |= {part.lower() for part in name.split("+")[1:]}  # (crypto+http:)
    network = nested & (LIVE_PROTOCOLS | NETWORK_FILE_PROTOCOLS | _OTHER_NETWORK)
    if network:
        return (
            f"{proto}: a network URL ({', '.join(sorted(network))}) inside one of FFmpeg's "
            f"wrapping protocols would be read without streamer's bounds and timeouts; give "
            f"the camera's URL itself"
        )
    return None
