"""Property-based fuzzing of the detection codec and its consumers (scripts/fuzz_detections.py).

Random bytes, random JSON of any shape, depth and size, and mutations of valid messages (every
mask form, keypoints, params, extra parts): only ProtocolError may escape, within a time bound
proportional to the message's size. Fixed example budgets keep the whole file to seconds.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pycocotools.mask as coco
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_script

fuzz = load_script("fuzz_detections")
SEEDS: list[list[bytes]] = fuzz.seed_messages()
BUDGET = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Strings with what breaks consumers: controls, NUL, lone surrogates, non-ASCII, long runs.
_chars = st.one_of(
    st.characters(),
    st.characters(min_codepoint=0, max_codepoint=0x1F),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
)
texts = st.one_of(st.text(_chars, max_size=20), st.text(_chars, min_size=250, max_size=300))
numbers = st.one_of(
    st.integers(),  # unbounded: beyond int64, beyond a float
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**400, 1e308, -1e308, 0.5]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(texts, children, max_size=6)
    ),
    max_leaves=40,
)


def _dumps(value: Any) -> bytes:
    """JSON with NaN/Infinity tokens and lone surrogate escapes allowed (both hostile)."""
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid seed message with one to three structural mutations, then maybe byte damage."""
    seed = draw(st.sampled_from(SEEDS))
    tree = json.loads(seed[1])
    payload = list(seed[2:])
    for _ in range(draw(st.integers(1, 3))):
        paths = fuzz.paths(tree)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "insert", "deep", "payload"]))
        if op == "replace":
            tree = fuzz.replace(tree, path, draw(json_values))
        elif op == "delete" and path:
            tree = fuzz.delete(tree, path)
        elif op == "insert" and any(isinstance(fuzz.get(tree, p), dict) for p in paths):
            paths_to_dicts = [p for p in paths if isinstance(fuzz.get(tree, p), dict)]
            target = draw(st.sampled_from(paths_to_dicts))
            key = draw(st.one_of(texts, st.sampled_from(["mask_part", "rle", "points", "v"])))
            tree = fuzz.replace(tree, target, {**fuzz.get(tree, target), key: draw(json_values)})
        elif op == "deep":
            tree = fuzz.replace(tree, path, "\0DEEP\0")
        elif op == "payload":
            payload = draw(
                st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(payload or [b""])))
            )
    body = _dumps(tree).replace(b'"\\u0000DEEP\\u0000"', _nested(draw(st.integers(1, 3000))))
    if draw(st.booleans()):
        data = bytearray(body)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, max(0, len(data) - 1)))
            data[i : i + draw(st.integers(0, 3))] = draw(st.binary(max_size=4))
        body = bytes(data)
    topic = draw(st.sampled_from([fuzz.TOPIC, fuzz.TOPIC, b"det/", b"det/other", b"x"]))
    return [topic, body, *payload]


def messages() -> st.SearchStrategy[list[bytes]]:
    """Every kind of input: raw bytes, random JSON, mutated valid messages, few parts."""
    raw = st.lists(st.binary(max_size=200), min_size=0, max_size=5)
    random_json = st.builds(lambda v: [fuzz.TOPIC, _dumps(v)], json_values)
    return st.one_of(raw, random_json, mutated(), mutated(), tree_mutated())


@st.composite
def tree_mutated(draw: st.DrawFn) -> list[bytes]:
    """A seed with the structural mutations the atheris run uses (hostile values, subtrees of
    other seeds, known field names, repeated list items)."""
    seed = draw(st.sampled_from(SEEDS))
    rng = draw(st.randoms(use_true_random=False))
    donors = [json.loads(m[1]) for m in SEEDS]
    tree = json.loads(seed[1])
    for _ in range(draw(st.integers(1, 4))):
        tree = fuzz.mutate_tree(tree, rng, donors)
    return [seed[0], _dumps(tree), *seed[2:]]


def _header(**extra: Any) -> bytes:
    header = {
        "v": 1,
        "source_id": "cam",
        "frame_id": 1,
        "image": {"width": 640, "height": 360},
        "predictions": [],
        **extra,
    }
    return json.dumps(header).encode()


def _pred(**extra: Any) -> dict[str, Any]:
    return {"x": 10, "y": 10, "width": 5, "height": 5, "class": "a", **extra}


_SURROGATE_CLASS = _header(predictions=[_pred(**{"class": "\ud800"})])

