"""The command line: parse, load config, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer.client import topic_arg
from streamer.config import StreamerConfig, is_loopback_host, load_config, parse_config
from streamer.errors import ConfigError
from streamer.health import NOT_OVERLOAD, NOT_OVERLOAD_UNTAPPED, shed_by_reason
from streamer.ocr.commands import add_detect_parser, add_ocr_parser
from streamer.sharding import SINGLE, Shard, add_shards_arg, endpoints_arg, resolve_shard

log = logging.getLogger("streamer")

STATUS_INTERVAL_S = 1.0
DETECTOR_STOP_TIMEOUT_S = 5.0
BEHIND_SHOWN_S = 1.0  # a camera whose decoder runs this far behind gets a status line


def demo_config(
    publish: str,
    tap: str,
    detections: str,
    preview: str | None = "127.0.0.1:8080",
    token: str | None = None,
) -> StreamerConfig:
    """The embedded demo: a synthetic 1280x720 30 fps camera, tap, detections in, crops out,
    and the browser preview at `preview` (``host:port``; None for none), wanting `token` if
    given (one beyond loopback must)."""
    extra: dict[str, Any] = {}
    if preview is not None:
        host, _, port = preview.rpartition(":")
        extra["preview"] = {"host": host or "127.0.0.1", "port": int(port), "token": token}
    return parse_config(
        {
            **extra,
            "sources": [{"id": "demo", "url": "synthetic:width=1280&height=720&fps=30"}],
            "detections": {"bind": detections},
            "tap": {"bind": tap, "encoding": "raw-bgr24", "width": 640},
            "publish": [{"bind": publish, "mode": "pub", "encoding": "raw-bgr24"}],
        }
    )


def _totals(stats: dict[str, Any]) -> dict[str, int]:
    t: dict[str, int] = {
        "decoded": 0,
        "paired": 0,
        "crops": 0,
        "expired": 0,
        "not_tapped": 0,
        "dropped_handoff": 0,
        "late": 0,
        "duplicate": 0,
        "unwanted": 0,
    }
    removed = stats.get("removed_totals", {"detections": {}})  # every removed camera's, summed
    for s in [*stats["sources"].values(), removed]:
        for k in ("decoded", "paired", "crops", "expired", "not_tapped", "dropped_handoff"):
            t[k] += s.get(k, 0)
        t["late"] += s["detections"].get("late", 0) + s["detections"].get("unknown_frame", 0)
        t["duplicate"] += s["detections"].get("duplicate", 0)
        t["unwanted"] += s.get("unwanted", 0)
    t["malformed"] = sum(stats["malformed"].values())
    t["sent"] = sum(p["sent"] for p in stats["publishers"])
    t["no_subscriber"] = sum(p["dropped_no_subscriber"] for p in stats["publishers"])
    t["publish_full"] = sum(p["dropped_hwm"] + p["dropped_timeout"] for p in stats["publishers"])
    return t


def _summary(stats: dict[str, Any]) -> str:
    t = _totals(stats)
    return (
        f"totals: frames {t['decoded']}, paired {t['paired']}, crops {t['crops']} "
        f"(sent {t['sent']}; not cut, nobody subscribed: {t['unwanted']}), "
        f"drops: expired {t['expired']}, not_tapped {t['not_tapped']}, "
        f"handoff {t['dropped_handoff']}, late {t['late']}, duplicate {t['duplicate']}, "
        f"malformed {t['malformed']}, publish full {t['publish_full']}, "
        f"no subscriber {t['no_subscriber']}; "
        f"uptime {stats['uptime_s']:.1f} s"
    )


def status_line(prev: dict[str, int], cur: dict[str, int], dt: float) -> str:
    """The status line: rates between two snapshots of the totals, and the drops so far."""
    rate = {k: (cur[k] - prev[k]) / dt for k in cur}
    # (crops no publisher's filter or subscriber's topic takes are not cut: said, or 0 crops/s
    # reads as broken)
    unwanted = f" ({rate['unwanted']:.1f}/s not cut: no publisher or subscriber takes them)"
    return (
        f"frames {rate['decoded']:5.1f}/s  detections {rate['paired']:5.1f}/s  "
        f"crops {rate['crops']:6.1f}/s{unwanted if rate['unwanted'] else ''}  "
        f"drops: expired {cur['expired']} "
        f"not_tapped {cur['not_tapped']} handoff {cur['dropped_handoff']} "
        f"late {cur['late']} malformed {cur['malformed']} "
        f"publish full {cur['publish_full']}  (no subscriber {cur['no_subscriber']})"
    )


def overload_lines(prev: dict[str, Any], cur: dict[str, Any], dt: float) -> list[str]:
    """A line per source that shed frames between two stats snapshots, or whose decoder runs
    more than `BEHIND_SHOWN_S` behind its schedule: decoded against served (paired) frames per
    second, how far behind, and what it shed, by reason."""
    lines = []
    for sid, s in cur["sources"].items():
        p = prev["sources"].get(sid)
        if p is None or s["decoded"] < p["decoded"]:
            p = None  # a camera added since (under a removed one's id too): counted from nothing
        before = shed_by_reason(p) if p is not None else {}
        shed = {k: n - before.get(k, 0) for k, n in shed_by_reason(s).items()}
        exempt = NOT_OVERLOAD if cur.get("tap") is not None else NOT_OVERLOAD_UNTAPPED
        shed = {k: n for k, n in shed.items() if n > 0 and k not in exempt}
        behind = s["behind_s"]
        late = behind is not None and behind > BEHIND_SHOWN_S
        if not shed and not late:
            continue
        what = ", ".join(f"{k} {n}" for k, n in sorted(shed.items())) or "none"
        decoded, paired = (0, 0) if p is None else (p["decoded"], p["paired"])
        lines.append(
            f"  {sid}: decoded {(s['decoded'] - decoded) / dt:5.1f}/s  "
            f"served {(s['paired'] - paired) / dt:5.1f}/s  "
            + (f"behind {behind:.1f} s  " if late else "")
            + f"shed: {what}"
        )
    return lines


async def _status(pipeline: Any) -> None:
    prev_stats, prev_t = pipeline.stats(), time.monotonic()
    prev = _totals(prev_stats)
    while True:
        await asyncio.sleep(STATUS_INTERVAL_S)
        stats, now = pipeline.stats(), time.monotonic()
        cur = _totals(stats)
        dt = now - prev_t
        lines = [status_line(prev, cur, dt), *overload_lines(prev_stats, stats, dt)]
        print("\n".join(lines), file=sys.stderr, flush=True)
        prev, prev_stats, prev_t = cur, stats, now


async def _run_pipeline(
    cfg: StreamerConfig,
    duration: float | None,
    status: bool,
    reload: Callable[[], StreamerConfig] | None = None,
    shard: Shard = SINGLE,
) -> dict[str, Any]:
    """Run a pipeline until it ends; SIGINT/SIGTERM stop it, SIGHUP applies `reload()`'s
    sources (a config that does not load is logged, and the running one kept)."""
    from streamer.pipeline import Pipeline

    pipeline = Pipeline(cfg, shard)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pipeline.stop)
    reloading: set[asyncio.Task[Any]] = set()
    again = asyncio.Event()  # a SIGHUP came during a reload: read the file once more after it

    async def apply_reload() -> None:
        assert reload is not None
        while True:
            again.clear()
            try:
                new = await asyncio.to_thread(reload)
                await pipeline.reload(new)
            except ConfigError as e:
                log.error("SIGHUP: config not reloaded, the running one is kept: %s", e)
            except Exception:  # a bug: say so; the pipeline goes on as it is
                log.exception("SIGHUP: reload failed; the running config is kept")
            if not again.is_set():
                return

    def on_hup() -> None:
        if reloading:
            again.set()  # applied when the reload under way ends
            return
        task = asyncio.create_task(apply_reload())
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    status_task = asyncio.create_task(_status(pipeline)) if status else None
    try:
        return await pipeline.run(duration_s=duration)
    finally:
        if status_task is not None:
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task


def _finish(stats: dict[str, Any], stats_file: str | None) -> None:
    print(_summary(stats), file=sys.stderr, flush=True)
    if stats_file:
        Path(stats_file).write_text(json.dumps(stats, indent=2))


def _load(args: argparse.Namespace) -> tuple[StreamerConfig, Shard]:
    """The config for this process's shard (``--shard``, else STREAMER_SHARD, else all)."""
    shard = resolve_shard(args.shard, os.environ)
    return load_config(args.config, shard), shard


