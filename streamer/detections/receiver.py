"""The ZeroMQ socket detections arrive on: PULL (bind; detectors PUSH) or SUB (connect to
detector PUBs)."""

from __future__ import annotations

from typing import Any

import zmq

from streamer.config import DetectionsConfig
from streamer.zmq_heartbeat import set_heartbeat

RECV_HWM = 1_000
# ZeroMQ drops the connection of a peer that sends a part larger than this; messages between the
# configured limit and this hard bound still arrive, and the codec counts them as ``oversize``.
HARD_LIMIT_FACTOR = 4


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
