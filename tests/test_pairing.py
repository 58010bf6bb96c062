from __future__ import annotations

import numpy as np

from streamer.pairing import Pairer
from streamer.types import Frame


def frame(fid: int, nbytes: int = 100, source: str = "a") -> Frame:
    y = np.zeros((2, 2), np.uint8)
    return Frame(source, fid, fid, 0.0, 2, 2, "gray", (y,), nbytes)


def pairer(**kw: float) -> Pairer:
    args = {"max_frames": 4, "max_bytes": 10_000, "max_age_s": 5.0, **kw}
    return Pairer(
        ["a", "b"],
        max_frames=int(args["max_frames"]),
        max_bytes=int(args["max_bytes"]),
        max_age_s=args["max_age_s"],
    )


def test_exact_match_takes_the_frame_out() -> None:
    p = pairer()
    for i in range(3):
        p.add_frame(frame(i), now=0.0)
    m = p.match("a", 1, now=0.1)
    assert m.outcome == "paired" and m.frame is not None and m.frame.frame_id == 1
    s = p.stats("a")
    assert (s.added, s.paired, s.in_ring, s.expired, s.ring_bytes) == (3, 1, 2, 0, 200)


def test_out_of_order_duplicate_late_unknown() -> None:
    p = pairer()
    for i in range(4):
        p.add_frame(frame(i), now=0.0)
    assert p.match("a", 3, 0.0).outcome == "paired"
    assert p.match("a", 0, 0.0).outcome == "paired"  # out of order is fine
    assert p.match("a", 3, 0.0).outcome == "duplicate"
    assert p.match("a", 9, 0.0).outcome == "unknown_frame"
    assert p.match("zz", 1, 0.0).outcome == "unknown_source"
    for i in range(4, 10):
        p.add_frame(frame(i), now=0.0)  # frames 1, 2 and 4, 5 overflow the ring
    assert p.match("a", 1, 0.0).outcome == "late"
    s = p.stats("a")
    assert s.expired == 4 and s.in_ring == 4 and s.paired == 2


def test_ring_bounded_by_bytes_and_age() -> None:
    p = pairer(max_bytes=250)
    for i in range(3):
        p.add_frame(frame(i), now=float(i))
    assert p.stats("a").in_ring == 2 and p.stats("a").expired == 1
    p.expire(now=6.5)  # frame 1 (added at 1.0) is older than 5 s, frame 2 is not
    assert p.stats("a").in_ring == 1 and p.stats("a").expired == 2
    assert p.match("a", 2, now=6.5).outcome == "paired"


def test_sources_are_independent_and_flush_expires_all() -> None:
    p = pairer()
    p.add_frame(frame(0, source="a"), 0.0)
    p.add_frame(frame(0, source="b"), 0.0)
    assert p.match("b", 0, 0.0).outcome == "paired"
    assert p.stats("a").in_ring == 1
    p.flush()
    assert p.stats("a").in_ring == 0 and p.stats("a").expired == 1
    assert p.stats("b").expired == 0


def tframe(fid: int, at: float) -> Frame:
    y = np.zeros((2, 2), np.uint8)
    return Frame("a", fid, fid, at, 2, 2, "gray", (y,), 100)


def test_timestamp_pairing_nearest_within_tolerance() -> None:
    p = pairer(max_frames=10)
    for i in range(5):
        p.add_frame(tframe(i, 100.0 + i / 10), now=0.0)  # 100.0, 100.1, ... 100.4
    m = p.match_time("a", 100.21, 0.02, now=0.0)
    assert m.outcome == "paired" and m.frame is not None and m.frame.frame_id == 2
    assert p.match_time("a", 100.205, 0.02, now=0.0).outcome == "duplicate"  # nearest is paired
    assert p.match_time("a", 100.35, 0.02, now=0.0).outcome == "late"  # nothing within 20 ms
    assert p.match_time("a", 100.9, 0.02, now=0.0).outcome == "unknown_frame"  # in the future
    assert p.match_time("b", 100.0, 0.02, now=0.0).outcome == "unknown_frame"  # nothing decoded
    assert p.match_time("zz", 100.0, 0.02, now=0.0).outcome == "unknown_source"


