"""The supervisor: a body that raises is run again after a bounded, doubling back-off; restarts
are counted; a crash loop is reported; stopping and cancelling end it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from streamer.supervise import REPEATED_FAILURES, Supervisor


class Flaky:
    """Raises the first `failures` times it is called, then returns (or waits for `release`)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.times: list[float] = []

    def __call__(self) -> None:
        self.calls += 1
        self.times.append(time.monotonic())
        if self.calls <= self.failures:
            raise ValueError(f"failure {self.calls}")


def test_thread_body_restarted_with_doubling_back_off_then_returns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sup = Supervisor("worker", base_s=0.02, cap_s=0.05)
    body = Flaky(4)
    with caplog.at_level(logging.WARNING, logger="streamer.supervise"):
        sup.run(body, threading.Event())
    assert body.calls == 5 and sup.restarts == 4
    gaps = [b - a for a, b in zip(body.times, body.times[1:], strict=False)]
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04  # 0.02, 0.04, then capped at 0.05
    assert all(g >= 0.05 for g in gaps[2:])
    assert sup.last_error == "ValueError: failure 4"
    # Logged once for the kind, with the traceback; the repeats are only counted.
    records = [r for r in caplog.records if "worker failed" in r.getMessage()]
    assert len(records) == 1 and records[0].exc_info is not None
    assert sup.problem() == "failing repeatedly: ValueError: failure 4 (4 restarts)"
    sup.healthy_after_s = 0.0  # ... until the body has run that long since its last restart
    assert sup.problem() is None


def test_stop_ends_the_back_off_at_once() -> None:
    sup = Supervisor("worker", base_s=30.0, cap_s=30.0)
    stop = threading.Event()
    body = Flaky(100)
    t = threading.Thread(target=sup.run, args=(body, stop))
    t.start()
    deadline = time.monotonic() + 5
    while not sup.backing_off and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sup.backing_off and "restarting after ValueError" in (sup.problem() or "")
    stop.set()
    t.join(5)
    assert not t.is_alive() and body.calls == 1


def test_a_body_that_ran_long_enough_starts_the_back_off_afresh() -> None:
    sup = Supervisor("worker", base_s=0.01, cap_s=1.0, healthy_after_s=0.0)
    body = Flaky(REPEATED_FAILURES - 1)
    sup.run(body, threading.Event())
    # Every failure counted as after a healthy run: never a crash loop, always the base delay.
    gaps = [b - a for a, b in zip(body.times, body.times[1:], strict=False)]
    assert sup.restarts == REPEATED_FAILURES - 1 and all(g < 0.5 for g in gaps)
    assert sup.problem() is None


def test_repeated_failures_are_reported_even_if_each_run_was_long() -> None:
    """A body that fails now and then (each run longer than healthy_after_s, so never "in a
    row") is still reported once it failed REPEATED_FAILURES times within the window."""
    sup = Supervisor("worker", base_s=0.01, cap_s=0.01, healthy_after_s=0.0)
    sup.run(Flaky(REPEATED_FAILURES), threading.Event())
    problem = sup.problem() or ""
    assert problem.startswith(f"failed {REPEATED_FAILURES} times in ") and "ValueError" in problem
    sup.failure_window_s = 0.0  # failures older than the window no longer count
    assert sup.problem() is None


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_a_base_exception_ends_the_thread_body_and_is_reported(exc: BaseException) -> None:
    """A BaseException that is not an Exception is not restarted (it means "stop"), but it is
    recorded: problem() reports it for good, so /healthz turns unhealthy."""
    sup = Supervisor("worker", base_s=0.01)

    def body() -> None:
        raise exc

    with pytest.raises(type(exc)):
        sup.run(body, threading.Event())
    assert sup.restarts == 0 and sup.fatal is not None
    assert (sup.problem() or "").startswith(f"stopped for good by {type(exc).__name__}")


def test_a_base_exception_in_a_thread_is_reported() -> None:
    """The crop thread's case: SystemExit raised in a thread ends it silently (threading ignores
    SystemExit), so only the supervisor can tell."""
    sup = Supervisor("worker", base_s=0.01)

    def body() -> None:
        raise SystemExit("bye")

    ended: list[BaseException] = []

    def thread_main() -> None:
        try:
            sup.run(body, threading.Event())
        except SystemExit as e:  # what threading would swallow
            ended.append(e)

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(5)
    assert not t.is_alive() and len(ended) == 1
    assert sup.problem() == "stopped for good by SystemExit: bye (0 restarts before)"


def test_a_base_exception_ends_an_async_body_and_is_reported() -> None:
    async def main() -> Supervisor:
        sup = Supervisor("task", base_s=0.01)

        async def body() -> None:
            raise SystemExit("bye")

        with pytest.raises(SystemExit):
            await sup.run_async(body)
        return sup

    sup = asyncio.run(main())
    assert sup.problem() == "stopped for good by SystemExit: bye (0 restarts before)"


def test_async_body_restarted_and_cancellation_ends_it() -> None:
    async def main() -> tuple[int, int]:
        sup = Supervisor("task", base_s=0.01, cap_s=0.02)
        calls = 0
        running = asyncio.Event()

        async def body() -> None:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError("boom")
            running.set()
            await asyncio.sleep(3600)

        task = asyncio.create_task(sup.run_async(body))
        await asyncio.wait_for(running.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return calls, sup.restarts

    assert asyncio.run(main()) == (3, 2)
