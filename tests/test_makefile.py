"""The Makefile's bootstrap, run for real by GNU make in a scratch copy of it, with fakes for
what it starts (python, apt-get, id, uv and the test tools), each logging its calls: what is
installed, in which order (also under `make -j`), and how it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, uv_binary

MAKE = shutil.which("make") or "make"

# python3 stand-in: --missing-packages prints $MISSING or fails with $MISSING_RC (with --build:
# $MISSING_BUILD); the check itself logs "check done" (with --build: "build check done") and
# exits $CHECK_RC (both after a pause, so that under `make -j` a target that
# does not wait for them runs first); the
# ensurepip probe exits $ENSUREPIP_RC; `-m venv DIR` makes DIR/bin/pip, which makes a logging uv.
FAKE_PYTHON = r"""#!/bin/sh
echo "python $*" >> "$LOG"
case "$*" in
  *"--build --missing-packages"*)
    echo "$MISSING_BUILD";;
  *"check_system.py --build")
    echo "build check done" >> "$LOG";;
  *--missing-packages*)
    /bin/sleep 0.5
    echo "$MISSING"
    exit "${MISSING_RC:-0}";;
  *check_system.py)
    /bin/sleep 0.5
    echo "check done" >> "$LOG"
    exit "${CHECK_RC:-0}";;
  "-c import ensurepip, venv"*)
    exit "${ENSUREPIP_RC:-0}";;
  "-m venv "*)
    d="$3"
    /bin/mkdir -p "$d/bin"
    /bin/cat > "$d/bin/pip" <<PIP
#!/bin/sh
echo "pip \$*" >> "\$LOG"
printf '#!/bin/sh\\necho "uv \$*" >> "\$LOG"\\n' > "$d/bin/uv"
/bin/chmod +x "$d/bin/uv"
PIP
    /bin/chmod +x "$d/bin/pip";;
esac
"""


def _logging_tool(path: Path, name: str, output: str = "") -> None:
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n{output}')
    path.chmod(0o755)


def _scratch(tmp_path: Path, uid: int = 0) -> tuple[Path, dict[str, str]]:
    """A directory with a copy of the Makefile, the fakes in fakes/, and an environment whose
    PATH has the fakes only (no sudo): `id -u` prints `uid`."""
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copy(REPO / "Makefile", work / "Makefile")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "python3").write_text(FAKE_PYTHON)
    (fakes / "python3").chmod(0o755)
    _logging_tool(fakes / "apt-get", "apt-get", 'echo "apt-get sees $DEBIAN_FRONTEND" >> "$LOG"\n')
    (fakes / "env").symlink_to(shutil.which("env") or "/usr/bin/env")
    (fakes / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (fakes / "id").chmod(0o755)
    tools = work / ".venv" / "bin"
    tools.mkdir(parents=True)
    for tool in ("ruff", "mypy", "pytest", "streamer"):
        _logging_tool(tools / tool, tool)
    env = {"PATH": str(fakes), "LOG": str(tmp_path / "log"), "HOME": str(tmp_path)}
    return work, env


def _make(work: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    python = str(Path(env["PATH"]) / "python3")
    return subprocess.run(
        [MAKE, "--no-print-directory", f"PYTHON={python}", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _log(env: dict[str, str]) -> list[str]:
    path = Path(env["LOG"])
    return path.read_text().splitlines() if path.exists() else []


def test_make_test_installs_what_the_check_names_missing_then_checks_again(
    tmp_path: Path,
) -> None:
    work, env = _scratch(tmp_path)
    env["MISSING"] = "gstreamer1.0-x chromium"
    res = _make(work, env, "system-deps")
    assert res.returncode == 0, res.stderr
    log = _log(env)
    lock = "-o DPkg::Lock::Timeout=600"  # (a fresh VM's unattended-upgrades holds the lock)
    install = f"apt-get {lock} install -y -q --no-install-recommends gstreamer1.0-x chromium"
    assert install in log, log
    update = f"apt-get {lock} update -q"
    assert log.index(update) < log.index(install) < log.index("check done"), log
    assert log[log.index(install) + 1] == "apt-get sees noninteractive", log


def test_nothing_missing_installs_nothing(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    res = _make(work, env, "system-deps")
    assert res.returncode == 0, res.stderr
    assert not [line for line in _log(env) if line.startswith("apt-get")]
    assert _log(env)[-1] == "check done"


def test_a_failing_check_stops_make(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    env["MISSING"], env["MISSING_RC"] = "chromium", "3"
    res = _make(work, env, "system-deps")
    assert res.returncode != 0
    assert not [line for line in _log(env) if line.startswith("apt-get")]
    assert "check done" not in _log(env)


def test_not_root_and_no_sudo_says_what_to_run(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path, uid=1000)
    env["MISSING"] = "python3-venv"
    res = _make(work, env, "system-deps")
    assert res.returncode != 0
    assert "not root and no sudo" in res.stderr, res.stderr
    assert "apt-get install --no-install-recommends python3-venv" in res.stderr, res.stderr
    assert not [line for line in _log(env) if line.startswith("apt-get")]


def test_not_root_with_sudo_installs_noninteractively(tmp_path: Path) -> None:
    """sudo resets the environment (env_reset): DEBIAN_FRONTEND set in front of sudo never
    reached apt-get, which then asked its questions."""
    work, env = _scratch(tmp_path, uid=1000)
    sudo = Path(env["PATH"]) / "sudo"
    sudo.write_text(
        '#!/bin/sh\necho "sudo $*" >> "$LOG"\nexec env -i PATH="$PATH" LOG="$LOG" "$@"\n'
    )
    sudo.chmod(0o755)
    env["MISSING"] = "chromium"
    res = _make(work, env, "system-deps")
    assert res.returncode == 0, res.stderr
    log = _log(env)
    (install,) = [
        i for i, line in enumerate(log) if line.startswith("apt-get ") and "install" in line
    ]
    assert log[install + 1] == "apt-get sees noninteractive", log


def test_make_test_installs_system_packages_before_anything_else_also_in_parallel(
    tmp_path: Path,
) -> None:
    """Under -j too: the full install and check first, then the build's (two apt-gets at once
    fail on apt's lists lock), then everything else."""
    work, env = _scratch(tmp_path)
    env["MISSING"], env["MISSING_BUILD"] = "python3-venv gcc", "gcc"
    res = _make(work, env, "-j4", "test")
    assert res.returncode == 0, res.stderr
    log = _log(env)
    checked = log.index("check done")
    build_query = next(i for i, line in enumerate(log) if "--build --missing-packages" in line)
    installs = [i for i, line in enumerate(log) if line.startswith("apt-get") and "install" in line]
    assert len(installs) == 2 and installs[0] < checked < build_query < installs[1], log
    built = log.index("build check done")
    later = [i for i, line in enumerate(log) if line.split()[0] in ("pip", "uv", "ruff", "mypy")]
    later += [i for i, line in enumerate(log) if line.startswith(("python -m venv", "pytest"))]
    assert len(later) >= 6 and min(later) > built, log


