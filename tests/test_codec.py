from __future__ import annotations

import json
import math
from typing import Any

import pytest

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
