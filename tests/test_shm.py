"""Crops in a shared-memory ring and as raw I420: the ring's overwrite detection (against a
writer in another process), hostile handles, and the whole pipeline sending the same crops
through every transport and encoding."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.client import (
    AsyncCropSubscriber,
    CropSubscriber,
    MalformedMessageError,
    decode_image,
    parse_crop,
)
from streamer.config import parse_config
from streamer.crop.convert import bgr_to_i420, crop_bgr, crop_i420, i420_bounds
from streamer.detections.codec import encode_detections
from streamer.errors import ConfigError
from streamer.pipeline import Pipeline
from streamer.publish.shm import (
    MIN_CAPACITY_BYTES,
    RingCache,
    RingReader,
    RingUnavailableError,
    RingWriter,
    StaleCropError,
)
from streamer.types import Frame

REPO = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (another process) with this tree importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def _files(directory: Path) -> list[str]:
    """What is in `directory` besides the lock files of live ring names."""
    return [p.name for p in directory.iterdir() if not p.name.endswith(".lock")]


def _anything(directory: Path) -> list[str]:
    """Everything in `directory`, lock files included: after the writers stop, nothing."""
    return sorted(p.name for p in directory.iterdir())


def _frame(w: int, h: int, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 256, (h, w), np.uint8)
    u = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), np.uint8)
    v = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2), np.uint8)
    return Frame("s", 0, None, 0.0, w, h, "yuv420p", (y, u, v), y.nbytes + u.nbytes + v.nbytes)


# -- raw I420 crops -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "rect"),
    [
        ((64, 48), (10, 10, 20, 20)),  # even everywhere
        ((64, 48), (11, 9, 20, 21)),  # odd origin, odd end
        ((64, 48), (0, 0, 1, 1)),  # one pixel
        ((63, 47), (50, 40, 63, 47)),  # an odd-sized frame's last row and column
        ((63, 47), (0, 0, 63, 47)),  # the whole odd-sized frame
    ],
)
def test_i420_crop_decodes_to_the_same_pixels_as_the_bgr_crop(
    size: tuple[int, int], rect: tuple[int, int, int, int]
) -> None:
    frame = _frame(*size)
    x0, y0, x1, y1 = rect
    header = {"encoding": "raw-i420", "width": x1 - x0, "height": y1 - y0}
    header["origin"] = {"x": x0, "y": y0}
    got = decode_image(header, crop_i420(frame, *rect).data)
    assert np.array_equal(got, crop_bgr(frame, *rect))
    ax0, ay0, ax1, ay1 = i420_bounds(*rect)
    assert crop_i420(frame, *rect).nbytes == (ax1 - ax0) * (ay1 - ay0) * 3 // 2


def test_the_ocr_worker_reads_i420_crops_and_refuses_a_wrong_size() -> None:
    from streamer.ocr.crops import BadCrop, decode_crop, parse_crop_header

    frame = _frame(64, 48)
    x0, y0, x1, y1 = 11, 9, 40, 30
    header = {
        "v": 1,
        "source_id": "s",
        "frame_id": 0,
        "detection_id": "d",
        "class": "plate",
        "tracker_id": 1,
        "origin": {"x": x0, "y": y0, "frame_width": 64, "frame_height": 48},
        "width": x1 - x0,
        "height": y1 - y0,
        "encoding": "raw-i420",
    }
    info = parse_crop_header(header)
    payload = crop_i420(frame, x0, y0, x1, y1).tobytes()
    assert np.array_equal(decode_crop(info, payload), crop_bgr(frame, x0, y0, x1, y1))
    with pytest.raises(BadCrop, match="raw-i420 payload of"):
        decode_crop(info, payload[:-1])


def test_a_crop_changed_after_cutting_goes_to_i420_with_its_geometry() -> None:
    frame = _frame(64, 48)
    rect = (11, 9, 30, 28)
    bgr = crop_bgr(frame, *rect)
    bgr[:5] = (0, 0, 255)  # background removed, say
    header = {"encoding": "raw-i420", "width": 19, "height": 19, "origin": {"x": 11, "y": 9}}
    got = decode_image(header, bgr_to_i420(bgr, 11, 9).data)
    assert got.shape == bgr.shape
    # I420 halves the chroma resolution: close, not identical.
    assert np.abs(got.astype(int) - bgr.astype(int)).mean() < 12


def test_a_gray_frames_i420_crop_decodes_to_its_bgr_crop() -> None:
    y = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)  # every level
    frame = Frame("s", 0, None, 0.0, 64, 48, "gray", (y,), y.nbytes)
    rect = (3, 5, 60, 45)
    header = {"encoding": "raw-i420", "width": 57, "height": 40, "origin": {"x": 3, "y": 5}}
    got = decode_image(header, crop_i420(frame, *rect).data)
    diff = np.abs(got.astype(int) - crop_bgr(frame, *rect).astype(int))
    assert diff.max() <= 1, diff.max()  # video range in I420: full range once decoded


def test_bgr_written_into_a_given_array() -> None:
    frame = _frame(64, 48)
    for rect in ((10, 10, 20, 20), (11, 9, 20, 21)):
        out = np.zeros((rect[3] - rect[1], rect[2] - rect[0], 3), np.uint8)
        got = crop_bgr(frame, *rect, out=out)
        assert got is out or np.shares_memory(got, out)
        assert np.array_equal(out, crop_bgr(frame, *rect))


# -- the ring -----------------------------------------------------------------------------


def test_ring_round_trip_and_overwrite_detection(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        items = [bytes([i]) * 100_000 for i in range(1, 30)]
        handles = [ring.handle(ring.put(item), len(item)) for item in items]
        cache = RingCache(tmp_path)
        # The last ~10 (1 MiB / 100 kB) are intact, the first were overwritten.
        assert cache.read(handles[-1]) == items[-1]
        assert cache.read(handles[-5]) == items[-5]
        with pytest.raises(StaleCropError):
            cache.read(handles[0])
        cache.close()
    finally:
        ring.close()
    assert not (tmp_path / "streamer-t").exists()


def test_a_ring_cut_short_under_its_reader_is_an_error_not_a_sigbus(tmp_path: Path) -> None:
    """Anyone who may write a ring (the consumer's own user) can truncate its file under a
    reader. The reader copies with pread, so that is RingUnavailableError and the consumer goes
    on; with the ring mapped, touching the cut pages killed it with SIGBUS. In a subprocess, so
    that a SIGBUS would fail this test, not end the test run."""
    script = f"""
import os
from pathlib import Path
from streamer.publish.shm import HEADER_BYTES, MIN_CAPACITY_BYTES, RingCache, RingWriter
from streamer.publish.shm import RingUnavailableError
ring = RingWriter(Path({str(tmp_path)!r}), "streamer-cut", MIN_CAPACITY_BYTES)
first = ring.handle(ring.put(b"a" * 1000), 1000)
far = ring.handle(ring.put(b"b" * 100_000), 100_000)
cache = RingCache(Path({str(tmp_path)!r}))
assert cache.read(first) == b"a" * 1000  # open, and read once
os.truncate(ring.path, HEADER_BYTES + 4096)
try:
    cache.read(far)
except RingUnavailableError as e:
    print("unavailable:", e)
os.truncate(ring.path, 16)
try:
    cache.read(first)
except RingUnavailableError as e:
    print("unavailable:", e)
ring.close()
"""
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.count("was cut short under its reader") == 2, res.stdout


def test_a_restarted_ring_is_told_apart(tmp_path: Path) -> None:
    """A streamer killed without cleaning up (its ring file stays), then started again: the
    new ring replaces the file, old handles are told apart by the ring id."""
    code = textwrap.dedent(
        f"""
        import json, os
        from pathlib import Path
        from streamer.publish.shm import RingWriter
        ring = RingWriter(Path({str(tmp_path)!r}), "streamer-t", 1 << 20)
        print(json.dumps(ring.handle(ring.put(b"x" * 1000), 1000)), flush=True)
        os._exit(0)  # killed: no close()
        """
    )
    res = _python(code)
    handle = json.loads(res.stdout)
    cache = RingCache(tmp_path)
    assert cache.read(handle) == b"x" * 1000  # the dead one's ring is still there, whole
    second = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)  # its restart replaces it
    try:
        # Still mapped, the old ring's bytes are intact: read them.
        assert cache.read(handle) == b"x" * 1000
        new = second.handle(second.put(b"y" * 10), 10)
        assert cache.read(new) == b"y" * 10  # the new ring is mapped in the old one's place
        with pytest.raises(StaleCropError, match="replaced"):
            cache.read(handle)
    finally:
        cache.close()
        second.close()
    assert not _files(tmp_path)


_WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import zmq
    from streamer.publish.shm import RingWriter
    ring = RingWriter(Path(sys.argv[1]), "streamer-race", 1 << 20)
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(sys.argv[2])
    end = time.monotonic() + float(sys.argv[3])
    k = 0
    while time.monotonic() < end:
        size = 20_000 + (k * 7919) % 200_000
        pos, view = ring.reserve(size)
        view[:] = k % 251           # written after the handle's space was claimed
        sock.send(json.dumps([k, ring.handle(pos, size)]).encode())
        k += 1
        time.sleep(0.0005)  # ~8 items a ring's worth every few ms: the reader keeps up, mostly
    sock.send(b"end")
    sock.close(linger=2000)
    ring.close()
    """
)