def _shard_line(cfg: StreamerConfig, shard: Shard) -> str:
    ids = ", ".join(s.id for s in cfg.sources) or "none"
    return f"shard {shard}: {len(cfg.sources)} source(s): {ids}"


def cmd_run(args: argparse.Namespace) -> int:
    cfg, shard = _load(args)
    if shard != SINGLE:
        log.info("%s", _shard_line(cfg, shard))
    stats = asyncio.run(
        _run_pipeline(
            cfg,
            args.duration,
            status=not args.quiet,
            reload=lambda: load_config(args.config, shard),
            shard=shard,
        )
    )
    _finish(stats, args.stats_file)
    failed = {sid: s for sid, s in stats["sources"].items() if s["state"] == "failed"}
    for sid, s in failed.items():  # (a file that failed part-way: a batch run must not pass)
        print(f"error: source {sid} failed: {s.get('last_error')}", file=sys.stderr)
    return 1 if failed else 0


def _this_program() -> str:
    """How to run this program again, as the user started it: ``streamer`` if that is the one
    on the PATH, else its path (``make demo`` runs ``.venv/bin/streamer``, not on the PATH)."""
    started = Path(sys.argv[0])
    if started.name == "__main__.py" or not started.is_file():
        return f"{shlex.quote(_short(Path(sys.executable)))} -m streamer"
    on_path = shutil.which(started.name)
    if on_path is not None and Path(on_path).resolve() == started.resolve():
        return started.name
    return shlex.quote(_short(started))


