"""The machine's system pieces: checked by capability, and a missing one is named at once,
with the Debian package that provides it (scripts/check_system.py, scripts/rtsp_server.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, load_script
from tests.live import SYSTEM_PYTHON, RtpFeeder, RtspServer, feeder_launch, until
from tests.test_preview import CHROMIUM


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
    assert {"gcc", "libc6-dev", "python3-dev", "python3-venv"} <= packages  # the C build


def test_rtsp_server_fails_fast_with_the_missing_element(tmp_path: Path) -> None:
    """The test RTSP server builds its pipelines before it says READY: a missing element ends
    it at once with GStreamer's own error, not a client timeout after '5XX Server Error'."""
    server = RtspServer(env=_without_gstreamer_plugins(tmp_path))
    with pytest.raises(RuntimeError) as failed:
        server.start()
    message = str(failed.value)
    assert "exit code 2" in message, message  # it ended by itself (a kill at timeout is -9)
    assert "videotestsrc" in message, message  # the first element GStreamer could not find


def test_missing_capabilities_name_the_packages_to_install(tmp_path: Path) -> None:
    """`make` installs what `--missing-packages` names: packages whose capability is gone,
    whatever dpkg says (here the plugin packages are installed but GStreamer finds no element,
    as after `apt-get remove` without purge)."""
    env = {**_without_gstreamer_plugins(tmp_path), "TESSDATA_PREFIX": str(tmp_path)}
    res = subprocess.run(
        [sys.executable, "scripts/check_system.py", "--missing-packages"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    named = res.stdout.split()
    assert len(named) == len(set(named)), named
    assert {"gstreamer1.0-x", "gstreamer1.0-plugins-ugly", "tesseract-ocr-eng"} <= set(named)
    assert "fonts-dejavu-core" not in named  # only what is missing
    res = subprocess.run(
        [sys.executable, "scripts/check_system.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert f"{tmp_path}/eng.traineddata" in res.stderr, res.stderr  # TESSDATA_PREFIX honoured


def test_a_python_without_ensurepip_is_named_with_python3_venv() -> None:
    run_without_ensurepip = (
        "import runpy, sys; sys.modules['ensurepip'] = None; "
        "sys.argv = ['check_system.py', '--missing-packages']; "
        "runpy.run_path('scripts/check_system.py', run_name='__main__')"
    )
    res = subprocess.run(
        [sys.executable, "-c", run_without_ensurepip],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.stdout.split() == ["python3-venv"], (res.stdout, res.stderr)


def _elements(launch: str) -> set[str]:
    """The element names in a gst-launch line: each word that is neither a property (=), caps
    (/), a link (!) nor a bracket."""
    words = [w for w in shlex.split(launch) if w not in ("!", "(", ")")]
    return {w for w in words if "=" not in w and "/" not in w}


def test_every_element_the_servers_build_is_checked() -> None:
    """Read from the pipelines themselves, so a new element cannot be left out of the check."""
    check = load_script("check_system")
    res = subprocess.run(
        [SYSTEM_PYTHON, "scripts/rtsp_server.py", "--print-pipelines", "--relay-port", "5600"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    server = json.loads(res.stdout)
    assert set(server) == {"/test", "/one-keyframe", "/test-audio", "/relay"}
    used = set().union(*map(_elements, server.values())) | _elements(" ".join(feeder_launch(1)))
    assert {"videotestsrc", "timeoverlay", "rtpopuspay", "udpsrc", "udpsink"} <= used
    assert used <= set(check.GST_ELEMENTS), used - set(check.GST_ELEMENTS)
    assert set(check.GST_ELEMENTS) <= used, set(check.GST_ELEMENTS) - used  # nothing unused
    assert CHROMIUM in check.BINARIES  # the browser test_preview.py launches, by its path


def test_rtsp_server_silent_past_its_deadline_is_killed(tmp_path: Path) -> None:
    """A server that lives but never says READY is killed at the deadline (a blocking
    readline would wait for as long as it lives)."""
    silent = tmp_path / "silent.py"
    silent.write_text(
        "import sys, time\nprint('starting', file=sys.stderr, flush=True)\ntime.sleep(30)\n"
    )
    server = RtspServer(ready_timeout_s=1.0)
    server.script = silent
    t = time.monotonic()
    with pytest.raises(RuntimeError) as failed:
        server.start()
    assert time.monotonic() - t < 5
    message = str(failed.value)
    assert "said nothing within 1.0 s" in message and "starting" in message, message


def _fake_server(tmp_path: Path, after_ready: str) -> RtspServer:
    script = tmp_path / "server.py"
    script.write_text(
        "import sys, time\nprint('READY', flush=True)\n"
        f"print({after_ready!r}, file=sys.stderr, flush=True)\ntime.sleep(30)\n"
    )
    server = RtspServer()
    server.script = script
    return server


def test_a_wait_that_times_out_reports_the_servers_stderr(tmp_path: Path) -> None:
    server = _fake_server(tmp_path, "pipeline error: no more buffers").start()
    try:
        with pytest.raises(AssertionError) as failed:
            asyncio.run(until(lambda: False, 0.3, "frames"))
    finally:
        server.kill()
    message = str(failed.value)
    assert "timed out after 0.3 s waiting for frames" in message, message
    assert f"stderr of RTSP server on port {server.port}" in message, message
    assert "pipeline error: no more buffers" in message, message


def test_a_feeder_that_dies_fails_the_wait_at_once_with_its_error(tmp_path: Path) -> None:
    feeder = RtpFeeder(free_port(), env=_without_gstreamer_plugins(tmp_path))
    try:
        t = time.monotonic()
        with pytest.raises(AssertionError) as failed:
            asyncio.run(until(lambda: False, 30, "relayed frames"))
        assert time.monotonic() - t < 10
    finally:
        feeder.kill()
    message = str(failed.value)
    assert "RTP feeder" in message and "exited" in message, message
    assert "videotestsrc" in message, message  # gst-launch's own error: no such element


@pytest.mark.parametrize(
    "probe",
    [
        '{"typelibs": ["Gst", "GstRtspServer"], "elements": null}',  # no GStreamer typelib
        '{"no_gi": true, "elements": null}',  # no PyGObject
        None,  # no system python3 at all
    ],
    ids=["no-typelib", "no-gi", "no-python"],
)
def test_without_gstreamer_every_element_package_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: str | None
) -> None:
    """On a fresh machine GStreamer cannot be asked for its elements (or PyGObject for its
    typelibs): their packages are named anyway, so that one install (and not a second
    `make test`) brings them."""
    check = load_script("check_system")
    fake = tmp_path / "python3"
    if probe is not None:
        fake.write_text(f"#!/bin/sh\necho '{probe}'\n")
        fake.chmod(0o755)
    monkeypatch.setattr(check, "SYSTEM_PYTHON", str(fake))
    named = {package for _, package in check.missing()}
    assert set(check.GST_ELEMENTS.values()) <= named, named
    # The typelibs' packages too (a fresh machine without PyGObject stopped after its first
    # install because they were only found missing once python3-gi was there).
    assert set(check.TYPELIBS.values()) <= named, named
    what = [w for w, _ in check.missing() if w.startswith("GStreamer element timeoverlay")]
    assert what == ["GStreamer element timeoverlay (not checked: GStreamer not loaded)"]


def test_the_c_build_names_the_compiler_and_the_headers_it_lacks(tmp_path: Path) -> None:
    """streamer._box is compiled when the package is installed: no compiler names gcc (and the
    C library's headers, which cannot be looked for without one); a compiler that cannot
    compile the extension's includes names libc6-dev; `--build` checks only what installing the
    package needs."""

    def check(cc: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "scripts/check_system.py", "--build", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CC": cc},
        )

    res = check(str(tmp_path / "no-such-cc"), "--missing-packages")
    assert res.stdout.split() == ["gcc", "libc6-dev"], res.stdout + res.stderr
    failing = tmp_path / "cc"
    failing.write_text('#!/bin/sh\necho "fatal error: stdint.h: No such file" >&2\nexit 1\n')
    failing.chmod(0o755)
    res = check(str(failing))
    assert res.returncode == 1
    assert "C library headers (fatal error: stdint.h: No such file)" in res.stderr, res.stderr
    assert "apt-get install libc6-dev" in res.stderr, res.stderr
    res = check("cc")
    assert res.returncode == 0, res.stderr
    assert "what installing the package needs is present" in res.stdout


def test_missing_python_headers_name_python3_dev(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python.h not where this Python's headers go: python3-dev is named (not libc6-dev, which
    the compile probe alone would blame); a compiler wrapper (`env gcc`) runs as a whole."""
    check = load_script("check_system")
    paths = check.sysconfig.get_paths()
    monkeypatch.setattr(check.sysconfig, "get_paths", lambda: {**paths, "include": str(tmp_path)})
    named = [package for _, package in check.missing_c_build()]
    assert named == ["python3-dev"], named
    monkeypatch.undo()
    monkeypatch.setenv("CC", "env gcc")
    assert check.missing_c_build() == []
