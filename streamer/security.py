"""ZeroMQ CURVE: streamer's bound sockets as CURVE servers that accept only the client keys in
an authorised directory (checked by a ZAP authenticator), its connecting detections socket as a
CURVE client, and keys made with `streamer keygen`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from streamer.config import CurveConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes


def load_server_keys(cfg: CurveConfig) -> ServerKeys:
    """Read the server's key pair from the secret certificate file `streamer keygen` wrote."""
    path = Path(cfg.server_secret_key)
    _exists(path, "server key")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise OSError(f"curve: cannot read server key {path}: {e}") from None
    if secret is None:
        raise OSError(f"curve: {path} holds no secret key (use the .key_secret file)")
    return ServerKeys(public, secret)


def load_public_key(path_name: str) -> bytes:
    """Read a public key from a certificate file (``.key`` or ``.key_secret``)."""
    path = Path(path_name)
    _exists(path, "public key")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise OSError(f"curve: cannot read public key {path}: {e}") from None
    return public


def _exists(path: Path, what: str) -> None:
    try:
        there = path.is_file()
    except OSError as e:  # (not allowed to look, a name too long, ...)
        raise OSError(f"curve: {what} {path}: {e.strerror}") from None
    if not there:
        raise OSError(f"curve: {what} {path}: no such file (`streamer keygen` writes key pairs)")


def check_files(cfg: CurveConfig) -> None:
    """Raise OSError as a run would, at once, if a key file or directory the config names
    cannot be read (`streamer check-config`)."""
    load_server_keys(cfg)
    if cfg.detector_server_key is not None:
        load_public_key(cfg.detector_server_key)
    _clients_dir(cfg)


def _clients_dir(cfg: CurveConfig) -> Path:
    clients = Path(cfg.authorized_clients)
    if not clients.is_dir():
        raise OSError(f"curve: authorized_clients {clients} is not a directory")
    return clients


def start_authenticator(ctx: zmq.asyncio.Context, cfg: CurveConfig) -> AsyncioAuthenticator:
    """Accept CURVE clients whose public keys are in `cfg.authorized_clients` (a directory of
    certificate files); everyone else is refused during the handshake and gets nothing."""
    clients = _clients_dir(cfg)
    auth = AsyncioAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients))
    log.info("curve: accepting %d client key(s) from %s", len(list(clients.glob("*.key"))), clients)
    return auth


def make_server(sock: Any, keys: ServerKeys | None) -> None:
    """Turn a socket into a CURVE server (before bind); no-op without keys."""
    if keys is None:
        return
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


def make_client(sock: Any, client_secret_file: str, server_public_file: str) -> None:
    """Turn a socket into a CURVE client of a streamer server (before connect)."""
    public, secret = zmq.auth.load_certificate(client_secret_file)
    server_public, _ = zmq.auth.load_certificate(server_public_file)
    if secret is None:
        raise OSError(f"curve: {client_secret_file} holds no secret key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def keygen(directory: str, name: str) -> tuple[str, str]:
    """Write ``<name>.key`` (public, to share; mode 0644) and ``<name>.key_secret`` (keep
    private: mode 0600, made so, never readable by others even for a moment)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    for old in (Path(directory) / f"{name}.key", Path(directory) / f"{name}.key_secret"):
        old.unlink(missing_ok=True)  # (written over, a file keeps its mode: made anew instead)
    umask = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(umask)
    os.chmod(public, 0o644)
    return public, secret
