"""streamer.client: tapped frames in, detections out (sync, asyncio, supervision), against the
real pipeline."""

from __future__ import annotations

import asyncio
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
    to_predictions,
)
from streamer.config import parse_config
from streamer.detections.codec import decode_detections, encode_detections
from streamer.pipeline import Pipeline, accounting_balance
from streamer.types import BitmapMask


def test_tap_frames_decode_their_picture_only_when_asked(endpoint: Any) -> None:
    """A detector that needs only the size (or forwards the bytes) never pays for conversion;
    a bad picture fails where the picture is used, not at receipt."""
    tap = endpoint()
    ctx: zmq.Context[Any] = zmq.Context.instance()
    pub = ctx.socket(zmq.PUSH)
    pub.bind(tap)
    i420 = np.random.default_rng(1).integers(0, 255, 48 * 64, np.uint8)
    good = b'{"v":1,"source_id":"cam","frame_id":7,"pts":7,"captured_at":1.5,'
    good += b'"width":64,"height":32,"encoding":"raw-i420"}'
    try:
        with FrameSubscriber(tap, mode="pull") as frames:
            pub.send_multipart([b"frame/cam", good, i420.tobytes()])
            pub.send_multipart([b"frame/cam", good.replace(b"i420", b"gif"), b"junk"])
            frame, bad = frames.recv(5), frames.recv(5)
    finally:
        pub.close(linger=0)
    assert frame is not None and bad is not None
    assert (frame.width, frame.height, frame.frame_id, frame.captured_at) == (64, 32, 7, 1.5)
    assert bytes(frame.payload) == i420.tobytes()
    want = cv2.cvtColor(i420.reshape(48, 64), cv2.COLOR_YUV2BGR_I420)
    assert np.array_equal(frame.image, want)
    assert frame.image is frame.image  # converted once
    assert (bad.width, bad.height) == (64, 32)
    with pytest.raises(ValueError, match="unknown image encoding 'raw-gif'"):
        _ = bad.image


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
