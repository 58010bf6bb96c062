# Everything a fresh machine needs: `make demo` and `make test` install what they use.
# Python packages come from uv.lock (uv sync --frozen); system packages from Debian, listed and
# checked by capability in scripts/check_system.py.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# uv uses this interpreter and never downloads one; the venv is the project's .venv.
UV_ENV := UV_PYTHON=$(shell command -v $(PYTHON)) UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=$(VENV)
DEMO_ARGS ?=

.PHONY: demo test lint typecheck pytest system-deps check-system venv demo-venv lock clean

demo: demo-venv
	$(BIN)/streamer demo $(DEMO_ARGS)

test: system-deps venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/pytest -q

# Installs the Debian packages that provide what the tests use, then checks each capability
# (GStreamer elements, typelibs, binaries, Tesseract data) and names the package of any gap.
system-deps:
	@missing=""; for p in $$($(PYTHON) scripts/check_system.py --packages); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(PYTHON) scripts/check_system.py

check-system:
	$(PYTHON) scripts/check_system.py

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

# The package with its OCR extra and the test tools, exactly as locked.
venv: $(UV)
	$(UV_ENV) $(UV) sync -q --frozen --extra ocr --group test

# Only what the demo runs: the package and its runtime dependencies.
demo-venv: $(UV)
	$(UV_ENV) $(UV) sync -q --frozen --inexact --no-default-groups

# Re-resolve uv.lock after changing dependencies in pyproject.toml.
lock: $(UV)
	$(UV_ENV) $(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