def test_a_reader_never_gets_torn_bytes_from_a_writer_in_another_process(
    tmp_path: Path, endpoint: Any
) -> None:
    """A writer process fills the ring as fast as it can while this process reads its handles,
    late on purpose: every read is either the item whole, or StaleCropError."""
    addr = endpoint()
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
    sock.bind(addr)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), addr, "3"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    cache = RingCache(tmp_path)
    good = stale = 0
    try:
        while sock.poll(10_000):
            msg = sock.recv()
            if msg == b"end":
                break
            k, handle = json.loads(msg)
            if k % 50 == 0:
                time.sleep(0.02)  # fall behind by more than the ring now and then
            try:
                data = cache.read(handle)
            except StaleCropError:
                stale += 1
                continue
            except RingUnavailableError:
                break  # the writer has finished and removed its ring
            arr = np.frombuffer(data, np.uint8)
            assert arr.min() == arr.max() == k % 251, f"item {k} torn"
            good += 1
    finally:
        writer.wait(20)
        cache.close()
        sock.close(linger=0)
    assert writer.returncode == 0
    assert good > 100 and stale > 0, (good, stale)


def test_head_covers_a_reservation_before_its_bytes_are_written(tmp_path: Path) -> None:
    """The writer's claim is visible before it writes: a reader of an older crop in that space
    already knows it is gone."""
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    reader = RingReader(tmp_path / "streamer-t")
    try:
        size = MIN_CAPACITY_BYTES // 4
        first = ring.put(b"a" * size)
        for _ in range(3):
            ring.put(b"b" * size)
        assert reader.read(first, size) == b"a" * size  # intact: the ring is just full
        ring.reserve(size)  # claimed, nothing written yet
        with pytest.raises(StaleCropError):
            reader.read(first, size)
    finally:
        reader.close()
        ring.close()


