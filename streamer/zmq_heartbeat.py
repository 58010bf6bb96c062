"""ZeroMQ heartbeats on every socket that talks across the network, so that a peer that vanished
without closing its connection (a node lost, a partition, a NAT or proxy that forgets the flow)
is noticed within seconds: a connecting socket then drops the dead connection and reconnects
(resolving a DNS name again, so it finds a rescheduled pod), and a bound socket frees the dead
peer's queue. Without them a receive-only SUB or PULL socket waits on a dead TCP connection
for as long as the kernel keeps it (hours).
"""

from __future__ import annotations

from typing import Any

import zmq

HEARTBEAT_IVL_MS = 1_000  # a PING every second on an otherwise idle connection
HEARTBEAT_TIMEOUT_MS = 3_000  # no traffic at all this long after a PING: connection dropped
HEARTBEAT_TTL_MS = 3_000  # asks the other side to drop us after this long without traffic
CONNECT_TIMEOUT_MS = 3_000  # a TCP connect that hangs (SYNs blackholed) is retried after this
RECONNECT_IVL_MS = 100  # first retry after a dropped connection (libzmq's default)
RECONNECT_IVL_MAX_MS = 2_000  # retries back off up to this


def set_heartbeat(sock: zmq.Socket[Any]) -> None:
    """Set heartbeat, connect-timeout and reconnect options on `sock` (before connect/bind)."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
    sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
