"""Detections in: the wire codec (pure) and the ZeroMQ receiver."""
