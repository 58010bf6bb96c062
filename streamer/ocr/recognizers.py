"""Text recognizers: one line of text in a BGR image -> (text, confidence).

- ``rapidocr`` (the default): PP-OCRv4 recognition (an SVTR-LCNet CRNN with a CTC head, trained
  on Chinese and Latin text) through ONNX Runtime on the CPU, from the `rapidocr-onnxruntime`
  wheel, whose model files are loaded from the installed package: nothing is downloaded.
- ``tesseract``: Tesseract's LSTM engine in-process through `tesserocr`, with Debian's
  language data.

Neither is told which characters to expect: what they read is normalised (preprocess.
normalize_text), never filtered to a character set. Both come from the ``ocr`` extra
(``pip install streamer[ocr]``); a missing one raises RecognizerUnavailable naming it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from streamer.ocr.preprocess import normalize_text
from streamer.types import U8

DEFAULT_THREADS = 1  # ONNX Runtime intra-op threads per model: a worker is one core
ENGINES = ("rapidocr", "tesseract")


class RecognizerUnavailable(RuntimeError):
    """The chosen engine's package, model or data is not installed."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a recognizer read: `raw` as the model gave it, `text` normalised, and the model's
    confidence in [0, 1]."""

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


class RapidOcrRecognizer:
    """PP-OCRv4 recognition (48 px high input, width following the aspect ratio)."""

    name = "rapidocr"
    MODEL = "ch_PP-OCRv4_rec_infer.onnx"

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

        cfg = ort_config(self.MODEL, threads)
        self._rec = TextRecognizer({**cfg, "rec_batch_num": 1, "rec_img_shape": [3, 48, 320]})

    def read(self, image: U8) -> Reading:
        (raw, score), *_ = self._rec(np.ascontiguousarray(image))[0]
        return Reading(normalize_text(raw), float(score), raw[:256])


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
    """Tesseract (LSTM, one text line, English data), no character whitelist."""

    name = "tesseract"

    def __init__(self, tessdata: str | None = None) -> None:
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

    def read(self, image: U8) -> Reading:
        gray = np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
        h, w = gray.shape
        self._api.SetImageBytes(gray.tobytes(), w, h, 1, w)
        raw = str(self._api.GetUTF8Text())
        conf = max(0.0, float(self._api.MeanTextConf()) / 100.0)
        return Reading(normalize_text(raw), conf, raw.strip()[:256])


def make_recognizer(engine: str, threads: int = DEFAULT_THREADS) -> Recognizer:
    """The recognizer named `engine` (one of ENGINES)."""
    if engine == "rapidocr":
        return RapidOcrRecognizer(threads)
    if engine == "tesseract":
        return TesseractRecognizer()
    raise ValueError(f"unknown OCR engine {engine!r}; choose one of {ENGINES}")
