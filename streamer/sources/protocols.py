"""FFmpeg's protocols that are neither a camera nor a file on this host, and what streamer does
with each: a file on another host is read with timeouts; a protocol that would read the network
around streamer's bounds is refused by the config."""

from __future__ import annotations

# A file on another host (a silent server blocked the decode thread for good: no timeout was
# set for a URL taken as a file); opened and read with the source's timeouts, played as a file.
NETWORK_FILE_SCHEMES = ("ftp://", "gopher://", "gophers://")
# Protocols that read through FFmpeg's own HTTP client (to a gateway), unbounded: an http(s)
# camera is read by streamer's (streamer/sources/http_input.py).
_THROUGH_HTTP = ("ipfs://", "ipns://", "httpproxy:")
# Protocols that wrap another's URL (``cache:`` also writes all it reads to a file on disk).
_WRAPPERS = (
    "async:",
    "cache:",
    "concat:",
    "concatf:",
    "crypto:",
    "crypto+",
    "subfile:",
    "subfile,",
)


def is_network_file(url: str) -> bool:
    return url.lower().startswith(NETWORK_FILE_SCHEMES)


def refused_protocol(url: str) -> str | None:
    """Why a source may not have `url`, or None."""
    low = url.lower()
    if low.startswith(_THROUGH_HTTP):
        return (
            f"{url.split(':', 1)[0]}: read through FFmpeg's HTTP client, which streamer does not "
            f"bound; give the gateway's http(s) URL"
        )
    if low.startswith(_WRAPPERS) and "://" in low:
        name = url.split(":", 1)[0].split(",", 1)[0].split("+", 1)[0]
        return (
            f"{name}: a network URL inside one of FFmpeg's wrapping protocols would be read "
            f"without streamer's bounds and timeouts; give the camera's URL itself"
        )
    return None
