"""Frame sources: each decodes in its own named thread and hands frames to the event loop."""
