"""The look-alike models (streamer/ocr/lookalikes.py): O/0 and I/1 re-decided from PP-OCRv6's
features, the CTC runs they act on, the model's extra output, and the training script."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.ocr import lookalikes
from streamer.ocr.ctc import DEFAULT_CHARSET, best_runs, run_confidence
from streamer.ocr.lookalikes import Lookalikes, PairModel, line_style, pair_inputs
from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import (
    LOOKALIKES_SHA256,
    PPOCRV6_FEATURE_SIZE,
    PPOCRV6_MODEL,
    RAPIDOCR3_SHA256,
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
    assert best_runs(np.zeros((0, 37), np.float32)) == []


def _by_first_feature(pair: str, features: int = 4, log_odds_weight: float = 0.0) -> PairModel:
    """A pair model that picks the pair's second character when feature 0 at the character's
    peak step, plus `log_odds_weight` times the model's log-odds, is positive."""
    n = lookalikes.inputs(features)
    weights = np.zeros(n, np.float32)
    weights[0], weights[-1] = 1.0, log_odds_weight
    return PairModel(pair, np.zeros(n, np.float32), np.ones(n, np.float32), weights, 0.0)


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
    assert "".join(DEFAULT_CHARSET[c - 1] for c, _ in got) == "0AO18"
    # An overruled character carries the recognizer's belief that it is one of the pair times
    # the pair model's belief in its choice (the sigmoid of its score); any other its own.
    pair_p = 0.9 + 0.1 / 36

    def sigmoid(v: float) -> float:
        return float(1 / (1 + np.exp(-v)))

    expected = [pair_p * sigmoid(2), 0.9, pair_p * sigmoid(3), pair_p * sigmoid(1), 0.9]
    assert [p for _, p in got] == pytest.approx(expected)
    # A pair character the model agrees with keeps its own probability.
    feats[7, 0] = -1.0
    column, p = pairs.resolve(best_runs(s), s, feats)[3]
    assert column == COL["I"] and p == pytest.approx(0.9)


def test_a_pair_model_overrules_the_recognizer_only_past_its_gate() -> None:
    n = lookalikes.inputs(4)
    weights = np.zeros(n, np.float32)
    weights[0] = 1.0
    model = PairModel("O0", np.zeros(n, np.float32), np.ones(n, np.float32), weights, 0.0, 2.0)
    x = np.zeros(n, np.float32)
    x[0] = 1.5  # says 0, but not by the gate's margin: the recognizer's O stands
    assert model.second(x, read_second=False) == (False, 1.0)
    x[0] = 2.5  # past the gate: overruled
    second, belief = model.second(x, read_second=False)
    assert second and belief == pytest.approx(1 / (1 + np.exp(-2.5)))
    x[0] = -9.0  # agreeing with the recognizer's O
    assert model.second(x, read_second=False) == (False, 1.0)
    x[0] = np.nan  # inputs that are not finite leave the recognizer's reading
    assert model.second(x, read_second=True) == (True, 1.0)
    x[0], x[1] = 5.0, np.inf
    assert model.second(x, read_second=False) == (False, 1.0)
    x[1] = 0.0  # toward the pair's first character: the same margin applies
    x[0] = -1.5
    assert model.second(x, read_second=True) == (True, 1.0)
    x[0] = -2.5
    assert model.second(x, read_second=True)[0] is False


def test_the_training_chooses_the_smallest_gate_at_which_overrulings_are_right() -> None:
    """scripts/train_lookalikes.py's gate: on these samples, overrulings (score sign against
    the recognizer's reading) at |score| >= 0.75 are all right, at 0.5 one of three is wrong,
    and at 95% a smaller gate will not do."""
    from tests.conftest import load_script

    train = load_script("train_lookalikes")
    scores = np.array([3.0, -3.0, 0.5, -0.5, 1.0])
    read = np.array([False, True, False, True, True])
    truth = np.array([True, False, False, True, True])
    assert train.choose_gate(scores, read, truth) == 0.75
    np.testing.assert_array_equal(train.gated(scores, read, 0.75), [True, False, False, True, True])
    # An overruling that is wrong: the gate goes past it, so the recognizer's reading stands.
    gate = train.choose_gate(np.array([5.0]), np.array([False]), np.array([False]))
    assert gate == 5.25
    assert not train.gated(np.array([5.0]), np.array([False]), gate)[0]


