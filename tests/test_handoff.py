"""The decode thread -> loop hand-off: drop-oldest for live sources, waiting for lossless ones."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from streamer.sources.base import Handoff, SourceStats
from streamer.types import Frame


def _frame(i: int) -> Frame:
    y = np.zeros((2, 2), np.uint8)
    return Frame("cam", i, i, 0.0, 2, 2, "gray", (y,), 4)


def test_full_handoff_drops_the_oldest_and_counts_it() -> None:
    async def main() -> list[int]:
        stats = SourceStats()
        h = Handoff(asyncio.get_running_loop(), stats, maxlen=2)
        for i in range(5):
            h.put(_frame(i))
        assert stats.dropped_handoff == 3
        h.end()
        got = []
        while len(h):
            got.append((await h.get()).frame_id)
        return got

    assert asyncio.run(main()) == [3, 4]


def test_lossless_producer_waits_for_room_then_goes_on() -> None:
    async def main() -> None:
        stats = SourceStats()
        h = Handoff(asyncio.get_running_loop(), stats, maxlen=2)
        never = threading.Event()
        put_times: list[float] = []

        def produce() -> None:
            for i in range(6):
                h.put(_frame(i), wait_unless=never)
                put_times.append(time.monotonic())
            h.end()

        producer = threading.Thread(target=produce)
        producer.start()
        await asyncio.sleep(0.3)
        assert len(put_times) == 2 and h.waiting_for_room  # blocked on the third frame
        got = []
        for _ in range(6):
            got.append((await h.get()).frame_id)
            await asyncio.sleep(0.01)
        await asyncio.to_thread(producer.join, 5)
        assert got == list(range(6)) and stats.dropped_handoff == 0
        assert not h.waiting_for_room

    asyncio.run(main())


def test_a_stop_releases_a_waiting_producer_and_the_frame_is_counted() -> None:
    async def main() -> None:
        stats = SourceStats()
        h = Handoff(asyncio.get_running_loop(), stats, maxlen=1)
        stop = threading.Event()
        h.put(_frame(0), wait_unless=stop)
        producer = threading.Thread(target=h.put, args=(_frame(1),), kwargs={"wait_unless": stop})
        producer.start()
        await asyncio.sleep(0.2)
        assert producer.is_alive()
        stop.set()
        await asyncio.to_thread(producer.join, 2)
        assert not producer.is_alive()
        assert stats.dropped_handoff == 1  # the oldest made room: nothing vanished uncounted
        assert (await h.get()).frame_id == 1

    asyncio.run(main())
