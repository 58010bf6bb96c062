from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.cli import demo_config
from streamer.config import load_config, parse_config
from streamer.errors import ConfigError
from tests.conftest import REPO

BASE: dict[str, Any] = {
    "sources": [{"id": "a", "url": "clip.mp4"}],
    "detections": {"bind": "tcp://127.0.0.1:5555"},
    "publish": [{"bind": "tcp://127.0.0.1:5560"}],
}


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.sources


def test_demo_yaml_matches_embedded_demo() -> None:
    embedded = demo_config("tcp://127.0.0.1:5560", "tcp://127.0.0.1:5554", "tcp://127.0.0.1:5555")
    assert load_config(REPO / "configs" / "demo.yaml") == embedded


def _with(path: str, value: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(yaml.safe_dump(BASE))
    node: Any = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("sources.0.url", None, "sources[0].url: "),
        ("sources.0.id", "a/b", "sources[0].id: String should match pattern"),
        ("sources.0.speed", 3, "sources[0].speed: Extra inputs are not permitted"),
        ("sources.0.max_fps", -1, "sources[0].max_fps: Input should be greater than 0"),
        ("sources", [{"id": "a", "url": "x"}, {"id": "a", "url": "y"}], "duplicate source id 'a'"),
        ("crop", {"mask_opacity": 1.5}, "crop.mask_opacity: Input should be less than or equal"),
        ("crop", {"background_color": "#invalid"}, "crop.background_color: invalid colour"),
        ("crop", {"background_color": [1, 2, 256]}, "channels must be in 0..255"),
        ("detections", {}, "give exactly one of 'bind' (PULL) or 'connect' (SUB)"),
        ("publish.0.encoding", "gif", "publish[0].encoding: Input should be"),
        (
            "publish.0",
            {"bind": "tcp://127.0.0.1:5560", "mode": "push", "wait_for_subscriber": True},
            "publish[0]: wait_for_subscriber applies to mode: pub only",
        ),
        ("tap", {"bind": "x", "encoding": "png"}, "tap.encoding: Input should be"),
        ("ring", {"max_frames": 0}, "ring.max_frames: Input should be greater than or equal to 1"),
        ("bogus", 1, "bogus: Extra inputs are not permitted"),
    ],
)
def test_errors_name_the_field_path(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(_with(path, value))
    assert expected in str(exc.value)


def test_second_source_error_is_indexed() -> None:
    data = _with("sources", [{"id": "a", "url": "x"}, {"id": "b", "url": ""}])
    with pytest.raises(ConfigError, match=r"sources\[1\]\.url: String should have at least 1"):
        parse_config(data)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(p)
    p.write_text("sources: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_a_key_twice_and_aliases_that_never_end_are_refused(tmp_path: Path) -> None:
    """The loader's rules (tests/test_config_yaml.py) through load_config: a second `publish:`
    is refused where it is, not kept in place of the first; nested merges of crop settings
    load as written; an alias that contains itself, and a file over 1 MiB, are refused."""
    p = tmp_path / "c.yaml"
    text = yaml.safe_dump({k: v for k, v in BASE.items() if k != "sources"})
    p.write_text(text + "publish:\n  - bind: tcp://127.0.0.1:5561\n")
    with pytest.raises(ConfigError, match=r"key 'publish' given twice\n.*line 5, column 1"):
        load_config(p)
    merged = (
        "sources:\n"
        "  - {id: a, url: a.mp4, crop: &a {mask_opacity: 0.5, background_color: '#00ff00'}}\n"
        "  - {id: b, url: b.mp4, crop: &b {<<: *a, mask_opacity: 0.8}}\n"
        "crop: {<<: *b, background_color: '#0000ff'}\n"
    )
    p.write_text(text + merged)
    cfg = load_config(p)
    assert [cfg.crop_for(s).mask_opacity for s in ("a", "b")] == [0.5, 0.8]
    assert (cfg.crop_for("b").background_bgr, cfg.crop.background_bgr) == ((0, 255, 0), (255, 0, 0))
    assert cfg.crop.mask_opacity == 0.8
    p.write_text(text + merged + "x: &r\n  again: *r\n")
    with pytest.raises(ConfigError, match="not valid YAML: nested deeper than 64 levels"):
        load_config(p)
    p.write_text(text + merged + "#" * (1 << 20))
    with pytest.raises(ConfigError, match="longer than 1,048,576 bytes"):
        load_config(p)


def test_per_source_crop_overrides_top_level() -> None:
    data = _with("sources.0.crop", {"mask_opacity": 0.5, "background_color": "(255, 0, 128)"})
    cfg = parse_config(data)
    assert cfg.crop_for("a").mask_opacity == 0.5
    assert cfg.crop_for("a").background_bgr == (128, 0, 255)


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "streamer", "check-config", str(REPO / "configs" / "example.yaml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "OK" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with("sources", [{"id": "a", "url": "x"}, {"id": "b"}])))
    res = subprocess.run(
        [sys.executable, "-m", "streamer", "check-config", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 2
    assert "sources[1].url: Field required" in res.stderr


def test_check_config_warns_of_files_this_host_cannot_read(tmp_path: Path) -> None:
    """check-config names the files a run would read that are not here (they may be mounted
    only where it runs): CURVE key files, which a run needs at start, and source files as
    FFmpeg opens them (after `file:`), a run retrying them until they appear; not a camera, a
    lavfi graph, another of FFmpeg's protocols or a numbered sequence."""

    def check(cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return subprocess.run(
            [sys.executable, "-m", "streamer", "check-config", str(path)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )

    missing = tmp_path / "nope.key_secret"
    curve = {"server_secret_key": str(missing), "authorized_clients": str(tmp_path)}
    res = check(
        {**BASE, "sources": [{"id": "a", "url": "lavfi:testsrc2"}], "security": {"curve": curve}}
    )
    assert res.returncode == 0 and "OK (1 source(s)" in res.stdout, res
    assert res.stderr.splitlines() == [
        f"warning: curve: server key {missing}: no such file (`streamer keygen` writes key pairs)"
        " (a run would stop here)"
    ]
    (tmp_path / "there.mp4").write_bytes(b"")
    urls = [
        "typo.mp4",  # (relative: to where it is run)
        f"file://{tmp_path}/typo2.mkv",
        "file:there.mp4",
        str(tmp_path / "there.mp4"),
        "rtsp://127.0.0.1:1/x",
        "lavfi:testsrc2",
        "synthetic:fps=10",
        "/dev/video9",
        "pipe:0",
        "concat:a.ts|b.ts",
        "img%03d.png",
        "x" * 300 + ".mp4",  # (a name the file system refuses to look up)
        str(tmp_path),
    ]
    res = check({**BASE, "sources": [{"id": f"s{i}", "url": u} for i, u in enumerate(urls)]})
    assert res.returncode == 0 and "OK (13 source(s)" in res.stdout, res
    why = "does not exist (a run retries it until it does)"
    assert res.stderr.splitlines() == [
        f"warning: source s0: {tmp_path}/typo.mp4 {why}",
        f"warning: source s1: {tmp_path}/typo2.mkv {why}",
        f"warning: source s11: {tmp_path}/{'x' * 300}.mp4: File name too long (a run retries it)",
        f"warning: source s12: {tmp_path} is a directory (a run retries it)",
    ], res.stderr


def test_patch_validation_matches_the_config() -> None:
    from streamer.config import parse_patch

    assert parse_patch({"classes": None, "max_fps": None}).model_dump(exclude_unset=True) == {
        "classes": None,
        "max_fps": None,
    }  # null: all classes, no limit
    for bad, text in [
        ({"mask_opacity": None}, "mask_opacity: may not be null"),
        ({"background_color": None}, "background_color: may not be null"),
        ({"max_fps": 0}, "max_fps: Input should be greater than 0"),
        ({"background_color": [1, 2]}, "background_color: invalid colour"),
        ([], "expected an object"),
    ]:
        with pytest.raises(ConfigError, match=text):
            parse_patch(bad)


# -- shards --------------------------------------------------------------------------------

SHARDED: dict[str, Any] = {
    "sources": [{"id": f"cam-{i}", "url": "clip.mp4"} for i in (0, 1, 2, 4, 12, 20)],
    "detections": {"bind": "tcp://127.0.0.1:55{shard}5"},
    "tap": {"bind": "tcp://127.0.0.1:55{shard}4"},
    "publish": [
        {"bind": "tcp://127.0.0.1:55{shard}6"},
        {"bind": "ipc:///tmp/crops-{shard}"},
        {
            "bind": "tcp://127.0.0.1:55{shard}7",
            "encoding": "raw-i420",
            "shm": {"name": "streamer-crops-{shard}", "dir": "/dev/shm/shard-{shard}"},
        },
    ],
    "preview": {"port": "808{shard}"},
    "metrics": {"port": "910{shard}"},
}


def test_shard_placeholder_is_replaced_in_every_endpoint() -> None:
    from streamer.sharding import Shard

    cfg = parse_config(SHARDED, Shard(2, 3))
    assert cfg.detections.bind == "tcp://127.0.0.1:5525"
    assert cfg.tap is not None and cfg.tap.bind == "tcp://127.0.0.1:5524"
    assert [p.bind for p in cfg.publish] == [
        "tcp://127.0.0.1:5526",
        "ipc:///tmp/crops-2",
        "tcp://127.0.0.1:5527",
    ]
    # Two shards on one host: a ring each, not one name both claim.
    shm = cfg.publish[2].shm
    assert shm is not None and (shm.name, shm.dir) == ("streamer-crops-2", Path("/dev/shm/shard-2"))
    assert cfg.preview is not None and cfg.metrics is not None
    assert (cfg.preview.port, cfg.metrics.port) == (8082, 9102)
    # Only this shard's cameras; together the shards serve each camera once.
    served = [s.id for i in range(3) for s in parse_config(SHARDED, Shard(i, 3)).sources]
    assert sorted(served) == sorted(s["id"] for s in SHARDED["sources"])
    assert [s.id for s in cfg.sources] == ["cam-12", "cam-20"]
    # Without a shard: every camera, {shard} is 0.
    whole = parse_config(SHARDED)
    assert len(whole.sources) == 6 and whole.detections.bind == "tcp://127.0.0.1:5505"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("sources.0.url", "rtsp://cam-{shard}/x", "sources[0].url: {shard} is only replaced in"),
        ("crop", {"background_color": "{shard}"}, "crop.background_color: {shard} is only"),
        ("preview", {"port": "80{shard}00"}, "preview.port: Input should be less than or equal"),
        ("preview", {"port": "x{shard}"}, "preview.port: Input should be a valid integer"),
    ],
)
def test_shard_placeholder_errors(path: str, value: Any, expected: str) -> None:
    from streamer.sharding import Shard

    with pytest.raises(ConfigError) as e:
        parse_config(_with(path, value), Shard(1, 2))
    assert expected in str(e.value)


@pytest.mark.parametrize(
    ("detections", "reply_to"),
    [
        ({"bind": "tcp://127.0.0.1:5555"}, "tcp://127.0.0.1:5555"),
        ({"bind": "ipc:///tmp/dets"}, "ipc:///tmp/dets"),
        ({"bind": "tcp://0.0.0.0:5555"}, None),  # a wildcard: detectors cannot reach it as is
        ({"bind": "tcp://*:5555"}, None),
        ({"bind": "tcp://[::]:5555"}, None),
        (
            {"bind": "tcp://0.0.0.0:5555", "advertise": "tcp://streamer-{shard}.streamer:5555"},
            "tcp://streamer-1.streamer:5555",
        ),
        ({"connect": ["tcp://127.0.0.1:6000"]}, None),
    ],
)
def test_reply_to_is_the_advertised_or_bound_endpoint(
    detections: dict[str, Any], reply_to: str | None
) -> None:
    from streamer.sharding import Shard

    assert parse_config(_with("detections", detections), Shard(1, 2)).detections.reply_to == (
        reply_to
    )


@pytest.mark.parametrize(
    ("detections", "expected"),
    [
        ({"bind": "tcp://0.0.0.0:1", "advertise": "tcp://*:5555"}, "is a wildcard address"),
        ({"bind": "tcp://0.0.0.0:1", "advertise": "udp://h:5555"}, "expected tcp://HOST:PORT"),
        ({"bind": "tcp://0.0.0.0:1", "advertise": "tcp://h:70000"}, "port must be 1..65535"),
        ({"bind": "tcp://0.0.0.0:1", "advertise": "tcp://h" + "x" * 300 + ":1"}, "longer than"),
        ({"bind": "tcp://0.0.0.0:1", "advertise": "tcp://h:1\n"}, "expected tcp://HOST:PORT"),
        ({"connect": ["tcp://a:1"], "advertise": "tcp://h:1"}, "advertise goes with bind"),
    ],
)
def test_bad_advertised_endpoint(detections: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_with("detections", detections))
    assert "detections" in str(e.value) and expected in str(e.value)


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://[::]:5555"])
def test_shards_with_a_tap_and_a_wildcard_bind_need_advertise(tmp_path: Path, bind: str) -> None:
    """Without advertise the tapped frames carry no reply_to, and detectors serving every
    shard would send every shard's detections to one default endpoint: refused."""
    from streamer.sharding import SINGLE, Shard

    data = _with("detections", {"bind": bind})
    data["tap"] = {"bind": "tcp://0.0.0.0:5554"}
    with pytest.raises(ConfigError, match=r"detections\.advertise: required with 3 shards"):
        parse_config(data, Shard(0, 3))
    assert parse_config(data, SINGLE).detections.reply_to is None  # one process: as before
    del data["tap"]  # no tap: detectors read the cameras themselves and know their shard
    assert parse_config(data, Shard(0, 3)).detections.reply_to is None
    data["tap"] = {"bind": "tcp://0.0.0.0:5554"}
    data["detections"]["advertise"] = "tcp://streamer-{shard}.streamer:5555"
    assert parse_config(data, Shard(2, 3)).detections.reply_to == "tcp://streamer-2.streamer:5555"
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(dict(data, detections={"bind": bind})))
    res = subprocess.run(
        [sys.executable, "-m", "streamer", "check-config", str(path), "--shard", "1/3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "detections.advertise: required" in res.stderr, res.stderr


def test_check_config_with_shards(tmp_path: Path) -> None:
    path = REPO / "configs" / "shards.yaml"
    outs = []
    for i in range(3):
        res = subprocess.run(
            [sys.executable, "-m", "streamer", "check-config", str(path), "--shard", f"{i}/3"],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr
        outs.append(res.stdout)
    assert "shard 2/3: 2 source(s): cam-12, cam-20" in outs[2]
    res = subprocess.run(
        [sys.executable, "-m", "streamer", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={"STREAMER_SHARD": "auto", "HOSTNAME": "streamer-7", "STREAMER_SHARDS": "3"},
    )
    assert res.returncode == 2
    assert "shard index must be 0..2 for 3 shard(s), got 7" in res.stderr


def test_a_preview_beyond_loopback_wants_a_token() -> None:
    """The preview's API adds cameras (any URL) and changes settings: listening beyond this
    machine without a token is refused when the config is read."""
    for host in ("0.0.0.0", "", "::", "192.0.2.7", "cam-box"):
        with pytest.raises(ConfigError, match=r"beyond this machine.*give a token"):
            parse_config(_with("preview", {"host": host}))
        assert parse_config(_with("preview", {"host": host, "token": "t" * 8})).preview
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert parse_config(_with("preview", {"host": host})).preview


def test_preview_token_from_a_file(tmp_path: Path) -> None:
    """The token can live in a file (a mounted Secret) rather than in the config."""
    secret = tmp_path / "token"
    secret.write_text("s3cret-token-value\n")
    cfg = parse_config(_with("preview", {"host": "0.0.0.0", "token_file": str(secret)}))
    assert cfg.preview is not None and cfg.preview.token == "s3cret-token-value"
    assert cfg.preview.token_file is None  # read once; the model holds the token
    for content, expected in [
        ("short\n", "at least 8 characters"),
        ("a" * 5000, "longer than 4096 bytes"),
        ("two words here", "spaces or control characters"),
        ("t\u00f6ken-value-x", "not ASCII"),
    ]:
        secret.write_text(content)
        with pytest.raises(ConfigError, match=expected):
            parse_config(_with("preview", {"token_file": str(secret)}))
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config(_with("preview", {"token_file": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="not both"):
        parse_config(_with("preview", {"token_file": str(secret), "token": "x" * 10}))
