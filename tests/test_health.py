from __future__ import annotations

from typing import Any

import pytest

from streamer.cli import overload_lines, status_line
from streamer.health import RECOVER_FACTOR, PairingWatch, ShedWatch, overload_shed


def test_share_over_the_window() -> None:
    w = ShedWatch(window_s=10.0)
    assert w.share() is None
    w.observe(0.0, 0, 0)
    w.observe(5.0, 150, 75)
    assert w.share() == (0.5, 150)
    for t in range(6, 40):
        w.observe(float(t), 150 + 30 * (t - 5), 75)  # no more shedding
    share, received = w.share()  # type: ignore[misc]
    assert share == pytest.approx(0.0) and received >= 300


def test_a_source_receiving_nothing_sheds_nothing() -> None:
    w = ShedWatch(window_s=10.0)
    w.observe(0.0, 10, 2)
    w.observe(1.0, 10, 2)
    assert w.share() == (0.0, 0)


def test_pairing_watch_notices_frames_that_never_pair() -> None:
    w = PairingWatch(armed=True)  # a tapped source: its frames reach a subscribed detector
    assert w.unpaired_for(0.0, 5.0) is None  # nothing yet
    w.observe(3, 0, 1.0)
    w.observe(9, 0, 4.0)
    assert w.unpaired_for(4.0, 5.0) == 3.0  # frames since 1.0, none paired
    w.observe(10, 1, 4.5)  # a pairing (an empty list counts) resets it
    assert w.unpaired_for(4.5, 5.0) == 0.0
    w.observe(10, 1, 6.0)
    w.observe(12, 1, 7.0)
    assert w.unpaired_for(7.0, 5.0) == 2.5  # since the frame added by 4.5
    # Frames stopped coming (a stalled source is reported by its own state): no verdict.
    assert w.unpaired_for(12.5, 5.0) is None


def test_unpaired_check_is_armed_by_a_first_pairing() -> None:
    """A source without a tap puts every decoded frame in its ring whether or not a detector
    exists: no verdict until something paired once (then a detector that stops answering is
    noticed)."""
    w = PairingWatch()
    for t in range(30):
        w.observe(t, 0, float(t))
    assert w.unpaired_for(29.0, 5.0) is None and w.problem(29.0, 5.0) is None
    w.observe(31, 1, 31.0)  # the detector answered once
    for t in range(32, 45):
        w.observe(t, 1, float(t))
    assert w.problem(44.0, 10.0) == (
        "detections not coming back: frames arrive but none paired for 13.0 s"
    )


def test_a_hung_detector_is_reported_while_frames_are_shed_as_busy() -> None:
    """The detector hangs: its in-flight frames fill up, the tap sheds every later frame as
    busy, so nothing enters the ring; frames still arrive (decoded), so the verdict is that
    detections are not coming back (not that the box is overloaded)."""
    w = PairingWatch(armed=True)
    w.observe(10, 10, 0.0, received=10)
    w.observe(14, 10, 1.0, received=40)  # 4 in flight, then busy
    for t in range(2, 20):
        w.observe(14, 10, float(t), received=40 + 30 * t)
    assert w.problem(19.0, 10.0) == (
        "detections not coming back: frames arrive but none paired for 19.0 s"
    )
    # Without `received`, frames seem to have stopped (as before): no verdict.
    old = PairingWatch(armed=True)
    old.observe(10, 10, 0.0)
    old.observe(14, 10, 1.0)
    for t in range(2, 20):
        old.observe(14, 10, float(t))
    assert old.problem(19.0, 10.0) is None


def test_no_detector_subscribed_to_the_tap_is_its_own_problem() -> None:
    """The detector process died: frames are not tapped (no subscriber), never enter the ring;
    /healthz says so, naming the cause."""
    w = PairingWatch(armed=True)
    w.observe(50, 50, 0.0, received=50, untaken=0)
    for t in range(1, 16):
        w.observe(50, 50, float(t), received=50 + 30 * t, untaken=30 * t)
    assert w.problem(15.0, 10.0) == (
        "no detector takes the tap's frames (none subscribed or reading) for 14.0 s"
    )
    assert w.problem(15.0, 20.0) is None  # not yet for that long
    w.observe(51, 50, 16.0, received=600, untaken=450)  # a detector subscribed again
    assert w.untaken_for(16.0, 10.0) is None


def _source(**over: Any) -> dict[str, Any]:
    """A source's stats snapshot with nothing shed, as `Pipeline.stats` gives it."""
    s: dict[str, Any] = {
        "decoded": 0,
        "skipped_fps": 0,
        "skipped_decode": 0,
        "dropped_handoff": 0,
        "not_tapped_by": {},
        "expired_by": {"age": 0, "full": 0, "budget": 0, "shutdown": 0},
    }
    s.update(over)
    return s


def test_frames_skipped_on_purpose_are_not_in_the_share() -> None:
    """A camera held to 15 of its 30 frames/s (max_fps) whose 15 are all turned away for want
    of CPU sheds all it was to serve: before, the 15 skipped counted as received, the share
    topped at exactly 0.5 and never exceeded the default limit."""
    s = _source(decoded=30, skipped_fps=15, not_tapped_by={"busy": 15})
    assert overload_shed(s) == (15, 15)
    s = _source(decoded=30, not_tapped_by={"rate": 20, "busy": 5})  # tapped at 10 frames/s
    assert overload_shed(s) == (10, 5)


