# Everything a fresh machine needs: `make demo` and `make test` install what they use.
# Python packages come from uv.lock (uv sync --locked); system packages from Debian, checked by
# capability in scripts/check_system.py, which names the package of each missing piece.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
# uv lives in a virtual environment named after its version: bumping UV_VERSION makes a new one.
TOOLS := .tools/uv-$(UV_VERSION)
UV := $(TOOLS)/bin/uv
# uv uses this interpreter and never downloads one; the venv is the project's .venv. The
# interpreter is named by its real path (sys.executable): a launcher such as pyenv's shim differs
# from the path the venv records, and uv would then delete and re-create .venv on every sync.
UV_ENV := UV_PYTHON="$$($(PYTHON) -c 'import sys; print(sys.executable)')" \
	UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=$(VENV)
DEMO_ARGS ?=

.PHONY: demo test lint typecheck pytest system-deps build-deps check-system venv demo-venv lock clean

demo: demo-venv
	$(BIN)/streamer demo $(DEMO_ARGS)

test: system-deps venv lint typecheck pytest

# In `make test` the Debian packages (python3-venv among them) are installed before anything
# else starts, also under `make -j`.
# build-deps after system-deps (which installs what it would): two apt-gets at once under -j
# fail on apt's lists lock, which DPkg::Lock::Timeout does not cover.
ifneq ($(filter test,$(MAKECMDGOALS)),)
$(UV) venv lint typecheck pytest build-deps: | system-deps
endif

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -q --durations=15

# Installs the Debian packages that provide the missing capabilities, then checks each again:
# system-deps all of them (ensurepip, the C build, GStreamer elements, typelibs, binaries,
# Tesseract data, fonts), build-deps what installing the package needs (ensurepip and the C
# build of streamer._box: compiler and headers), before `make demo` and `make venv`.
# apt waits up to 10 minutes for a dpkg lock (a fresh VM's unattended-upgrades holds it); sudo
# resets the environment, so DEBIAN_FRONTEND goes through env.
# Capabilities, not dpkg's records: a package removed but not purged still has a record.
define install_missing
	@missing="$$($(PYTHON) scripts/check_system.py $(1) --missing-packages)" || exit 1; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	  elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
	  else echo "cannot install Debian packages: not root and no sudo; as root run:" >&2; \
	    echo "  apt-get install --no-install-recommends $$missing" >&2; exit 1; fi; \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=600 update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
	    --no-install-recommends $$missing || exit 1; \
	fi
	$(PYTHON) scripts/check_system.py $(1)
endef

system-deps:
	$(call install_missing,)

build-deps:
	$(call install_missing,--build)

check-system:
	$(PYTHON) scripts/check_system.py

# uv, and through it every venv, comes after the Debian packages installing the package needs.
$(UV): | build-deps
	@$(PYTHON) -c 'import ensurepip, venv; ensurepip.version()' 2>/dev/null || { \
	  echo "$(PYTHON) cannot create virtual environments (no ensurepip): install Debian's" \
	    "python3-venv (apt-get install python3-venv; make demo and make test install it)" >&2; exit 1; }
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

# The package with its OCR extra and the test tools, exactly as locked.
venv: $(UV)
	$(UV_ENV) $(UV) sync -q --locked --extra ocr --group test

# Only what the demo runs: the package and its runtime dependencies.
demo-venv: $(UV)
	$(UV_ENV) $(UV) sync -q --locked --inexact --no-default-groups

# Re-resolve uv.lock after changing dependencies in pyproject.toml.
lock: $(UV)
	$(UV_ENV) $(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache build streamer/*.so
