"""Reading one crop: find the text line (the crop's polygon, or DBNet's text regions when it
has none), straighten and enlarge it, recognize it. What `streamer ocr` and
scripts/bench_ocr.py both run."""

from __future__ import annotations

import numpy as np

from streamer.ocr.preprocess import prepare
from streamer.ocr.recognizers import Reading, Recognizer
from streamer.ocr.text_detector import TextDetector, locate_text
from streamer.types import U8

NOTHING = Reading("", 0.0, "")  # what a crop without pixels reads as


class CropReader:
    """A recognizer, with an optional text locator for crops that come without a polygon."""

    def __init__(self, recognizer: Recognizer, locator: TextDetector | None) -> None:
        self.recognizer = recognizer
        self.locator = locator

    def read(self, image: U8, points: np.ndarray | None) -> Reading:
        """Read the text of a BGR (h, w, 3) crop; `points` (N, 2) is its polygon, if any.

        A crop without a polygon is read twice, whole and as the text line the locator finds
        in it, and the more confident reading wins: locating helps where background and a
        border surround the text, but can miss a character the border touches. A crop without
        pixels (0 high or wide) reads as nothing: an empty text with confidence 0.
        """
        if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            return NOTHING
        if points is not None or self.locator is None:
            return self.recognizer.read(prepare(image, points))
        whole = self.recognizer.read(prepare(image, None))
        located = locate_text(self.locator, image)
        if located is None:
            return whole
        line = self.recognizer.read(prepare(image, located))
        return line if line.confidence > whole.confidence else whole