def test_timestamp_pairing_exact_tie_takes_the_earlier_frame() -> None:
    p = pairer(max_frames=10)
    p.add_frame(tframe(0, 10.0), 0.0)
    p.add_frame(tframe(1, 10.2), 0.0)
    m = p.match_time("a", 10.1, 0.1, now=0.0)
    assert m.frame is not None and m.frame.frame_id == 0
    m = p.match_time("a", 10.1, 0.1, now=0.0)  # the tie again: the earlier is paired already
    assert m.outcome == "duplicate"


def test_timestamp_pairing_outside_tolerance_edges() -> None:
    p = pairer(max_frames=10)
    p.add_frame(tframe(0, 10.0), 0.0)
    assert p.match_time("a", 10.0 + 0.0201, 0.02, now=0.0).outcome == "unknown_frame"
    assert p.match_time("a", 10.0 - 0.0201, 0.02, now=0.0).outcome == "late"
    assert p.match_time("a", 10.0 + 0.02, 0.02, now=0.0).outcome == "paired"  # inclusive bound


def test_ring_expired_frames_and_late_detection_after_age() -> None:
    p = pairer(max_age_s=1.0)
    p.add_frame(frame(0), now=0.0)
    assert p.match("a", 0, now=1.5).outcome == "late"
    assert p.stats("a").expired == 1


def test_withdrawn_frame_is_as_if_never_added() -> None:
    """The tap puts a frame in the ring before sending it (its detections may come back before
    the send returns); a send that fails takes it back without counting it anywhere."""
    p = Pairer(["a"], max_frames=1, max_bytes=10_000, max_age_s=5.0)
    p.add_frame(frame(1), now=0.0)
    p.add_frame(frame(2), now=0.0, bound=False)  # over the bound, but nothing evicted yet
    assert p.stats("a").in_ring == 2 and p.stats("a").expired == 0
    p.withdraw(frame(2))
    p.withdraw(frame(7))  # never added: nothing happens
    s = p.stats("a")
    assert (s.added, s.in_ring, s.ring_bytes, s.expired, s.paired) == (1, 1, 100, 0, 0)
    assert p.match("a", 2, now=0.1).outcome == "late"  # a frame number already seen, not held
    assert p.match("a", 1, now=0.1).outcome == "paired"
    p.add_frame(frame(3), now=0.2, bound=False)
    p.add_frame(frame(4), now=0.2, bound=False)
    p.bound("a", now=0.2)  # sent: now the bounds apply
    s = p.stats("a")
    assert (s.in_ring, s.expired) == (1, 1) and p.match("a", 4, now=0.3).outcome == "paired"


def test_global_budget_takes_from_the_fullest_ring_first() -> None:
    """One budget for every camera: past it, the camera holding the most bytes loses its oldest
    frame; a camera within its fair share keeps its frames."""
    p = Pairer(["a", "b"], max_frames=100, max_bytes=10_000, max_age_s=5.0, max_total_bytes=1_000)
    for i in range(8):
        p.add_frame(frame(i, 100, "a"), now=0.0)
    for i in range(2):
        p.add_frame(frame(i, 100, "b"), now=0.0)
    assert p.total_bytes == 1_000
    p.add_frame(frame(2, 100, "b"), now=0.0)  # over budget: "a" holds the most
    a, b = p.stats("a"), p.stats("b")
    assert p.total_bytes == 1_000
    assert (a.in_ring, a.expired, a.expired_budget) == (7, 1, 1)
    assert (b.in_ring, b.expired) == (3, 0)
    assert p.match("a", 0, 0.0).outcome == "late"  # the oldest went
    # Every frame is accounted for, per source.
    for s in (a, b):
        assert s.added == s.paired + s.expired + s.in_ring
        assert s.expired == s.expired_age + s.expired_full + s.expired_budget + s.expired_shutdown


