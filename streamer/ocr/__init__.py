"""Reading text on crops: recognizers (PP-OCRv5 and v4 through ONNX Runtime, Tesseract), their
preprocessing, per-track voting, the ``streamer ocr`` worker, and the ``streamer detect text``
neural text detector. Needs the ``ocr`` extra (``pip install 'streamer[ocr]'``)."""
