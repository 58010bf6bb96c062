"""The XPUB subscription table: bounded, and "is anyone subscribed?" without a scan, under a
subscriber that (un)subscribes hundreds of thousands of distinct topics."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
import zmq

from streamer.publish.zmq_out import MAX_PREFIX_BYTES, MAX_PREFIXES, OutSocket, Subscriptions
from tests.conftest import free_port

PAIRS = 200_000


def _read_until(out: OutSocket, done: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "subscriptions did not arrive"
        if out.sock.poll(100, zmq.POLLIN):
            out.read_subscriptions()


def test_subscribe_unsubscribe_churn_leaves_the_table_small() -> None:
    """A real subscriber keeps one subscription, then subscribes to and unsubscribes from
    200,000 distinct topics: the table holds the one prefix again, and a look-up costs one
    dictionary probe per distinct prefix length (here one), not one per topic ever seen."""
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = OutSocket(ctx, endpoint, "pub", hwm=10)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SNDHWM, 0)  # queue every (un)subscription: none dropped on the way
    try:
        sub.connect(endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"crop/cam/")
        _read_until(out, lambda: len(out.subscriptions) == 1)
        seen = 0
        for i in range(PAIRS):
            topic = b"crop/churn/%d" % i
            sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.setsockopt(zmq.UNSUBSCRIBE, topic)
            if i % 1_000 == 0:
                out.read_subscriptions()
                seen = max(seen, len(out.subscriptions))
        sub.setsockopt(zmq.SUBSCRIBE, b"crop/end")
        _read_until(out, lambda: b"crop/end" in out.subscriptions.counts)
        subs = out.subscriptions
        assert set(subs.counts) == {b"crop/cam/", b"crop/end"}, len(subs)
        assert dict(subs.lengths) == {9: 1, 8: 1} and subs.untracked == 0
        assert seen <= 3  # never more than the kept ones and a pair in flight
        assert out.has_subscriber(b"crop/cam/car") and not out.has_subscriber(b"crop/other/x")
    finally:
        sub.close(linger=0)
        out.close(linger_ms=0)
        ctx.term()


@pytest.mark.parametrize("kind", ["sub", "xsub"])
def test_a_subscription_repeated_by_one_subscriber_ends_when_it_leaves(kind: str) -> None:
    """A subscriber that subscribes to one prefix twice (a SUB asked twice, an XSUB's raw
    messages) and leaves: the prefix is no longer wanted, and a message on it is counted as
    having no subscriber. (With XPUB_VERBOSER both subscriptions came up but one unsubscription:
    the prefix stayed for good and every message on it was counted sent.) Another subscriber's
    hold on the prefix is kept while it stays."""
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = OutSocket(ctx, endpoint, "pub", hwm=10)
    stays = ctx.socket(zmq.SUB)
    leaves = ctx.socket(zmq.XSUB if kind == "xsub" else zmq.SUB)
    try:
        leaves.connect(endpoint)
        for _ in range(2):
            if kind == "xsub":
                leaves.send(b"\x01crop/cam1/")
            else:
                leaves.setsockopt(zmq.SUBSCRIBE, b"crop/cam1/")
        _read_until(out, lambda: out.has_subscriber(b"crop/cam1/plate"))
        stays.connect(endpoint)
        stays.setsockopt(zmq.SUBSCRIBE, b"crop/cam2/")
        _read_until(out, lambda: out.has_subscriber(b"crop/cam2/plate"))
        leaves.close(linger=0)
        _read_until(out, lambda: not out.has_subscriber(b"crop/cam1/plate"))
        assert out.send_nowait([b"crop/cam1/plate", b"{}"]) == "no_subscriber"
        assert out.stats.dropped_no_subscriber == 1 and out.stats.sent == 0
        assert out.has_subscriber(b"crop/cam2/plate") and out.subscriptions.total == 1
        assert out.send_nowait([b"crop/cam2/plate", b"{}"]) == "sent"
    finally:
        stays.close(linger=0)
        leaves.close(linger=0)
        out.close(linger_ms=0)
        ctx.term()


def test_two_subscribers_of_one_prefix_hold_it_until_both_leave() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = OutSocket(ctx, endpoint, "pub", hwm=10)
    a, b = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        for s in (a, b):
            s.connect(endpoint)
            s.setsockopt(zmq.SUBSCRIBE, b"frame/")
        _read_until(out, lambda: out.subscribed)
        time.sleep(0.3)  # both subscriptions through
        a.close(linger=0)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # a's leaving is not the prefix's end
            if out.sock.poll(50, zmq.POLLIN):
                out.read_subscriptions()
        assert out.has_subscriber(b"frame/cam")
        b.close(linger=0)
        _read_until(out, lambda: not out.subscribed)
        assert out.subscriptions.total == 0 and not out.subscriptions.counts
    finally:
        a.close(linger=0)
        b.close(linger=0)
        out.close(linger_ms=0)
        ctx.term()


def test_table_bound_and_fallback() -> None:
    """Past MAX_PREFIXES distinct prefixes, new ones are counted but not stored, and every topic
    counts as wanted (the socket still filters) until they are gone again."""
    subs = Subscriptions()
    extra = 500
    for i in range(MAX_PREFIXES + extra):
        subs.note(b"\x01crop/%d/" % i)
    assert len(subs) == MAX_PREFIXES and subs.untracked == extra
    assert subs.wanted(b"anything at all")
    for i in range(MAX_PREFIXES + extra):
        subs.note(b"\x00crop/%d/" % i)
    assert len(subs) == 0 and subs.untracked == 0 and not subs.lengths
    assert not subs.wanted(b"crop/1/car")


def test_prefix_matching() -> None:
    subs = Subscriptions()
    for prefix in (b"crop/a/", b"crop/a/", b"frame/", b"x" * (MAX_PREFIX_BYTES + 50)):
        subs.note(b"\x01" + prefix)
    assert subs.counts[b"crop/a/"] == 2
    assert subs.wanted(b"crop/a/car") and subs.wanted(b"frame/cam")
    assert not subs.wanted(b"crop/b/car") and not subs.wanted(b"crop/a")
    assert subs.wanted(b"x" * MAX_PREFIX_BYTES + b"y")  # a long prefix is kept cut: permissive
    subs.note(b"\x00crop/a/")
    assert subs.wanted(b"crop/a/car")  # one of two subscribers is left
    subs.note(b"\x00crop/a/")
    assert not subs.wanted(b"crop/a/car")
    subs.note(b"\x01")  # everything
    assert subs.wanted(b"crop/b/car")
    assert subs.total == 3


def test_detections_socket_bounds_what_one_peer_can_queue() -> None:
    """libzmq holds at most RECV_HWM whole messages per peer (was 1,000) and drops a peer that
    sends a part over 2 x max_message_bytes (was 4 x): docs/protocol.md gives the product."""
    from streamer.config import DetectionsConfig
    from streamer.detections.receiver import DetectionReceiver

    ctx = zmq.Context()
    try:
        cfg = DetectionsConfig(bind="inproc://dets-bounds", max_message_bytes=1 << 20)
        rx = DetectionReceiver(ctx, cfg)
        try:
            assert rx.sock.getsockopt(zmq.RCVHWM) == 64
            assert rx.sock.getsockopt(zmq.MAXMSGSIZE) == 2 << 20
        finally:
            rx.close()
    finally:
        ctx.term()


def _zmtp_peer(port: int, socket_type: bytes) -> socket.socket:
    """A bare ZMTP 3.0 peer (NULL mechanism) on a plain TCP socket: it sends whatever it is
    given, as a hostile peer would, with no libzmq of its own to hold or check it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32))
    got = b""
    while len(got) < 64:
        chunk = s.recv(64 - len(got))
        assert chunk, "closed during the greeting"
        got += chunk
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", len(socket_type)) + socket_type
    s.sendall(b"\x04" + bytes([len(body)]) + body)
    return s


