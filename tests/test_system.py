"""The machine's system pieces: checked by capability, and a missing one is named at once,
with the Debian package that provides it (scripts/check_system.py, scripts/rtsp_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.live import RtspServer


def _without_gstreamer_plugins(tmp_path: Path) -> dict[str, str]:
    """An environment in which GStreamer finds no plugin at all (an empty plugin path and a
    fresh registry), as on a machine where the plugin packages are missing."""
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    return {
        **os.environ,
        "GST_PLUGIN_SYSTEM_PATH_1_0": str(empty),
        "GST_PLUGIN_PATH_1_0": str(empty),
        "GST_REGISTRY_1_0": str(tmp_path / "registry.bin"),
    }


def test_this_machine_has_every_piece() -> None:
    res = subprocess.run(
        [sys.executable, "scripts/check_system.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr


def test_missing_elements_are_named_with_their_package(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "scripts/check_system.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=_without_gstreamer_plugins(tmp_path),
    )
    assert res.returncode == 1
    assert "GStreamer element timeoverlay" in res.stderr, res.stderr
    assert "apt-get install gstreamer1.0-x" in res.stderr, res.stderr
    assert "GStreamer element x264enc" in res.stderr, res.stderr
    assert "gstreamer1.0-plugins-ugly" in res.stderr, res.stderr


def test_package_list_covers_every_capability() -> None:
    res = subprocess.run(
        [sys.executable, "scripts/check_system.py", "--packages"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    packages = set(res.stdout.split())
    assert {"gstreamer1.0-x", "gir1.2-gst-rtsp-server-1.0", "tesseract-ocr-eng"} <= packages


def test_rtsp_server_fails_fast_with_the_missing_element(tmp_path: Path) -> None:
    """The test RTSP server builds its pipelines before it says READY: a missing element ends
    it at once with GStreamer's own error, not a client timeout after '5XX Server Error'."""
    server = RtspServer(env=_without_gstreamer_plugins(tmp_path))
    with pytest.raises(RuntimeError) as failed:
        server.start()
    message = str(failed.value)
    assert "exit code 2" in message, message  # it ended by itself (a kill at timeout is -9)
    assert "videotestsrc" in message, message  # the first element GStreamer could not find
