"""Telling look-alike characters apart (O from 0, I from 1) by their shape, not their neighbours.

PP-OCR's recognizers have learnt that letters come with letters and digits with digits: an O
between digits is read as 0 in most crops, a 0 between letters as O in a third
(docs/benchmarks.md, "OCR"). Every crop of a plate shows the same neighbours, so the mistake
repeats and no vote undoes it. The model's features at the step where it reads the character
still describe its shape; a logistic regression per pair, trained on those features from lines
of random characters (so neighbours say nothing) in 135 fonts that are not the benchmark's
(scripts/train_lookalikes.py), decides between the two characters of a pair wherever the model
read one of them. Pure given the weights; the weights are package data.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

WEIGHTS_FILE = "lookalikes_ppocrv6.npz"


@dataclass(frozen=True, slots=True)
class PairModel:
    """A logistic regression choosing between `pair[0]` (below 0) and `pair[1]` (above) from a
    step's features and the model's own log-odds of the two."""

    pair: str
    mean: npt.NDArray[np.float32]  # (features + 1,) standardisation
    scale: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]  # (features + 1,)
    bias: float

    def second(self, features: npt.NDArray[np.float32], log_odds: float) -> bool:
        """Whether the step with these features is the pair's second character."""
        x = (np.append(features, np.float32(log_odds)) - self.mean) / self.scale
        return float(x @ self.weights) + self.bias > 0


class Lookalikes:
    """The pair models for one recognizer, restricted to the pairs a charset holds whole."""

    def __init__(self, models: list[PairModel], charset: str, features: int) -> None:
        self.models = models
        self.features = features
        # charset column (1-based, 0 is blank) -> (model, column of its first, of its second)
        self._by_column: dict[int, tuple[PairModel, int, int]] = {}
        for m in models:
            if m.mean.shape != (features + 1,) or m.weights.shape != (features + 1,):
                raise ValueError(f"pair {m.pair!r}: weights are not for {features} features")
            if all(ch in charset for ch in m.pair):
                a, b = (charset.index(ch) + 1 for ch in m.pair)
                self._by_column[a] = self._by_column[b] = (m, a, b)

    def resolve(
        self,
        runs: list[tuple[int, int, int]],
        summed: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
    ) -> list[int]:
        """The charset columns of `runs` ((column, first step, last step) from the best path
        over `summed`, the (T, 1 + charset) probabilities), each one of a pair re-decided from
        `features` (T, self.features) at the run's most probable step."""
        out = []
        for column, t0, t1 in runs:
            found = self._by_column.get(column)
            if found is None:
                out.append(column)
                continue
            model, a, b = found
            peak = t0 + int(np.argmax(summed[t0 : t1 + 1, column]))
            seg = summed[t0 : t1 + 1]
            log_odds = float(np.log(seg[:, b].sum() + 1e-12) - np.log(seg[:, a].sum() + 1e-12))
            out.append(b if model.second(features[peak], log_odds) else a)
        return out


def load(charset: str, features: int, sha256: str, path: Path | None = None) -> Lookalikes:
    """The pair models in `path` (default: the shipped WEIGHTS_FILE), which must have
    `sha256`, for `charset`, for a model with `features` features per step. Raises OSError
    when the file cannot be read and ValueError when it is not the one recorded."""
    source = path or resources.files("streamer.ocr").joinpath(WEIGHTS_FILE)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{WEIGHTS_FILE} has sha256 {digest}, not the recorded {sha256}")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        models = [
            PairModel(
                str(pair),
                z[f"{pair}_mean"].astype(np.float32),
                z[f"{pair}_scale"].astype(np.float32),
                z[f"{pair}_weights"].astype(np.float32),
                float(z[f"{pair}_bias"]),
            )
            for pair in z["pairs"]
        ]
    return Lookalikes(models, charset, features)
