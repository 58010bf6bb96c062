"""The benchmark scripts still run (tiny sizes; their numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_bench_crop_runs() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "scripts/bench_crop.py",
            "--repeat",
            "2",
            "--sizes",
            "640x360,1280x720",
            "--boxes",
            "1,4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith(("640x", "1280x"))]
    assert len(rows) == 4
    assert all(float(r.split()[-1]) > 0 for r in rows)