def test_a_write_during_the_copy_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer comes round while the reader copies (injected into the copy): the reader's
    second look at the head catches it."""
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    size = MIN_CAPACITY_BYTES // 4
    handle = ring.handle(ring.put(b"a" * size), size)
    cache = RingCache(tmp_path)
    assert cache.read(handle) == b"a" * size  # opened
    real = os.pread

    def writer_comes_round(fd: int, n: int, at: int) -> bytes:
        if n == size:  # the copy, not a look at the head
            for _ in range(4):
                ring.put(b"b" * size)
        return real(fd, n, at)

    monkeypatch.setattr(os, "pread", writer_comes_round)
    try:
        with pytest.raises(StaleCropError, match="while it was read"):
            cache.read(handle)
    finally:
        monkeypatch.undo()
        cache.close()
        ring.close()


def test_a_ring_that_does_not_fit_its_tmpfs_fails_at_start_not_in_a_write(tmp_path: Path) -> None:
    """Memory is reserved when the ring is made: without room (here a file size limit) the
    start fails with the reason, and nothing is left behind (a sparse ring would die of SIGBUS
    at its first write past the free space)."""
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        from streamer.publish.shm import RingWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        try:
            RingWriter(Path({str(tmp_path)!r}), "streamer-big", 4 << 20)
        except OSError as e:
            print("refused:", e)
            sys.exit(0)
        sys.exit("made a ring that does not fit")
        """
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert "no room for a 4 MiB ring" in res.stdout and "shm.bytes" in res.stdout, res.stdout
    assert not _anything(tmp_path)


