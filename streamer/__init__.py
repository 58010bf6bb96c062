"""streamer: pairs live video frames with ZeroMQ detections and publishes object crops."""

__version__ = "0.1.0"
