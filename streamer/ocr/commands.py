"""The ``streamer ocr`` and ``streamer detect text`` commands: their flags and how they run.
The heavy imports (ONNX Runtime, the models) happen only when a command runs."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from streamer.client import topic_arg
from streamer.ocr.ctc import DEFAULT_CHARSET, parse_charset
from streamer.ocr.recognizers import DEFAULT_ENGINE, ENGINES
from streamer.sharding import add_shards_arg, endpoints_arg

log = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (the loops poll it, then close their sockets)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


MAX_THREADS = 64  # ONNX Runtime intra-op threads a command accepts


def _threads(value: str) -> int:
    """--threads: an integer in 1..MAX_THREADS (ONNX Runtime takes 0 as "every core")."""
    n = int(value)
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_THREADS}, got {n}")
    return n


def _probability(value: str) -> float:
    """--box-threshold: a number in [0, 1]."""
    f = float(value)
    if not 0.0 <= f <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in 0..1, got {value}")
    return f


def _port(value: str) -> int:
    """--metrics-port: an integer in 0..65535 (0: any free port)."""
    n = int(value)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {n}")
    return n


def _charset(value: str) -> str:
    """--charset: its characters, ranges such as A-Z expanded, deduplicated
    (streamer.ocr.ctc.parse_charset)."""
    try:
        return parse_charset(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _curve(value: list[str] | None) -> tuple[str, str] | None:
    return (value[0], value[1]) if value else None


def add_ocr_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "ocr",
        help="OCR worker: read text on crops, vote per track, publish readings",
        description="Reads crops from streamer, recognizes their text (PP-OCRv6 small by default), "
        "votes per track and publishes one JSON result per read crop on ocr/<source_id>. "
        "With --listen, prints the stable readings of running workers instead.",
    )
    p.add_argument(
        "--crops",
        nargs="+",
        default=["tcp://127.0.0.1:5560"],
        help="streamer's crop endpoints: every shard's, or one with {shard} and --shards",
    )
    add_shards_arg(p)
    p.add_argument("--pull", action="store_true", help="the publisher is PUSH: join its pool")
    p.add_argument(
        "--topic",
        type=topic_arg,
        action="append",
        help="topic prefix (repeatable); default crop/",
    )
    p.add_argument("--classes", help="comma-separated classes to read; default every class")
    p.add_argument("--results", default="tcp://127.0.0.1:5570", help="bind: results go out here")
    p.add_argument("--votes", type=int, default=3, help="agreeing readings for a stable reading")
    p.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        choices=ENGINES,
        help="ppocrv6: PP-OCRv6 small (default); ppocrv5: PP-OCRv5 mobile; rapidocr: PP-OCRv4; "
        "tesseract",
    )
    p.add_argument(
        "--no-lookalikes",
        action="store_true",
        help="ppocrv6: take O/0 and I/1 as the model reads them, without the look-alike models "
        "that tell them apart by their shape",
    )
    p.add_argument(
        "--charset",
        type=_charset,
        default=DEFAULT_CHARSET,
        help="the characters plates may hold, read over them: characters and ranges X-Y of "
        "A-Z, a-z or 0-9 (a literal '-' first or last); default A-Z0-9",
    )
    p.add_argument("--threads", type=_threads, default=1, help="ONNX Runtime threads (PP-OCR)")
    p.add_argument("--read-edge", action="store_true", help="also read crops at the frame edge")
    p.add_argument(
        "--shm-dir",
        default="/dev/shm",
        help="where streamer's shared-memory crop rings are (its publish shm.dir)",
    )
    p.add_argument(
        "--no-locate",
        action="store_true",
        help="read crops without a polygon whole (default: find their text line with DBNet)",
    )
    p.add_argument("--metrics-port", type=_port, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--curve", nargs=2, metavar=("CLIENT_SECRET", "SERVER_PUBLIC"))
    p.add_argument(
        "--listen", nargs="+", metavar="ENDPOINT", help="print stable readings from workers"
    )
    p.set_defaults(fn=cmd_ocr, parser=p)


def _lookalikes_in_use(recognizer: object) -> str:
    """ ", look-alike models on (O0, I1)" for the start line, or "" when none is in use."""
    pairs = getattr(recognizer, "pairs", None)
    return f", look-alike models on ({', '.join(pairs.active)})" if pairs is not None else ""


def cmd_ocr(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    from streamer.ocr import worker

    if args.listen:
        worker.listen(args.listen, stop, sys.stdout)
        return 0
    from streamer.ocr.reader import CropReader
    from streamer.ocr.recognizers import RecognizerUnavailable, make_recognizer
    from streamer.ocr.text_detector import TextDetector

    if not 1 <= args.votes <= 1000:
        print("error: --votes must be in 1..1000", file=sys.stderr)
        return 2
    try:
        recognizer = make_recognizer(
            args.engine, args.threads, args.charset, pairs=not args.no_lookalikes
        )
        locator = None if args.no_locate else TextDetector(args.threads)
    except RecognizerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    opts = worker.WorkerOptions(
        crops=tuple(endpoints_arg(args.parser, args.crops, args.shards)),
        results=args.results,
        mode="pull" if args.pull else "sub",
        topics=tuple(args.topic or ["crop/"]),
        classes=frozenset(c for c in (args.classes or "").split(",") if c),
        votes=args.votes,
        read_edge=args.read_edge,
        curve=_curve(args.curve),
        shm_dir=Path(args.shm_dir),
    )
    metrics = worker.WorkerMetrics(args.engine)
    server = None
    if args.metrics_port is not None:
        from streamer.http_metrics import serve_in_thread

        server = serve_in_thread(args.metrics_port, args.metrics_host, metrics.registry)
    if args.no_lookalikes and args.engine != "ppocrv6":
        log.warning("--no-lookalikes: only ppocrv6 has look-alike models; ignored")
    log.info(
        "ocr worker (%s%s, charset %s): crops from %s, results on %s",
        args.engine,
        _lookalikes_in_use(recognizer),
        args.charset,
        opts.crops,
        opts.results,
    )
    try:
        worker.OcrWorker(CropReader(recognizer, locator), opts, metrics).run(stop)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        print(worker.summary(metrics), file=sys.stderr, flush=True)
    return 0


DETECT_MODELS = ("text",)
DEFAULT_TAP = "tcp://127.0.0.1:5554"


def _model_and_taps(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The detector and its taps. argparse gives --tap every word after it, so `detect --tap E
    text` arrives as taps [E, text] and no model: the model is taken back from the end."""
    model, taps = args.model, args.tap
    if model is None and taps and taps[-1] in DETECT_MODELS:
        model, taps = taps[-1], taps[:-1]
        if not taps:
            args.parser.error("--tap needs an endpoint")
    if model is None:
        args.parser.error(f"say which detector: {', '.join(DETECT_MODELS)}")
    return model, taps if taps is not None else [DEFAULT_TAP]