def test_one_ring_name_one_live_writer(tmp_path: Path) -> None:
    first = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    assert (tmp_path / ".streamer-t.lock").exists()  # the name is held while it runs
    with pytest.raises(OSError, match="in use by another running writer"):
        RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    first.close()
    assert not _anything(tmp_path)  # no lock file is left behind
    second = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)  # free again
    assert (tmp_path / "streamer-t").exists()
    second.close()
    assert not _anything(tmp_path)


def test_the_lock_file_is_removed_while_still_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unlocking before removing would let a writer that opened the file earlier lock it, find
    it still at the path, and then lose it to the removal: two live writers. So at the moment
    of removal another open of the file must still fail to lock it."""
    import fcntl

    lock_path = tmp_path / ".streamer-t.lock"
    real_unlink = os.unlink
    checked: list[bool] = []

    def unlink_checking_the_lock(path: object, *args: object, **kwargs: object) -> None:
        if Path(str(path)) == lock_path:
            fd = os.open(lock_path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                checked.append(False)  # it was not locked any more
            except BlockingIOError:
                checked.append(True)
            finally:
                os.close(fd)
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    monkeypatch.setattr(os, "unlink", unlink_checking_the_lock)
    ring.close()
    assert checked == [True]
    assert not _anything(tmp_path)


def test_a_lock_file_removed_between_open_and_lock_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer letting a name go removes its lock file while holding the lock. A writer
    that opened that file just before then locks a file no longer at the path: it must open
    the path again, not believe it holds the name (two writers would then share a ring)."""
    import fcntl

    real_flock = fcntl.flock
    lock_path = tmp_path / ".streamer-t.lock"
    calls: list[int] = []

    def flock_after_the_holder_let_go(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:  # the holder removes the file after our open, before our lock
            os.unlink(lock_path)
        real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock_after_the_holder_let_go)
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        assert len(calls) == 2  # the first lock was on a removed file: opened again
        held = os.fstat(ring._lock_fd)
        assert (held.st_dev, held.st_ino) == (lock_path.stat().st_dev, lock_path.stat().st_ino)
        with pytest.raises(OSError, match="in use by another running writer"):
            RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    finally:
        ring.close()
    assert not _anything(tmp_path)


