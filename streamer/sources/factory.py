"""Choosing a Source implementation from a source's URL."""

from __future__ import annotations

from streamer.config import SourceConfig
from streamer.sources.av_source import AvFileSource
from streamer.sources.base import Source
from streamer.sources.synthetic import SYNTHETIC_PREFIX, SyntheticSource


def make_source(cfg: SourceConfig) -> Source:
    if cfg.url.startswith(SYNTHETIC_PREFIX):
        return SyntheticSource(cfg.id, cfg.url, max_fps=cfg.max_fps, realtime=cfg.realtime)
    return AvFileSource(cfg.id, cfg.url, max_fps=cfg.max_fps, realtime=cfg.realtime, loop=cfg.loop)
