"""Which shard serves which camera: rendezvous (highest-random-weight) hashing of camera ids.

Shard I of N serves the cameras whose highest weight ``blake2b(I, id)`` over the N shards is
its own. Every camera has exactly one shard; going from N to N+1 shards moves only the cameras
whose new highest weight is shard N's (about 1/(N+1) of them), and no camera moves between two
old shards. The hash is keyed by nothing that changes between processes or Python versions
(unlike the built-in ``hash()``, which is salted per process), so every shard, every host and
every run agree without talking to each other.

Also the other side's view: a detector or crop consumer names every shard's endpoint with one
``{shard}`` template and a shard count (`expand_shards`). Pure but for `endpoints_arg`, which
reads STREAMER_SHARDS for command lines.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from streamer.errors import ConfigError

# Each detector keeps a socket per shard (streamer.client.MAX_REPLY_ROUTES), within a ZeroMQ
# context's default 1023 sockets and a container's file descriptors.
MAX_SHARDS = 256
SHARD_ENV = "STREAMER_SHARD"  # "I/N" or "auto"
SHARDS_ENV = "STREAMER_SHARDS"  # N, for "auto"
POD_NAME_ENVS = ("POD_NAME", "HOSTNAME")  # where "auto" finds the StatefulSet pod name
_SPEC = re.compile(r"([0-9]{1,5})/([0-9]{1,5})")
_ORDINAL = re.compile(r"[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?-([0-9]{1,5})")
_COUNT = re.compile(r"[0-9]{1,5}")
_SPEC_SHOWN_CHARS = 80  # of a bad spec, in the error message
Endpoints = str | Sequence[str]


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise ConfigError(f"shard count must be 1..{MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index must be 0..{self.count - 1} for {self.count} shard(s), "
                f"got {self.index}"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def serves(self, camera_id: str) -> bool:
        """True when this shard serves `camera_id`."""
        return shard_of(camera_id, self.count) == self.index


SINGLE = Shard(0, 1)  # no sharding: one process serves every camera


def _weight(index: int, camera_id: str) -> bytes:
    # The shard index and the id are separated by a byte no id contains, so (1, "2x") and
    # (12, "x") never hash the same input.
    return hashlib.blake2b(f"{index}\x00{camera_id}".encode(), digest_size=8).digest()


def shard_of(camera_id: str, count: int) -> int:
    """The shard (0..count-1) that serves `camera_id` among `count` shards."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shard count must be 1..{MAX_SHARDS}, got {count}")
    return max(range(count), key=lambda i: _weight(i, camera_id))


def assign(camera_ids: Iterable[str], count: int) -> dict[str, int]:
    """Each camera id's shard among `count` shards."""
    return {cid: shard_of(cid, count) for cid in camera_ids}


def _shown(spec: str) -> str:
    return repr(spec[:_SPEC_SHOWN_CHARS] + ("..." if len(spec) > _SPEC_SHOWN_CHARS else ""))


def parse_shard(spec: str, env: Mapping[str, str]) -> Shard:
    """Parse ``I/N`` (0-based I) or ``auto``; raise ConfigError saying what is wrong.

    ``auto`` takes I from a StatefulSet pod name ending in ``-I`` (``streamer-3``), read from
    `env`'s POD_NAME, else HOSTNAME, and N from `env`'s STREAMER_SHARDS.
    """
    spec = spec.strip()
    if spec == "auto":
        return _auto(env)
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ConfigError(f"shard: expected I/N (e.g. 0/3) or 'auto', got {_shown(spec)}")
    return Shard(int(m.group(1)), int(m.group(2)))


def _auto(env: Mapping[str, str]) -> Shard:
    name_var = next((v for v in POD_NAME_ENVS if env.get(v)), None)
    if name_var is None:
        raise ConfigError(
            "shard auto: no pod name: set POD_NAME (or HOSTNAME) to a StatefulSet pod name "
            "such as streamer-3"
        )
    name = env[name_var]
    m = _ORDINAL.fullmatch(name)
    if m is None:
        raise ConfigError(
            f"shard auto: {name_var}={_shown(name)} does not end in -<ordinal> "
            "(a StatefulSet pod name such as streamer-3)"
        )
    count_text = env.get(SHARDS_ENV, "").strip()
    if _COUNT.fullmatch(count_text) is None:
        raise ConfigError(
            f"shard auto: {SHARDS_ENV} must be the number of shards (the StatefulSet's "
            f"replicas), got {_shown(count_text)}"
        )
    return Shard(int(m.group(2)), int(count_text))


def resolve_shard(flag: str | None, env: Mapping[str, str]) -> Shard:
    """The shard from the ``--shard`` flag, else from STREAMER_SHARD, else SINGLE."""
    spec = flag if flag is not None else env.get(SHARD_ENV)
    return SINGLE if spec is None or spec.strip() == "" else parse_shard(spec, env)


def expand_shards(endpoints: Endpoints, shards: int | None) -> list[str]:
    """Endpoints with every ``{shard}`` template expanded to one endpoint per shard
    (``tcp://streamer-{shard}.streamer:5554`` with 3 shards: ``streamer-0``, ``-1``, ``-2``).
    Raises ValueError when a template is given without a shard count (1..MAX_SHARDS)."""
    out: list[str] = []
    for e in [endpoints] if isinstance(endpoints, str) else list(endpoints):
        if "{shard}" not in e:
            out.append(e)
            continue
        if shards is None or not 1 <= shards <= MAX_SHARDS:
            raise ValueError(
                f"{e!r} has a {{shard}} template: give the number of shards (1..{MAX_SHARDS}; "
                f"--shards or {SHARDS_ENV}), got {shards!r}"
            )
        out.extend(e.replace("{shard}", str(i)) for i in range(shards))
    return out


def shards_from_env(env: Mapping[str, str]) -> int | None:
    """The number of shards in `env`'s STREAMER_SHARDS, None when unset; ValueError if bad."""
    text = env.get(SHARDS_ENV, "").strip()
    if not text:
        return None
    if _COUNT.fullmatch(text) is None:
        raise ValueError(f"{SHARDS_ENV} must be a number of shards, got {text[:40]!r}")
    return int(text)


def add_shards_arg(ap: argparse.ArgumentParser) -> None:
    """Add ``--shards N`` to a command line whose endpoints may hold ``{shard}`` templates."""
    ap.add_argument(
        "--shards",
        type=int,
        help="number of streamer shards: an endpoint with {shard} stands for one per shard "
        f"(default: {SHARDS_ENV})",
    )


def endpoints_arg(ap: argparse.ArgumentParser, values: Endpoints, shards: int | None) -> list[str]:
    """Command-line endpoints with ``{shard}`` templates expanded (`shards`, else
    STREAMER_SHARDS); exits through ``ap.error`` with the reason when they cannot be."""
    try:
        return expand_shards(values, shards if shards is not None else shards_from_env(os.environ))
    except ValueError as e:
        ap.error(str(e))
