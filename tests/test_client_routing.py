"""streamer.client with several shards: subscribers on several endpoints, detections sent where
each frame came from (reply_to), hostile reply_to values, bounded sockets and sends."""

from __future__ import annotations

import asyncio
import errno
import json
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.client import (
    AsyncDetectionSender,
    CropSubscriber,
    DetectionSender,
    FrameSubscriber,
    TapFrame,
)
from streamer.config import check_reply_to

BOX = {"x": 5, "y": 5, "width": 4, "height": 4, "class": "c", "class_id": 0}


def _frame(source_id: str, frame_id: int, reply_to: Any = None) -> TapFrame:
    header: dict[str, Any] = {
        "v": 1,
        "source_id": source_id,
        "frame_id": frame_id,
        "pts": frame_id,
        "captured_at": 0.0,
        "width": 16,
        "height": 16,
        "encoding": "raw-bgr24",
    }
    if reply_to is not None:
        header["reply_to"] = reply_to
    return TapFrame(header, b"\0" * 16 * 16 * 3)


@pytest.fixture
def pulls() -> Iterator[list[tuple[str, zmq.Socket[bytes]]]]:
    """Three bound PULL sockets, as three shards' detections endpoints."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    out = []
    for _ in range(3):
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        out.append((f"tcp://127.0.0.1:{port}", sock))
    yield out
    for _, sock in out:
        sock.close()


def _received(sock: zmq.Socket[bytes], timeout_s: float = 0.3) -> list[tuple[str, int]]:
    got = []
    while sock.poll(int(timeout_s * 1000)):
        header = json.loads(sock.recv_multipart()[1])
        got.append((header["source_id"], header["frame_id"]))
    return got


def test_detections_go_back_to_the_shard_that_tapped_the_frame(
    pulls: list[tuple[str, zmq.Socket[bytes]]],
) -> None:
    (a, sock_a), (b, sock_b), (default, sock_default) = pulls
    with DetectionSender(default) as sender:
        for i in range(5):
            assert sender.send(_frame("cam-a", i, reply_to=a), [BOX])
            assert sender.send(_frame("cam-b", i, reply_to=b), [BOX])
        assert sender.send(_frame("old", 0), [BOX])  # no reply_to: the default endpoint
        assert sender.send(_frame("same", 0, reply_to=default), [BOX])  # the default, reused
        assert _received(sock_a) == [("cam-a", i) for i in range(5)]
        assert _received(sock_b) == [("cam-b", i) for i in range(5)]
        assert _received(sock_default) == [("old", 0), ("same", 0)]
        assert sender.stats["sent"] == 12
        assert sender.stats["routes_opened"] == 2  # a and b; the default is not a route


def test_follow_reply_to_off_sends_everything_to_the_endpoint(
    pulls: list[tuple[str, zmq.Socket[bytes]]],
) -> None:
    (a, sock_a), _, (default, sock_default) = pulls
    with DetectionSender(default, follow_reply_to=False) as sender:
        sender.send(_frame("cam-a", 0, reply_to=a), [BOX])
        assert _received(sock_default) == [("cam-a", 0)]
        assert _received(sock_a, 0.05) == []


@pytest.mark.parametrize(
    "reply_to",
    [
        "udp://127.0.0.1:5555",
        "inproc://x",
        "tcp://*:5555",
        "tcp://0.0.0.0:5555",
        "tcp://h:0",
        "tcp://h:99999",
        "tcp://h:1/../x",
        "tcp://" + "h" * 10_000 + ":1",
        "ipc://",
        "ipc:///run/some-other-service.sock",  # refused unless allow_ipc_reply_to
        "tcp://h\u00e9:1",
        "tcp://h:1\x00",
        "tcp://-a:5555",  # libzmq's connect raised on these: they ended the detector
        "tcp://.:5555",
        "tcp://-:1",
        "tcp://a..b:1",
        "tcp://[1::2::3]:1",
        "tcp://[0::0]:1",
        "tcp://0:5555",  # the unspecified address, spelled as resolvers read it
        "tcp://0.0.0.00:5555",
        "tcp://[::ffff:0.0.0.0]:5555",
        12,
        ["tcp://h:1"],
        {"a": 1},
        True,
    ],
)
def test_a_hostile_reply_to_is_counted_and_never_connected(
    pulls: list[tuple[str, zmq.Socket[bytes]]], reply_to: Any
) -> None:
    _, _, (default, sock_default) = pulls
    with DetectionSender(default) as sender:
        assert sender.send(_frame("cam", 1, reply_to=reply_to), [BOX])
        assert sender.stats["bad_reply_to"] == 1
        assert sender.stats["routes_opened"] == 0
        assert _received(sock_default) == [("cam", 1)]  # the fallback took it
    with DetectionSender() as sender:  # no fallback: dropped and counted, no exception
        assert not sender.send(_frame("cam", 2, reply_to=reply_to), [BOX])
        assert sender.stats["no_route"] == 1


@settings(max_examples=400, deadline=None)
@given(
    host=st.text(alphabet="aZ09-.:[]*_", max_size=14)
    | st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
    port=st.integers(0, 70_000),
)
def test_a_reply_to_the_checks_pass_is_one_libzmq_connects_to(host: str, port: int) -> None:
    """What `check_reply_to` lets through, a detector connects to without libzmq raising (and
    so `route_for` counts, never raises, a reply_to it refuses)."""
    endpoint = f"tcp://{host}:{port}"
    try:
        check_reply_to(endpoint)
    except ValueError:
        return
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUSH)
    try:
        sock.connect(endpoint)
    finally:
        sock.close(linger=0)


def test_a_reply_to_libzmq_refuses_is_counted_and_the_default_used(
    pulls: list[tuple[str, zmq.Socket[bytes]]],
) -> None:
    """Should libzmq refuse an address the checks passed, the frame's detections take the
    default route, counted ``bad_reply_to``; the sender goes on."""
    _, _, (default, sock_default) = pulls
    with DetectionSender(default) as sender:
        real = sender._routes._open

        def refuse(endpoint: str) -> Any:
            raise zmq.ZMQError(zmq.EINVAL)

        sender._routes._open = refuse
        assert sender.send(_frame("cam", 1, reply_to="tcp://127.0.0.1:1"), [BOX])
        assert sender.stats["bad_reply_to"] == 1 and sender.stats["routes_opened"] == 0
        assert _received(sock_default) == [("cam", 1)]

        def out_of_descriptors(endpoint: str) -> Any:
            raise zmq.ZMQError(errno.EMFILE)

        # Not the address's fault: dropped and counted, not sent to the default (another
        # shard's endpoint, maybe, which would not know the frame).
        sender._routes._open = out_of_descriptors
        assert not sender.send(_frame("cam", 2, reply_to="tcp://127.0.0.1:2"), [BOX])
        sender._routes._open = real
        assert sender.stats["route_failed"] == 1 and sender.stats["bad_reply_to"] == 1
        assert _received(sock_default, 0.1) == []


def test_no_route_without_reply_to_or_endpoint_is_counted() -> None:
    with DetectionSender() as sender:
        assert not sender.send(_frame("cam", 0), [BOX])
        assert dict(sender.stats) == {"no_route": 1}


def test_the_sockets_a_sender_keeps_are_bounded(tmp_path: Path) -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    binds = []
    for i in range(5):
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(f"ipc://{tmp_path}/d{i}")
        binds.append(s)
    try:
        with DetectionSender(max_routes=2, allow_ipc_reply_to=True) as sender:
            for round_ in range(2):
                for i in range(5):
                    assert sender.send(_frame(f"c{i}", round_, f"ipc://{tmp_path}/d{i}"), [BOX])
                assert len(sender._routes._routes) <= 2
            assert sender.stats["routes_opened"] == 10  # LRU of 2 over 5 endpoints: all miss
            assert sender.stats["routes_closed"] == 8
            assert sender.stats["sent"] == 10
        for i, s in enumerate(binds):
            assert _received(s) == [(f"c{i}", 0), (f"c{i}", 1)]
    finally:
        for s in binds:
            s.close()


def test_ipc_reply_to_is_followed_only_when_allowed(tmp_path: Path) -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    local = ctx.socket(zmq.PULL)
    local.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{tmp_path}/dets"
    local.bind(endpoint)
    try:
        with DetectionSender() as sender:  # from the network: refused, counted
            assert not sender.send(_frame("cam", 0, reply_to=endpoint), [BOX])
            assert sender.stats["bad_reply_to"] == 1 and sender.stats["routes_opened"] == 0
        with DetectionSender(endpoint) as sender:  # the sender's own endpoint: no route needed
            assert sender.send(_frame("cam", 1, reply_to=endpoint), [BOX])
            assert sender.stats["bad_reply_to"] == 0
        with DetectionSender(allow_ipc_reply_to=True) as sender:  # one host, by choice
            assert sender.send(_frame("cam", 2, reply_to=endpoint), [BOX])
        assert _received(local) == [("cam", 1), ("cam", 2)]
    finally:
        local.close()


STALL_MESSAGES = 400
STALL_PART_BYTES = 256 * 1024  # big messages fill the stalled shard's kernel buffers quickly


@pytest.mark.timeout(60)
def test_a_stalled_shard_never_slows_the_others(
    pulls: list[tuple[str, zmq.Socket[bytes]]],
) -> None:
    """One shard's PULL takes nothing; the other's reads. Sends never wait: the stalled
    shard's messages fill its queue, then are dropped and counted per route, and the live
    shard gets every message as fast as it takes them (before: each drop blocked 1 s)."""
    (live, sock_live), _, _ = pulls
    sock_stalled: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PULL)
    sock_stalled.setsockopt(zmq.LINGER, 0)
    sock_stalled.setsockopt(zmq.RCVHWM, 1)  # before bind: the listener copies its options
    stalled = f"tcp://127.0.0.1:{sock_stalled.bind_to_random_port('tcp://127.0.0.1')}"
    part = b"\0" * STALL_PART_BYTES
    got = []
    with closing(sock_stalled), DetectionSender() as sender:  # hwm 100 a route
        t0 = time.monotonic()
        for i in range(STALL_MESSAGES):
            for name, endpoint in (("stalled", stalled), ("live", live)):
                frame = _frame(name, i, reply_to=endpoint)
                sender.send_message(frame, [b"det/x", json.dumps(frame.header).encode(), part])
            assert sock_live.poll(5_000), (i, sender.stats)
            got.append(json.loads(sock_live.recv_multipart()[1])["frame_id"])
        elapsed = time.monotonic() - t0
        assert got == list(range(STALL_MESSAGES))
        assert sender.route_drops[live] == 0
        assert sender.route_drops[stalled] == sender.stats["dropped_full"] > STALL_MESSAGES // 4
        assert sender.stats["sent"] == 2 * STALL_MESSAGES - sender.stats["dropped_full"]
        # A blocking send would have cost >= 1 s per drop; a generous bound, not a speed target.
        assert elapsed < 20, elapsed
        print(f"{STALL_MESSAGES} messages each in {elapsed:.2f} s, {sender.stats}")


def test_async_sender_routes_the_same_way(pulls: list[tuple[str, zmq.Socket[bytes]]]) -> None:
    (a, sock_a), (b, sock_b), _ = pulls

    async def body() -> None:
        async with AsyncDetectionSender() as sender:
            assert await sender.send(_frame("cam-a", 0, reply_to=a), [BOX])
            assert await sender.send(_frame("cam-b", 0, reply_to=b), [BOX])
            assert not await sender.send(_frame("cam-c", 0, reply_to="udp://x:1"), [BOX])
            assert sender.stats["bad_reply_to"] == 1 and sender.stats["no_route"] == 1

    asyncio.run(asyncio.wait_for(body(), 10))
    assert _received(sock_a) == [("cam-a", 0)]
    assert _received(sock_b) == [("cam-b", 0)]


@pytest.mark.parametrize("kind", ["frames", "crops"])
def test_subscribers_take_several_endpoints(tmp_path: Path, kind: str) -> None:
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pubs, endpoints = [], []
    for i in range(3):
        s = ctx.socket(zmq.PUB)
        s.setsockopt(zmq.LINGER, 0)
        endpoints.append(f"ipc://{tmp_path}/pub-{i}")
        s.bind(endpoints[-1])
        pubs.append(s)
    topic = "frame/" if kind == "frames" else "crop/"
    sub_cls = FrameSubscriber if kind == "frames" else CropSubscriber
    try:
        with sub_cls(endpoints) as sub:
            got: set[str] = set()
            deadline = time.monotonic() + 10
            # PUB drops until the subscription arrives: publish until each one has been heard.
            while len(got) < 3 and time.monotonic() < deadline:
                for i, s in enumerate(pubs):
                    header = dict(_frame(f"s{i}", 0).header, source_id=f"s{i}")
                    s.send_multipart(
                        [f"{topic}s{i}".encode(), json.dumps(header).encode(), b"\0" * 768]
                    )
                msg = sub.recv(timeout_s=0.05)
                while msg is not None:
                    got.add(msg.source_id)
                    msg = sub.recv(timeout_s=0.01)
            assert got == {"s0", "s1", "s2"}
    finally:
        for s in pubs:
            s.close()
    with pytest.raises(ValueError, match="one or more endpoints"):
        sub_cls([])


def test_async_sender_drops_at_once_on_a_dead_shard(tmp_path: Path) -> None:
    async def body() -> list[bool]:
        async with AsyncDetectionSender(hwm=1, allow_ipc_reply_to=True) as sender:
            dead = f"ipc://{tmp_path}/nobody-binds-this"
            out = [await sender.send(_frame("gone", i, reply_to=dead), [BOX]) for i in range(4)]
            assert sender.stats["dropped_full"] == out.count(False) >= 2
            assert sender.route_drops[dead] == out.count(False)
            return out

    asyncio.run(asyncio.wait_for(body(), 10))