def test_a_dead_writers_ring_is_removed_before_the_new_one_is_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart after a crash must not need room for two rings (the default fills half of
    Docker's /dev/shm): the dead one's file is gone when the new one's memory is reserved."""
    code = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from streamer.publish.shm import RingWriter
        RingWriter(Path({str(tmp_path)!r}), "streamer-t", 1 << 20)
        os._exit(0)  # killed: no close()
        """
    )
    assert _python(code).returncode == 0
    assert (tmp_path / "streamer-t").exists()
    assert (tmp_path / ".streamer-t.lock").exists()  # the killed writer could not remove it
    seen = []
    real = os.posix_fallocate

    def fallocate(fd: int, offset: int, length: int) -> None:
        seen.append((tmp_path / "streamer-t").exists())
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    ring.close()
    assert seen == [False]
    assert not _anything(tmp_path)  # the dead writer's lock file went with the new one


def test_two_writers_starting_together_cannot_both_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second writer starts while the first is still reserving its ring (before the
    first's file exists under the name): it is refused, the first one runs."""
    real = os.posix_fallocate
    second: list[BaseException] = []

    def fallocate(fd: int, offset: int, length: int) -> None:
        if not second:
            try:
                RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
            except OSError as e:
                second.append(e)
        real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    first = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        assert second and "in use by another running writer" in str(second[0])
        handle = first.handle(first.put(b"z" * 10), 10)
        assert RingCache(tmp_path).read(handle) == b"z" * 10
    finally:
        first.close()


def test_a_reader_lets_go_of_a_ring_whose_writer_stopped(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    cache = RingCache(tmp_path)
    cache.read(ring.handle(ring.put(b"a" * 10), 10))
    assert cache.prune(force=True) == 0  # still there
    ring.close()
    assert cache.prune(force=True) == 1  # removed: its mapping goes, and its memory with it
    assert not cache._rings
    cache.close()


def test_rings_of_other_users_and_other_machines_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        monkeypatch.setattr(os, "geteuid", lambda: os.getuid() + 1)  # "we" are another user
        with pytest.raises(RingUnavailableError, match="belongs to user"):
            RingReader(tmp_path / "streamer-t")
    finally:
        ring.close()
    monkeypatch.undo()
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    with pytest.raises(OSError, match="x86-64"):
        RingWriter(tmp_path, "streamer-u", MIN_CAPACITY_BYTES)
    assert not _anything(tmp_path)


@pytest.mark.parametrize(
    ("handle", "match"),
    [
        ("x", "expected an object"),
        ({"name": "streamer-t", "ring": "0" * 32, "offset": 0}, "expected an object"),
        ({"name": "../etc/passwd", "ring": "0" * 32, "offset": 0, "size": 1}, "shm.name"),
        ({"name": "streamer-a/b", "ring": "0" * 32, "offset": 0, "size": 1}, "shm.name"),
        ({"name": "streamer-..", "ring": "0" * 31, "offset": 0, "size": 1}, "shm.ring"),
        ({"name": "streamer-t", "ring": "0" * 32, "offset": -1, "size": 1}, "shm.offset"),
        ({"name": "streamer-t", "ring": "0" * 32, "offset": True, "size": 1}, "shm.offset"),
        ({"name": "streamer-t", "ring": "0" * 32, "offset": 1.5, "size": 1}, "shm.offset"),
        ({"name": "streamer-t", "ring": "0" * 32, "offset": 0, "size": 2**70}, "shm.size"),
    ],
)
def test_hostile_handles_are_refused_before_any_file_is_opened(
    tmp_path: Path, handle: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RingCache(tmp_path).read(handle)


def test_handles_that_do_not_fit_the_ring_are_refused(tmp_path: Path) -> None:
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        pos = ring.put(b"z" * 1000)
        cache = RingCache(tmp_path)
        base = {"name": "streamer-t", "ring": ring.ring_id}
        for offset, size, match in (
            (pos, MIN_CAPACITY_BYTES, "does not fit"),  # more than a ring's share
            (MIN_CAPACITY_BYTES - 10, 100, "does not fit"),  # across the end
            (pos + 1000, 1000, "past the ring's head"),  # not written yet
        ):
            with pytest.raises(ValueError, match=match):
                cache.read({**base, "offset": offset, "size": size})
        cache.close()
    finally:
        ring.close()


def test_files_that_are_not_rings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "streamer-junk").write_bytes(b"\0" * (5 << 20))
    (tmp_path / "streamer-small").write_bytes(b"STRMRNG1")
    (tmp_path / "streamer-dir").mkdir()
    os.mkfifo(tmp_path / "streamer-fifo")  # must not hang the open
    real = RingWriter(tmp_path, "streamer-real", MIN_CAPACITY_BYTES)
    (tmp_path / "streamer-link").symlink_to(tmp_path / "streamer-real")
    try:
        for name in ("junk", "small", "dir", "fifo", "link", "missing"):
            with pytest.raises(RingUnavailableError):
                RingReader(tmp_path / f"streamer-{name}")
    finally:
        real.close()


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(["name", "ring", "offset", "size", "x"]), inner, max_size=5
            )
        ),
        max_leaves=12,
    )
)
def test_any_shm_value_in_a_crop_header_raises_only_the_clients_errors(value: Any) -> None:
    header = {"v": 1, "source_id": "s", "frame_id": 1, "shm": value}
    header |= {"encoding": "raw-bgr24", "width": 1, "height": 1}
    parts = [zmq.Frame(b"crop/s/c"), zmq.Frame(json.dumps(header).encode()), zmq.Frame(b"abc")]
    cache = RingCache(Path("/nonexistent-dir-for-test"))
    if value is None:  # no handle: an inline crop
        assert parse_crop(parts, cache).payload == b"abc"
        return
    # No ring can be read from a missing directory: every value is refused, with our errors.
    with pytest.raises((MalformedMessageError, RingUnavailableError)):
        parse_crop(parts, cache)