# The hostile cases of issue 13, pinned.
HOSTILE = {
    "nested 100k deep": [fuzz.TOPIC, _nested(100_000)],
    "400-digit x": [
        fuzz.TOPIC,
        _header(predictions=[_pred()]).replace(b'"x": 10', b'"x": ' + b"9" * 400),
    ],
    "400-digit frame_id": [
        fuzz.TOPIC,
        _header().replace(b'"frame_id": 1', b'"frame_id": ' + b"9" * 400),
    ],
    "20-digit frame_id": [fuzz.TOPIC, _header(frame_id=2**64 - 1)],
    "RLE count 2^64": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [360, 640], "counts": [2**64]})]),
    ],
    "RLE count 2^63": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [360, 640], "counts": [0, 2**63 - 1]})]),
    ],
    "2 MB compressed RLE": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [360, 640], "counts": "1" * 2_000_000})]),
    ],
    "2 MB compressed RLE, endless count": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [360, 640], "counts": "o" * 2_000_000})]),
    ],
    "RLE size 1000000x1280": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [1_000_000, 1280], "counts": [1_280_000_000]})]),
    ],
    "image 1000000 high": [
        fuzz.TOPIC,
        _header(
            image={"width": 1280, "height": 1_000_000},
            predictions=[_pred(rle={"size": [1_000_000, 1280], "counts": [1_280_000_000]})],
        ),
    ],
    "lone surrogate class (escaped)": [fuzz.TOPIC, _SURROGATE_CLASS],
    "lone surrogate class (raw)": [
        fuzz.TOPIC,
        _SURROGATE_CLASS.replace(b"\\ud800", "\ud800".encode("utf-8", "surrogatepass")),
    ],
    "NUL class": [fuzz.TOPIC, _header(predictions=[_pred(**{"class": "a\u0000b"})])],
    "4 MB class": [fuzz.TOPIC, _header(predictions=[_pred(**{"class": "c" * 4_000_000})])],
    "4 MB detection_id": [fuzz.TOPIC, _header(predictions=[_pred(detection_id="d" * 4_000_000)])],
    "nested keypoint field": [
        fuzz.TOPIC,
        _header(predictions=[_pred(keypoints=[{"x": 1, "y": 2, "n": [[[[]]]]}])]),
    ],
    "huge coordinate": [fuzz.TOPIC, _header(predictions=[_pred(x=1e300)])],
    "huge polygon point": [
        fuzz.TOPIC,
        _header(predictions=[_pred(points=[{"x": 1e300, "y": 0}] * 3)]),
    ],
    # Found in review (the codec took them, later stages paid):
    "1,025-vertex polygon": [
        fuzz.TOPIC,
        _header(predictions=[_pred(points=[{"x": i, "y": 0} for i in range(1025)])]),
    ],
    "junk arrays (1 MB of [])": [fuzz.TOPIC, _header(junk=[[]] * 300_000)],
    "nested background colour": [
        fuzz.TOPIC,
        _header(params={"background_color": ["NEST", 1, 2]}).replace(
            b'"NEST"', b"[" * 1000 + b"]" * 1000 + b" " * 10_000
        ),
    ],
    "10 MB background colour item": [
        fuzz.TOPIC,
        _header(params={"background_color": ["c" * 3_000_000, 1, 2]}),
    ],
    "3 M empty RLE runs": [
        fuzz.TOPIC,
        _header(predictions=[_pred(rle={"size": [360, 640], "counts": "0" * 3_000_000})]),
    ],
    "U+2028 in class": [fuzz.TOPIC, _header(predictions=[_pred(**{"class": "a\u2028b"})])],
}


@BUDGET
@given(messages())
def test_only_protocol_errors_escape(parts: list[bytes]) -> None:
    fuzz.check(parts)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_cases_are_protocol_errors(name: str) -> None:
    parts = HOSTILE[name]
    assert fuzz.exercise(parts) != "ok"
    fuzz.check(parts)
    fuzz.check(parts, trace_memory=True)


def test_seed_messages_are_valid_and_exercise_every_mask_form() -> None:
    """The mutation seeds are themselves valid, so mutations start from deep in the codec."""
    from streamer.detections.codec import decode_detections
    from streamer.types import BitmapMask, RleMask

    kinds = set()
    for parts in SEEDS:
        assert fuzz.exercise(parts) == "ok"
        for p in decode_detections(parts).predictions:
            kinds.add(type(p.mask).__name__ if p.mask is not None else None)
            kinds.add("points" if p.points is not None else None)
            kinds.add("keypoints" if p.keypoints else None)
    assert {RleMask.__name__, BitmapMask.__name__, "points", "keypoints"} <= kinds


def _coco_string(runs: list[int]) -> str:
    """pycocotools' compressed string of a one-column mask with these alternating runs."""
    column = np.repeat(np.arange(len(runs)) % 2, runs).astype(np.uint8)
    if column.size == 0:
        column = np.zeros(1, np.uint8)
    return str(coco.encode(np.asfortranarray(column[:, None]))["counts"].decode())


@BUDGET
@given(
    st.one_of(
        st.text(st.characters(min_codepoint=40, max_codepoint=115), max_size=600),
        st.lists(st.integers(0, 100_000), max_size=150).map(_coco_string),
    )
)
def test_rle_string_decoders_agree(text: str) -> None:
    """The plain-Python decoder (short strings) and the vectorised one (long strings, a chunk at
    a time) give the same counts, or both refuse the string."""
    from streamer.detections.codec import _rle_string_short, _rle_string_vectorised

    try:
        short: list[int] | str = _rle_string_short(text)
    except ValueError:
        short = "refused"
    for chunk_chars in (0, 21, 40):  # the default chunk, and small ones to cut counts often
        try:
            vectorised: list[int] | str = _rle_string_vectorised(text, None, chunk_chars).tolist()
        except ValueError:
            vectorised = "refused"
        assert short == vectorised
