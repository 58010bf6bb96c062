from __future__ import annotations

import json
import math
from typing import Any

import pytest

from streamer.detections import codec
from streamer.detections.codec import MALFORMED_KINDS, decode_detections, encode_detections
from streamer.errors import ProtocolError

PRED = {
    "x": 50,
    "y": 40,
    "width": 20,
    "height": 10,
    "confidence": 0.9,
    "class": "car",
    "class_id": 2,
}


def _header(**over: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "v": 1,
        "source_id": "cam",
        "frame_id": 7,
        "image": {"width": 640, "height": 360},
        "predictions": [dict(PRED)],
    }
    for k, v in over.items():
        if v is ...:
            h.pop(k)
        else:
            h[k] = v
    return h


def _msg(header: Any, topic: bytes = b"det/cam") -> list[bytes]:
    return [topic, json.dumps(header).encode()]


def _pred(**over: Any) -> dict[str, Any]:
    p = dict(PRED)
    for k, v in over.items():
        if v is ...:
            p.pop(k)
        else:
            p[k] = v
    return p


def test_round_trip() -> None:
    preds = [
        dict(PRED, detection_id="d1", tracker_id=4, points=[{"x": 1, "y": 2}, {"x": 3, "y": 4}]),
        dict(PRED, keypoints=[{"x": 5, "y": 6, "confidence": 0.5, "class_id": 0, "class": "n"}]),
    ]
    parts = encode_detections(
        "cam",
        9,
        (640, 360),
        preds,
        captured_at=12.5,
        params={"mask_opacity": 0.5, "background_color": "#fff"},
    )
    d = decode_detections(parts)
    assert (d.source_id, d.frame_id, d.captured_at) == ("cam", 9, 12.5)
    assert (d.image_width, d.image_height) == (640, 360)
    assert d.params == {"mask_opacity": 0.5, "background_bgr": (255, 255, 255)}
    p0, p1 = d.predictions
    assert (p0.x, p0.y, p0.width, p0.height, p0.class_name, p0.class_id) == (
        50,
        40,
        20,
        10,
        "car",
        2,
    )
    assert p0.detection_id == "d1" and p0.tracker_id == 4
    assert p0.points is not None and p0.points.tolist() == [[1, 2], [3, 4]]
    assert p1.keypoints is not None and p1.keypoints[0]["x"] == 5
    assert len(p1.detection_id) == 36  # a generated UUID when absent


def test_empty_prediction_list_is_valid() -> None:
    assert decode_detections(_msg(_header(predictions=[]))).predictions == ()