def test_a_detector_missing_or_picking_frames_is_not_overload() -> None:
    # No detector subscribed: PairingWatch reports it.
    assert overload_shed(_source(decoded=30, not_tapped_by={"no_subscriber": 30})) == (0, 0)
    # The tap's socket full: a detector too slow (none connected at all is told apart by the
    # pipeline, from PairingWatch).
    assert overload_shed(_source(decoded=30, not_tapped_by={"full": 30})) == (30, 30)
    # Without a tap, the detector reads the camera and picks frames; the others expire.
    untapped = _source(decoded=30, expired_by={"age": 10, "full": 10, "budget": 2, "shutdown": 0})
    assert overload_shed(untapped, tapped=False) == (8, 0)
    assert overload_shed(untapped, tapped=True) == (30, 22)


def test_overloaded_has_hysteresis() -> None:
    """On above the limit, off only below RECOVER_FACTOR x the limit: a share hovering at the
    limit (40-59% shed measured at 8-10 cameras) does not flap the readiness probe."""
    w = ShedWatch(window_s=1.0, limit=0.5)  # sampled each second: the share of the last one
    w.observe(0.0, 0, 0)
    eligible = shed = 0
    states = []
    shares = [0.3, 0.55, 0.45, 0.5, 0.42, 0.6, RECOVER_FACTOR * 0.5 - 0.05, 0.45]
    for t, share in enumerate(shares, start=1):
        eligible, shed = eligible + 100, shed + round(100 * share)
        w.observe(float(t), eligible, shed)
        states.append(w.overloaded)
    assert states == [False, True, True, True, True, True, False, False]
    assert not ShedWatch(window_s=10.0).overloaded  # no limit: never


def _snapshot(decoded: int, paired: int, skipped: int, behind: float | None) -> dict[str, Any]:
    return {
        "decoded": decoded,
        "paired": paired,
        "skipped_decode": skipped,
        "skipped_fps": 0,
        "dropped_handoff": 0,
        "not_tapped_by": {"rate": 0, "full": 0},
        "expired_by": {"age": 0, "full": 0, "budget": 0, "shutdown": 0},
        "behind_s": behind,
    }


def test_the_status_line_names_cameras_that_shed_or_run_behind() -> None:
    """A line per camera that shed frames for want of capacity, or whose decoder runs over a
    second behind its schedule even though it sheds nothing; none for a camera that keeps up,
    nor for one with nothing to say of its schedule."""
    prev = {
        "tap": {},
        "sources": {k: _snapshot(0, 0, 0, None) for k in ("shedding", "behind", "fine", "webcam")},
    }
    cur = {
        "tap": {},
        "sources": {
            "shedding": _snapshot(50, 50, 10, 0.3),
            "behind": _snapshot(60, 60, 0, 3.25),
            "fine": _snapshot(60, 60, 0, 0.4),
            "webcam": _snapshot(60, 60, 0, None),
        },
    }
    lines = overload_lines(prev, cur, 2.0)
    assert lines == [
        "  shedding: decoded  25.0/s  served  25.0/s  shed: decoder/skipped 10",
        "  behind: decoded  30.0/s  served  30.0/s  behind 3.2 s  shed: none",
    ]


def test_the_status_line_counts_a_camera_added_since_from_nothing() -> None:
    """A camera added between two snapshots, or removed and added again under its id (its
    counters start over): its rates are its own since it started, never negative; before, the
    first had no line and the second showed negative frames a second."""
    prev = {"tap": {}, "sources": {"again": _snapshot(9000, 9000, 0, None)}}
    cur = {
        "tap": {},
        "sources": {"again": _snapshot(40, 20, 20, None), "new": _snapshot(30, 20, 10, None)},
    }
    assert overload_lines(prev, cur, 2.0) == [
        "  again: decoded  20.0/s  served  10.0/s  shed: decoder/skipped 20",
        "  new: decoded  15.0/s  served  10.0/s  shed: decoder/skipped 10",
    ]


def test_the_status_line_says_crops_not_cut_for_want_of_a_subscriber() -> None:
    """With nobody subscribed no crop is cut: the line says so, or 0 crops/s reads as broken
    (the demo alone); nothing is added once crops go out."""
    keys = ["decoded", "paired", "crops", "unwanted", "expired", "not_tapped", "dropped_handoff"]
    keys += ["late", "malformed", "publish_full", "no_subscriber"]
    prev = dict.fromkeys(keys, 0)
    alone = status_line(prev, {**prev, "decoded": 60, "paired": 60, "unwanted": 360}, 2.0)
    assert alone.startswith(
        "frames  30.0/s  detections  30.0/s  crops    0.0/s (180.0/s not cut: no publisher or"
        " subscriber takes them)  drops:"
    ), alone
    served = status_line(prev, {**prev, "decoded": 60, "paired": 60, "crops": 360}, 2.0)
    assert "crops  180.0/s  drops: expired 0" in served and "not cut" not in served, served