def test_the_budget_holds_without_a_tap_even_for_a_lone_frame() -> None:
    """Without a tap (frames go straight into the ring), a live frame goes in and the fullest
    ring's oldest makes room, another camera's only frame too and, last of all, the frame just
    added: the budget holds (before, every camera kept one frame past it)."""
    p = Pairer(["a", "b"], max_frames=10, max_bytes=10_000, max_age_s=5.0, max_total_bytes=150)
    p.add_frame(frame(0, 100, "a"), now=0.0)
    p.add_frame(frame(0, 100, "b"), now=0.0)  # "a"'s only frame makes room
    assert (p.stats("a").expired_budget, p.stats("b").in_ring, p.total_bytes) == (1, 1, 100)
    p.add_frame(frame(1, 200, "b"), now=0.0)  # alone past the budget: it goes too
    assert (p.stats("b").in_ring, p.stats("b").expired_budget, p.total_bytes) == (0, 2, 0)


def test_room_for_counts_the_ring() -> None:
    p = Pairer(["a", "b"], max_frames=3, max_bytes=250, max_age_s=5.0, max_total_bytes=500)
    p.add_frame(frame(0, 100, "a"), now=0.0)
    assert p.room_for("a", 50, 2)
    assert not p.room_for("a", 100, 3)  # the ring's count
    assert not p.room_for("a", 100, 2)  # the ring's bytes: 100 + 200 > 250


def test_sources_come_and_go() -> None:
    p = pairer()
    p.add_source("c")
    p.add_frame(frame(0, 100, "c"), now=0.0)
    p.add_frame(frame(0, 100, "a"), now=0.0)
    final = p.remove_source("c")
    assert (final.added, final.expired, final.in_ring) == (1, 1, 0)
    assert p.total_bytes == 100
    assert p.match("c", 0, 0.0).outcome == "unknown_source"


def test_the_budget_counts_every_cameras_frames_on_their_way_to_the_ring() -> None:
    """Frames admitted and not yet in their ring (`reserve`) count in the budget, every
    camera's: before, only the admitting camera's own were, and cameras together went past the
    budget (6 lossless cameras held 2.09x it)."""
    p = _budget(1000)
    p.add_frame(frame(0, 300, "a"), now=0.0)
    p.reserve("a", 300)
    assert p.budget_fits("b", 300)  # 900
    p.reserve("a", 300)
    assert not p.budget_fits("b", 300)  # 1200
    p.release("a", 300)  # (shed, or in the ring now)
    assert p.budget_fits("b", 300)


def test_a_full_budget_evicts_no_frame_that_was_sent_and_gives_room_in_turn() -> None:
    """Full: frames are turned away and none is evicted (a frame in the ring was sent to a
    detector: evicting it for another wasted the detector's work, and the first camera in the
    config lost most). The first camera turned away gets the room that frees up, even when
    another's frame comes first; asking again keeps its place."""
    p = _budget(1000)
    for i in range(10):
        p.add_frame(frame(i, 100, "a"), now=0.0)
    assert not p.budget_fits("b", 100)  # "b" is first in turn
    assert not p.budget_fits("c", 100)
    assert not p.budget_fits("b", 100)  # (still first)
    p.match("a", 0, 0.3)  # room for one frame
    assert not p.budget_fits("a", 100)  # it is "b"'s
    assert not p.budget_fits("c", 100)
    assert p.budget_fits("b", 100)
    _sent(p, frame(0, 100, "b"))
    p.match("a", 1, 0.4)
    assert not p.budget_fits("a", 100) and p.budget_fits("c", 100)  # "c"'s turn
    assert p.stats("a").expired == 0


