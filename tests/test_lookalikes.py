"""The look-alike models (streamer/ocr/lookalikes.py): O/0 and I/1 re-decided from PP-OCRv6's
features, the CTC runs they act on, the model's extra output, and the training script."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.ocr import lookalikes
from streamer.ocr.ctc import DEFAULT_CHARSET, best_runs, run_confidence
from streamer.ocr.lookalikes import Lookalikes, PairModel
from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import (
    LOOKALIKES_SHA256,
    PPOCRV6_FEATURE_SIZE,
    RecognizerUnavailable,
    ppocrv6,
)

ROOT = Path(__file__).resolve().parent.parent
COL = {ch: i + 1 for i, ch in enumerate(DEFAULT_CHARSET)}  # charset column of each character


def _summed(columns: list[int]) -> np.ndarray:
    """(T, 37) probabilities whose best path is `columns`, 0.9 at the best column."""
    out = np.full((len(columns), 1 + len(DEFAULT_CHARSET)), 0.1 / 36, np.float32)
    out[np.arange(len(columns)), columns] = 0.9
    return out


def test_best_runs_are_the_characters_of_the_best_path_with_their_steps() -> None:
    s = _summed([0, COL["A"], COL["A"], 0, COL["A"], COL["7"], COL["7"], 0])
    assert best_runs(s) == [(COL["A"], 1, 2), (COL["A"], 4, 4), (COL["7"], 5, 6)]
    assert run_confidence(s, best_runs(s)) == pytest.approx(0.9)
    assert best_runs(_summed([0, 0])) == [] and run_confidence(_summed([0]), []) == 0.0


def _by_first_feature(pair: str, features: int = 4) -> PairModel:
    """A pair model that picks the pair's second character when feature 0 is positive."""
    weights = np.zeros(features + 1, np.float32)
    weights[0] = 1.0
    ones = np.ones(features + 1, np.float32)
    return PairModel(pair, np.zeros(features + 1, np.float32), ones, weights, 0.0)


def test_resolve_redecides_only_the_pairs_characters_from_their_peak_step() -> None:
    pairs = Lookalikes([_by_first_feature("O0"), _by_first_feature("I1")], DEFAULT_CHARSET, 4)
    columns = [COL["O"], COL["O"], 0, COL["A"], 0, COL["0"], 0, COL["I"], COL["8"]]
    s = _summed(columns)
    s[1, COL["O"]] = 0.95  # the O run's peak is its second step
    feats = np.zeros((len(columns), 4), np.float32)
    feats[0, 0], feats[1, 0] = -1.0, 2.0  # the peak says "the pair's second": 0
    feats[3, 0] = 5.0  # A is not in a pair: untouched whatever its features
    feats[5, 0] = -3.0  # the 0 is re-decided as O
    feats[7, 0] = 1.0  # the I as 1
    feats[8, 0] = -1.0
    got = pairs.resolve(best_runs(s), s, feats)
    assert "".join(DEFAULT_CHARSET[c - 1] for c in got) == "0AO18"


def test_pairs_apply_only_where_the_charset_holds_both_characters() -> None:
    charset = "ABCO123"  # O without 0; both I and 1 missing an I
    pairs = Lookalikes([_by_first_feature("O0"), _by_first_feature("I1")], charset, 4)
    s = np.full((1, 1 + len(charset)), 0.01, np.float32)
    s[0, charset.index("O") + 1] = 0.9
    feats = np.full((1, 4), 9.0, np.float32)
    assert pairs.resolve(best_runs(s), s, feats) == [charset.index("O") + 1]
    with pytest.raises(ValueError, match="not for 8 features"):
        Lookalikes([_by_first_feature("O0", features=4)], DEFAULT_CHARSET, 8)


def test_the_shipped_weights_are_checked_and_cover_both_pairs() -> None:
    loaded = lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, LOOKALIKES_SHA256)
    assert [m.pair for m in loaded.models] == ["O0", "I1"]
    with pytest.raises(ValueError, match=r"lookalikes_ppocrv6\.npz has sha256"):
        lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, "0" * 64)
    with pytest.raises(ValueError, match="not for 64 features"):
        lookalikes.load(DEFAULT_CHARSET, 64, LOOKALIKES_SHA256)


