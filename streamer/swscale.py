"""FFmpeg's scaler contexts, kept per thread (a reformatter is not thread-safe) and per
conversion: a context is rebuilt whenever what it converts changes, so each conversion a
thread makes in turn (cameras of different sizes sharing a tap worker, a decode thread's range
conversion) keeps its own.

Every conversion runs in the calling thread alone (`THREADS`): swscale's default splits each
picture across worker threads of its own (one per core), woken for every picture. That
finishes a picture sooner on idle cores (a 4K full-range picture to video range in 4.4-6.2 ms
against 6.4-7.6 ms on this 2-core box) but saves no CPU, and streamer's conversions run beside
a decoder per camera (docs/benchmarks.md)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from av.video.reformatter import VideoReformatter

SCALERS_PER_THREAD = 16  # the least recently used goes beyond this
THREADS = 1  # swscale's own threads per conversion: none besides the caller's

_local = threading.local()


def scaler(key: tuple[Any, ...]) -> VideoReformatter:
    """This thread's swscale context for `key` (what it converts from and to)."""
    scalers: OrderedDict[tuple[Any, ...], VideoReformatter] | None = getattr(
        _local, "scalers", None
    )
    if scalers is None:
        scalers = _local.scalers = OrderedDict()
    found = scalers.get(key)
    if found is None:
        found = scalers[key] = VideoReformatter()
        if len(scalers) > SCALERS_PER_THREAD:
            scalers.popitem(last=False)
    else:
        scalers.move_to_end(key)
    return found
