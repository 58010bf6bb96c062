"""ZeroMQ output sockets (crop publishers and the frame tap) that count every message they could
not deliver. The tap is used from the live cameras' decode threads and the event loop (one at a
time, under the pipeline's lock; never blocking); crop publishers from the crop thread.

PUB mode is an XPUB socket: it sees its subscribers' subscriptions, so a message nobody
subscribed to is counted (``dropped_no_subscriber``) instead of vanishing, and with XPUB_NODROP a
message that does not fit a subscriber's queue (``hwm``) is refused and counted
(``dropped_hwm``). The price: while one subscriber's queue is full, every subscriber of that
socket misses the message. Give consumers that must not disturb each other their own publisher.

PUSH mode load-balances over connected workers; when all of their queues are full (or none is
connected) a send waits at most ``send_timeout_ms``, then counts ``dropped_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import zmq
import zmq.asyncio

from streamer.zmq_heartbeat import set_heartbeat

log = logging.getLogger(__name__)

ZERO_COPY_MIN_BYTES = 64 * 1024  # below this pyzmq copies anyway, and copying is cheaper
CLOSE_LINGER_MS = 1_000  # time given to queued messages at shutdown
MAX_PREFIXES = 10_000  # distinct subscription prefixes tracked per PUB socket
MAX_PREFIX_BYTES = 256  # longer prefixes are tracked cut to this (topics are shorter)
# The longest (un)subscription message a PUB socket takes: its kind byte and a prefix as long as
# the longest topic (crop/<64-char id>/<256-char class>, UTF-8: 1094 bytes), with room to spare.
# A longer one would match nothing, and libzmq keeps a prefix as a node per byte (~70 bytes of
# memory a byte of prefix, held after its subscriber leaves): its peer is disconnected instead.
MAX_SUBSCRIPTION_BYTES = 2048

Outcome = Literal["sent", "no_subscriber", "full"]
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)  # plain ints: enum arithmetic per part is measurable
_LAST = int(zmq.NOBLOCK)


@dataclass
class OutStats:
    sent: int = 0
    dropped_no_subscriber: int = 0
    dropped_hwm: int = 0
    dropped_timeout: int = 0

    @property
    def dropped(self) -> int:
        return self.dropped_no_subscriber + self.dropped_hwm + self.dropped_timeout


class Subscriptions:
    """The topic prefixes an XPUB socket's subscribers hold, so that "does anyone want this
    topic?" is a few dictionary look-ups: one per distinct prefix length that fits the topic
    (at most MAX_PREFIX_BYTES + 1 of them), never a scan of every prefix ever seen.

    The XPUB passes up a prefix's first subscription and its last unsubscription, from whichever
    subscribers (not XPUB_VERBOSER: that passes up a subscriber's every subscription, a repeat
    too, but one unsubscription for them all when it leaves, since libzmq holds a prefix's
    subscribers as a set; a repeat then held its prefix for good, and every message on it was
    counted sent into nothing).

    Bounded: a prefix leaves when its last subscriber unsubscribes; prefixes longer than
    MAX_PREFIX_BYTES are kept cut to that length, counted by the prefixes that share the cut
    (the socket still filters exactly: this only decides whether to try); beyond MAX_PREFIXES
    distinct prefixes, new ones are only counted (`untracked`), and while any are, every topic
    counts as wanted."""

    def __init__(self) -> None:
        self.counts: dict[bytes, int] = {}  # prefix (cut) -> subscribed prefixes cut to it (> 0)
        self.lengths: Counter[int] = Counter()  # prefix length -> prefixes of that length
        self.untracked = 0
        self.total = 0  # distinct prefixes subscribed, tracked or not

    def __len__(self) -> int:
        return len(self.counts)

    def note(self, msg: bytes) -> None:
        """Apply one XPUB (un)subscription message: 0x01/0x00 then the prefix."""
        kind, prefix = msg[:1], msg[1 : 1 + MAX_PREFIX_BYTES]
        if kind == b"\x01":
            self.total += 1
            n = self.counts.get(prefix)
            if n is not None:
                self.counts[prefix] = n + 1
            elif len(self.counts) < MAX_PREFIXES:
                self.counts[prefix] = 1
                self.lengths[len(prefix)] += 1
            else:
                self.untracked += 1
        elif kind == b"\x00":
            n = self.counts.get(prefix)
            if n is None:
                if self.untracked:
                    self.untracked -= 1
                    self.total -= 1
                return
            self.total -= 1
            if n > 1:
                self.counts[prefix] = n - 1
            else:
                del self.counts[prefix]
                self.lengths[len(prefix)] -= 1
                if not self.lengths[len(prefix)]:
                    del self.lengths[len(prefix)]

    def wanted(self, topic: bytes) -> bool:
        """Whether some subscription's prefix starts `topic`."""
        if self.untracked:
            return True
        counts, size = self.counts, len(topic)
        return any(n <= size and topic[:n] in counts for n in self.lengths)