def test_a_tampered_weights_file_makes_the_recognizer_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streamer.ocr.recognizers.LOOKALIKES_SHA256", "f" * 64)
    with pytest.raises(RecognizerUnavailable, match=r"look-alike models.*--no-lookalikes"):
        ppocrv6()
    assert ppocrv6(pairs=False).pairs is None


def _line(text: str, font: str, height: int, rng: random.Random) -> np.ndarray:
    """`text` drawn dark on light in a DejaVu font (the OCR benchmark's fonts, which the
    training script never draws with), `height` px high, a little blurred."""
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{font}", int(height * 0.62))
    left, top, right, bottom = face.getbbox(text)
    image = Image.new("RGB", (right - left + height // 2, height), (230, 232, 225))
    pos = (height // 4 - left, (height - (bottom - top)) // 2 - top)
    ImageDraw.Draw(image).text(pos, text, font=face, fill=(25, 25, 30))
    out = np.asarray(image)[:, :, ::-1]
    return np.asarray(cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 0.8)), np.uint8)


def test_the_extra_output_leaves_the_probabilities_as_they_were() -> None:
    with_pairs, plain = ppocrv6(), ppocrv6(pairs=False)
    line = prepare(_line("K0OI1Z", "DejaVuSans-Bold.ttf", 40, random.Random(1)), None)
    probs, feats = with_pairs.outputs(line)
    plain_probs, no_feats = plain.outputs(line)
    assert no_feats is None and feats is not None
    assert feats.shape == (probs.shape[0], PPOCRV6_FEATURE_SIZE)
    np.testing.assert_array_equal(probs, plain_probs)


def test_pair_models_read_o_0_i_1_among_the_other_kind_better_on_unseen_fonts() -> None:
    """Lines whose O sits between digits, 0 between letters, I among digits and 1 among
    letters (where the model's neighbour habit misleads it), in the benchmark's DejaVu fonts:
    the pair models read more of those characters right than the model alone, and no fewer
    lines."""
    rng = random.Random(7)
    with_pairs, plain = ppocrv6(), ppocrv6(pairs=False)
    letters, digits = "ABCDEFGHJKLMNPRSTUVWXYZ", "2345789"
    right = {"pairs": 0, "plain": 0}
    lines = {"pairs": 0, "plain": 0}
    fonts = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
    n = 0
    for i in range(48):
        odd = "O0I1"[i % 4]
        kind = digits if odd in "OI" else letters
        text = "".join(rng.choice(kind) for _ in range(2)) + odd + rng.choice(kind)
        image = prepare(_line(text, fonts[i % 3], rng.choice((24, 32, 40)), rng), None)
        for name, rec in (("pairs", with_pairs), ("plain", plain)):
            got = rec.read(image).text
            lines[name] += got == text
            right[name] += len(got) == len(text) and got[2] == odd
        n += 1
    assert right["pairs"] > right["plain"], (right, n)
    assert lines["pairs"] >= lines["plain"], (lines, n)


def test_train_lookalikes_writes_weights_the_reader_loads(tmp_path: Path) -> None:
    """The training script, on a few lines in one font package (fonts-liberation2), writes
    weights that lookalikes.load accepts under the sha256 it prints."""
    out = tmp_path / "w.npz"
    res = subprocess.run(
        [
            *(sys.executable, str(ROOT / "scripts" / "train_lookalikes.py")),
            *("--lines", "120", "--packages", "fonts-liberation2", "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fonts in" in res.stdout and "unseen families" in res.stdout, res.stdout
    digest = re.search(r"sha256 ([0-9a-f]{64})", res.stdout)
    assert digest, res.stdout
    loaded = lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, digest[1], path=out)
    assert {m.pair for m in loaded.models} == {"O0", "I1"}
