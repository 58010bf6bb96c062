"""The ZeroMQ socket detections arrive on: PULL (bind; detectors PUSH) or SUB (connect to
detector PUBs)."""

from __future__ import annotations

from typing import Any

import zmq

from streamer.config import DetectionsConfig
from streamer.zmq_heartbeat import set_heartbeat

# Whole messages libzmq queues per peer before it stops reading that peer (a PUSH peer's sends
# then wait; a PUB peer's messages are dropped by libzmq): at 30 detection messages a second per
# camera, 64 cover a crop thread busy for a quarter of a second with 8 cameras on one detector.
RECV_HWM = 64
# ZeroMQ drops the connection of a peer that sends a part larger than this many times
# max_message_bytes; a message between the limit and this bound still arrives, and is counted as
# ``oversize``. So one peer can make libzmq hold RECV_HWM messages of parts of at most
# 2 x max_message_bytes each; ZeroMQ bounds neither the parts per message nor their sum, so only
# CURVE bounds what an untrusted peer can make it buffer (docs/protocol.md).
HARD_LIMIT_FACTOR = 2


class DetectionReceiver:
    """Owns the input socket (`sock`, a plain socket: the crop thread reads it)."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        cfg: DetectionsConfig,
        curve_keys: tuple[bytes, bytes] | None = None,
        detector_server_key: bytes | None = None,
    ) -> None:
        """`curve_keys` (public, secret) make a bound socket a CURVE server, and a connecting
        one a CURVE client of detectors whose PUB sockets have `detector_server_key`."""
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.PULL if cfg.bind else zmq.SUB)
        if curve_keys is not None:
            self.sock.curve_publickey, self.sock.curve_secretkey = curve_keys
            if cfg.bind:
                self.sock.curve_server = True
            elif detector_server_key is None:
                self.sock.close(linger=0)
                raise ValueError("CURVE on a connecting detections socket needs the server key")
            else:
                self.sock.curve_serverkey = detector_server_key
        self.sock.setsockopt(zmq.RCVHWM, RECV_HWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes * HARD_LIMIT_FACTOR)
        self.sock.setsockopt(zmq.LINGER, 0)
        set_heartbeat(self.sock)  # connect: redial a vanished detector; bind: free its queue
        try:
            if cfg.bind:
                self.sock.bind(cfg.bind)
            else:
                self.sock.setsockopt(zmq.SUBSCRIBE, b"det/")
                for endpoint in cfg.connect:
                    self.sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            raise OSError(f"detections socket: {e}") from None

    def close(self) -> None:
        self.sock.close(linger=0)
