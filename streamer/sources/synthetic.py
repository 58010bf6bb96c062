"""A synthetic camera: moving licence plates and coloured blobs, rendered frame by frame, encoded
to H.264 and decoded again with PyAV, so downstream stages see exactly what a real stream gives.

The scene is deterministic for a seed: `SyntheticScene.objects(n)` is the ground truth of frame n
(tests and the OCR check compare against it).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

from streamer.config import SyntheticSpec
from streamer.sources.base import Source

# No O, I, Q or 0: easily confused on real plates and by OCR, so real plates leave them out too.
PLATE_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ123456789"
PLATE_TEXT_LEN = 7
BLOB_COLOURS_BGR = ((40, 40, 220), (40, 190, 40), (220, 90, 30))


@dataclass(frozen=True, slots=True)
class SceneObject:
    """Ground truth of one drawn object: class, plate text (plates only), box x0, y0, x1, y1."""

    class_name: str
    text: str | None
    box: tuple[int, int, int, int]


class SyntheticScene:
    """Deterministic moving plates and blobs. Plates drive across the picture left to right and
    come back with a new random text; blobs bounce."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        w, h = spec.width, spec.height
        self.plate_w = max(40, w * 11 // 64)
        self.plate_h = max(12, self.plate_w * 2 // 7)
        ramp = np.linspace(30, 90, w, dtype=np.uint8)
        self.background = np.repeat(np.repeat(ramp[None, :, None], h, 0), 3, 2)
        self._blob_r = max(6, h // 14)

    def _plate_text(self, lane: int, lap: int) -> str:
        rnd = random.Random(f"{self.spec.seed}:{lane}:{lap}")
        return "".join(rnd.choice(PLATE_CHARS) for _ in range(PLATE_TEXT_LEN))

    def objects(self, n: int) -> list[SceneObject]:
        """Ground truth for frame `n`."""
        s, w, h = self.spec, self.spec.width, self.spec.height
        out = []
        lanes = max(1, s.plates)
        for lane in range(s.plates):
            speed = w / (4.0 + lane) / s.fps  # pixels per frame: crosses in 4..(4+plates) s
            travel = w + self.plate_w
            pos = n * speed + lane * travel / lanes
            lap, off = divmod(pos, travel)
            x0 = int(off) - self.plate_w
            y0 = int((lane + 0.5) * h / lanes - self.plate_h / 2)
            box = (x0, y0, x0 + self.plate_w, y0 + self.plate_h)
            out.append(SceneObject("plate", self._plate_text(lane, int(lap)), box))
        r = self._blob_r
        for i in range(s.blobs):
            period_x, period_y = 2 * (w - 2 * r), 2 * (h - 2 * r)
            px = (n * (5 + 2 * i) + 97 * i) % period_x
            py = (n * (3 + i) + 53 * i) % period_y
            cx = r + (px if px < w - 2 * r else period_x - px)
            cy = r + (py if py < h - 2 * r else period_y - py)
            out.append(SceneObject("blob", None, (cx - r, cy - r, cx + r, cy + r)))
        return out

    def render(self, n: int) -> np.ndarray:
        """BGR (height, width, 3) picture of frame `n`."""
        img = self.background.copy()
        scale = self.plate_h / 40.0
        blob_index = 0
        # Blobs first, so they never hide a plate: the demo's plates must stay readable.
        for obj in sorted(self.objects(n), key=lambda o: o.class_name == "plate"):
            x0, y0, x1, y1 = obj.box
            if obj.class_name == "plate":
                cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (235, 235, 235), cv2.FILLED)
                cv2.rectangle(img, (x0 + 2, y0 + 2), (x1 - 3, y1 - 3), (60, 60, 60), 1)
                assert obj.text is not None
                (tw, th), _ = cv2.getTextSize(obj.text, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
                org = (x0 + (x1 - x0 - tw) // 2, y0 + (y1 - y0 + th) // 2)
                cv2.putText(
                    img,
                    obj.text,
                    org,
                    cv2.FONT_HERSHEY_SIMPLEX,
                    scale,
                    (20, 20, 20),
                    2,
                    cv2.LINE_AA,
                )
            else:
                colour = BLOB_COLOURS_BGR[blob_index % len(BLOB_COLOURS_BGR)]
                blob_index += 1
                cv2.circle(
                    img,
                    ((x0 + x1) // 2, (y0 + y1) // 2),
                    (x1 - x0) // 2,
                    colour,
                    cv2.FILLED,
                    cv2.LINE_AA,
                )
        return img


class SyntheticSource(Source):
    """Renders, H.264-encodes and decodes the synthetic scene at its frame rate."""

    def __init__(
        self, source_id: str, url: str, *, max_fps: float | None = None, realtime: bool = True
    ) -> None:
        super().__init__(source_id, max_fps=max_fps)
        self.spec = SyntheticSpec.from_url(url)
        self.scene = SyntheticScene(self.spec)
        self.realtime = realtime
        self.lossless = not realtime

    def _session(self) -> None:
        spec = self.spec
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = spec.width, spec.height, "yuv420p"
        enc.time_base = Fraction(1, spec.fps)
        enc.framerate = Fraction(spec.fps, 1)
        enc.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "20"}
        dec = av.CodecContext.create("h264", "r")
        start = time.monotonic()
        n = 0
        while not self._stop.is_set():
            if self.realtime:
                delay = start + n / spec.fps - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            vf = av.VideoFrame.from_ndarray(self.scene.render(n), format="bgr24")
            vf = vf.reformat(format="yuv420p")
            vf.pts = n
            vf.time_base = enc.time_base
            for packet in enc.encode(vf):
                t0 = time.perf_counter()
                outs = dec.decode(packet)
                if self.decode_observer is not None:
                    self.decode_observer(time.perf_counter() - t0)
                for out in outs:
                    t = float(out.pts or 0) / spec.fps if out.pts is not None else n / spec.fps
                    self._offer(t, out)
            n += 1
