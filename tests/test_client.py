"""streamer.client: tapped frames in, detections out (sync, asyncio, supervision), against the
real pipeline."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import cv2
import numpy as np
import pytest
import supervision as sv
import zmq

from streamer.client import (
    AsyncCropSubscriber,
    AsyncDetectionSender,
    AsyncFrameSubscriber,
    Crop,
    FrameSubscriber,
    MalformedMessageError,
    TapFrame,
    to_predictions,
)
from streamer.config import parse_config
from streamer.detections.codec import decode_detections, encode_detections
from streamer.pipeline import Pipeline, accounting_balance
from streamer.types import BitmapMask


def test_tap_frames_decode_their_picture_only_when_asked(endpoint: Any) -> None:
    """A detector that needs only the size (or forwards the bytes) never pays for conversion;
    a message whose picture is not what its header declares is skipped at receipt and counted
    (the loop goes on), and a compressed picture that does not decode fails where it is used,
    with the client's own error."""
    tap = endpoint()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pub = ctx.socket(zmq.PUSH)
    pub.bind(tap)
    i420 = np.random.default_rng(1).integers(0, 255, 48 * 64, np.uint8)
    good = b'{"v":1,"source_id":"cam","frame_id":7,"pts":7,"captured_at":1.5,'
    good += b'"width":64,"height":32,"encoding":"raw-i420"}'
    jpeg = cv2.imencode(".jpg", np.zeros((32, 64, 3), np.uint8))[1].tobytes()
    broken = jpeg[:300] + b"\0" * (len(jpeg) - 300)  # its header intact, its data not
    try:
        with FrameSubscriber(tap, mode="pull") as frames:
            pub.send_multipart([b"frame/cam", good.replace(b"i420", b"gif"), b"junk"])
            pub.send_multipart([b"frame/cam", good, i420.tobytes()[:-1]])  # a byte short
            pub.send_multipart([b"frame/cam", good, i420.tobytes()])
            pub.send_multipart([b"frame/cam", good.replace(b"raw-i420", b"jpeg"), broken])
            frame, bad = frames.recv(5), frames.recv(5)
            malformed = frames.malformed
    finally:
        pub.close(linger=0)
    assert frame is not None and bad is not None and malformed == 2
    assert (frame.width, frame.height, frame.frame_id, frame.captured_at) == (64, 32, 7, 1.5)
    assert bytes(frame.payload) == i420.tobytes()
    want = cv2.cvtColor(i420.reshape(48, 64), cv2.COLOR_YUV2BGR_I420)
    assert np.array_equal(frame.image, want)
    assert frame.image is frame.image  # converted once
    assert (bad.width, bad.height) == (64, 32)
    try:
        image = bad.image  # (libjpeg may make something of it: then it is the declared size)
        assert image.shape == (32, 64, 3)
    except MalformedMessageError as e:
        assert "jpeg" in str(e)


def test_supervision_detections_become_predictions_with_masks() -> None:
    mask = np.zeros((2, 40, 60), bool)
    mask[0, 5:10, 5:20] = True
    det = sv.Detections(
        xyxy=np.array([[5, 5, 20, 10], [30, 20, 50, 40]], float),
        confidence=np.array([0.9, 0.4]),
        class_id=np.array([2, 7]),
        tracker_id=np.array([11, 12]),
        mask=mask,
        data={"class_name": np.array(["car", "person"])},
    )
    preds, parts = to_predictions(det)
    assert preds[0] == {
        "x": 12.5,
        "y": 7.5,
        "width": 15.0,
        "height": 5.0,
        "confidence": 0.9,
        "class_id": 2,
        "class": "car",
        "tracker_id": 11,
        "mask_part": 0,
    }
    assert preds[1]["class"] == "person" and preds[1]["mask_part"] == 1
    decoded = decode_detections(encode_detections("s", 1, (60, 40), preds, payload=parts))
    m = decoded.predictions[0].mask
    assert isinstance(m, BitmapMask) and np.array_equal(m.data > 0, mask[0])


def test_async_client_round_trip_through_pipeline(endpoint: Any) -> None:
    tap, dets, pub = endpoint(), endpoint(), endpoint()
    cfg = parse_config(
        {
            "sources": [{"id": "cam", "url": "lavfi:testsrc2=size=320x240:rate=30"}],
            "detections": {"bind": dets},
            "tap": {"bind": tap, "encoding": "jpeg", "width": 160},
            "publish": [{"bind": pub, "encoding": "png"}],
        }
    )
    pipeline = Pipeline(cfg)

    async def detector(stop: asyncio.Event) -> None:
        async with AsyncFrameSubscriber(tap) as frames, AsyncDetectionSender(dets) as sender:
            async for frame in frames:
                assert frame.image.shape == (120, 160, 3)
                det = sv.Detections(
                    xyxy=np.array([[40.0, 30.0, 80.0, 60.0]]),
                    class_id=np.array([3]),
                    confidence=np.array([0.8]),
                )
                await sender.send(frame, det)
                if stop.is_set():
                    return

    async def main() -> list[Any]:
        run = asyncio.create_task(pipeline.run())
        stop = asyncio.Event()
        got: list[Crop] = []
        async with AsyncCropSubscriber(pub) as crops:
            det_task = asyncio.create_task(detector(stop))
            while len(got) < 10:
                got.append(await asyncio.wait_for(crops.recv(), 10))
            stop.set()
            await asyncio.wait_for(det_task, 10)
        pipeline.stop()
        await asyncio.wait_for(run, 15)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    for crop in got:
        # Detector boxes at 160x120 are scaled x2 back to the 320x240 frame.
        assert crop.header["origin"] == {"x": 80, "y": 60, "frame_width": 320, "frame_height": 240}
        assert crop.image.shape == (60, 80, 3) and crop.header["encoding"] == "png"
        assert crop.header["class"] == "3"
    src = pipeline.stats()["sources"]["cam"]
    assert accounting_balance(src) == 0, src
    assert threading.active_count() < 20


