"""One camera: everything the pipeline keeps for one source, in one object, so that adding or
removing a camera at run time is one operation and nothing of it can be left behind.

A Camera owns its source (the decode thread), its loop-side counters, its live settings (crop
parameters, class filter, max_fps), its health watches and its tap-room event; the pipeline owns
the shared stages (ring, tap, crop thread, publishers) and wires cameras to them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from streamer.colors import parse_color_bgr
from streamer.config import SourceConfig, StreamerConfig
from streamer.health import PairingWatch, ShedWatch
from streamer.metrics import SourceCounters
from streamer.sources.base import Source
from streamer.sources.factory import make_source
from streamer.supervise import Supervisor
from streamer.types import CropParams, Frame


@dataclass
class Camera:
    """One source and its state. Built from its config with `Camera.build`."""

    cfg: SourceConfig
    source: Source
    #: Live settings (mask_opacity, background_color, classes, max_fps), changed by `patch`.
    settings: dict[str, Any]
    #: (crop parameters, class filter or None for all), replaced whole by `patch`.
    crop: tuple[CropParams, frozenset[str] | None]
    pairing_watch: PairingWatch
    shed_watch: ShedWatch
    counters: SourceCounters = field(default_factory=SourceCounters)
    #: A live camera's frames are handed on in its decode thread (`Pipeline._take`): its
    #: counters change under this lock, and are read under it, so that they always agree.
    feed_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Its final counters have been taken (removed): a frame its decode thread still hands
    #: on (a read that outlived the stop) is not counted any more.
    removed: bool = False
    #: Set when a frame of this camera leaves the tap queue (a lossless source waits on it).
    tap_room: asyncio.Event = field(default_factory=asyncio.Event)
    #: A lossless source's tapped frames that no detector took yet, in order (with their
    #: messages), and the task that sends them as soon as one does (`Pipeline._tap_later`).
    tap_waiting: deque[tuple[Frame, list[Any]]] = field(default_factory=deque)
    tap_later: asyncio.Task[None] | None = None
    #: The size of its frames when they are larger than the whole memory budget (none is
    #: taken: /healthz says so), else 0.
    oversized: int = 0
    #: When its next frame may be tapped (tap.max_fps).
    next_tap_at: float = 0.0
    feeder: asyncio.Task[None] | None = None
    feed_supervisor: Supervisor | None = None  # runs `feeder`'s body again if it raises
    ended: bool = False  # its source ended by itself (a file played once)

    @classmethod
    def build(cls, src: SourceConfig, cfg: StreamerConfig) -> Camera:
        crop = cfg.crop_for(src.id)
        settings = {
            "mask_opacity": crop.mask_opacity,
            "background_color": crop.background_color,
            "classes": src.classes,
            "max_fps": src.max_fps,
        }
        return cls(
            cfg=src,
            source=make_source(src),
            settings=settings,
            crop=_crop_settings(settings),
            # With a tap, frames are sent to detectors from the start: a detector that never
            # answers is a problem. Without one (a detector reading the camera itself), the
            # check arms at the first pairing.
            pairing_watch=PairingWatch(armed=cfg.tap is not None),
            shed_watch=ShedWatch(cfg.health.shed_window_s, cfg.health.shed_share),
        )

    @property
    def id(self) -> str:
        return self.cfg.id

    def patch(self, changes: dict[str, Any]) -> None:
        """Apply validated live changes (a parsed SourcePatch) from the next frame on."""
        self.settings.update(changes)
        self.crop = _crop_settings(self.settings)  # one assignment: the crop thread reads it
        if "max_fps" in changes:
            self.source.max_fps = changes["max_fps"]


def _crop_settings(settings: dict[str, Any]) -> tuple[CropParams, frozenset[str] | None]:
    params = CropParams(settings["mask_opacity"], parse_color_bgr(settings["background_color"]))
    classes = settings["classes"]
    return params, None if classes is None else frozenset(classes)
