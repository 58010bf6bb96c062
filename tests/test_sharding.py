"""Rendezvous assignment of cameras to shards, shard specs, {shard} templates."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from streamer.errors import ConfigError
from streamer.sharding import (
    MAX_SHARDS,
    SINGLE,
    Shard,
    assign,
    expand_shards,
    parse_shard,
    resolve_shard,
    shard_of,
    shards_from_env,
)

IDS = [f"cam-{i}" for i in range(1000)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_every_camera_has_exactly_one_shard(n: int) -> None:
    shards = [Shard(i, n) for i in range(n)]
    for cid in IDS:
        assert sum(s.serves(cid) for s in shards) == 1
    load = Counter(assign(IDS, n).values())
    assert set(load) == set(range(n))
    # Balanced within a wide margin (1000 ids: the expected share is 1000/n).
    assert max(load.values()) < 1.5 * len(IDS) / n


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_adding_a_shard_moves_only_cameras_to_the_new_shard(n: int) -> None:
    before, after = assign(IDS, n), assign(IDS, n + 1)
    moved = [cid for cid in IDS if before[cid] != after[cid]]
    assert all(after[cid] == n for cid in moved)  # nothing moves between old shards
    share = len(moved) / len(IDS)
    expected = 1 / (n + 1)
    assert abs(share - expected) < 0.35 * expected, (share, expected)


def test_assignment_is_stable_across_processes() -> None:
    """Python's hash() is salted per process; ours must not be."""
    code = (
        "from streamer.sharding import assign; "
        "print(sorted(assign(['a', 'b', 'gate-1'], 5).items()))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(sorted(assign(["a", "b", "gate-1"], 5).items()))


def test_known_assignment_never_changes() -> None:
    """Pinned values: changing the hash would move cameras on every deployed site."""
    assert [shard_of(f"cam-{i}", 3) for i in range(6)] == [0, 1, 1, 1, 0, 1]
    assert [shard_of(f"cam-{i}", 4) for i in range(6)] == [0, 3, 1, 1, 0, 1]


@pytest.mark.parametrize(
    ("spec", "env", "expected"),
    [
        ("0/1", {}, Shard(0, 1)),
        ("2/3", {}, Shard(2, 3)),
        (" 1/2 ", {}, Shard(1, 2)),
        ("auto", {"HOSTNAME": "streamer-3", "STREAMER_SHARDS": "4"}, Shard(3, 4)),
        ("auto", {"POD_NAME": "s-0", "HOSTNAME": "x-9", "STREAMER_SHARDS": "2"}, Shard(0, 2)),
        ("auto", {"HOSTNAME": "my-site-streamer-12", "STREAMER_SHARDS": "13"}, Shard(12, 13)),
    ],
)
def test_parse_shard(spec: str, env: dict[str, str], expected: Shard) -> None:
    assert parse_shard(spec, env) == expected


@pytest.mark.parametrize(
    ("spec", "env", "message"),
    [
        ("3/3", {}, "shard index must be 0..2 for 3 shard(s), got 3"),
        ("0/0", {}, f"shard count must be 1..{MAX_SHARDS}, got 0"),
        (f"0/{MAX_SHARDS + 1}", {}, f"shard count must be 1..{MAX_SHARDS}"),
        ("1", {}, "expected I/N (e.g. 0/3) or 'auto', got '1'"),
        ("-1/3", {}, "expected I/N"),
        ("1/3\n", {}, None),  # stripped: valid
        ("a/b", {}, "expected I/N"),
        ("\u0661/\u0663", {}, "expected I/N"),  # Arabic-Indic digits are not ours
        ("x" * 500, {}, "..."),  # long specs are cut in the message
        ("auto", {}, "shard auto: no pod name"),
        ("auto", {"HOSTNAME": "streamer", "STREAMER_SHARDS": "3"}, "does not end in -<ordinal>"),
        ("auto", {"HOSTNAME": "streamer-1\n", "STREAMER_SHARDS": "3"}, "-<ordinal>"),
        ("auto", {"HOSTNAME": "streamer-1"}, "STREAMER_SHARDS must be the number of shards"),
        ("auto", {"HOSTNAME": "streamer-1", "STREAMER_SHARDS": "three"}, "got 'three'"),
        ("auto", {"HOSTNAME": "streamer-5", "STREAMER_SHARDS": "3"}, "must be 0..2"),
    ],
)
def test_bad_shard_specs_say_what_is_wrong(
    spec: str, env: dict[str, str], message: str | None
) -> None:
    if message is None:
        parse_shard(spec, env)
        return
    with pytest.raises(ConfigError) as e:
        parse_shard(spec, env)
    assert message in str(e.value)
    assert len(str(e.value)) < 300


def test_resolve_shard_prefers_the_flag_then_the_environment() -> None:
    assert resolve_shard(None, {}) == SINGLE
    assert resolve_shard(None, {"STREAMER_SHARD": "1/2"}) == Shard(1, 2)
    assert resolve_shard("0/2", {"STREAMER_SHARD": "1/2"}) == Shard(0, 2)
    env = {"STREAMER_SHARD": "auto", "POD_NAME": "streamer-1", "STREAMER_SHARDS": "2"}
    assert resolve_shard(None, env) == Shard(1, 2)


def test_expand_shard_templates() -> None:
    assert expand_shards("tcp://a:1", None) == ["tcp://a:1"]
    assert expand_shards(["tcp://s-{shard}.s:5554", "ipc:///x"], 3) == [
        "tcp://s-0.s:5554",
        "tcp://s-1.s:5554",
        "tcp://s-2.s:5554",
        "ipc:///x",
    ]
    with pytest.raises(ValueError, match="give the number of shards"):
        expand_shards("tcp://s-{shard}.s:5554", None)
    with pytest.raises(ValueError, match="give the number of shards"):
        expand_shards("tcp://s-{shard}.s:5554", 0)
    assert shards_from_env({"STREAMER_SHARDS": " 4 "}) == 4
    assert shards_from_env({}) is None
    with pytest.raises(ValueError, match="STREAMER_SHARDS must be"):
        shards_from_env({"STREAMER_SHARDS": "4x"})
