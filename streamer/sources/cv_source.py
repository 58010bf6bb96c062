"""Webcams (and other capture devices) through OpenCV."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import cv2

from streamer.errors import SourceError
from streamer.sources.base import RetryPolicy, Source
from streamer.sources.redact import url_secrets

WEBCAM_PREFIX = "webcam:"


def device_of(url: str) -> int | str:
    """``webcam:0`` -> 0, ``webcam:/dev/video2`` or ``/dev/video2`` -> the path."""
    target = url[len(WEBCAM_PREFIX) :] if url.startswith(WEBCAM_PREFIX) else url
    return int(target) if re.fullmatch(r"\d+", target) else target


def is_webcam(url: str) -> bool:
    return url.startswith(WEBCAM_PREFIX) or url.startswith("/dev/video")


class CvSource(Source):
    """A V4L2 webcam by index or device path, with optional width, height and fps requests.

    A missing device is a clear error naming it; like a camera that is down, it is retried with
    back-off, so plugging the camera in later works.
    """

    def __init__(
        self,
        source_id: str,
        url: str,
        *,
        max_fps: float | None = None,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        open_timeout_s: float = 10.0,
        stall_timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(source_id, max_fps=max_fps, retry=retry, stall_timeout_s=stall_timeout_s)
        self.device = device_of(url)
        if isinstance(self.device, str):  # OpenCV also opens URLs, passwords and all
            self.secrets = url_secrets(self.device)
        self.requested = {
            cv2.CAP_PROP_FRAME_WIDTH: width,
            cv2.CAP_PROP_FRAME_HEIGHT: height,
            cv2.CAP_PROP_FPS: fps,
        }
        self.open_timeout_s = open_timeout_s

    def _device_path(self) -> str:
        return f"/dev/video{self.device}" if isinstance(self.device, int) else self.device

    def _open(self) -> Any:
        path = self._device_path()
        if path.startswith("/dev/") and not os.path.exists(path):
            raise SourceError(f"webcam {path}: no such device")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.stall_timeout_s * 1000),
        ]
        cap = cv2.VideoCapture(self.device, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"webcam {path}: cannot open the device")
        for prop, value in self.requested.items():
            if value is not None:
                cap.set(prop, value)
        return cap

    def _session(self) -> None:
        cap = self._open()
        try:
            start = time.monotonic()
            while not self._stop.is_set():
                ok, image = cap.read()
                if not ok:
                    raise SourceError(f"webcam {self._device_path()}: read failed")
                self._offer(time.monotonic() - start, image)
        finally:
            cap.release()
