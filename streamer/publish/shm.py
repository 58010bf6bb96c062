"""A shared-memory ring for crops: the writer (streamer) puts each crop's pixels into a file in
``/dev/shm`` once, and the message on the socket carries only a handle to them; a consumer on
the same host reads the crop out of the file (pread, not a mapping). See docs/protocol.md ("Crops in
shared memory").

The ring is one byte buffer written in order, wrapping at its end. Its header holds `head`, the
absolute (never wrapping) byte position up to which space has been claimed; the writer raises it
*before* writing into the space it claims. A crop at absolute position `offset` is intact for
as long as ``head <= offset + capacity`` (no later claim reaches its bytes), so the reader checks
that after copying the crop out: a crop overwritten meanwhile is detected, never returned torn.
This relies on stores becoming visible in program order (x86-64's memory model): the writer
refuses to start on other machines.

The writer reserves the ring's memory when it starts (a tmpfs without room for it is an error
then, not a SIGBUS in the middle of a write) and holds an exclusive lock on the ring's name (a
``.<name>.lock`` file, removed when it stops: a second writer of the name is refused). It
removes a ring left by a writer that died before it makes its own (so the two never need room
together) and removes its file when it stops, if it is still its own. Readers let go of a ring
whose file was removed within PRUNE_INTERVAL_S, so that its memory goes back to the tmpfs.
Readers open only files of the ring name pattern, owned by their own user, without following
links.

Layout (little-endian): magic ``STRMRNG1`` (8 bytes), header size (u64), capacity (u64), ring id
(16 random bytes: a new ring each start), head (u64 at byte 40); the data from byte
HEADER_BYTES on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import platform
import re
import secrets
import stat
import time
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
_HEAD_AT = 8 * _HEAD_WORD
ALIGN_BYTES = 64
MIN_CAPACITY_BYTES = 1 << 20
MAX_CAPACITY_BYTES = 64 << 30
# A crop bigger than this share of the ring goes inline in its message instead: a ring must hold
# several crops, or each would overwrite the one before it while its consumer reads it.
MAX_ITEM_SHARE = 4
NAME_RE = re.compile(SHM_NAME_PATTERN)
X86_64 = ("x86_64", "amd64")
MAX_OFFSET = 1 << 62  # absolute positions: 4 EiB at 1 GB/s is 146 years
TAKE_NAME_TRIES = 8  # times the ring name's lock file is opened again after it was removed
PRUNE_INTERVAL_S = 1.0  # how often a reader looks for rings whose file was removed


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
        self._lock_fd = _take_name(directory, name)
        try:
            self._fd, self._mm = _create(directory, name, capacity, self.ring_id)
        except BaseException:
            _release_name(self._lock_fd, directory / f".{name}.lock")
            raise
        self._words = np.frombuffer(self._mm, np.uint64, count=HEADER_BYTES // 8)
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
        """Remove the ring's file if it is still ours (readers that opened it keep it open until
        they let go of it)."""
        with contextlib.suppress(OSError):
            mine, there = os.fstat(self._fd), os.stat(self.path, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(self.path)
        os.close(self._fd)
        _release_name(self._lock_fd, self.path.parent / f".{self.name}.lock")
        del self._words, self._data
        # A view still held (a crop being sent) keeps the mapping: the GC frees it.
        with contextlib.suppress(BufferError):
            self._mm.close()


def _take_name(directory: Path, name: str) -> int:
    """Lock the ring name for this writer's life (an exclusive flock on ``.<name>.lock``): a
    second writer of the name, started before or at the same time, is refused. Returns the lock
    file's descriptor.

    The writer that lets the name go removes the lock file while it still holds the lock
    (_release_name), so no lock files pile up. A writer that opened the file just before that
    then locks a file no longer at the path: it sees so and opens the path again, at most
    TAKE_NAME_TRIES times."""
    lock_path = directory / f".{name}.lock"
    for _ in range(TAKE_NAME_TRIES):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise OSError(e.errno, f"cannot create {lock_path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(
                f"shm ring {directory / name} is in use by another running writer: give each "
                "publisher its own shm.name"
            ) from None
        try:
            if _is_at(fd, lock_path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed by the writer before us after we opened it: open it again
    raise OSError(f"cannot take the shm ring name {directory / name}: its lock file keeps changing")


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file at `path` now."""
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _release_name(fd: int, lock_path: Path) -> None:
    """Let the ring name go: remove its lock file if it is still ours, while the lock is held
    (see _take_name), then release the lock."""
    try:
        if _is_at(fd, lock_path):
            os.unlink(lock_path)
    except OSError:
        pass  # the file stays; the next writer of the name takes it and removes it
    finally:
        os.close(fd)


