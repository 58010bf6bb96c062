"""Supervision: a long-lived body (a thread's loop, an asyncio task) that raises is run again
after a back-off, and every restart is counted and logged (with its traceback, once per kind).

One small piece for every long-lived worker, instead of try/except sprinkled through the stages:
the crop thread and the preview's render tasks run their loops through a Supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from streamer.metrics import LogOnce

log = logging.getLogger(__name__)

RESTART_BASE_S = 0.05  # the first restart waits this long, doubling on each failure in a row
RESTART_CAP_S = 5.0  # ... up to this
HEALTHY_AFTER_S = 30.0  # a body that ran this long before failing starts the back-off afresh
CRASH_LOOP_FAILURES = 3  # this many failures in a row (none running HEALTHY_AFTER_S): unhealthy


class Supervisor:
    """Runs a body until it returns, restarting it (after a back-off) whenever it raises.

    `restarts` counts the restarts; `last_error` describes the last failure; `problem()` says
    why the body is not healthy now (backing off, or failed CRASH_LOOP_FAILURES times in a row
    and not yet running for `healthy_after_s` since), or None.
    Counters are written by the thread running the body and read by others: plain ints.
    """

    def __init__(
        self,
        name: str,
        *,
        base_s: float = RESTART_BASE_S,
        cap_s: float = RESTART_CAP_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
    ) -> None:
        self.name = name
        self.base_s = base_s
        self.cap_s = cap_s
        self.healthy_after_s = healthy_after_s
        self.restarts = 0
        self.last_error: str | None = None
        self.backing_off = False
        self._streak = 0  # failures in a row
        self._started_at = time.monotonic()  # when the body last (re)started
        self._warn = LogOnce(log)

    def _failed(self, exc: Exception, ran_s: float) -> float:
        """Count a failure; return how long to wait before the restart."""
        if ran_s >= self.healthy_after_s:
            self._streak = 0
        delay = min(self.cap_s, self.base_s * 2.0**self._streak)
        self._streak += 1
        self.restarts += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:500]
        self._warn(
            f"{self.name}-{type(exc).__name__}",
            "%s failed (%s); restarting in %.2f s (restart %d)",
            self.name,
            self.last_error,
            delay,
            self.restarts,
            exc_info=exc,
        )
        return delay

    def problem(self) -> str | None:
        if self.backing_off:
            return f"restarting after {self.last_error} ({self.restarts} restarts)"
        running_s = time.monotonic() - self._started_at
        if self._streak >= CRASH_LOOP_FAILURES and running_s < self.healthy_after_s:
            return f"failing repeatedly: {self.last_error} ({self.restarts} restarts)"
        return None

    def run(self, body: Callable[[], None], stop: threading.Event) -> None:
        """Run `body` in this thread until it returns or `stop` is set, restarting it when it
        raises (the back-off wait ends early when `stop` is set)."""
        while not stop.is_set():
            started = self._started_at = time.monotonic()
            try:
                body()
                return
            except Exception as e:
                delay = self._failed(e, time.monotonic() - started)
            self.backing_off = True
            stop.wait(delay)
            self.backing_off = False

    async def run_async(self, body: Callable[[], Awaitable[None]]) -> None:
        """Await `body()` until it returns, restarting it when it raises; cancelling this
        coroutine cancels the body and ends supervision."""
        while True:
            started = self._started_at = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = self._failed(e, time.monotonic() - started)
            self.backing_off = True
            try:
                await asyncio.sleep(delay)
            finally:
                self.backing_off = False
