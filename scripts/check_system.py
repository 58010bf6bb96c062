#!/usr/bin/env python3
"""Checks, by capability, that this machine has every system piece the demo and the tests use,
and names the Debian package that provides each missing one.

A package list alone is not enough: a package that happens to be installed hides a missing entry
(that is how `gstreamer1.0-x`, which has GStreamer's `timeoverlay`, went missing from the list).
So this looks for what is used: a Python that can create virtual environments (ensurepip), each
GStreamer element the test RTSP server and the RTP feeders build, the GObject typelibs, the
binaries the tests start, the Tesseract language file tesserocr loads, and the fonts; and what
installing the package builds from C (streamer._box): a C compiler, the C library's headers and
this Python's headers, checked by compiling their includes.

    python3 scripts/check_system.py                    # exit 0, or 1 listing what is missing
    python3 scripts/check_system.py --missing-packages # the Debian packages that provide what
                                                       # is missing (none: an empty line)
    python3 scripts/check_system.py --packages         # the Debian packages that provide it all
    python3 scripts/check_system.py --build [...]      # only what installing the package needs
                                                       # (`make demo`): venv and the C build

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from typing import Any

SYSTEM_PYTHON = "/usr/bin/python3"

# GStreamer element -> Debian package, for every element scripts/rtsp_server.py and the tests'
# gst-launch feeders put in a pipeline (tests/test_system.py parses those pipelines and checks
# that each of their elements is here).
GST_ELEMENTS = {
    "videotestsrc": "gstreamer1.0-plugins-base",
    "audiotestsrc": "gstreamer1.0-plugins-base",
    "audioconvert": "gstreamer1.0-plugins-base",
    "valve": "libgstreamer1.0-0",
    "opusenc": "gstreamer1.0-plugins-base",
    "timeoverlay": "gstreamer1.0-x",
    "x264enc": "gstreamer1.0-plugins-ugly",
    "rtph264pay": "gstreamer1.0-plugins-good",
    "rtph264depay": "gstreamer1.0-plugins-good",
    "rtpopuspay": "gstreamer1.0-plugins-good",
    "udpsrc": "gstreamer1.0-plugins-good",
    "udpsink": "gstreamer1.0-plugins-good",
}
# GObject introspection namespace -> Debian package (imported by scripts/rtsp_server.py).
TYPELIBS = {"Gst": "gir1.2-gstreamer-1.0", "GstRtspServer": "gir1.2-gst-rtsp-server-1.0"}
# Binary -> Debian package: the RTSP server's interpreter, the RTP feeders (tests/live.py) and the
# browser tests/test_preview.py launches (by this path).
BINARIES = {
    SYSTEM_PYTHON: "python3-gi",
    "gst-launch-1.0": "gstreamer1.0-tools",
    "/usr/lib/chromium/chromium": "chromium",
}
# The interpreter running this script makes the virtual environments (`python3 -m venv`), which
# needs ensurepip: Debian ships it in python3-venv, not in python3.
VENV_PACKAGE = "python3-venv"
# Building streamer._box (streamer/_box.c) when the package is installed: the compiler setuptools
# runs (this Python's CC, or $CC), the C library's headers, and this Python's headers.
COMPILER_PACKAGE = "gcc"
LIBC_HEADERS_PACKAGE = "libc6-dev"
PYTHON_HEADERS_PACKAGE = "python3-dev"
# What the C file includes, compiled (syntax only) to check the headers are there and usable.
_C_PROBE = "#include <Python.h>\n#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n"
# Tesseract's language data, found as streamer/ocr/recognizers.py finds it ($TESSDATA_PREFIX, else
# the newest /usr/share/tesseract-ocr/*/tessdata); the library itself comes in tesserocr's wheel.
TESSDATA_GLOB = "/usr/share/tesseract-ocr/*/tessdata"
TESSERACT_LANGS = {"eng": "tesseract-ocr-eng"}
# Data file -> Debian package: the TrueType fonts scripts/bench_ocr.py and the OCR tests draw
# plates with, and the one font package the test of scripts/train_lookalikes.py draws with (the
# script's full run needs all of its FONT_PACKAGES; it names the missing ones).
DATA_FILES = {
    **{
        f"/usr/share/fonts/truetype/dejavu/{name}.ttf": "fonts-dejavu-core"
        for name in ("DejaVuSans-Bold", "DejaVuSansMono-Bold", "DejaVuSerif-Bold")
    },
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf": "fonts-liberation2",
}
# GStreamer's RTSP server library is libgstrtspserver-1.0-0, which gir1.2-gst-rtsp-server-1.0
# depends on (its import is checked). gstreamer1.0-rtsp is something else, the rtspclientsink
# plugin, which nothing here uses: no package is listed without a capability that needs it.

# Run by SYSTEM_PYTHON: the typelibs it cannot load, and the elements GStreamer cannot find
# (null when GStreamer itself could not be loaded, so the elements were not looked for).
_GST_PROBE = """
import json, sys
out = {"typelibs": [], "elements": None}
try:
    import gi
except ImportError:
    print(json.dumps({"no_gi": True, "elements": None})); sys.exit(0)
for ns in %(typelibs)r:
    try:
        gi.require_version(ns, "1.0")
        __import__("gi.repository." + ns)
    except (ValueError, ImportError):
        out["typelibs"].append(ns)
if "Gst" not in out["typelibs"]:
    from gi.repository import Gst
    Gst.init(None)
    out["elements"] = [e for e in %(elements)r if Gst.ElementFactory.find(e) is None]