def test_one_frame_at_a_time_is_shared_in_turn() -> None:
    """A budget with room for one frame and two cameras: each gets it in turn (before the
    turns, the rule that kept room for every other camera's next frame let neither in)."""
    p = _budget(150)
    got = {"a": 0, "b": 0}
    now = 0.0
    for i in range(20):
        for sid in ("a", "b") if i % 3 else ("b", "a"):  # out of phase now and then
            now += 0.01
            if p.budget_fits(sid, 100):
                got[sid] += 1
                p.add_frame(frame(i, 100, sid), now=now)
        for sid in ("a", "b"):  # answered
            if p.match(sid, i, now).outcome == "paired":
                break
    assert abs(got["a"] - got["b"]) <= 1 and got["a"] + got["b"] >= 19, got


def _sent(p: Pairer, f: Frame) -> None:
    """Into the ring as the tap puts a frame it admitted and sent (no room kept for turns)."""
    p.add_frame(f, now=0.0, bound=False)
    p.bound(f.source_id, now=0.0)


def _budget(total: int, lossless: frozenset[str] = frozenset()) -> Pairer:
    return Pairer(
        ["a", "b", "c"],
        max_frames=100,
        max_bytes=100_000,
        max_age_s=5.0,
        max_total_bytes=total,
        lossless=lossless,
    )


def test_the_budget_takes_from_the_camera_holding_the_most_frames_not_bytes() -> None:
    """A 4K camera ("a", one frame of 1200) beside a 1080p one ("b", frames of 300): past the
    budget, "b" gives its oldest frames, not "a" its only one. Before, the ring holding the most
    bytes gave: the 4K camera lost its only frame to every 1080p frame that overflowed."""
    p = _budget(2000)
    p.add_frame(frame(0, 1200, "a"), now=0.0)
    for i in range(3):
        p.add_frame(frame(i, 300, "b"), now=0.0)
    p.add_frame(frame(3, 300, "b"), now=0.0)  # 2400 > 2000
    a, b = p.stats("a"), p.stats("b")
    assert (a.in_ring, a.expired) == (1, 0)
    assert (b.in_ring, b.expired_budget) == (2, 2)
    assert p.total_bytes == 1800


def test_the_budget_admits_a_camera_with_large_frames_in_its_turn() -> None:
    """A 4K camera ("a", frames of 1200) beside a 1080p one ("b", frames of 300) that took the
    budget first: once "a" is turned away, "b" takes room only while it leaves enough for
    "a"'s frame, so "a" gets in as "b"'s frames pair."""
    p = _budget(2000)
    for i in range(5):
        p.add_frame(frame(i, 300, "b"), now=0.0)  # 1500
    assert not p.budget_fits("a", 1200)
    p.match("b", 0, 0.0)  # 1200 held, 800 free: "b" could fit, "a" not yet
    assert not p.budget_fits("b", 300)
    p.match("b", 1, 0.0)  # 1100 free
    assert not p.budget_fits("b", 300)
    p.match("b", 2, 0.0)  # 1400 free
    assert p.budget_fits("a", 1200)
    _sent(p, frame(0, 1200, "a"))
    assert p.stats("b").expired == 0 and p.total_bytes == 1800


def test_a_frame_larger_than_the_budget_never_fits_and_holds_nobody_back() -> None:
    p = _budget(1000)
    assert not p.budget_fits("a", 1001)
    assert p.budget_fits("b", 1000)


def test_a_camera_that_no_longer_asks_gives_up_its_turn() -> None:
    """A camera turned away that then ends, stops streaming or is turned away for another
    reason (`forget_turn`) holds no room back; one that asks less often keeps its turn."""
    p = _budget(1000)
    p.add_frame(frame(0, 900, "a"), now=0.0)
    assert not p.budget_fits("b", 200)
    assert not p.budget_fits("c", 100)  # 100 free: "b"'s turn
    p.forget_turn("b")
    assert p.budget_fits("c", 100)


