# streamer: runs the config file mounted at /config/streamer.yaml.
#   docker build -t streamer .
#   docker build --build-arg EXTRAS=ocr -t streamer-ocr .   # also `streamer ocr`'s recognizers
#   docker run --rm -v "$PWD/site.yaml:/config/streamer.yaml:ro" -p 8080:8080 streamer
# The config's preview section must listen on 0.0.0.0:8080 inside the container for the port
# mapping and the health check below (which calls /healthz, served without a token), with a
# token or token_file (a preview beyond loopback wants one), as configs/site.yaml's does; a
# config without a preview serves /healthz from `metrics: {host: 0.0.0.0, port: 8080}`. Relative paths in the config (site.yaml's CURVE keys) are relative to
# /app: mount them there too (-v "$PWD/keys:/app/keys:ro").
# The ocr image has no Tesseract language data: `streamer ocr` works with its default engine
# (ppocrv6); for --engine tesseract mount a tessdata folder with eng.traineddata and set
# TESSDATA_PREFIX to it.
# Build stage: uv installs the locked packages into /opt/streamer and compiles streamer._box
# (streamer/_box.c: the tap's downscale) with gcc; the image that runs has no compiler.
FROM python:3.11-slim AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/streamer \
    UV_PYTHON_DOWNLOADS=never

# gcc from the base image's Debian release (its headers for Python are in the image already).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Optional extras of the package to install too (pyproject.toml's [project.optional-dependencies]).
ARG EXTRAS=""
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY streamer ./streamer
# Exactly the versions in uv.lock (the same ones `make test` tested). The wheels of av,
# opencv-python-headless, pyzmq and aiortc carry their native libraries: no system packages
# are needed at run time.
RUN pip install --no-cache-dir uv==0.13.9 \
    && uv sync --locked --no-default-groups --no-editable --compile-bytecode \
        ${EXTRAS:+--extra "$EXTRAS"}

FROM python:3.11-slim

# ORT_DISABLE_TELEMETRY: ONNX Runtime (the ocr extra) sends no usage telemetry to Microsoft.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    PATH=/opt/streamer/bin:$PATH

WORKDIR /app
# The environment, its interpreter the same path in both stages (/usr/local/bin/python3.11).
COPY --from=build /opt/streamer /opt/streamer
RUN groupadd --system --gid 10001 streamer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin streamer

USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["streamer"]
# JSON logs, and no status line a second (86,000 lines a day in `docker logs`): as the StatefulSet.
CMD ["--log-json", "run", "-c", "/config/streamer.yaml", "--quiet"]
