"""CTC decoding of a text recognizer's per-timestep character probabilities, restricted to the
characters a plate may hold. Pure.

A CTC recognizer (PP-OCR's) gives, for each of T horizontal steps, a probability for each entry
of its dictionary (thousands of Chinese, Latin and other characters, plus "blank"). Decoding the
best path over the whole dictionary and filtering afterwards loses information: where the best
entry is one no plate holds (a Chinese character, a '|'), the plate character that came second is
thrown away with it, and where the model splits its belief between 'S', 's' and 'Ｓ' (full-width),
each counts alone. CharsetDecoder first adds up the probabilities of the dictionary entries that
stand for the same plate character (its NFKC form; upper-cased when the charset has no lower
case), then takes the best path over blank and the charset only. restrict_text does what can
be done for a reader that decodes on its own (Tesseract): keep the charset's characters.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_CHARSET = string.ascii_uppercase + string.digits
MAX_CHARSET = 256  # characters a charset may hold
MAX_TEXT_CHARS = 64  # a reading longer than this is cut


def fold_case(charset: str) -> bool:
    """Whether readings are upper-cased before they are matched to `charset`: when it has no
    lower-case letter."""
    return not any(ch.islower() for ch in charset)


def restrict_text(raw: str, charset: str) -> str:
    """A text read without a charset (Tesseract's) as a reading over it: NFKC (full-width forms
    become ASCII), upper-cased if fold_case, only `charset`'s characters kept (spaces, dashes
    and stray border marks dropped), at most MAX_TEXT_CHARS."""
    text = unicodedata.normalize("NFKC", raw[: 4 * MAX_TEXT_CHARS])
    if fold_case(charset):
        text = text.upper()
    return "".join(ch for ch in text if ch in charset)[:MAX_TEXT_CHARS]


MAX_CHARSET_ARG = 4096  # characters a --charset value may have before ranges are expanded
RANGE_CLASSES = (string.ascii_uppercase, string.ascii_lowercase, string.digits)


def _expand_ranges(value: str) -> str:
    """`value` with each range X-Y (both ends ASCII upper-case letters, lower-case letters or
    digits, of the same kind, X <= Y) replaced by its characters. A '-' is literal only as the
    first or last character; anywhere else it must make a range. Raises ValueError."""
    out: list[str] = []
    i, n = 0, len(value)
    range_end = -1  # where the last range ended: a range cannot start there (A-C-E)
    while i < n:
        ch = value[i]
        if ch == "-" and 0 < i < n - 1:
            lo, hi = value[i - 1], value[i + 1]
            kind = next((k for k in RANGE_CLASSES if lo in k), None)
            if kind is None or hi not in kind or lo > hi or range_end == i - 1:
                raise ValueError(
                    f"{value[i - 1 : i + 2]!r} is not a range: ranges are X-Y with both ends "
                    "A-Z, a-z or 0-9 and X <= Y (e.g. A-Z0-9ÄÖÜ); put a literal '-' first or "
                    "last"
                )
            out.extend(kind[kind.index(lo) + 1 : kind.index(hi) + 1])
            range_end = i + 1
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def parse_charset(value: str) -> str:
    """A charset as given on a command line: its characters, with ranges such as A-Z expanded
    (_expand_ranges), NFKC-normalised, duplicates (over the whole value), whitespace and
    control characters dropped, in order. Raises ValueError when the value is longer than
    MAX_CHARSET_ARG, has a bad range, nothing is left, or more than MAX_CHARSET characters
    are."""
    if len(value) > MAX_CHARSET_ARG:
        raise ValueError(f"the charset is {len(value)} characters long, at most {MAX_CHARSET_ARG}")
    seen: dict[str, None] = {}
    for ch in unicodedata.normalize("NFKC", _expand_ranges(value)):
        if not ch.isspace() and ch.isprintable():
            seen[ch] = None
    chars = "".join(seen)
    if not chars:
        raise ValueError("the charset is empty")
    if len(chars) > MAX_CHARSET:
        raise ValueError(f"the charset has {len(chars)} characters, at most {MAX_CHARSET}")
    return chars


class CharsetDecoder:
    """Best-path CTC decoding over blank and `charset`, for a model whose output columns are
    `dictionary` (index 0 is blank)."""

    def __init__(self, dictionary: Sequence[str], charset: str = DEFAULT_CHARSET) -> None:
        self.charset = charset
        upper = fold_case(charset)
        position = {ch: i + 1 for i, ch in enumerate(charset)}
        entries = [0]  # the dictionary entries that stand for blank or a charset character
        columns = [0]  # and which: 0 blank, i the charset's i-th character (from 1)
        for i, entry in enumerate(dictionary[1:], start=1):
            norm = unicodedata.normalize("NFKC", entry)
            if norm not in position and upper:
                norm = norm.upper()
            if norm in position:
                entries.append(i)
                columns.append(position[norm])
        # The charset's characters no dictionary entry stands for: the model cannot read them.
        found = set(columns)
        self.unreadable = "".join(ch for i, ch in enumerate(charset, 1) if i not in found)
        self._entries = np.array(entries, np.intp)
        # (entries, 1 + len(charset)) one-hot: probabilities @ it adds up each character's forms
        self._to_charset = np.zeros((len(entries), len(charset) + 1), np.float32)
        self._to_charset[np.arange(len(entries)), columns] = 1.0
        self.dictionary = list(dictionary)

    def charset_probs(self, probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """`probs` (T, len(dictionary)), each row a distribution -> (T, 1 + len(charset)):
        per step, the probability of blank and of each charset character (its forms added
        up)."""
        if probs.ndim != 2 or probs.shape[1] != len(self.dictionary):
            raise ValueError(
                f"expected (T, {len(self.dictionary)}) probabilities, got {probs.shape}"
            )
        return np.asarray(probs[:, self._entries].astype(np.float32) @ self._to_charset)

    def decode(self, probs: npt.NDArray[np.float32]) -> tuple[str, float]:
        """`probs` (T, len(dictionary)), each row a distribution -> (text over the charset,
        confidence: the mean probability of its characters at the steps they were read, 0.0
        for an empty text)."""
        summed = self.charset_probs(probs)
        runs = best_runs(summed)
        return self.text(column for column, _, _ in runs), run_confidence(summed, runs)

    def text(self, columns: Iterable[int]) -> str:
        """The text of charset `columns` (1-based: 0 is blank)."""
        return "".join(self.charset[c - 1] for c in columns)

    def best_path(self, probs: npt.NDArray[np.float32]) -> str:
        """The unrestricted best path over the whole dictionary (what the model read, for
        `raw_text`)."""
        best = probs.argmax(axis=1)
        emit = best != 0
        emit[1:] &= best[1:] != best[:-1]
        return "".join(self.dictionary[i] for i in best[emit])


def best_runs(summed: npt.NDArray[np.float32]) -> list[tuple[int, int, int]]:
    """The best path over `summed` (T, 1 + charset) as the characters it emits: (charset column
    from 1, first step, last step) for each run of equal non-blank steps."""
    if len(summed) == 0:
        return []
    best = summed.argmax(axis=1)
    starts = np.flatnonzero(np.r_[True, best[1:] != best[:-1]])
    ends = np.r_[starts[1:], len(best)] - 1
    return [
        (int(best[a]), int(a), int(b)) for a, b in zip(starts, ends, strict=True) if best[a] != 0
    ]


def run_confidence(summed: npt.NDArray[np.float32], runs: list[tuple[int, int, int]]) -> float:
    """The mean probability of the runs' characters at their first steps; 0.0 for no runs."""
    if not runs:
        return 0.0
    return float(np.mean([summed[t0, column] for column, t0, _ in runs]))
