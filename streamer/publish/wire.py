"""Framing of outgoing messages (crops and tapped frames). Pure; see docs/protocol.md."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

PROTOCOL_VERSION = 1
_TOPIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def topic_part(name: str) -> str:
    """Make a class name safe for a topic segment (the header keeps the original)."""
    return _TOPIC_UNSAFE.sub("_", name) or "_"


@functools.lru_cache(maxsize=4096)
def crop_topic(source_id: str, class_name: str) -> bytes:
    return f"crop/{source_id}/{topic_part(class_name)}".encode()


def frame_topic(source_id: str) -> bytes:
    return f"frame/{source_id}".encode()


def dumps(header: dict[str, Any]) -> bytes:
    return json.dumps(header, allow_nan=False, separators=(",", ":")).encode()


def crop_message(
    header: dict[str, Any], encoding: str, payload: bytes | memoryview
) -> list[bytes | memoryview]:
    """``[topic, header_json, image]`` for one crop, the header completed with ``encoding``."""
    return [
        crop_topic(header["source_id"], header["class"]),
        dumps({**header, "encoding": encoding}),
        payload,
    ]
