"""The WebRTC preview: annotated live video and recent crops in a browser."""
