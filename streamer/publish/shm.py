"""A shared-memory ring for crops: the writer (streamer) puts each crop's pixels into a file in
``/dev/shm`` once, and the message on the socket carries only a handle to them; a consumer on
the same host maps the file read-only and copies the crop out. See docs/protocol.md ("Crops in
shared memory").

The ring is one byte buffer written in order, wrapping at its end. Its header holds `head`, the
absolute (never wrapping) byte position up to which space has been claimed; the writer raises it
*before* writing into the space it claims. A crop at absolute position `offset` is intact for
as long as ``head <= offset + capacity`` (no later claim reaches its bytes), so the reader checks
that after copying the crop out: a crop overwritten meanwhile is detected, never returned torn.
This relies on stores becoming visible in program order (x86-64's memory model): the writer
refuses to start on other machines.

The writer reserves the ring's memory when it starts (a tmpfs without room for it is an error
then, not a SIGBUS in the middle of a write), holds an exclusive lock on its file (a second
writer of the same name is refused) and removes the file when it stops, if it is still its own.
Readers open only files of the ring name pattern, owned by their own user, without following
links.

Layout (little-endian): magic ``STRMRNG1`` (8 bytes), header size (u64), capacity (u64), ring id
(16 random bytes: a new ring each start), head (u64 at byte 40); the data from byte
HEADER_BYTES on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import platform
import re
import secrets
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import SHM_NAME_PATTERN
from streamer.types import U8

log = logging.getLogger(__name__)

MAGIC = b"STRMRNG1"
HEADER_BYTES = 4096
_HEAD_WORD = 5  # head is the 6th u64 of the header (byte 40)
ALIGN_BYTES = 64
MIN_CAPACITY_BYTES = 1 << 20
MAX_CAPACITY_BYTES = 64 << 30
# A crop bigger than this share of the ring goes inline in its message instead: a ring must hold
# several crops, or each would overwrite the one before it while its consumer reads it.
MAX_ITEM_SHARE = 4
NAME_RE = re.compile(SHM_NAME_PATTERN)
X86_64 = ("x86_64", "amd64")
MAX_OFFSET = 1 << 62  # absolute positions: 4 EiB at 1 GB/s is 146 years


class StaleCropError(ValueError):
    """The crop's bytes were overwritten (its consumer fell behind by more than the ring holds),
    or its ring is gone (streamer restarted)."""


class RingUnavailableError(ValueError):
    """The ring a message points to cannot be opened here (another host, another /dev/shm, or
    not a streamer ring)."""


class RingWriter:
    """The writing side: made by streamer for a publisher with ``shm``; used by one thread."""

    def __init__(self, directory: Path, name: str, capacity: int) -> None:
        """Create (or replace, atomically) `directory`/`name` as a new ring of `capacity` data
        bytes, its memory reserved now. Raises OSError with the reason (no room in the tmpfs,
        a live writer holds the name, not x86-64, ...)."""
        if not NAME_RE.fullmatch(name):
            raise ValueError(f"shm ring name {name!r} must match {NAME_RE.pattern}")
        if platform.machine().lower() not in X86_64:
            raise OSError(
                f"shm rings need x86-64's store ordering; this machine is {platform.machine()}"
            )
        self.name = name
        self.path = directory / name
        self.capacity = capacity
        self.max_item_bytes = capacity // MAX_ITEM_SHARE
        self.ring_id = secrets.token_hex(16)
        _refuse_if_held(self.path)
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                os.posix_fallocate(fd, 0, HEADER_BYTES + capacity)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"no room for a {capacity >> 20} MiB ring in {directory} ({e.strerror}): "
                    "lower shm.bytes or give the tmpfs more (docker --shm-size, a Kubernetes "
                    "emptyDir with medium: Memory and a sizeLimit)",
                ) from None
            self._mm = mmap.mmap(fd, HEADER_BYTES + capacity)
            self._mm[:8] = MAGIC
            words = np.frombuffer(self._mm, np.uint64, count=HEADER_BYTES // 8)
            words[1], words[2] = HEADER_BYTES, capacity
            self._mm[24:40] = bytes.fromhex(self.ring_id)
            os.rename(tmp, self.path)  # readers see a whole ring or none
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            os.close(fd)
            raise
        self._fd = fd  # kept open: it holds the lock, and tells our file from a successor's
        self._words = words
        self._data: U8 = np.frombuffer(self._mm, np.uint8, offset=HEADER_BYTES)
        self.head = 0

    def reserve(self, size: int) -> tuple[int, U8]:
        """Claim `size` contiguous bytes (<= max_item_bytes): their absolute position and a
        writable view of them, valid until the ring comes round again."""
        pos = (self.head + ALIGN_BYTES - 1) & ~(ALIGN_BYTES - 1)
        at = pos % self.capacity
        if at + size > self.capacity:  # not across the end: start over at the beginning
            pos += self.capacity - at
            at = 0
        self.head = pos + size
        self._words[_HEAD_WORD] = self.head  # before the bytes are written: see the module doc
        return pos, self._data[at : at + size]

    def put(self, payload: bytes | memoryview) -> int:
        """Copy `payload` into the ring; return its absolute position."""
        pos, view = self.reserve(len(payload))
        view[:] = np.frombuffer(payload, np.uint8)
        return pos

    def handle(self, pos: int, size: int) -> dict[str, Any]:
        """What a message carries to point at `size` bytes at `pos` (the header's ``shm``)."""
        return {"name": self.name, "ring": self.ring_id, "offset": pos, "size": size}

    def close(self) -> None:
        """Remove the ring's file if it is still ours (readers that mapped it keep their
        mapping)."""
        with contextlib.suppress(OSError):
            mine, there = os.fstat(self._fd), os.stat(self.path, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(self.path)
        os.close(self._fd)
        del self._words, self._data
        # A view still held (a crop being sent) keeps the mapping: the GC frees it.
        with contextlib.suppress(BufferError):
            self._mm.close()


def _refuse_if_held(path: Path) -> None:
    """OSError if a live writer holds the ring file at `path` (two publishers, or two
    streamers, with one ring name); a file left by a writer that died is replaced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return  # none (or not ours to open: the rename will say)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(
            f"shm ring {path} is in use by another running writer: give each publisher its "
            "own shm.name"
        ) from None
    finally:
        os.close(fd)


class RingReader:
    """The reading side of one ring, mapped read-only."""

    def __init__(self, path: Path) -> None:
        """Map `path`; RingUnavailableError if it is missing, not a streamer ring, not owned by
        this process's user, or cannot be mapped."""
        try:
            # O_NONBLOCK: a FIFO planted under a ring's name must not hang the open.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise RingUnavailableError(
                f"shared-memory ring {path} cannot be opened ({e.strerror}): shm crops need the "
                "consumer on streamer's host, with the same shm directory, and streamer running"
            ) from None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not stat.S_ISREG(st.st_mode) or not (
                HEADER_BYTES + MIN_CAPACITY_BYTES <= size <= HEADER_BYTES + MAX_CAPACITY_BYTES
            ):
                raise RingUnavailableError(f"{path} is not a streamer shm ring")
            if st.st_uid != os.geteuid():
                raise RingUnavailableError(
                    f"{path} belongs to user {st.st_uid}, not to this consumer's: not read"
                )
            try:
                self._mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            except OSError as e:
                raise RingUnavailableError(f"cannot map {path}: {e.strerror}") from None
        finally:
            os.close(fd)
        words = np.frombuffer(self._mm, np.uint64, count=HEADER_BYTES // 8)
        if (
            self._mm[:8] != MAGIC
            or int(words[1]) != HEADER_BYTES
            or int(words[2]) != size - HEADER_BYTES
        ):
            del words
            self._mm.close()
            raise RingUnavailableError(f"{path} is not a streamer shm ring")
        self.capacity = size - HEADER_BYTES
        self.ring_id = self._mm[24:40].hex()
        self._words = words
        self._data: U8 = np.frombuffer(self._mm, np.uint8, offset=HEADER_BYTES)

    def read(self, offset: int, size: int) -> bytes:
        """A copy of `size` bytes at absolute position `offset`; StaleCropError if they were
        overwritten (before or while copying); ValueError if the handle cannot be this ring's."""
        at = offset % self.capacity
        if size > self.capacity // MAX_ITEM_SHARE or at + size > self.capacity:
            raise ValueError(f"shm handle ({offset}, {size}) does not fit the ring")
        head = int(self._words[_HEAD_WORD])
        if offset + size > head:
            raise ValueError(f"shm handle ({offset}, {size}) is past the ring's head ({head})")
        if head > offset + self.capacity:
            raise StaleCropError("crop overwritten before it was read")
        data = self._data[at : at + size].tobytes()
        if int(self._words[_HEAD_WORD]) > offset + self.capacity:
            raise StaleCropError("crop overwritten while it was read")
        return data

    def close(self) -> None:
        del self._words, self._data
        with contextlib.suppress(BufferError):
            self._mm.close()


class RingCache:
    """The rings a consumer has mapped, at most `max_rings` (least recently used unmapped), found
    in `directory` by the names messages give."""

    def __init__(self, directory: Path, max_rings: int = 16) -> None:
        self.directory = directory
        self.max_rings = max_rings
        self._rings: OrderedDict[str, RingReader] = OrderedDict()

    def read(self, handle: Any) -> bytes:
        """The bytes a message's ``shm`` handle points to (a copy). Raises ValueError for a
        handle that is not one, RingUnavailableError, or StaleCropError."""
        name, ring_id, offset, size = _parse_handle(handle)
        reader = self._rings.get(name)
        if reader is None or reader.ring_id != ring_id:
            if reader is not None:  # streamer restarted: its new ring replaced the file
                reader.close()
                del self._rings[name]
            reader = RingReader(self.directory / name)
            if reader.ring_id != ring_id:
                reader.close()
                raise StaleCropError(f"ring {name} was replaced (streamer restarted)")
            self._rings[name] = reader
            while len(self._rings) > self.max_rings:
                self._rings.popitem(last=False)[1].close()
        self._rings.move_to_end(name)
        return reader.read(offset, size)

    def close(self) -> None:
        for reader in self._rings.values():
            reader.close()
        self._rings.clear()


def _parse_handle(handle: Any) -> tuple[str, str, int, int]:
    """(name, ring id, offset, size) from a header's ``shm`` value, which is network input."""
    if not isinstance(handle, dict) or set(handle) != {"name", "ring", "offset", "size"}:
        raise ValueError("shm: expected an object with name, ring, offset and size")
    name, ring_id, offset, size = handle["name"], handle["ring"], handle["offset"], handle["size"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"shm.name must match {NAME_RE.pattern}")
    if not isinstance(ring_id, str) or not re.fullmatch(r"[0-9a-f]{32}", ring_id):
        raise ValueError("shm.ring must be 32 lower-case hex digits")
    for key, value in (("offset", offset), ("size", size)):
        if type(value) is not int or not 0 <= value < MAX_OFFSET:
            raise ValueError(f"shm.{key} must be an integer in [0, 2**62)")
    return name, ring_id, offset, size