MALFORMED: list[tuple[str, list[bytes], str, str]] = [
    ("one part", [b"det/cam"], "bad_framing", "got 1 part"),
    ("wrong topic", _msg(_header(), topic=b"frame/cam"), "bad_topic", "det/<source_id>"),
    ("not json", [b"det/cam", b"{nope"], "not_json", "not UTF-8 JSON"),
    ("not utf-8", [b"det/cam", b"\xff\xfe"], "not_json", "not UTF-8 JSON"),
    (
        "NaN",
        [b"det/cam", json.dumps(_header(predictions=[_pred(x=math.nan)])).encode()],
        "non_finite",
        "NaN",
    ),
    (
        "Infinity",
        [b"det/cam", json.dumps(_header(predictions=[_pred(width=math.inf)])).encode()],
        "non_finite",
        "Infinity",
    ),
    (
        "huge number",
        [
            b"det/cam",
            json.dumps(_header(predictions=[_pred(y=12345)])).encode().replace(b"12345", b"1e400"),
        ],
        "non_finite",
        "beyond a float",
    ),
    ("array header", _msg([1, 2]), "bad_header", "JSON object"),
    ("no version", _msg(_header(v=...)), "missing_field", "v: required"),
    ("version 2", _msg(_header(v=2)), "bad_version", "unsupported version 2"),
    ("topic mismatch", _msg(_header(), topic=b"det/other"), "topic_mismatch", "does not match"),
    ("no source", _msg(_header(source_id=...)), "missing_field", "source_id"),
    ("no frame id", _msg(_header(frame_id=...)), "missing_field", "frame_id"),
    ("frame id str", _msg(_header(frame_id="7")), "wrong_type", "frame_id: expected an integer"),
    ("negative frame id", _msg(_header(frame_id=-1)), "bad_value", "frame_id: must be >= 0"),
    ("no image", _msg(_header(image=...)), "missing_field", "image: required"),
    ("zero image", _msg(_header(image={"width": 0, "height": 10})), "bad_value", "image"),
    ("no predictions", _msg(_header(predictions=...)), "missing_field", "predictions: required"),
    (
        "predictions dict",
        _msg(_header(predictions={})),
        "wrong_type",
        "predictions: expected a list",
    ),
    ("prediction str", _msg(_header(predictions=["x"])), "wrong_type", "predictions[0]"),
    ("missing x", _msg(_header(predictions=[_pred(x=...)])), "missing_field", "predictions[0].x"),
    ("x string", _msg(_header(predictions=[_pred(x="1")])), "wrong_type", "predictions[0].x"),
    ("x bool", _msg(_header(predictions=[_pred(x=True)])), "wrong_type", "predictions[0].x"),
    (
        "negative width",
        _msg(_header(predictions=[_pred(), _pred(width=-5)])),
        "negative_size",
        "predictions[1]: width and height must be >= 0",
    ),
    ("confidence 2", _msg(_header(predictions=[_pred(confidence=2)])), "bad_value", "confidence"),
    ("no class", _msg(_header(predictions=[_pred(**{"class": ...})])), "missing_field", "class"),
    ("class int", _msg(_header(predictions=[_pred(**{"class": 3})])), "wrong_type", "class"),
    (
        "bad points",
        _msg(_header(predictions=[_pred(points=[{"x": 1}])])),
        "missing_field",
        "points[0].y",
    ),
    ("bad params", _msg(_header(params={"mask_opacity": 3})), "bad_value", "params.mask_opacity"),
    (
        "bad colour",
        _msg(_header(params={"background_color": "#zz"})),
        "bad_value",
        "params.background_color: invalid colour",
    ),
    ("unknown param", _msg(_header(params={"blur": 1})), "bad_value", "params.blur"),
    ("too many", _msg(_header(predictions=[_pred()] * 11)), "too_many_predictions", "11 exceeds"),
    ("oversize", [b"det/cam", json.dumps(_header()).encode() + b" " * 5000], "oversize", "limit"),
]