def test_a_python_without_ensurepip_names_python3_venv(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    env["ENSUREPIP_RC"] = "1"
    res = _make(work, env, "demo")
    assert res.returncode != 0
    assert "install Debian's python3-venv" in res.stderr, res.stderr
    assert not [line for line in _log(env) if line.startswith("python -m venv")]


def test_a_new_uv_version_installs_that_uv(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    assert _make(work, env, "venv").returncode == 0
    assert _make(work, env, "venv", "UV_VERSION=9.9.9").returncode == 0
    assert (work / ".tools" / "uv-9.9.9" / "bin" / "uv").exists()
    made = [line for line in _log(env) if line.startswith("python -m venv")]
    assert made == ["python -m venv .tools/uv-0.13.9", "python -m venv .tools/uv-9.9.9"], made
    assert os.access(work / ".tools" / "uv-9.9.9" / "bin" / "uv", os.X_OK)


def test_a_gap_left_after_installing_stops_make(tmp_path: Path) -> None:
    work, env = _scratch(tmp_path)
    env["MISSING"], env["CHECK_RC"] = "chromium", "1"
    res = _make(work, env, "test")
    assert res.returncode != 0
    log = _log(env)
    assert log[-1] == "check done", log  # nothing runs after the failed re-check
    assert (
        "apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium" in log
    )


def test_syncing_again_keeps_the_venv_when_python_is_a_launcher(tmp_path: Path) -> None:
    """`python3` as a launcher script (as pyenv's shim is): a second `make venv` must not
    delete and re-create .venv (uv does when the interpreter it is given is not the one the
    venv records). Real uv, on a project with no dependencies."""
    uv = [uv_binary()]
    work = tmp_path / "repo"
    (work / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", work / "Makefile")
    shutil.copy(REPO / "scripts" / "check_system.py", work / "scripts")  # (the build check)
    (work / "pyproject.toml").write_text(
        '[project]\nname = "t"\nversion = "0"\nrequires-python = ">=3.11"\n'
        "[project.optional-dependencies]\nocr = []\n[dependency-groups]\ntest = []\n"
    )
    launcher = tmp_path / "python3"
    # The interpreter behind this venv:
    base_python = getattr(sys, "_base_executable", sys.executable)
    launcher.write_text(f'#!/bin/sh\nexec {base_python} "$@"\n')
    launcher.chmod(0o755)
    env = {**os.environ, "UV_OFFLINE": "1", "UV_NO_CONFIG": "1"}
    env.pop("VIRTUAL_ENV", None)
    make = [MAKE, "--no-print-directory", f"PYTHON={launcher}", f"UV={uv[-1]}"]

    def run(*args: str) -> None:
        res = subprocess.run(
            [*make, *args], cwd=work, env=env, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, res.stdout + res.stderr

    run("lock")
    run("venv")
    marker = work / ".venv" / "marker"
    marker.touch()
    run("venv")
    assert marker.exists(), ".venv was re-created"


def test_make_demo_installs_what_building_the_package_needs_first(tmp_path: Path) -> None:
    """A fresh machine has no C compiler: `make demo` installs the packages the build check
    names (the compiler, the headers, python3-venv) and checks again before anything is built,
    and nothing else (no GStreamer, no Chromium)."""
    work, env = _scratch(tmp_path)
    env["MISSING_BUILD"] = "gcc python3-dev"
    env["MISSING"] = "chromium"
    res = _make(work, env, "demo")
    assert res.returncode == 0, res.stderr
    log = _log(env)
    install = "apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends"
    assert [line for line in log if line.startswith(install)] == [f"{install} gcc python3-dev"]
    venv = next(i for i, line in enumerate(log) if line.startswith("python -m venv"))
    assert log.index(f"{install} gcc python3-dev") < log.index("build check done") < venv, log
    assert "streamer demo" in log[-1], log
