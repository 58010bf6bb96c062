"""Downstream consumers: every encoding through CropSubscriber, publisher filters, a PUSH pool of
workers, protocol versions, and the OCR worker (`streamer ocr`, PP-OCRv4) reading the synthetic
plates."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.client import Crop, CropSubscriber, ProtocolVersionError
from streamer.config import SyntheticSpec, parse_config
from streamer.detections.codec import encode_detections
from streamer.pipeline import Pipeline
from streamer.sources.synthetic import SyntheticScene
from tests.conftest import spawn, stop

BOXES = [
    {
        "x": 100,
        "y": 80,
        "width": 120,
        "height": 60,
        "class": "plate",
        "class_id": 0,
        "confidence": 0.9,
    },
    {
        "x": 200,
        "y": 150,
        "width": 60,
        "height": 120,
        "class": "person/adult",
        "class_id": 1,
        "confidence": 0.3,
    },
]


async def _detector(tap: str, dets: str, stop_ev: asyncio.Event) -> None:
    ctx = zmq.asyncio.Context.instance()
    sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
    sub.setsockopt(zmq.SUBSCRIBE, b"frame/")
    sub.connect(tap)
    push.connect(dets)
    try:
        while not stop_ev.is_set():
            if await sub.poll(100):
                header = json.loads((await sub.recv_multipart())[1])
                await push.send_multipart(
                    encode_detections("cam", header["frame_id"], (320, 240), BOXES)
                )
    finally:
        sub.close(linger=0)
        push.close(linger=0)


def _pipeline_with(publish: list[dict[str, Any]], endpoint: Any) -> tuple[Pipeline, str, str]:
    tap, dets = endpoint(), endpoint()
    cfg = parse_config(
        {
            "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"}],
            "detections": {"bind": dets},
            "tap": {"bind": tap},
            "publish": publish,
        }
    )
    return Pipeline(cfg), tap, dets


def _receive(subs: list[CropSubscriber], want: int, out: list[list[Crop]]) -> None:
    for sub, got in zip(subs, out, strict=True):
        while len(got) < want:
            crop = sub.recv(timeout_s=10)
            assert crop is not None, "no crop within 10 s"
            got.append(crop)


def test_every_encoding_round_trips_and_filters_apply(endpoint: Any) -> None:
    encs = [("raw-bgr24", None), ("png", 6), ("jpeg", 95), ("webp", 95)]
    eps = [endpoint() for _ in encs]
    publish = [
        {"bind": ep, "encoding": e, **({"quality": q} if q else {})}
        for ep, (e, q) in zip(eps, encs, strict=True)
    ]
    filtered = endpoint()
    publish.append({"bind": filtered, "classes": ["person/adult"], "min_confidence": 0.0})
    strict = endpoint()
    publish.append({"bind": strict, "min_confidence": 0.5})
    pipeline, tap, dets = _pipeline_with(publish, endpoint)
    subs = [CropSubscriber(ep, topics=["crop/cam/plate"]) for ep in eps]
    subs.append(CropSubscriber(filtered))
    subs.append(CropSubscriber(strict))
    got: list[list[Crop]] = [[] for _ in subs]

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        stop_ev = asyncio.Event()
        det = asyncio.create_task(_detector(tap, dets, stop_ev))
        try:
            await asyncio.to_thread(_receive, subs, 8, got)
        finally:
            stop_ev.set()
            await det
            pipeline.stop()
            await asyncio.wait_for(run, 15)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        for s in subs:
            s.close()
    raw = {c.frame_id: c for c in got[0]}
    for (enc, _), crops in zip(encs, got[:4], strict=True):
        for c in crops:
            assert c.header["encoding"] == enc and c.image.shape == (60, 120, 3)
            if c.frame_id not in raw:
                continue
            diff = np.abs(c.image.astype(int) - raw[c.frame_id].image.astype(int))
            if enc == "png":
                assert diff.max() == 0  # lossless
            else:
                assert diff.mean() < 4, (enc, diff.mean())
    # Class filter: only the person; the topic sanitises the class, the header keeps it.
    assert all(c.header["class"] == "person/adult" for c in got[4])
    # min_confidence 0.5 keeps the plate (0.9) and drops the person (0.3).
    assert all(c.header["class"] == "plate" for c in got[5])


def test_topic_sanitised_class_kept(endpoint: Any) -> None:
    from streamer.publish.wire import crop_topic

    assert crop_topic("cam", "person/adult") == b"crop/cam/person_adult"
    assert crop_topic("cam", "plate") == b"crop/cam/plate"


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"])), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=20), _JSON_VALUES, max_size=8))
def test_headers_are_compact_utf8_json_that_reads_back(header: dict[str, Any]) -> None:
    from streamer.publish.wire import dumps

    header = {k: v for k, v in header.items() if not any(0xD800 <= ord(c) < 0xE000 for c in k)}
    raw = dumps(header)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in a header")

    assert json.loads(raw.decode("utf-8"), parse_constant=no_constants) == header


def test_headers_take_numpy_numbers_never_carry_nan_and_refuse_what_json_cannot_hold() -> None:
    from streamer.publish.wire import dumps

    assert json.loads(dumps({"x": float("nan"), "y": float("inf")})) == {"x": None, "y": None}
    # NumPy scalars (a float64 is a float to the standard library's json) and tuples: numbers
    # and arrays.
    numeric = {"a": np.float64(1.5), "b": np.int64(3), "c": (1, 2), "d": np.float32(0.5)}
    assert dumps(numeric) == b'{"a":1.5,"b":3,"c":[1,2],"d":0.5}'
    assert dumps({"class": "caf\u00e9"}) == '{"class":"caf\u00e9"}'.encode()  # UTF-8, compact
    for bad in ({"class": "\ud800"}, {"n": 2**64}):
        with pytest.raises(TypeError):
            dumps(bad)


def test_topic_cache_bounded_in_bytes() -> None:
    """Long class names are not kept in the topic cache (it holds 4096 entries at most)."""
    from streamer.publish.wire import _cached_crop_topic, crop_topic

    _cached_crop_topic.cache_clear()
    for i in range(200):
        assert crop_topic("cam", f"{i}" + "c" * 10_000).startswith(b"crop/cam/")
    crop_topic("cam", "plate")
    assert _cached_crop_topic.cache_info().currsize == 1


def test_push_pool_each_crop_to_exactly_one_worker(endpoint: Any) -> None:
    pub = endpoint()
    pipeline, tap, dets = _pipeline_with([{"bind": pub, "mode": "push"}], endpoint)
    workers = [CropSubscriber(pub, mode="pull", hwm=10) for _ in range(3)]
    seen: list[list[tuple[int, int]]] = [[] for _ in workers]
    done = threading.Event()

    def work(i: int) -> None:
        while not done.is_set():
            crop = workers[i].recv(timeout_s=0.1)
            if crop is not None:
                seen[i].append((crop.frame_id, crop.header["index"]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()

    async def main() -> None:
        run = asyncio.create_task(pipeline.run())
        stop_ev = asyncio.Event()
        det = asyncio.create_task(_detector(tap, dets, stop_ev))
        try:
            while sum(len(s) for s in seen) < 150:
                await asyncio.sleep(0.05)
        finally:
            stop_ev.set()
            await det
            pipeline.stop()
            await asyncio.wait_for(run, 15)

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
        # Let the last queued crops arrive.
        done.wait(1.0)
    finally:
        done.set()
        for t in threads:
            t.join(5)
        for w in workers:
            w.close()
    everything = [k for s in seen for k in s]
    stats = pipeline.stats()["publishers"][0]
    assert len(everything) == len(set(everything))  # nobody got a crop twice
    assert len(everything) == stats["sent"]  # and every crop sent was processed
    assert all(len(s) >= 20 for s in seen), [len(s) for s in seen]


def test_unknown_protocol_version_is_a_clear_error(endpoint: Any) -> None:
    ep = endpoint()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(ep)
    try:
        with CropSubscriber(ep) as sub:
            header = {"v": 2, "source_id": "x", "encoding": "raw-bgr24", "width": 1, "height": 1}
            for _ in range(50):  # until the subscription has arrived
                pub.send_multipart([b"crop/x/c", json.dumps(header).encode(), b"\0\0\0"])
                if sub.sock.poll(100):
                    break
            with pytest.raises(ProtocolVersionError, match="unsupported protocol version 2"):
                sub.recv(timeout_s=1)
    finally:
        pub.close(linger=0)


def _iou(a: list[int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def test_ocr_worker_reads_the_synthetic_plates(endpoint: Any) -> None:
    """Synthetic camera -> demo detector process -> streamer -> `streamer ocr` process (PP-OCRv5).
    Ground truth comes from the synthetic scene; at least 90% of the plates must be read right."""
    pub, tap, dets, results = endpoint(), endpoint(), endpoint(), endpoint()
    demo = spawn(
        "-m",
        "streamer",
        "demo",
        "--duration",
        "25",
        "--quiet",
        "--publish",
        pub,
        "--tap",
        tap,
        "--detections",
        dets,
        "--no-preview",
    )
    worker = spawn(
        *("-m", "streamer", "ocr", "--crops", pub, "--results", results),
        *("--topic", "crop/demo/plate"),
    )
    sub: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"ocr/")
    sub.connect(results)
    readings: list[dict[str, Any]] = []
    try:
        while demo.poll() is None:
            if sub.poll(200):
                readings.append(json.loads(sub.recv_multipart()[1]))
    finally:
        sub.close(linger=0)
        stop(demo)
        _, worker_err = stop(worker)
    assert readings, "no OCR results"
    scene = SyntheticScene(SyntheticSpec())
    per_plate: dict[str, Counter[str]] = defaultdict(Counter)
    for r in readings:
        truth = [o for o in scene.objects(r["pts"]) if o.class_name == "plate"]
        best = max(truth, key=lambda o: _iou(r["box"], o.box))
        assert _iou(r["box"], best.box) > 0.5, (r, best)
        assert best.text is not None
        per_plate[best.text][r["text"]] += 1
    # Every plate wholly in view for at least a second while the worker was reading.
    first, last = min(r["pts"] for r in readings), max(r["pts"] for r in readings)
    visible: Counter[str] = Counter()
    for n in range(first, last + 1):
        for o in scene.objects(n):
            if o.class_name == "plate" and o.box[0] > 0 and o.box[2] < scene.spec.width:
                assert o.text is not None
                visible[o.text] += 1
    plates = [t for t, frames in visible.items() if frames >= scene.spec.fps]
    right = [t for t in plates if per_plate[t] and per_plate[t].most_common(1)[0][0] == t]
    accuracy = len(right) / len(plates)
    print(
        f"OCR: {len(right)}/{len(plates)} plates read right ({accuracy:.0%}), "
        f"{len(readings)} readings; {worker_err.strip().splitlines()[-1]}"
    )
    assert len(plates) >= 6
    assert accuracy >= 0.9, {t: per_plate[t].most_common(2) for t in plates if t not in right}