def test_a_subscriber_skips_and_counts_crops_overwritten_before_it_read_them(
    tmp_path: Path, endpoint: Any
) -> None:
    addr = endpoint()
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.XPUB)
    pub.bind(addr)
    try:
        with CropSubscriber(addr, shm_dir=tmp_path) as sub:
            assert pub.poll(5000), "no subscription"
            pub.recv()  # the subscriber's subscription has arrived
            w, h = 100, 333
            sent = [bytes([i]) * (w * h * 3) for i in range(15)]
            # 15 x 100 kB through a 1 MiB ring, all written before any is read: the first are
            # overwritten.
            for i, data in enumerate(sent):
                header = {"v": 1, "source_id": "s", "frame_id": i, "i": i}
                header |= {"encoding": "raw-bgr24", "width": w, "height": h}
                header["shm"] = ring.handle(ring.put(data), len(data))
                pub.send_multipart([b"crop/s/c", json.dumps(header).encode(), b""])
            got = []
            while (crop := sub.recv(timeout_s=2)) is not None:
                got.append(crop.header["i"])
                assert crop.payload == sent[crop.header["i"]]
            assert got and got == list(range(15 - len(got), 15)), got
            assert sub.stale == 15 - len(got) > 0
    finally:
        pub.close(linger=0)
        ring.close()


def test_a_subscriber_skips_and_counts_crops_whose_ring_is_gone(
    tmp_path: Path, endpoint: Any
) -> None:
    """Crops still queued when their streamer stopped (its ring removed): counted, skipped,
    and the subscriber goes on with the next crop."""
    addr = endpoint()
    pub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.XPUB)
    pub.bind(addr)
    try:
        with CropSubscriber(addr, shm_dir=tmp_path) as sub:
            assert pub.poll(5000), "no subscription"
            pub.recv()
            gone = {"name": "streamer-gone", "ring": "0" * 32, "offset": 0, "size": 3}
            base = {"v": 1, "source_id": "s", "frame_id": 1}
            base |= {"encoding": "raw-bgr24", "width": 1, "height": 1}
            pub.send_multipart([b"crop/s/c", json.dumps({**base, "shm": gone}).encode(), b""])
            pub.send_multipart([b"crop/s/c", json.dumps(base).encode(), b"abc"])
            crop = sub.recv(timeout_s=5)
            assert crop is not None and crop.payload == b"abc"
            assert sub.unavailable == 1
    finally:
        pub.close(linger=0)


def test_a_handle_must_be_the_size_its_header_declares(tmp_path: Path) -> None:
    """A 100-byte message cannot make a consumer copy megabytes: the handle's size is checked
    against the picture the header declares before anything is read."""
    ring = RingWriter(tmp_path, "streamer-t", MIN_CAPACITY_BYTES)
    try:
        big = ring.handle(ring.put(b"x" * 200_000), 200_000)
        cache = RingCache(tmp_path)
        for header in (
            {"encoding": "raw-bgr24", "width": 1, "height": 1},
            {"encoding": "raw-i420", "width": 2, "height": 2, "origin": {"x": 0, "y": 0}},
            {"encoding": "raw-i420", "width": 2, "height": 2, "origin": {"x": -1, "y": 0}},
            {"encoding": "png", "width": 1, "height": 1},
            {"encoding": "raw-bgr24", "width": True, "height": 1},
            {"encoding": "raw-bgr24", "width": 0, "height": 5},
        ):
            parts = [
                zmq.Frame(b"crop/s/c"),
                zmq.Frame(json.dumps({"v": 1, **header, "shm": big}).encode()),
                zmq.Frame(b""),
            ]
            with pytest.raises(MalformedMessageError):
                parse_crop(parts, cache)
        cache.close()
    finally:
        ring.close()


@pytest.mark.parametrize("origin", [[], "x", {"x": 1}, {"x": -2, "y": 0}, {"x": 1e9, "y": 0}])
def test_a_hostile_origin_on_an_i420_crop_is_a_clients_error(origin: Any) -> None:
    header = {"encoding": "raw-i420", "width": 2, "height": 2, "origin": origin}
    with pytest.raises(MalformedMessageError):
        decode_image(header, b"\0" * 6)


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("publish", "match"),
    [
        ({"bind": "tcp://127.0.0.1:1", "encoding": "png", "shm": {}}, "shm carries raw crops"),
        ({"bind": "tcp://127.0.0.1:1", "encoding": "raw-i420", "quality": 5}, "quality"),
        ({"bind": "tcp://127.0.0.1:1", "shm": {"bytes": 1000}}, "greater than or equal"),
        ({"bind": "tcp://127.0.0.1:1", "shm": {"name": "../x"}}, "pattern"),
    ],
)
def test_shm_config_is_checked(publish: dict[str, Any], match: str) -> None:
    cfg: dict[str, Any] = {"sources": [{"id": "a", "url": "lavfi:testsrc2"}], "publish": [publish]}
    cfg["detections"] = {"bind": "tcp://127.0.0.1:2"}
    with pytest.raises(ConfigError, match=match):
        parse_config(cfg)