def _zmtp_frame(data: bytes) -> bytes:
    return b"\x02" + struct.pack(">Q", len(data)) + data  # a long frame, the last


def test_a_subscription_longer_than_any_topic_drops_its_peer() -> None:
    """One subscription message of 100 kB (libzmq keeps a prefix at ~70 bytes of memory a byte:
    three 10 MB ones took a streamer from 119 MB to 2.1 GB, held after they left) is refused:
    its peer is disconnected and the prefix never subscribed. A prefix as long as the longest
    topic is taken."""
    port = free_port()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    out = OutSocket(ctx, f"tcp://127.0.0.1:{port}", "pub", 10)
    fine: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
    try:
        longest = b"crop/" + b"c" * 64 + b"/" + "\u00e9".encode() * 512  # 1094 bytes
        fine.setsockopt(zmq.SUBSCRIBE, longest)
        fine.connect(f"tcp://127.0.0.1:{port}")
        _read_until(out, lambda: out.subscriptions.total == 1)
        hostile = _zmtp_peer(port, b"XSUB")
        hostile.sendall(_zmtp_frame(b"\x01" + b"B" * 100_000))
        seen = 1
        with contextlib.suppress(ConnectionResetError):
            while hostile.recv(4096):  # until libzmq closes it (at the latest, for heartbeats)
                pass
        for _ in range(5):
            time.sleep(0.05)
            out.read_subscriptions()
            seen = max(seen, out.subscriptions.total)
        hostile.close()
        assert seen == 1, "the long prefix was subscribed"
        assert out.subscriptions.total == 1 and out.has_subscriber(longest)
    finally:
        fine.close(linger=0)
        out.close()


def test_a_subscriber_refuses_a_topic_streamer_would_drop_it_for() -> None:
    """The client library and the commands refuse a topic as long as the publishers' bound
    (libzmq's own SUB also crashed its process on close with a prefix of 200 kB or more)."""
    from streamer.client import CropSubscriber

    with pytest.raises(ValueError, match="at most 2047 bytes"):
        CropSubscriber("tcp://127.0.0.1:1", topics=["crop/" + "a" * 2043])
    res = subprocess.run(
        [sys.executable, "-m", "streamer", "crops", "tcp://127.0.0.1:1", "--topic", "a" * 3000],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2 and "a topic is at most 2047 bytes long" in res.stderr, res.stderr