def _create(directory: Path, name: str, capacity: int, ring_id: str) -> tuple[int, mmap.mmap]:
    """Make the ring file, its memory reserved, its header written, and rename it into place
    (readers see a whole ring or none). A ring left by a writer that died is removed first, so
    that the two never need room together. Returns the file's descriptor and its mapping."""
    path = directory / name
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        if st.st_uid != os.geteuid():
            raise OSError(
                f"{path} belongs to user {st.st_uid}, not to streamer's ({os.geteuid()}): "
                "remove it, or give this publisher another shm.name"
            )
        path.unlink()  # a dead writer's (we hold the name): its memory goes back to the tmpfs
    _warn_if_not_tmpfs(directory)
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, HEADER_BYTES + capacity)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EFBIG):  # full, or over a size limit
                raise OSError(e.errno, f"cannot reserve {tmp}: {e.strerror}") from None
            raise OSError(
                e.errno,
                f"no room for a {capacity >> 20} MiB ring in {directory} ({e.strerror}): "
                "lower shm.bytes or give the tmpfs more (docker --shm-size, a Kubernetes "
                "emptyDir with medium: Memory and a sizeLimit)",
            ) from None
        mm = mmap.mmap(fd, HEADER_BYTES + capacity)
        mm[:8] = MAGIC
        words = np.frombuffer(mm, np.uint64, count=3)
        words[1], words[2] = HEADER_BYTES, capacity
        del words
        mm[24:40] = bytes.fromhex(ring_id)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        os.close(fd)
        raise
    return fd, mm


def _warn_if_not_tmpfs(directory: Path) -> None:
    """A ring on a disk is written back to it: say so (once per ring made)."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return
    best, fstype = "", ""
    target = str(directory.resolve())
    for point, kind in mounts:
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > len(
            best
        ):
            best, fstype = point, kind
    if fstype and fstype not in ("tmpfs", "ramfs", "hugetlbfs"):
        log.warning(
            "shm.dir %s is on %s, not a tmpfs: the ring's pages are written back to disk",
            directory,
            fstype,
        )


class RingReader:
    """The reading side of one ring, read with pread(2), not mapped: a ring file cut short under
    the reader (by anyone who may write it) is then a short read and an error, not a SIGBUS."""

    def __init__(self, path: Path) -> None:
        """Open `path`; RingUnavailableError if it is missing, not a streamer ring or not owned
        by this process's user."""
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
            header = os.pread(fd, HEADER_BYTES, 0)
            words = (
                np.frombuffer(header, np.uint64, count=3, offset=8)
                if len(header) == HEADER_BYTES
                else None
            )
            if (
                words is None
                or header[:8] != MAGIC
                or int(words[0]) != HEADER_BYTES
                or int(words[1]) != size - HEADER_BYTES
            ):
                raise RingUnavailableError(f"{path} is not a streamer shm ring")
        except BaseException:
            os.close(fd)
            raise
        self.path = path
        self._fd = fd  # also tells when the file is removed (its memory then is ours alone)
        self.capacity = size - HEADER_BYTES
        self.ring_id = header[24:40].hex()

    def read(self, offset: int, size: int) -> bytes:
        """A copy of `size` bytes at absolute position `offset`; StaleCropError if they were
        overwritten (before or while copying); ValueError if the handle cannot be this ring's;
        RingUnavailableError if the ring's file was cut short."""
        at = offset % self.capacity
        if size > self.capacity // MAX_ITEM_SHARE or at + size > self.capacity:
            raise ValueError(f"shm handle ({offset}, {size}) does not fit the ring")
        head = self._head()
        if offset + size > head:
            raise ValueError(f"shm handle ({offset}, {size}) is past the ring's head ({head})")
        if head > offset + self.capacity:
            raise StaleCropError("crop overwritten before it was read")
        data = os.pread(self._fd, size, HEADER_BYTES + at)
        if len(data) != size:
            raise RingUnavailableError(f"{self.path} was cut short under its reader")
        if self._head() > offset + self.capacity:
            raise StaleCropError("crop overwritten while it was read")
        return data

    def _head(self) -> int:
        """The ring's head, read until two reads agree: pread copies bytes, and unlike a load
        from a mapping an 8-byte copy is not promised to be atomic against the writer's store
        (a torn value could call a crop stale, or past the head)."""
        word = os.pread(self._fd, 8, _HEAD_AT)
        while True:
            if len(word) != 8:
                raise RingUnavailableError(f"{self.path} was cut short under its reader")
            again = os.pread(self._fd, 8, _HEAD_AT)
            if again == word:
                return int.from_bytes(word, "little")
            word = again

    @property
    def removed(self) -> bool:
        """Whether the ring's file was removed (its writer stopped, or was replaced)."""
        return os.fstat(self._fd).st_nlink == 0

    def close(self) -> None:
        os.close(self._fd)


class RingCache:
    """The rings a consumer has open, at most `max_rings` (the least recently used closed), found
    in `directory` by the names messages give."""

    def __init__(self, directory: Path, max_rings: int = 16) -> None:
        self.directory = directory
        self.max_rings = max_rings
        self._rings: OrderedDict[str, RingReader] = OrderedDict()
        self._pruned_at = time.monotonic()

    def read(self, handle: Any) -> bytes:
        """The bytes a message's ``shm`` handle points to (a copy). Raises ValueError for a
        handle that is not one, RingUnavailableError, or StaleCropError."""
        name, ring_id, offset, size = _parse_handle(handle)
        self.prune()
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

    def prune(self, force: bool = False) -> int:
        """Let go of rings whose file was removed (at most every PRUNE_INTERVAL_S unless
        `force`); call it while idle too, so a stopped streamer's memory is freed. Returns how
        many were let go."""
        now = time.monotonic()
        if not force and now - self._pruned_at < PRUNE_INTERVAL_S:
            return 0
        self._pruned_at = now
        gone = [name for name, reader in self._rings.items() if reader.removed]
        for name in gone:
            self._rings.pop(name).close()
        return len(gone)

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