# -- the pipeline -------------------------------------------------------------------------

SQUARE = [{"x": 31, "y": 21}, {"x": 61, "y": 21}, {"x": 61, "y": 45}, {"x": 31, "y": 45}]
BOXES = [
    {"x": 45, "y": 33, "width": 31, "height": 25, "class": "plate", "confidence": 0.9},
    # 201 x 201 x 3 = 121 kB: above the size ZeroMQ sends without copying (a view of the ring
    # sent that way could go out after the ring moved on), and 12 of them go round the ring
    {"x": 160.5, "y": 120.5, "width": 201, "height": 201, "class": "car", "confidence": 0.8},
    {**{"x": 46, "y": 33, "width": 32, "height": 26, "class": "masked"}, "points": SQUARE},
]


def test_every_transport_and_encoding_delivers_the_same_crops(
    tmp_path: Path, endpoint: Any
) -> None:
    """Four publishers (BGR and I420, each inline and in a shared-memory ring) and the masks of
    a polygon with the background removed: the ring's BGR crops are the inline ones, byte for
    byte; I420 crops decode to them exactly where no background was removed."""
    tap, dets = endpoint(), endpoint()
    pubs = {k: endpoint() for k in ("bgr", "shm-bgr", "i420", "shm-i420")}
    shm = {"dir": str(tmp_path), "bytes": 1 << 20}  # 1 MiB: the BGR ring goes round
    cfg = parse_config(
        {
            "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"}],
            "detections": {"bind": dets},
            "tap": {"bind": tap, "encoding": "raw-i420"},
            "crop": {"mask_opacity": 1.0, "background_color": "#00ff00"},
            "publish": [
                {"bind": pubs["bgr"], "wait_for_subscriber": False},
                {"bind": pubs["shm-bgr"], "shm": shm},
                {"bind": pubs["i420"], "encoding": "raw-i420"},
                {"bind": pubs["shm-i420"], "encoding": "raw-i420", "shm": shm},
            ],
        }
    )
    pipeline = Pipeline(cfg)
    frames = 12
    got: dict[str, dict[tuple[int, int], np.ndarray]] = {k: {} for k in pubs}

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        ctx = zmq.asyncio.Context.instance()
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        subs = {k: AsyncCropSubscriber(v, shm_dir=tmp_path) for k, v in pubs.items()}
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
            sub.connect(tap)
            push.connect(dets)
            for _ in range(300):  # until every publisher has its subscriber
                made = pipeline.stats()["publishers"]
                if len(made) == len(pubs) and all(p["subscriptions"] for p in made):
                    break
                await asyncio.sleep(0.02)
            ports = (pubs[k].rsplit(":", 1)[1] for k in ("shm-bgr", "shm-i420"))
            assert sorted(_files(tmp_path)) == sorted(
                f"streamer-tcp-127.0.0.1-{port}" for port in ports
            )
            for _ in range(frames):
                header = json.loads((await asyncio.wait_for(sub.recv_multipart(), 5))[1])
                await push.send_multipart(
                    encode_detections("cam", header["frame_id"], (320, 240), BOXES)
                )
                for key, s in subs.items():
                    for _ in BOXES:
                        crop = await asyncio.wait_for(s.recv(), 5)
                        assert ("shm" in crop.header) == key.startswith("shm"), crop.header
                        got[key][(crop.frame_id, crop.header["index"])] = crop.image
        finally:
            for s2 in subs.values():
                s2.close()
            sub.close(linger=0)
            push.close(linger=0)
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert len(got["bgr"]) == frames * len(BOXES)
    for key in pubs:
        assert got[key].keys() == got["bgr"].keys(), key
    for k, ref in got["bgr"].items():
        assert np.array_equal(got["shm-bgr"][k], ref)
        assert np.array_equal(got["shm-i420"][k], got["i420"][k])
        if k[1] < 2:  # no polygon: the background stays, decoded I420 is the BGR crop
            assert np.array_equal(got["i420"][k], ref)
        else:  # background removed (green), then subsampled: close
            assert np.abs(got["i420"][k].astype(int) - ref.astype(int)).mean() < 12
            assert tuple(ref[0, 0]) == (0, 255, 0)
    assert not _anything(tmp_path), "the rings and their lock files are removed at shutdown"