@pytest.mark.parametrize(
    ("name", "parts", "kind", "text"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_messages(name: str, parts: list[bytes], kind: str, text: str) -> None:
    with pytest.raises(ProtocolError) as exc:
        decode_detections(parts, max_predictions=10, max_bytes=4096)
    assert exc.value.kind == kind
    assert kind in MALFORMED_KINDS
    assert text in str(exc.value)


def _kind(parts: list[bytes], **limits: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as exc:
        decode_detections(parts, **limits)
    assert exc.value.kind in MALFORMED_KINDS
    return exc.value


def test_polygon_and_keypoint_counts_are_capped() -> None:
    """A polygon of more than MAX_POLYGON_POINTS vertices, more than MAX_KEYPOINTS keypoints, or
    a keypoint with more than MAX_KEYPOINT_FIELDS fields is refused; at the limits, accepted."""
    pts = [{"x": i % 7, "y": i % 5} for i in range(codec.MAX_POLYGON_POINTS)]
    kps = [{"x": 1, "y": 2} for _ in range(codec.MAX_KEYPOINTS)]
    (pred,) = decode_detections(
        _msg(_header(predictions=[_pred(points=pts, keypoints=kps)]))
    ).predictions
    assert pred.points is not None and len(pred.points) == codec.MAX_POLYGON_POINTS
    err = _kind(_msg(_header(predictions=[_pred(points=[*pts, {"x": 0, "y": 0}])])))
    assert err.kind == "too_many_points" and "predictions[0].points" in str(err)
    err = _kind(_msg(_header(predictions=[_pred(keypoints=[*kps, {"x": 0, "y": 0}])])))
    assert err.kind == "too_many_keypoints"
    fat = {"x": 1, "y": 2, **{f"f{i}": i for i in range(codec.MAX_KEYPOINT_FIELDS - 1)}}
    assert _kind(_msg(_header(predictions=[_pred(keypoints=[fat])]))).kind == "too_many_keypoints"


def test_header_of_many_containers_is_refused_before_parsing() -> None:
    """A header of nested or repeated empty arrays (cheap to send, ~30x dearer per byte to
    parse than a valid header) is refused by counting brackets: no parse happens."""
    flat = b"[" + b"[]," * 100_000 + b"[]]"
    err = _kind([b"det/cam", flat])
    assert err.kind == "too_complex" and "limit" in str(err)
    assert _kind([b"det/cam", b"[" * 5000 + b"]" * 5000]).kind == "too_complex"
    # The densest valid header (single-digit vertices) stays well within the limit.
    pts = [{"x": 1, "y": 2} for _ in range(codec.MAX_POLYGON_POINTS)]
    decode_detections(_msg(_header(predictions=[_pred(points=pts)] * 20)), max_predictions=20)


def test_header_longer_than_max_header_bytes_is_refused() -> None:
    body = json.dumps(_header()).encode() + b" " * codec.MAX_HEADER_BYTES
    err = _kind([b"det/cam", body], max_bytes=2 * codec.MAX_HEADER_BYTES)
    assert err.kind == "oversize" and "header" in str(err)


@pytest.mark.parametrize(
    "colour",
    [
        ["NESTED", 1, 2],  # 1000 levels deep: parse_color_bgr's repr raised RecursionError
        ["x" * 1_000_000, 1, 2],
        [1, 2, 256],
        [1, 2, True],
        [1.0, 2, 3],
        "x" * 1_000_000,
    ],
    ids=["nested", "long string item", "256", "bool", "float", "long string"],
)
def test_background_colour_is_three_ints_or_a_short_string(colour: Any) -> None:
    """Only ProtocolError escapes, and its message stays short whatever the value."""
    body = json.dumps(_header(params={"background_color": colour})).encode()
    nested = b"[" * 1000 + b"]" * 1000 + b" " * 10_000  # spaces: not refused as too_complex
    parts = [b"det/cam", body.replace(b'"NESTED"', nested)]
    err = _kind(parts, max_bytes=4 << 20)
    assert err.kind in ("bad_value", "too_long")
    assert len(str(err)) < 200


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u202e", "\ufeff", "\u200b", "\u0085"])
def test_format_and_separator_characters_are_refused(char: str) -> None:
    """Characters that can forge or hide log lines (line/paragraph separators, bidi overrides,
    BOM, zero-width), as a class name: refused, and the error quotes them as ASCII escapes."""
    err = _kind(_msg(_header(predictions=[_pred(**{"class": f"car{char}x"})])))
    assert err.kind == "bad_string"
    assert str(err).isascii() and char not in str(err)


def test_error_messages_quote_at_most_a_short_prefix() -> None:
    """Every quoted value is cut to MAX_QUOTE_CHARS and escaped to ASCII."""
    for header in (
        _header(params={"\u2028" + "k" * 10_000: 1}),  # unknown parameter name
        _header(predictions=[_pred(**{"class": "\u202e" * 300})]),
        _header(predictions=[_pred(x="\u2028" * 10_000)]),
        _header(v="v" * 10_000),
    ):
        err = _kind(_msg(header), max_bytes=1 << 20)
        assert len(str(err)) < 250 and str(err).isascii(), str(err)[:300]
