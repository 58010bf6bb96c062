"""Reading text on crops: recognizers (PP-OCRv6, v5 and v4 through ONNX Runtime, Tesseract), their
preprocessing, per-track voting, the ``streamer ocr`` worker, and the ``streamer detect text``
neural text detector. Needs the ``ocr`` extra, installed with uv (the top of README.md).

ONNX Runtime's official builds send usage telemetry to Microsoft unless ORT_DISABLE_TELEMETRY=1
is set before it initializes (its Privacy.md). Every module here is imported through this
package, so this runs before any of them imports onnxruntime (directly or through
rapidocr-onnxruntime). A value the user set is kept."""

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