def test_without_a_pair_in_the_charset_the_model_runs_alone() -> None:
    """A charset holding neither pair whole (no O or no 0, no I or no 1) needs no look-alike
    models: the recognizer is made without them and without the features output."""
    assert ppocrv6(charset="ABC123").pairs is None
    assert ppocrv6(charset="ABC0123").pairs is None  # 0 without O
    line = prepare(_line("AB0C", "DejaVuSans-Bold.ttf", 32, random.Random(2)), None)
    assert ppocrv6(charset="ABC123").outputs(line)[1] is None
    rec = ppocrv6(charset="ABCO0")
    assert rec.pairs is not None and rec.pairs.active == ["O0"]
    assert rec.outputs(line)[1] is not None


def test_pair_inputs_are_the_peak_the_lines_style_and_the_runs_log_odds() -> None:
    s = _summed([COL["O"], COL["O"], COL["O"], 0, COL["7"]])
    s[:3, COL["0"]] = [0.05, 0.3, 0.05]  # 0 has 0.4 over the run, O 2.75
    s[2, COL["O"]] = 0.95  # the peak: step 2
    feats = np.arange(20, dtype=np.float32).reshape(5, 4)
    x = pair_inputs(s, feats, line_style(s, feats), (COL["O"], 0, 2), COL["O"], COL["0"])
    assert x.shape == (lookalikes.inputs(4),)
    np.testing.assert_array_equal(x[:4], feats[2])
    # The style: the mean over the line's character steps (0-2 and 4), not the blank step 3.
    np.testing.assert_allclose(x[4:8], feats[[0, 1, 2, 4]].mean(axis=0))
    assert x[-1] == pytest.approx(np.log(0.4) - np.log(0.9 + 0.9 + 0.95), rel=1e-5)
    # With the log-odds weighed in, the model's strong O outvotes a weakly positive feature.
    pairs = Lookalikes([_by_first_feature("O0", log_odds_weight=1.0)], DEFAULT_CHARSET, 4)
    feats[2, 0] = 1.0
    assert pairs.resolve(best_runs(s), s, feats)[0][0] == COL["O"]
    feats[2, 0] = 3.0  # log-odds -1.93: a feature of 3 outweighs it
    assert pairs.resolve(best_runs(s), s, feats)[0][0] == COL["0"]


def test_pairs_apply_only_where_the_charset_holds_both_characters() -> None:
    charset = "ABCO123"  # O without 0; both I and 1 missing an I
    pairs = Lookalikes([_by_first_feature("O0"), _by_first_feature("I1")], charset, 4)
    s = np.full((1, 1 + len(charset)), 0.01, np.float32)
    s[0, charset.index("O") + 1] = 0.9
    feats = np.full((1, 4), 9.0, np.float32)
    assert pairs.resolve(best_runs(s), s, feats)[0][0] == charset.index("O") + 1
    with pytest.raises(ValueError, match="not for 8 features"):
        Lookalikes([_by_first_feature("O0", features=4)], DEFAULT_CHARSET, 8)


MODEL_SHA256 = RAPIDOCR3_SHA256[PPOCRV6_MODEL]


def test_the_shipped_weights_are_checked_and_cover_both_pairs(tmp_path: Path) -> None:
    loaded = lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, LOOKALIKES_SHA256, MODEL_SHA256)
    assert [m.pair for m in loaded.models] == ["O0", "I1"]
    # The gates the training chose (train5: O/0 2.25, I/1 0.75) ship with the weights.
    assert [m.gate for m in loaded.models] == [2.25, 0.75]
    with pytest.raises(ValueError, match=r"lookalikes_ppocrv6\.npz has sha256"):
        lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, "0" * 64, MODEL_SHA256)
    with pytest.raises(ValueError, match="not for 64 features"):
        lookalikes.load(DEFAULT_CHARSET, 64, LOOKALIKES_SHA256, MODEL_SHA256)
    # Weights trained on another recognizer model are refused: they would decide on the
    # wrong features.
    with pytest.raises(ValueError, match=r"trained on the recognizer model .* retrain"):
        lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, LOOKALIKES_SHA256, "1" * 64)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz")
    digest = hashlib.sha256(junk.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="not a look-alike weights file"):
        lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, digest, MODEL_SHA256, junk)


