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
from collections import deque
from collections.abc import Awaitable, Callable

from streamer.metrics import LogOnce

log = logging.getLogger(__name__)

RESTART_BASE_S = 0.05  # the first restart waits this long, doubling on each failure in a row
RESTART_CAP_S = 5.0  # ... up to this
HEALTHY_AFTER_S = 30.0  # a body that ran this long before failing starts the back-off afresh
CRASH_LOOP_FAILURES = 3  # this many failures in a row (none running HEALTHY_AFTER_S): unhealthy
# ... and this many within FAILURE_WINDOW_S, however long each run lasted (a body that fails
# every minute never fails "in a row", but is no healthier for it)
REPEATED_FAILURES = 5
FAILURE_WINDOW_S = 600.0


class Supervisor:
    """Runs a body until it returns, restarting it (after a back-off) whenever it raises.

    `restarts` counts the restarts; `last_error` describes the last failure; `problem()` says
    why the body is not healthy now (backing off; failed CRASH_LOOP_FAILURES times in a row and
    not yet running for `healthy_after_s` since; failed REPEATED_FAILURES times within
    `failure_window_s`; or ended for good by a BaseException that is not an Exception, such as
    SystemExit, recorded in `fatal`), or None.
    Counters are written by the thread running the body and read by others: plain values.
    """

    def __init__(
        self,
        name: str,
        *,
        base_s: float = RESTART_BASE_S,
        cap_s: float = RESTART_CAP_S,
        healthy_after_s: float = HEALTHY_AFTER_S,
        failure_window_s: float = FAILURE_WINDOW_S,
    ) -> None:
        self.name = name
        self.base_s = base_s
        self.cap_s = cap_s
        self.healthy_after_s = healthy_after_s
        self.restarts = 0
        self.last_error: str | None = None
        self.backing_off = False
        self.fatal: str | None = None  # what ended the body for good (not restarted)
        self.failure_window_s = failure_window_s
        self._failures: deque[float] = deque(maxlen=REPEATED_FAILURES)  # when the last ones were
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
        self._failures.append(time.monotonic())
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

    def _ended(self, exc: BaseException) -> None:
        """Record a BaseException that is not an Exception (SystemExit, KeyboardInterrupt, ...):
        the body is not run again, and problem() says so from now on."""
        self.fatal = f"{type(exc).__name__}: {exc}"[:500]
        log.error("%s ended by %s; not restarted", self.name, self.fatal, exc_info=exc)

    def problem(self) -> str | None:
        if self.fatal is not None:
            return f"stopped for good by {self.fatal} ({self.restarts} restarts before)"
        if self.backing_off:
            return f"restarting after {self.last_error} ({self.restarts} restarts)"
        now = time.monotonic()
        running_s = now - self._started_at
        if self._streak >= CRASH_LOOP_FAILURES and running_s < self.healthy_after_s:
            return f"failing repeatedly: {self.last_error} ({self.restarts} restarts)"
        recent = self._failures
        if len(recent) == REPEATED_FAILURES and now - recent[0] < self.failure_window_s:
            return (
                f"failed {REPEATED_FAILURES} times in {now - recent[0]:.0f} s, last: "
                f"{self.last_error} ({self.restarts} restarts)"
            )
        return None

    def run(self, body: Callable[[], None], stop: threading.Event) -> None:
        """Run `body` in this thread until it returns or `stop` is set, restarting it when it
        raises an Exception (the back-off wait ends early when `stop` is set). Any other
        BaseException (SystemExit, KeyboardInterrupt) is recorded in `fatal` and re-raised: it
        ends this thread, and problem() reports it."""
        while not stop.is_set():
            started = self._started_at = time.monotonic()
            try:
                body()
                return
            except Exception as e:
                delay = self._failed(e, time.monotonic() - started)
            except BaseException as e:
                self._ended(e)
                raise
            self.backing_off = True
            stop.wait(delay)
            self.backing_off = False

    async def run_async(self, body: Callable[[], Awaitable[None]]) -> None:
        """Await `body()` until it returns, restarting it when it raises; cancelling this
        coroutine cancels the body and ends supervision. Any other BaseException that is not an
        Exception is recorded in `fatal` and re-raised, as in `run`."""
        while True:
            started = self._started_at = time.monotonic()
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = self._failed(e, time.monotonic() - started)
            except BaseException as e:
                self._ended(e)
                raise
            self.backing_off = True
            try:
                await asyncio.sleep(delay)
            finally:
                self.backing_off = False
