"""ZeroMQ heartbeats: a subscriber whose peer vanishes without closing the connection (a lost
node, a partition: here a TCP proxy that stops forwarding and never closes) drops it and
reconnects, finding the server that replaced it behind the same address."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from streamer.client import FrameSubscriber
from streamer.zmq_heartbeat import HEARTBEAT_TIMEOUT_MS

CHUNK_BYTES = 65_536
POLL_S = 0.05


class BlackholeProxy:
    """A TCP proxy on 127.0.0.1: each accepted connection is joined to the current `target`
    port. `blackhole()` makes every connection open now swallow its bytes in both directions
    while staying open (as a dead node's connection does); later connections work."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], POLL_S)[0]:
                continue
            client, _ = self._listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            dead = threading.Event()
            with self._lock:
                self._conns.append((client, server, dead))
            t = threading.Thread(target=self._pump, args=(client, server, dead), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, a: socket.socket, b: socket.socket, dead: threading.Event) -> None:
        peer = {a: b, b: a}
        while not self._stop.is_set():
            for src in select.select([a, b], [], [], POLL_S)[0]:
                data = src.recv(CHUNK_BYTES)
                if not data:  # a real close: pass it on
                    peer[src].close()
                    src.close()
                    return
                if not dead.is_set():
                    peer[src].sendall(data)

    def blackhole(self) -> None:
        with self._lock:
            for _, _, dead in self._conns:
                dead.set()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        self._listener.close()
        with self._lock:
            for a, b, _ in self._conns:
                a.close()
                b.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _pub(ctx: zmq.Context[zmq.Socket[bytes]]) -> tuple[zmq.Socket[bytes], int]:
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    return sock, sock.bind_to_random_port("tcp://127.0.0.1")


def _publish_until_heard(
    pub: zmq.Socket[bytes], sub: FrameSubscriber, name: str, timeout_s: float
) -> float | None:
    """Publish frames of source `name` until `sub` receives one; seconds it took, or None."""
    header = {"v": 1, "source_id": name, "frame_id": 0, "captured_at": 1.0}
    header |= {"width": 1, "height": 1, "encoding": "raw-bgr24"}
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        pub.send_multipart([f"frame/{name}".encode(), json.dumps(header).encode(), b"\0\0\0"])
        frame = sub.recv(timeout_s=0.1)
        if frame is not None and frame.source_id == name:
            return time.monotonic() - t0
    return None


@pytest.mark.timeout(30)
def test_a_subscriber_reconnects_past_a_blackholed_connection(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> None:
    old, old_port = _pub(ctx)
    proxy = BlackholeProxy(old_port)
    try:
        with FrameSubscriber(f"tcp://127.0.0.1:{proxy.port}") as sub:
            assert _publish_until_heard(old, sub, "old", 5.0) is not None
            # The node is lost: its connection goes silent but is never closed, and the shard
            # comes back elsewhere behind the same address.
            new, new_port = _pub(ctx)
            proxy.target = new_port
            proxy.blackhole()
            took = _publish_until_heard(new, sub, "new", 4 * HEARTBEAT_TIMEOUT_MS / 1000)
            assert took is not None, "the subscriber never left the dead connection"
            print(f"reconnected to the new server after {took:.1f} s")
    finally:
        proxy.close()


def test_streamers_own_sockets_send_heartbeats(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """The detections socket (bound or connecting), the tap and crop publishers, and every
    client socket: a vanished peer is noticed (connect: redialled; bind: its queue freed)."""
    from streamer.client import DetectionSender
    from streamer.config import DetectionsConfig
    from streamer.detections.receiver import DetectionReceiver
    from streamer.publish.zmq_out import OutSocket
    from streamer.zmq_heartbeat import HEARTBEAT_IVL_MS, HEARTBEAT_TTL_MS

    bound = DetectionReceiver(ctx, DetectionsConfig(bind="tcp://127.0.0.1:0"))
    connecting = DetectionReceiver(ctx, DetectionsConfig(connect=["tcp://127.0.0.1:9"]))
    outs = [OutSocket(ctx, "tcp://127.0.0.1:0", mode, 10) for mode in ("pub", "push")]
    sender = DetectionSender("tcp://127.0.0.1:9")
    sub = FrameSubscriber("tcp://127.0.0.1:9")
    socks: list[zmq.Socket[bytes]] = [
        bound.sock,
        connecting.sock,
        *(o.sock for o in outs),
        sub.sock,
    ]
    assert sender.sock is not None
    socks.append(sender.sock)
    try:
        for sock in socks:
            assert sock.getsockopt(zmq.HEARTBEAT_IVL) == HEARTBEAT_IVL_MS, sock
            assert sock.getsockopt(zmq.HEARTBEAT_TIMEOUT) == HEARTBEAT_TIMEOUT_MS, sock
            assert sock.getsockopt(zmq.HEARTBEAT_TTL) == HEARTBEAT_TTL_MS, sock
    finally:
        bound.close()
        connecting.close()
        for o in outs:
            o.close(0)
        sender.close()
        sub.close()
