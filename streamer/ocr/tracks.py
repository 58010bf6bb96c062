"""Voting over a track's readings: the majority text so far, and whether it is settled.
Pure and bounded (tracks remembered, distinct texts per track)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_TRACKS = 1024  # tracks remembered, least recently seen forgotten first
MAX_TEXTS_PER_TRACK = 32  # distinct readings kept per track; the weakest goes first


class TrackVotes:
    """Readings per track; a track's reading is the text read most often, ties going to the
    one with the higher summed confidence, and it is `stable` once `votes` readings agree."""

    def __init__(self, votes: int, max_tracks: int = MAX_TRACKS) -> None:
        if votes < 1:
            raise ValueError(f"votes must be >= 1, got {votes}")
        self.votes = votes
        self.max_tracks = max_tracks
        # track -> text -> (readings, summed confidence)
        self._tracks: OrderedDict[Hashable, dict[str, tuple[int, float]]] = OrderedDict()

    def add(self, key: Hashable, text: str, confidence: float = 1.0) -> tuple[str, bool]:
        """Count one reading of track `key` with its `confidence` in [0, 1] (an empty `text`
        counts for nothing); returns the track's reading ("" if none yet) and whether it is
        stable."""
        counts = self._tracks.get(key)
        if counts is None:
            counts = self._tracks[key] = {}
        self._tracks.move_to_end(key)
        if text:
            n, total = counts.get(text, (0, 0.0))
            counts[text] = (n + 1, total + min(1.0, max(0.0, confidence)))
            if len(counts) > MAX_TEXTS_PER_TRACK:
                del counts[min(counts, key=counts.__getitem__)]
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)
        return self.reading(key)

    def reading(self, key: Hashable) -> tuple[str, bool]:
        """The reading of `key` and whether it is stable; ("", False) if unknown."""
        counts = self._tracks.get(key)
        if not counts:
            return "", False
        text = max(counts, key=counts.__getitem__)
        return text, counts[text][0] >= self.votes

    def stable(self, key: Hashable) -> bool:
        return self.reading(key)[1]

    def __len__(self) -> int:
        return len(self._tracks)