def test_an_inline_publisher_never_sends_bytes_the_ring_has_moved_past(
    tmp_path: Path, endpoint: Any
) -> None:
    """An inline publisher of the same encoding as a ring's gets its own copy of a crop the
    crop stage wrote into the ring: its messages may wait in ZeroMQ's queue (here, for a reader
    that does not read) long after the ring has gone round and overwritten those bytes."""
    tap, dets, shm_pub, inline_pub = endpoint(), endpoint(), endpoint(), endpoint()
    ring_bytes = 1 << 20
    cfg = parse_config(
        {
            "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=1280x720:rate=30"}],
            "detections": {"bind": dets},
            "tap": {"bind": tap, "encoding": "raw-i420"},
            "publish": [
                {
                    "bind": shm_pub,
                    "encoding": "raw-i420",
                    "shm": {"dir": str(tmp_path), "bytes": ring_bytes},
                },
                {"bind": inline_pub, "encoding": "raw-i420", "hwm": 1000},
            ],
        }
    )
    # Crops of ~200 KB (over pyzmq's zero-copy threshold): a frame's four fill most of the ring.
    boxes = [
        {"x": 200 + 280 * i, "y": 360, "width": 400, "height": 340, "class": "c"} for i in range(4)
    ]
    # 19 MB of crops: more than the kernel's socket buffers take (Linux: 4 MiB to send by
    # default, a few KB to receive here), so most wait in the publisher's queue.
    frames = 24
    via_ring: dict[tuple[int, int], np.ndarray] = {}
    inline: dict[tuple[int, int], np.ndarray] = {}
    stale: list[int] = []
    pipeline = Pipeline(cfg)

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        ctx = zmq.asyncio.Context.instance()
        sub, push, slow = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH), ctx.socket(zmq.SUB)
        ring = AsyncCropSubscriber(shm_pub, shm_dir=tmp_path)
        try:
            sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
            sub.connect(tap)
            push.connect(dets)
            # A reader whose queue is full: its kernel holds little, the sender's queue the rest.
            slow.setsockopt(zmq.RCVBUF, 4096)
            slow.setsockopt(zmq.RCVHWM, 1)
            slow.setsockopt(zmq.SUBSCRIBE, b"crop/")
            slow.connect(inline_pub)
            for _ in range(300):  # until both publishers have their subscriber
                made = pipeline.stats()["publishers"]
                if len(made) == 2 and all(p["subscriptions"] for p in made):
                    break
                await asyncio.sleep(0.02)
            for _ in range(frames):
                header = json.loads((await asyncio.wait_for(sub.recv_multipart(), 5))[1])
                await push.send_multipart(
                    encode_detections("cam", header["frame_id"], (1280, 720), boxes)
                )
                for _ in boxes:  # read out of the ring before the next frame's crops go in
                    crop = await asyncio.wait_for(ring.recv(), 5)
                    via_ring[(crop.frame_id, crop.header["index"])] = crop.image
            for _ in range(frames * len(boxes)):  # only now is the slow reader read
                parts = await asyncio.wait_for(slow.recv_multipart(copy=False), 5)
                crop = parse_crop(parts)
                inline[(crop.frame_id, crop.header["index"])] = crop.image
        finally:
            stale.append(ring.stale)
            ring.close()
            for s in (sub, push, slow):
                s.close(linger=0)
            pipeline.stop()
            await asyncio.wait_for(run, 10)

    asyncio.run(asyncio.wait_for(main(), 60))
    assert stale == [0]
    assert inline.keys() == via_ring.keys() and len(inline) == frames * len(boxes)
    assert sum(image.nbytes for image in via_ring.values()) > 16 * ring_bytes
    for key, image in via_ring.items():
        assert np.array_equal(inline[key], image), key