def _parts(header: Any, payload: bytes) -> list[zmq.Frame]:
    return [zmq.Frame(b"frame/cam"), zmq.Frame(json.dumps(header).encode()), zmq.Frame(payload)]


def test_a_picture_that_declares_another_size_is_refused_before_it_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """678 bytes of lossless WebP decode to a 4000x4000 picture (48 MB; 16383x16383 at most,
    805 MB): a message whose header says 1x1 is refused from the picture's own header, before
    anything decodes it, as a tapped frame and as a crop."""
    from streamer.client import parse_crop, parse_tap_frame

    bomb = cv2.imencode(
        ".webp", np.zeros((4000, 4000, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101]
    )[1]
    assert len(bomb) < 2000
    monkeypatch.setattr(cv2, "imdecode", lambda *a: pytest.fail("decoded"))
    tap = {"v": 1, "source_id": "cam", "frame_id": 1, "captured_at": 1.0}
    tap |= {"width": 1, "height": 1, "encoding": "webp"}
    with pytest.raises(MalformedMessageError, match=r"webp of \(4000, 4000\)"):
        parse_tap_frame(_parts(tap, bomb.tobytes()))
    crop = {**tap, "origin": {"x": 0, "y": 0}}
    with pytest.raises(MalformedMessageError, match=r"webp of \(4000, 4000\)"):
        parse_crop(_parts(crop, bomb.tobytes()))
    with pytest.raises(MalformedMessageError, match="more than 100 pixels"):
        parse_crop(_parts({**crop, "width": 4000, "height": 4000}, bomb.tobytes()), max_pixels=100)


HOSTILE_VALUES: list[Any] = [
    None,
    True,
    -1,
    0,
    1,
    2,
    3,
    7,
    64,
    1 << 15,
    1 << 40,
    10**400,
    1e300,
    float("nan"),
    1.5,
    "",
    "x",
    "cam",
    "\ud800",
    "a/b",
    "é" * 70,
    [1],
    {"x": 1},
    "raw-i420",
    "raw-bgr24",
    "png",
    "jpeg",
    "webp",
    "gif",
]


def test_hostile_tap_frames_and_crops_raise_only_the_clients_errors() -> None:
    """Every field a TapFrame or a Crop reads, and its picture, set to hostile values (fixed
    seed, 4,000 messages): parsing, reading the fields, decoding the picture and answering the
    frame raise MalformedMessageError or ProtocolVersionError, never TypeError, KeyError,
    cv2.error, UnicodeEncodeError or OverflowError."""
    import random

    from streamer.client import (
        ProtocolVersionError,
        _detection_message,
        parse_crop,
        parse_tap_frame,
    )

    rng = random.Random(15)
    png = cv2.imencode(".png", np.zeros((3, 2, 3), np.uint8))[1].tobytes()
    payloads = [b"", b"\0" * 6, b"\0" * 9, b"\0" * 18, png, png[:20], b"\x89PNG\r\n\x1a\n" * 3]
    base = {"v": 1, "source_id": "cam", "frame_id": 1, "captured_at": 1.0, "width": 2}
    base |= {"height": 2, "encoding": "raw-i420"}
    accepted = 0
    for _ in range(4000):
        header: dict[str, Any] = dict(base)
        if rng.random() < 0.5:
            header["origin"] = {"x": rng.choice(HOSTILE_VALUES), "y": rng.choice([0, 1, -1])}
        for key in rng.sample([*base, "origin"], rng.randint(1, 3)):
            header[key] = rng.choice(HOSTILE_VALUES)
        if rng.random() < 0.1:
            del header[rng.choice(list(header))]
        parts = _parts(header, rng.choice(payloads))
        parse = parse_tap_frame if rng.random() < 0.5 else parse_crop
        try:
            item = parse(parts)
            _ = (item.width, item.height, item.source_id, item.frame_id, item.image)
            if isinstance(item, TapFrame):
                _ = item.captured_at
                _detection_message(item, [])
            accepted += 1
        except (MalformedMessageError, ProtocolVersionError):
            pass
    assert accepted > 20  # the good ones still pass