def add_detect_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("detect", help="run a detector on the frame tap")
    # Optional to argparse only: `detect --tap E text` gives --tap both words (`_model_and_taps`).
    p.add_argument(
        "model",
        nargs="?",
        choices=DETECT_MODELS,
        help="required; text: PP-OCRv4 text detector (DBNet)",
    )
    p.add_argument(
        "--tap",
        nargs="+",
        metavar="ENDPOINT",
        help="frame taps: every shard's, or one with {shard} and --shards (default "
        f"{DEFAULT_TAP})",
    )
    p.add_argument(
        "--detections",
        default="tcp://127.0.0.1:5555",
        help="for frames that do not say where their detections go (reply_to)",
    )
    p.add_argument(
        "--allow-ipc-reply-to",
        action="store_true",
        help="follow ipc:// reply_to endpoints too (every shard on this host); by default only "
        "tcp:// ones are followed: a tapped frame must not steer detections into local socket "
        "files",
    )
    add_shards_arg(p)
    p.add_argument("--pull", action="store_true", help="the tap is PUSH: join its pool")
    p.add_argument("--threads", type=_threads, default=1, help="ONNX Runtime threads")
    p.add_argument(
        "--box-threshold", type=_probability, default=0.5, help="min mean text probability"
    )
    p.add_argument("--metrics-port", type=_port, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1")
    p.add_argument("--curve", nargs=2, metavar=("CLIENT_SECRET", "SERVER_PUBLIC"))
    p.set_defaults(fn=cmd_detect, parser=p)


def cmd_detect(args: argparse.Namespace) -> int:
    _, taps = _model_and_taps(args)  # (one model so far)
    stop = _stop_on_signals()
    from streamer.ocr.recognizers import RecognizerUnavailable
    from streamer.ocr.text_detector import DetectorMetrics, DetectorOptions, run_text_detector

    opts = DetectorOptions(
        tap=tuple(endpoints_arg(args.parser, taps, args.shards)),
        detections=args.detections,
        mode="pull" if args.pull else "sub",
        threads=args.threads,
        box_threshold=args.box_threshold,
        curve=_curve(args.curve),
        allow_ipc_reply_to=args.allow_ipc_reply_to,
    )
    metrics = DetectorMetrics()
    server = None
    if args.metrics_port is not None:
        from streamer.http_metrics import serve_in_thread

        server = serve_in_thread(args.metrics_port, args.metrics_host, metrics.registry)
    try:
        run_text_detector(opts, stop, metrics)
    except RecognizerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    print(metrics.summary(), file=sys.stderr, flush=True)
    return 0
