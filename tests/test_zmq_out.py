"""The XPUB subscription table: bounded, and "is anyone subscribed?" without a scan, under a
subscriber that (un)subscribes hundreds of thousands of distinct topics."""

from __future__ import annotations

import time
from typing import Any

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