def test_the_weights_ship_as_package_data() -> None:
    """The wheel (and so the Docker image) carries the weights: pyproject's package data for
    streamer.ocr matches the file."""
    import fnmatch
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["streamer.ocr"]
    assert any(fnmatch.fnmatch(lookalikes.WEIGHTS_FILE, g) for g in globs), globs
    assert (ROOT / "streamer" / "ocr" / lookalikes.WEIGHTS_FILE).is_file()


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
    image = Image.new("RGB", (int(right - left) + height // 2, height), (230, 232, 225))
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


FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
LETTERS, DIGITS = "ABCDEFGHJKLMNPRSTUVWXYZ", "2345789"


def _read_pairs(against_context: bool, seed: int) -> dict[str, dict[str, list[int]]]:
    """48 lines, each with one of O, 0, I, 1 among two letters or two digits before and one
    after it, in the DejaVu fonts (the OCR benchmark's, which the training never draws with):
    `against_context`, an O or I among digits and a 0 or 1 among letters (where the model's
    neighbour habit misleads it), else each among its own kind (as on most plates). Returns,
    per font and with and without the look-alike models, [that character read right, the line
    read exactly]."""
    rng = random.Random(seed)
    recs = {"pairs": ppocrv6(), "plain": ppocrv6(pairs=False)}
    out = {font: {name: [0, 0] for name in recs} for font in FONTS}
    for i in range(48):
        odd = "O0I1"[i % 4]
        own, other = (LETTERS, DIGITS) if odd in "OI" else (DIGITS, LETTERS)
        kind = other if against_context else own
        text = "".join(rng.choice(kind) for _ in range(2)) + odd + rng.choice(kind)
        font = FONTS[i % 3]
        image = prepare(_line(text, font, rng.choice((24, 32, 40)), rng), None)
        for name, rec in recs.items():
            got = rec.read(image).text
            out[font][name][0] += len(got) == len(text) and got[2] == odd
            out[font][name][1] += got == text
    return out


def _total(counts: dict[str, dict[str, list[int]]], name: str, k: int) -> int:
    return sum(per_font[name][k] for per_font in counts.values())


def test_pair_models_read_o_0_i_1_among_the_other_kind_better_on_unseen_fonts() -> None:
    """Where the neighbours mislead the model, the look-alike models read more of those
    characters right, and no fewer lines."""
    counts = _read_pairs(against_context=True, seed=7)
    assert _total(counts, "pairs", 0) > _total(counts, "plain", 0) + 4, counts
    assert _total(counts, "pairs", 1) >= _total(counts, "plain", 1), counts


def test_pair_models_keep_what_the_neighbours_get_right() -> None:
    """Where the neighbours are right (O and I among letters, 0 and 1 among digits, as on
    most plates), the look-alike models lose at most 1 of each font's 16 lines. DejaVu Sans
    Mono Bold draws O as narrow as its dotted zero: before the gate, the models read most of its
    O among letters as 0 (3 of these 16 lines lost)."""
    counts = _read_pairs(against_context=False, seed=8)
    for font in FONTS:
        pairs, plain = counts[font]["pairs"], counts[font]["plain"]
        assert pairs[0] >= plain[0] - 1 and pairs[1] >= plain[1] - 1, (font, counts)


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
    assert "fonts in 1 lineages: Liberation" in res.stdout, res.stdout
    assert "O0: not validated (one lineage): no gate" in res.stdout, res.stdout
    # The fit learns its samples (a wrong gradient sign or flipped labels would not).
    fitted = re.findall(r"(O0|I1): fitted on all, ([0-9.]+)% of its samples", res.stdout)
    assert len(fitted) == 2 and all(float(v) >= 80 for _, v in fitted), res.stdout
    digest = re.search(r"sha256 ([0-9a-f]{64})", res.stdout)
    assert digest, res.stdout
    loaded = lookalikes.load(DEFAULT_CHARSET, PPOCRV6_FEATURE_SIZE, digest[1], MODEL_SHA256, out)
    assert {m.pair for m in loaded.models} == {"O0", "I1"}