def test_while_others_wait_a_camera_takes_only_room_it_leaves_for_them() -> None:
    """A camera that is not first in turn (one that asks every millisecond, a lossless file)
    takes room that frees up only while it leaves room for every waiting camera's frame, so
    each of them finds room when it next asks, however seldom (a 1 fps camera kept losing its
    turn and got 0 of 9 frames beside two 30 fps ones)."""
    p = _budget(1000)
    p.add_frame(frame(0, 1000, "a"), now=0.0)
    assert not p.budget_fits("b", 300)
    p.match("a", 0, 0.0)  # all of it free
    assert p.budget_fits("c", 400)  # and 300 left for "b"
    p.reserve("c", 400)
    assert not p.budget_fits("c", 400)  # 600 free: it would leave "b" too little
    assert p.budget_fits("b", 300)  # first: its room was there when it asked again


def test_without_a_tap_room_is_kept_for_the_first_in_turn() -> None:
    """No tap: a live frame goes in and makes room, and keeps room for the frame of the
    (lossless) camera first in turn: before, two small live cameras kept the budget full and a
    larger lossless one got 1 frame in 12 s."""
    p = _budget(1000, lossless=frozenset({"c"}))
    for i in range(4):
        p.add_frame(frame(i, 200, "a"), now=0.0)  # 800
    assert not p.budget_fits("c", 500)
    p.add_frame(frame(4, 200, "a"), now=0.0)  # makes room for itself and for "c"'s 500
    assert p.total_bytes <= 500 and p.budget_fits("c", 500)


def test_a_removed_camera_gives_back_its_turn_and_what_was_on_its_way() -> None:
    p = _budget(1000)
    p.reserve("a", 900)
    assert not p.budget_fits("a", 200)
    p.remove_source("a")
    assert p.budget_fits("b", 1000)


def test_the_budget_never_evicts_a_lossless_source() -> None:
    """A lossless source's frames wait for room instead of being evicted."""
    p = _budget(500, lossless=frozenset({"c"}))
    p.add_frame(frame(0, 100, "c"), now=0.0)
    p.add_frame(frame(1, 100, "c"), now=0.0)
    p.add_frame(frame(0, 300, "a"), now=0.0)
    p.add_frame(frame(1, 300, "a"), now=0.0)  # "a" gives its oldest
    assert (p.stats("a").in_ring, p.stats("a").expired_budget) == (1, 1)
    assert (p.stats("c").in_ring, p.stats("c").expired) == (2, 0)


def test_a_camera_served_long_ago_goes_before_those_served_since() -> None:
    """Turns go to the least recently served: a camera that asks once a second, turned away,
    goes before two that were served meanwhile, so the room that frees up is its when it next
    asks (it got 0 of 9 frames beside two 30 fps cameras, then 4 of 9 with turns in order of
    asking; now 8 of 9)."""
    p = _budget(1000)
    assert p.budget_fits("c", 500)  # served, long ago
    p.reserve("c", 500)
    for sid in ("a", "b"):
        assert p.budget_fits(sid, 250)
        p.reserve(sid, 250)
    assert not p.budget_fits("a", 250) and not p.budget_fits("b", 250)
    p.release("c", 500)  # 500 free
    assert p.budget_fits("c", 500)  # before "a" and "b", served since
    p.reserve("c", 500)
    p.release("a", 250)
    assert not p.budget_fits("c", 250)  # now it was served last: "a" and "b" first
    assert p.budget_fits("a", 250)


def test_a_camera_whose_frames_grow_past_the_budget_gives_up_its_turn() -> None:
    """A camera waiting with a frame that fits, whose next frames (a larger picture) cannot:
    its turn is given up, not kept for a frame it will never ask for (every other camera then
    had to leave room for it, and stopped for good with the budget empty)."""
    p = _budget(1000)
    p.reserve("c", 800)
    assert not p.budget_fits("a", 700)
    assert not p.budget_fits("a", 1500)  # larger than the budget now
    p.release("c", 800)
    assert p.budget_fits("b", 400) and p.budget_fits("b", 600)
