"""Choosing a Source implementation from a source's URL."""

from __future__ import annotations

from streamer.config import SYNTHETIC_PREFIX, SourceConfig
from streamer.sources.av_source import AvSource
from streamer.sources.base import RetryPolicy, Source
from streamer.sources.cv_source import CvSource, is_webcam
from streamer.sources.synthetic import SyntheticSource


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
