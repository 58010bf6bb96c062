"""Counters shared by the pipeline's stages, and logging a repeated failure once per kind."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

REPEAT_LOG_INTERVAL_S = 60.0


@dataclass
class SourceCounters:
    """Loop-side counters of one source (the decode thread keeps its own in SourceStats)."""

    in_tap: int = 0  # gauge: frames queued or being encoded for the tap
    not_tapped: int = 0
    detections: Counter[str] = field(default_factory=Counter)  # outcome -> messages
    crops: int = 0
    empty_box: int = 0
    no_mask: int = 0


class LogOnce:
    """Log the first occurrence of each kind of failure, then at most one summary per interval."""

    def __init__(self, logger: logging.Logger, interval_s: float = REPEAT_LOG_INTERVAL_S) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()

    def __call__(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._since[kind] += 1
            return
        repeats = self._since.pop(kind, 0)
        suffix = f" ({repeats} more since last report)" if repeats else ""
        self._log.warning(msg + suffix, *args)
        self._last[kind] = now
