"""Non-blocking ZeroMQ output sockets (crop publishers and the frame tap)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import zmq

log = logging.getLogger(__name__)

ZERO_COPY_MIN_BYTES = 64 * 1024  # below this pyzmq copies anyway, and copying is cheaper
CLOSE_LINGER_MS = 1_000  # time given to queued messages at shutdown


@dataclass
class OutStats:
    sent: int = 0
    dropped_full: int = 0


class OutSocket:
    """A bound PUB or PUSH socket that never blocks the caller.

    PUSH: when every peer's queue is full (or no peer is connected) a send fails at once and the
    message is counted in ``dropped_full``. PUB: ZeroMQ drops per slow subscriber inside the
    socket once its high-water mark is reached.
    """

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        mode: Literal["pub", "push"],
        hwm: int,
    ) -> None:
        self.endpoint = endpoint
        self.mode = mode
        self.stats = OutStats()
        self.sock = ctx.socket(zmq.PUB if mode == "pub" else zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            raise OSError(f"cannot bind {endpoint}: {e}") from None

    def send(self, parts: Sequence[bytes | memoryview]) -> bool:
        """Queue one multipart message; False (and counted) when it had to be dropped."""
        last = len(parts) - 1
        try:
            for i, part in enumerate(parts):
                flags = zmq.NOBLOCK | (zmq.SNDMORE if i < last else 0)
                self.sock.send(part, flags, copy=len(part) < ZERO_COPY_MIN_BYTES)
        except zmq.Again:
            # Only the first part can fail: ZeroMQ queues the rest of a started message.
            self.stats.dropped_full += 1
            return False
        self.stats.sent += 1
        return True

    def close(self, linger_ms: int = CLOSE_LINGER_MS) -> None:
        self.sock.close(linger=linger_ms)