class OutSocket:
    """A bound PUB (XPUB) or PUSH socket, used by one thread at a time: the event loop's (made
    from an asyncio context), or others' (made from a plain one; the tap's, under a lock)."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        mode: Literal["pub", "push"],
        hwm: int,
        send_timeout_ms: int = 0,
        curve_keys: tuple[bytes, bytes] | None = None,
    ) -> None:
        """`curve_keys` (public, secret) make the socket a CURVE server."""
        self.endpoint = endpoint
        self.mode = mode
        self.send_timeout_s = send_timeout_ms / 1000.0
        self.stats = OutStats()
        self.subscriptions = Subscriptions()
        self._blocked = False  # PUSH: the last send timed out; do not wait again until one passes
        self.asock = ctx.socket(zmq.XPUB if mode == "pub" else zmq.PUSH)
        self.sock: zmq.Socket[bytes] = zmq.Socket.shadow(self.asock.underlying)
        self.sock.setsockopt(zmq.SNDHWM, hwm)
        self.sock.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        set_heartbeat(self.sock)  # a vanished subscriber's or worker's queue is freed
        if curve_keys is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = curve_keys
            self.sock.curve_server = True
        if mode == "pub":
            self.sock.setsockopt(zmq.XPUB_NODROP, 1)  # (not VERBOSER: see Subscriptions)
            self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as e:
            self.asock.close(linger=0)
            raise OSError(f"cannot bind {endpoint}: {e}") from None

    def has_subscriber(self, topic: bytes) -> bool:
        return self.subscriptions.wanted(topic)

    @property
    def subscribed(self) -> bool:
        """PUB: whether any subscription is active (safe to read from another thread)."""
        return self.subscriptions.total > 0

    def _note(self, msg: bytes) -> None:
        self.subscriptions.note(msg)

    def read_subscriptions(self) -> None:
        """PUB mode: take the (un)subscriptions waiting now (call when the socket polls
        readable)."""
        if self.mode != "pub":
            return
        while True:
            try:
                self._note(self.sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return

    def subscriptions_waiting(self) -> bool:
        """PUB mode: whether (un)subscriptions wait to be read (`read_subscriptions`)."""
        return self.mode == "pub" and bool(int(self.sock.get(zmq.EVENTS)) & zmq.POLLIN)

    def attempt(self, parts: Sequence[bytes | memoryview]) -> Outcome:
        """Try to queue one multipart message now; say why not (not counted: see count_drop)."""
        if self.mode == "pub" and not self.has_subscriber(bytes(parts[0])):
            return "no_subscriber"
        return "sent" if self._try_send(parts) else "full"

    def refuses(self, topic: bytes) -> Outcome | None:
        """Why a message on `topic` would not be queued now, when that is known before it is
        built (so that nothing is spent on it): PUB, no subscriber to the topic; PUSH, no peer
        with room (not writable). None: try it. (An XPUB polls writable even when full.)"""
        if self.mode == "pub":
            return None if self.has_subscriber(topic) else "no_subscriber"
        return None if self.sock.poll(0, zmq.POLLOUT) else "full"

    def count_drop(self, outcome: Outcome) -> None:
        """Count a message given up on after `attempt` said `outcome`."""
        if outcome == "no_subscriber":
            self.stats.dropped_no_subscriber += 1
        elif outcome == "full" and self.mode == "pub":
            self.stats.dropped_hwm += 1

    def send_nowait(self, parts: Sequence[bytes | memoryview]) -> Outcome:
        """Queue one multipart message now or say why not (and count it)."""
        outcome = self.attempt(parts)
        if outcome != "sent":
            self.count_drop(outcome)
        return outcome

    def send(self, parts: Sequence[bytes | memoryview]) -> bool:
        """PUSH: wait up to the send timeout for a worker with room (blocking the calling
        thread; not for the event loop); PUB: as `send_nowait`."""
        outcome = self.send_nowait(parts)
        if outcome != "full" or self.mode == "pub":
            return outcome == "sent"
        if not self._blocked and self.send_timeout_s > 0:
            deadline = time.monotonic() + self.send_timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if self.sock.poll(int(left * 1000) + 1, zmq.POLLOUT) and self._try_send(parts):
                    return True
        self._blocked = True
        self.stats.dropped_timeout += 1
        return False

    def _try_send(self, parts: Sequence[bytes | memoryview]) -> bool:
        last = len(parts) - 1
        try:
            for i, part in enumerate(parts):
                flags = _MORE if i < last else _LAST
                self.sock.send(part, flags, copy=len(part) < ZERO_COPY_MIN_BYTES)
        except zmq.Again:
            # Only the first part can fail: ZeroMQ queues the rest of a started message.
            return False
        self.stats.sent += 1
        self._blocked = False
        return True

    def close(self, linger_ms: int = CLOSE_LINGER_MS) -> None:
        # Close through the owning socket: closing the shadow would leave `asock` believing it
        # is open, and its finaliser would later close whatever socket reuses the handle.
        self.asock.close(linger=linger_ms)
