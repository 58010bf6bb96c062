"""A minimal multi-object tracker for detectors that have none: tracker ids by box overlap
between consecutive frames. Pure."""

from __future__ import annotations

from typing import Any


class IouTracker:
    """Gives each detection the id of the previous frame's same-class box it overlaps most
    (IoU >= `min_iou`), or a new id; enough for the demo's smoothly moving objects."""

    def __init__(self, min_iou: float = 0.3) -> None:
        self.min_iou = min_iou
        self.next_id = 1
        self.prev: list[tuple[str, tuple[float, float, float, float], int]] = []

    @staticmethod
    def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    def update(self, preds: list[dict[str, Any]]) -> None:
        """Set ``tracker_id`` on each prediction (centre boxes)."""
        taken: set[int] = set()
        current = []
        for p in preds:
            box = (
                p["x"] - p["width"] / 2,
                p["y"] - p["height"] / 2,
                p["x"] + p["width"] / 2,
                p["y"] + p["height"] / 2,
            )
            best, best_iou = None, self.min_iou
            for cls, prev_box, tid in self.prev:
                iou = self._iou(box, prev_box)
                if cls == p["class"] and tid not in taken and iou >= best_iou:
                    best, best_iou = tid, iou
            if best is None:
                best = self.next_id
                self.next_id += 1
            taken.add(best)
            p["tracker_id"] = best
            current.append((p["class"], box, best))
        self.prev = current
