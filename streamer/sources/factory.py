"""Choosing a Source implementation from a source's URL."""

from __future__ import annotations

import re
from pathlib import Path

from streamer.config import SYNTHETIC_PREFIX, SourceConfig
from streamer.sources.av_source import LAVFI_PREFIX, AvSource
from streamer.sources.base import RetryPolicy, Source
from streamer.sources.cv_source import CvSource, is_webcam
from streamer.sources.protocols import is_live
from streamer.sources.synthetic import SyntheticSource

_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # (two letters at least: not C:)


def local_file(url: str) -> Path | None:
    """The file on this host a source's URL names, as FFmpeg opens it (a path, or one after
    ``file:``), made absolute; None for a camera, a synthetic or lavfi source, another of
    FFmpeg's protocols (``pipe:``, ``concat:``, ...) or a numbered sequence (``img%03d.png``)."""
    if url.startswith((SYNTHETIC_PREFIX, LAVFI_PREFIX)) or is_webcam(url) or is_live(url):
        return None
    path = url.removeprefix("file:")
    if (path == url and _PROTOCOL.match(url)) or "%" in path:
        return None
    return Path(path).absolute()


def make_source(cfg: SourceConfig) -> Source:
    retry = RetryPolicy(cfg.backoff_base_s, cfg.backoff_cap_s, cfg.healthy_after_s)
    if cfg.url.startswith(SYNTHETIC_PREFIX):
        return SyntheticSource(cfg.id, cfg.url, max_fps=cfg.max_fps, realtime=cfg.realtime)
    if is_webcam(cfg.url):
        return CvSource(
            cfg.id,
            cfg.url,
            max_fps=cfg.max_fps,
            width=cfg.width,
            height=cfg.height,
            fps=cfg.fps,
            open_timeout_s=cfg.open_timeout_s,
            stall_timeout_s=cfg.stall_timeout_s,
            retry=retry,
        )
    return AvSource(
        cfg.id,
        cfg.url,
        max_fps=cfg.max_fps,
        realtime=cfg.realtime,
        loop=cfg.loop,
        transport=cfg.transport,
        open_timeout_s=cfg.open_timeout_s,
        stall_timeout_s=cfg.stall_timeout_s,
        retry=retry,
        av_options=cfg.av_options,
        max_pixels=cfg.max_pixels,
    )
