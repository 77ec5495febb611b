# syntax=docker/dockerfile:1
# The Refrain match service: Python 3.11 slim, exactly the locked dependencies (hash-checked),
# a non-root user, and numba's kernels compiled at build so a container is ready in seconds.
# Build: `make image` (docker build -t refrain:latest .); run: compose.yaml, docs/operations.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/refrain/venv \
    PATH=/opt/refrain/venv/bin:$PATH \
    NUMBA_CACHE_DIR=/opt/refrain/numba-cache \
    REFRAIN_INDEX_DIR=/data/index \
    REFRAIN_PORT=8000

RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin refrain \
    && mkdir -p /data "$NUMBA_CACHE_DIR" \
    && chown refrain:refrain /data "$NUMBA_CACHE_DIR"

# Dependencies first (their layer is reused until the lock changes), then Refrain itself.
WORKDIR /opt/refrain/src
COPY requirements-service.lock ./
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install --require-hashes -r requirements-service.lock
COPY pyproject.toml README.md ./
COPY refrain ./refrain
COPY fingerprint ./fingerprint
COPY index ./index
COPY matcher ./matcher
COPY policy ./policy
COPY rescan ./rescan
COPY service ./service
COPY cluster ./cluster
RUN pip install --no-deps . && rm -rf build
COPY docker/entrypoint.sh /usr/local/bin/refrain-entrypoint

USER refrain
WORKDIR /data
RUN refrain-entrypoint warm-up

VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['REFRAIN_PORT'] + '/v1/health/ready', timeout=2)"]
ENTRYPOINT ["refrain-entrypoint"]
CMD ["serve"]
