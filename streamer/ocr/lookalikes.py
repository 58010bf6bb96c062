"""Telling look-alike characters apart (O from 0, I from 1) by their shape, not only their
neighbours.

PP-OCR's recognizers have learnt that letters come with letters and digits with digits: an O
between digits is read as 0 in most crops, a 0 between letters as O in a third
(docs/benchmarks.md, "OCR"). Every crop of a plate shows the same neighbours, so the mistake
repeats and no vote undoes it. The model's features at the step where it reads the character
still describe its shape. A logistic regression per pair decides between the pair's two
characters wherever the model read one of them (pair_inputs: the features there, the line's
mean features for the font's style, and the model's own log-odds). It is trained by
scripts/train_lookalikes.py on random and plate-like lines in 135 fonts that are not the
benchmark's.

It overrules the model only when its score is at least the pair's gate from 0: the gate is
where, on fonts the fit never saw, 95% of overrulings were right. Where the shape is ambiguous
(an O drawn as narrow as a 0), the model's reading, helped by the neighbours, stands. Pure given
the weights; the weights are package data.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

WEIGHTS_FILE = "lookalikes_ppocrv6.npz"


@dataclass(frozen=True, slots=True)
class PairModel:
    """A logistic regression scoring pair_inputs: above 0 for `pair[1]`, below for `pair[0]`;
    it overrules the recognizer only at least `gate` from 0."""

    pair: str
    mean: npt.NDArray[np.float32]  # (inputs,) standardisation
    scale: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]  # (inputs,)
    bias: float
    gate: float = 0.0

    def score(self, x: npt.NDArray[np.float32]) -> float:
        return float(((x - self.mean) / self.scale) @ self.weights) + self.bias

    def second(self, x: npt.NDArray[np.float32], read_second: bool) -> tuple[bool, float]:
        """Whether the character with inputs `x`, which the recognizer read as the pair's
        second when `read_second`, is the second, and this model's belief in the outcome when it
        overrules the recognizer (1.0 when it does not). Inputs that are not finite leave the
        recognizer's reading."""
        value = self.score(x) if np.isfinite(x).all() else math.nan
        if not math.isfinite(value) or (value > 0) == read_second or abs(value) < self.gate:
            return read_second, 1.0
        return value > 0, 1.0 / (1.0 + math.exp(-abs(value)))


def inputs(features: int) -> int:
    """How many inputs pair_inputs gives for a model with `features` features per step."""
    return 2 * features + 1


def line_style(
    summed: npt.NDArray[np.float32], features: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """The mean features of the line's character steps (where the best path over `summed` is
    not blank): the font's style, the same for every character of the line."""
    return np.asarray(features[summed.argmax(axis=1) != 0].mean(axis=0), np.float32)


def pair_inputs(
    summed: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    style: npt.NDArray[np.float32],
    run: tuple[int, int, int],
    first: int,
    second: int,
) -> npt.NDArray[np.float32]:
    """What a pair model decides on for `run` (column, first step, last step) of the best path
    over `summed` (T, 1 + charset), from the model's `features` (T, F):
    - the features at the run's most probable step (the character's shape, and its neighbours);
    - the line's `style` (line_style: whether an O this narrow is an O depends on how wide the
      font draws everything);
    - the model's log-odds of the pair's `second` column against its `first`, each summed over
      the run's steps.
    The training script computes its samples with this too."""
    column, t0, t1 = run
    seg = summed[t0 : t1 + 1]
    peak = t0 + int(np.argmax(seg[:, column]))
    log_odds = np.log(seg[:, second].sum() + 1e-12) - np.log(seg[:, first].sum() + 1e-12)
    return np.concatenate([features[peak], style, [log_odds]]).astype(np.float32)


class Lookalikes:
    """The pair models for one recognizer, restricted to the pairs a charset holds whole."""

    def __init__(self, models: list[PairModel], charset: str, features: int) -> None:
        self.models = models
        # charset column (1-based, 0 is blank) -> (model, column of its first, of its second)
        self._by_column: dict[int, tuple[PairModel, int, int]] = {}
        for m in models:
            n = inputs(features)
            if m.mean.shape != (n,) or m.weights.shape != (n,) or m.scale.shape != (n,):
                raise ValueError(f"pair {m.pair!r}: weights are not for {features} features")
            if all(ch in charset for ch in m.pair):
                a, b = (charset.index(ch) + 1 for ch in m.pair)
                self._by_column[a] = self._by_column[b] = (m, a, b)

    @property
    def active(self) -> list[str]:
        """The pairs that apply to the charset (both their characters in it)."""
        return [m.pair for m in self.models if any(f[0] is m for f in self._by_column.values())]

    def resolve(
        self,
        runs: list[tuple[int, int, int]],
        summed: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
    ) -> list[tuple[int, float]]:
        """The characters of `runs` ((column, first step, last step) from the best path over
        `summed`, the (T, 1 + charset) probabilities) as (charset column, probability at the
        run's first step). A character of a pair is re-decided from `features` (T, F) and the
        model's log-odds (pair_inputs). When the pair model overrules the recognizer, the
        probability is the recognizer's belief that it is one of the two times the pair
        model's belief in its choice."""
        out = []
        style = None
        for run in runs:
            column, t0, _ = run
            found = self._by_column.get(column)
            if found is None:
                out.append((column, float(summed[t0, column])))
                continue
            model, a, b = found
            if style is None:  # once a line, and only for a line with a pair's character
                style = line_style(summed, features)
            x = pair_inputs(summed, features, style, run, a, b)
            second, belief = model.second(x, column == b)
            chosen = b if second else a
            if chosen == column:
                out.append((column, float(summed[t0, column])))
            else:
                out.append((chosen, float(summed[t0, a] + summed[t0, b]) * belief))
        return out


def load(
    charset: str, features: int, sha256: str, model_sha256: str, path: Path | None = None
) -> Lookalikes:
    """The pair models in `path` (default: the shipped WEIGHTS_FILE), which must have
    `sha256` and have been trained on the recognizer model whose sha256 is `model_sha256`, for
    `charset`, for a model with `features` features per step. Raises OSError when the file
    cannot be read and ValueError when it is not the one recorded or not for that model."""
    name = str(path) if path else WEIGHTS_FILE
    source = path or resources.files("streamer.ocr").joinpath(WEIGHTS_FILE)
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{name} has sha256 {digest}, not the recorded {sha256}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, EOFError) as e:  # not an npz, or one holding objects
        raise ValueError(f"{name} is not a look-alike weights file: {e}") from e
    pairs = [str(pair) for pair in arrays.get("pairs", [])]
    keys = ["model_sha256"]
    keys += [f"{p}_{k}" for p in pairs for k in ("mean", "scale", "weights", "bias", "gate")]
    missing = [key for key in keys if key not in arrays]
    if not pairs or missing:
        raise ValueError(f"{name} is not a look-alike weights file: missing {missing or 'pairs'}")
    trained_on = str(arrays["model_sha256"])
    if trained_on != model_sha256:
        raise ValueError(
            f"{name} was trained on the recognizer model {trained_on}, not {model_sha256}: "
            "retrain it (scripts/train_lookalikes.py)"
        )
    models = [
        PairModel(
            pair,
            arrays[f"{pair}_mean"].astype(np.float32),
            arrays[f"{pair}_scale"].astype(np.float32),
            arrays[f"{pair}_weights"].astype(np.float32),
            float(arrays[f"{pair}_bias"]),
            float(arrays[f"{pair}_gate"]),
        )
        for pair in pairs
    ]
    return Lookalikes(models, charset, features)
