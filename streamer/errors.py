"""The few exceptions callers catch."""

from __future__ import annotations


class StreamerError(Exception):
    """Base class for errors streamer raises on purpose."""


class ConfigError(StreamerError):
    """A configuration file or value is invalid; the message names the field path."""


class ProtocolError(StreamerError):
    """A wire message is malformed.

    `kind` is a short, stable name used as a counter label (``not_json``, ``bad_version``, ...).
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class SourceError(StreamerError):
    """A source could not be opened or read; the source will retry."""


class EndOfStream(StreamerError):
    """A finite source (a file) has no more frames."""