def _short(path: Path) -> str:
    """`path` relative to here if it is below, else absolute ("./" before a bare name)."""
    relative = os.path.relpath(path.absolute())
    if relative.startswith(".."):
        return str(path.absolute())
    return relative if os.sep in relative else f".{os.sep}{relative}"


def cmd_demo(args: argparse.Namespace) -> int:
    preview = None if args.no_preview else args.preview
    # A preview beyond loopback wants a token (its API adds cameras): one made for this run.
    beyond = preview is not None and not is_loopback_host(preview.rpartition(":")[0] or "127.0.0.1")
    token = secrets.token_urlsafe(18) if beyond else None
    cfg = demo_config(args.publish, args.tap, args.detections, preview, token)
    detector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer.demo_detector",
            "--tap",
            args.tap.replace("*", "127.0.0.1"),
            "--detections",
            args.detections.replace("*", "127.0.0.1"),
        ]
    )
    print(
        f"demo: synthetic camera 'demo' 1280x720@30, detector pid {detector.pid}, "
        f"crops on {args.publish} (try: {_this_program()} crops {args.publish})"
        + ("" if preview is None else f", preview on http://{preview}/")
        + ("" if token is None else f"?token={token}"),
        file=sys.stderr,
    )
    try:
        stats = asyncio.run(_run_pipeline(cfg, args.duration, status=not args.quiet))
    finally:
        detector.terminate()
        try:
            detector.wait(DETECTOR_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            detector.kill()
            detector.wait()
    _finish(stats, args.stats_file)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    """The config is valid (exit 2 if not). The files it names are warned of if this host
    cannot read them (they may be mounted only where it runs): CURVE keys, which a run needs at
    start, and source files, which a run waits for, retrying."""
    from streamer.security import check_files
    from streamer.sources.factory import local_file

    cfg, shard = _load(args)
    warnings = []
    if cfg.security.curve is not None:
        try:
            check_files(cfg.security.curve)
        except OSError as e:
            warnings.append(f"{e} (a run would stop here)")
    for s in cfg.sources:
        path = local_file(s.url)
        if path is None:
            continue
        try:
            if not path.exists():
                why = " does not exist (a run retries it until it does)"
            elif path.is_dir():
                why = " is a directory (a run retries it)"
            elif not os.access(path, os.R_OK):
                why = " cannot be read by this user (a run retries it)"
            else:
                continue
        except OSError as e:  # (not allowed to look, a name too long, ...)
            why = f": {e.strerror} (a run retries it)"
        warnings.append(f"source {s.id}: {path}{why}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK ({len(cfg.sources)} source(s), {len(cfg.publish)} publisher(s))")
    if shard != SINGLE:
        print(_shard_line(cfg, shard))
    return 0


def cmd_crops(args: argparse.Namespace) -> int:
    import cv2

    from streamer.client import CropSubscriber

    save_dir = Path(args.save_dir) if args.save_dir else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    endpoints = endpoints_arg(args.parser, args.endpoint, args.shards)
    with CropSubscriber(endpoints, topics=[args.topic], shm_dir=args.shm_dir) as sub:
        while args.count is None or n < args.count:
            crop = sub.recv(timeout_s=args.timeout)
            if crop is None:
                print(f"no crop within {args.timeout} s", file=sys.stderr)
                return 1
            h = crop.header
            print(
                f"{h['source_id']} frame {h['frame_id']} #{h['index']}/{h['count']} "
                f"{h['class']} {h['width']}x{h['height']} conf {h['confidence']:.2f}",
                flush=True,
            )
            if save_dir is not None:
                name = f"{h['source_id']}_{h['frame_id']}_{h['index']}_{h['class']}.png"
                cv2.imwrite(str(save_dir / name.replace("/", "_")), crop.image)
            n += 1
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from streamer.security import keygen

    public, secret = keygen(args.dir, args.name)
    print(f"public key: {public}\nsecret key: {secret} (keep it private)")
    return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="streamer", description=__doc__)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    sub = ap.add_subparsers(dest="command", required=True)

    def add_run_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--duration", type=float, help="stop after this many seconds")
        p.add_argument("--stats-file", help="write the final counters here as JSON")
        p.add_argument("--quiet", action="store_true", help="no status line")

    shard_help = (
        "serve only this shard's cameras: I/N (0-based), or 'auto' (I from a StatefulSet pod "
        "name such as streamer-3 in POD_NAME or HOSTNAME, N from STREAMER_SHARDS); default: "
        "STREAMER_SHARD, else every camera. '{shard}' in endpoints becomes I"
    )
    p = sub.add_parser("run", help="run the pipeline from a config file")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--shard", help=shard_help)
    add_run_flags(p)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="synthetic camera + demo detector process + crop publisher")
    p.add_argument("--publish", default="tcp://127.0.0.1:5560")
    p.add_argument("--tap", default="tcp://127.0.0.1:5554")
    p.add_argument("--detections", default="tcp://127.0.0.1:5555")
    p.add_argument("--preview", default="127.0.0.1:8080", help="preview HOST:PORT")
    p.add_argument("--no-preview", action="store_true", help="no browser preview")
    add_run_flags(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("config")
    p.add_argument("--shard", help=shard_help)
    p.set_defaults(fn=cmd_check_config)

    p = sub.add_parser("keygen", help="make a CURVE key pair (<name>.key, <name>.key_secret)")
    p.add_argument("dir")
    p.add_argument("--name", default="server", help="file name stem: server, a detector's name")
    p.set_defaults(fn=cmd_keygen)

    p = sub.add_parser("crops", help="subscribe to crops and print (and save) them")
    p.add_argument("endpoint", nargs="+", help="crop endpoints: every shard's, or a {shard} one")
    add_shards_arg(p)
    p.add_argument(
        "--topic", type=topic_arg, default="crop/", help="topic prefix, e.g. crop/demo/plate"
    )
    p.add_argument("--save-dir", help="write each crop as <source>_<frame_id>_<index>_<class>.png")
    p.add_argument("--count", type=int, help="exit after this many crops")
    p.add_argument("--timeout", type=float, help="exit 1 if no crop arrives for this long")
    p.add_argument("--shm-dir", default="/dev/shm", help="streamer's shm.dir, for shm crops")
    p.set_defaults(fn=cmd_crops, parser=p)

    add_ocr_parser(sub)
    add_detect_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if args.log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"config error:\n{e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
