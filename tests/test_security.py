"""CURVE on the detections socket when streamer connects out to detector PUBs: refused without
the detectors' key, and with it, only detectors that are CURVE servers with that key are heard."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamer.config import parse_config
from streamer.detections.codec import encode_detections
from streamer.errors import ConfigError
from streamer.pipeline import Pipeline
from streamer.security import keygen
from tests.conftest import free_port
from tests.live import until

BOX = {"x": 8, "y": 8, "width": 4, "height": 4, "class": "c", "class_id": 0, "confidence": 0.5}


def _cfg(tmp_path: Path, connect: list[str], detector_key: str | None) -> dict[str, Any]:
    keygen(str(tmp_path / "keys"), "server")
    keygen(str(tmp_path / "keys" / "clients"), "detector")
    curve: dict[str, Any] = {
        "server_secret_key": str(tmp_path / "keys" / "server.key_secret"),
        "authorized_clients": str(tmp_path / "keys" / "clients"),
    }
    if detector_key is not None:
        curve["detector_server_key"] = detector_key
    return {
        "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=160x120:rate=30"}],
        "detections": {"connect": connect},
        "publish": [{"bind": f"tcp://127.0.0.1:{free_port()}"}],
        "security": {"curve": curve},
    }


def test_curve_with_connect_needs_the_detectors_key(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, [f"tcp://127.0.0.1:{free_port()}"], None)
    with pytest.raises(ConfigError, match="detector_server_key is required"):
        parse_config(cfg)


def test_curve_applies_to_connected_detection_sockets(tmp_path: Path) -> None:
    """Two detector PUBs: one a CURVE server that authorises streamer's key, one plain. Only
    the first is heard (its messages name frames not yet decoded: ``unknown_frame``); the plain
    one's (for an unknown source) never arrive."""
    keygen(str(tmp_path / "det"), "detector-pub")
    secure, plain = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = _cfg(tmp_path, [secure, plain], str(tmp_path / "det" / "detector-pub.key"))
    pipeline = Pipeline(parse_config(cfg))
    ctx: zmq.Context[Any] = zmq.Context()
    auth = ThreadAuthenticator(ctx)
    auth.start()
    streamer_keys = tmp_path / "streamer-public"
    streamer_keys.mkdir()
    (streamer_keys / "server.key").write_bytes((tmp_path / "keys" / "server.key").read_bytes())
    auth.configure_curve(domain="*", location=str(streamer_keys))
    pub_secure, pub_plain = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    public, secret = zmq.auth.load_certificate(tmp_path / "det" / "detector-pub.key_secret")
    assert secret is not None
    pub_secure.curve_publickey, pub_secure.curve_secretkey = public, secret
    pub_secure.curve_server = True
    pub_secure.bind(secure)
    pub_plain.bind(plain)

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        try:

            def heard() -> bool:
                pub_secure.send_multipart(encode_detections("cam", 10**9, (160, 120), [BOX]))
                pub_plain.send_multipart(encode_detections("other", 10**9, (160, 120), [BOX]))
                stats = pipeline.stats()
                return bool(stats["sources"]["cam"]["detections"].get("unknown_frame", 0) >= 5)

            await until(heard, 15, "the CURVE detector heard")
            for _ in range(20):  # the plain one has had as many chances
                heard()
                await asyncio.sleep(0.02)
        finally:
            pipeline.stop()
            await asyncio.wait_for(run, 20)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        pub_secure.close(linger=0)
        pub_plain.close(linger=0)
        auth.stop()
        ctx.term()
    stats = pipeline.stats()
    assert stats["sources"]["cam"]["detections"]["unknown_frame"] >= 5
    assert stats["unknown_source"] == 0  # nothing from the plain PUB


def test_keygen_writes_the_secret_key_for_its_owner_only(tmp_path: Path) -> None:
    """Under the usual umask (022) the secret key was world-readable; a secret key written over
    keeps the mode it had, so it is made anew, never written into an old readable file."""
    umask = os.umask(0o022)
    try:
        (tmp_path / "keys").mkdir()
        (tmp_path / "keys" / "server.key_secret").write_text("old")
        (tmp_path / "keys" / "server.key_secret").chmod(0o644)
        old = (tmp_path / "keys" / "server.key_secret").open()
        public, secret = keygen(str(tmp_path / "keys"), "server")
    finally:
        os.umask(umask)
    with old:
        assert old.read() == "old"  # (the new secret did not go into it)
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    assert "curve" in Path(secret).read_text()
