# syntax=docker/dockerfile:1
#
# trace-curator worker image: a builder stage installs the package into a venv, and the final
# stage copies only that venv onto a clean python:3.12-slim and runs as a fixed non-root uid.
# Python 3.12 on purpose: current databricks-connect releases need ==3.12.*
# (docs/platform-notes.md), so
# `pip install '.[databricks]'` in a derived image gets a current release.
#
#   docker build -t trace-curator .
#   docker run --rm -e TRACE_CURATOR_STORE_URL=postgresql://... trace-curator db upgrade
#   docker run -d  -e TRACE_CURATOR_STORE_URL=... -e TRACE_CURATOR_KAFKA_BOOTSTRAP_SERVERS=... trace-curator
#
# Settings come from TRACE_CURATOR_* environment variables only (`trace-curator run --help`).

ARG PYTHON_IMAGE=python:3.12-slim

# ---- builder: a venv with trace-curator and its runtime dependencies (no test/dev/demo extras)
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, in their own layer, rebuilt only when pyproject.toml changes: with empty
# package folders and a placeholder README (the `readme` of pyproject.toml), this installs the
# dependencies and an empty distribution, which is then removed.
COPY pyproject.toml ./
RUN mkdir consumers store worker \
 && touch README.md \
 && pip install . \
 && pip uninstall --yes trace-curator \
 && rm -rf build ./*.egg-info

# Then the code (.dockerignore keeps tests, bench, caches and local databases out of the
# context). A plain, non-editable install: the venv holds the package with store/migrations as
# package data, byte-compiled, and nothing under /src is needed at run time.
COPY README.md ./
COPY consumers ./consumers
COPY store ./store
COPY worker ./worker
RUN pip install --no-deps . \
 && trace-curator --help > /dev/null

# ---- runtime: the venv only, as a non-root user
FROM ${PYTHON_IMAGE} AS runtime

# No .pyc writes at run time (the venv was compiled at install), unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# A fixed uid/gid, so volume ownership and Kubernetes runAsUser are predictable.
RUN groupadd --system --gid 10001 curator \
 && useradd --system --uid 10001 --gid curator --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin curator \
 && mkdir -p /app \
 && chown curator:curator /app

COPY --from=builder /opt/venv /opt/venv

# The working directory is writable by the worker: the embedded default store
# (sqlite:///trace_curator.db) and MLflow's client-side caches land here.
WORKDIR /app
USER 10001:10001

# The metrics/health HTTP server (/metrics, /healthz, /readyz): port 9464, bound to 127.0.0.1
# unless TRACE_CURATOR_HTTP_HOST=0.0.0.0 is set (docker-compose.yml sets it).
EXPOSE 9464

# `check` exits 0 when the store is reachable and its schema is current (about 1 s of CPU: it
# does not import MLflow).
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD ["trace-curator", "check"]

# Exec form: trace-curator is PID 1 and receives SIGTERM itself (drain, checkpoint, exit).
ENTRYPOINT ["trace-curator"]
CMD ["run"]