print(json.dumps(out))
"""


def packages() -> list[str]:
    """Every Debian package that provides a checked capability, each once, in a stable order."""
    names = [
        VENV_PACKAGE,
        COMPILER_PACKAGE,
        LIBC_HEADERS_PACKAGE,
        PYTHON_HEADERS_PACKAGE,
        *BINARIES.values(),
        *TYPELIBS.values(),
        *GST_ELEMENTS.values(),
        VENV_PACKAGE,
        *TESSERACT_LANGS.values(),
        *DATA_FILES.values(),
    ]
    return list(dict.fromkeys(names))


def tessdata_dir() -> str | None:
    """The folder tesserocr is given: $TESSDATA_PREFIX, else Debian's newest, else None."""
    env = os.environ.get("TESSDATA_PREFIX")
    if env:
        return env
    found = sorted(glob.glob(TESSDATA_GLOB))
    return found[-1] if found else None


def venv_can_bootstrap_pip() -> bool:
    """Whether this interpreter's `python3 -m venv` can put pip into a new environment."""
    try:
        import ensurepip

        ensurepip.version()  # finds the bundled pip wheel
    except Exception:  # any failure here means `python3 -m venv` fails too
        return False
    return True


def compiler() -> list[str]:
    """The C compiler command setuptools runs for this Python: $CC, else the one Python was
    built with (a wrapper such as `ccache gcc` included)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(cc) or ["cc"]


def missing_c_build() -> list[tuple[str, str]]:
    """What building streamer._box lacks: the compiler, else whichever headers its includes
    cannot find (compiled for real, syntax only)."""
    cc = compiler()
    include = sysconfig.get_paths()["include"]
    python_h = os.path.join(include, "Python.h")
    found: list[tuple[str, str]] = []
    if not os.path.isfile(python_h):
        found.append((f"Python headers {python_h}", PYTHON_HEADERS_PACKAGE))
    if shutil.which(cc[0]) is None:
        found.append((f"C compiler {cc[0]} (builds streamer._box)", COMPILER_PACKAGE))
        # Without a compiler the C library's headers cannot be looked for: named too.
        found.append(("C library headers (not checked: no compiler)", LIBC_HEADERS_PACKAGE))
        return found
    if found:
        return found
    run = subprocess.run(
        [*cc, "-fsyntax-only", "-I", include, "-x", "c", "-"],
        input=_C_PROBE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if run.returncode != 0:
        found.append((f"C library headers ({run.stderr.strip()[-200:]})", LIBC_HEADERS_PACKAGE))
    return found


def missing_build() -> list[tuple[str, str]]:
    """What installing the package needs: a Python that makes virtual environments, and the
    C build."""
    found: list[tuple[str, str]] = []
    if not venv_can_bootstrap_pip():
        found.append((f"ensurepip for {sys.executable} (python3 -m venv)", VENV_PACKAGE))
    return found + missing_c_build()


def missing() -> list[tuple[str, str]]:
    """Returns (what is missing, Debian package that provides it) pairs."""
    found = missing_build()
    for binary, package in BINARIES.items():
        if shutil.which(binary) is None:
            found.append((f"binary {binary}", package))
    result: dict[str, Any] = {}
    if shutil.which(SYSTEM_PYTHON):
        probe = _GST_PROBE % {"typelibs": list(TYPELIBS), "elements": list(GST_ELEMENTS)}
        run = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60
        )
        try:
            result = json.loads(run.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            found.append((f"GStreamer probe failed: {run.stderr.strip()[-500:]}", "python3-gi"))
        if result.get("no_gi"):
            found.append((f"PyGObject for {SYSTEM_PYTHON}", "python3-gi"))
    # Without PyGObject the typelibs cannot be looked for either: name their packages too.
    missing_typelibs = result.get("typelibs")
    typelib_note = "" if missing_typelibs is not None else " (not checked: PyGObject not loaded)"
    for ns in TYPELIBS if missing_typelibs is None else missing_typelibs:
        found.append((f"GObject typelib {ns}-1.0{typelib_note}", TYPELIBS[ns]))
    # Without GStreamer the elements cannot be looked for: their packages are named too, so that
    # one install gives a fresh machine everything (installing a present package changes nothing).
    not_found = result.get("elements")
    note = "" if not_found is not None else " (not checked: GStreamer not loaded)"
    for element in GST_ELEMENTS if not_found is None else not_found:
        found.append((f"GStreamer element {element}{note}", GST_ELEMENTS[element]))
    tessdata = tessdata_dir()
    for lang, package in TESSERACT_LANGS.items():
        path = os.path.join(tessdata or TESSDATA_GLOB, f"{lang}.traineddata")
        if not os.path.isfile(path):
            found.append((f"Tesseract language file {path}", package))
    for path, package in DATA_FILES.items():
        if not os.path.isfile(path):
            found.append((f"file {path}", package))
    return found


def main() -> int:
    if "--packages" in sys.argv[1:]:
        print(" ".join(packages()))
        return 0
    build_only = "--build" in sys.argv[1:]
    gaps = missing_build() if build_only else missing()
    if "--missing-packages" in sys.argv[1:]:
        print(" ".join(dict.fromkeys(p for _, p in gaps)))
        return 0
    if not gaps:
        print(
            "system check: what installing the package needs is present"
            if build_only
            else "system check: every GStreamer element, typelib, binary, data file and the C "
            "build are present"
        )
        return 0
    print("system check: missing pieces (install the named Debian packages):", file=sys.stderr)
    for what, package in gaps:
        print(f"  {what:<44} apt-get install {package}", file=sys.stderr)
    wanted = " ".join(dict.fromkeys(p for _, p in gaps))
    print(f"fix: apt-get install --no-install-recommends {wanted}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
