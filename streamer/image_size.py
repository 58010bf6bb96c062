"""The size a PNG, JPEG or WebP file declares in its own header, read without decoding it: a
received picture is checked against its message's header before anything decodes it (a few
hundred bytes of WebP or PNG can declare, and decode to, hundreds of megabytes)."""

from __future__ import annotations

import struct


def _jpeg_size(b: bytes | memoryview) -> tuple[int, int] | None:
    i, n = 2, len(b)
    while i + 9 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return w, h
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        i += 2 + length
    return None


def _webp_size(b: bytes | memoryview) -> tuple[int, int] | None:
    chunk = b[12:16]
    if chunk == b"VP8 " and len(b) >= 30 and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and len(b) >= 25 and b[20] == 0x2F:
        (bits,) = struct.unpack("<I", b[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(b) >= 30:
        w = int.from_bytes(b[24:27], "little") + 1
        h = int.from_bytes(b[27:30], "little") + 1
        return w, h
    return None


def declared_size(encoding: str, payload: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) that a PNG, JPEG or WebP file declares in its own header, read without
    decoding (cost bounded by the payload's size); None if the bytes are not such a file."""
    png = payload[:8] == b"\x89PNG\r\n\x1a\n" and payload[12:16] == b"IHDR" and len(payload) >= 24
    if encoding == "png" and png:
        w, h = struct.unpack(">II", payload[16:24])
        return int(w), int(h)
    if encoding == "jpeg" and payload[:2] == b"\xff\xd8":
        return _jpeg_size(payload)
    if encoding == "webp" and payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return _webp_size(payload)
    return None
