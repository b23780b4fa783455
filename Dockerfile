# syntax=docker/dockerfile:1.7
# One image for every process of the platform: `orders api`, `orders worker --queue ...`,
# `orders sandbox` and `orders db upgrade`. Built by docker-compose.yml; linted by the test suite
# (hadolint), never built in CI (no Docker engine there).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtualenv with the platform and its dependencies ---------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir core && touch core/__init__.py \
    && pip install . \
    && pip uninstall --yes orders-platform
COPY alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY api ./api
COPY sandbox ./sandbox
COPY cli ./cli
COPY devstack ./devstack
# Editable: alembic finds migrations/ next to the sources, which stay at /app in the runtime stage.
RUN pip install --no-deps -e . && python -m compileall -q /app

# --- runtime: the virtualenv and the sources, as an unprivileged user -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="orders-platform" \
      org.opencontainers.image.description="Fault-tolerant order processing on Temporal, FastAPI and PostgreSQL"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORDERS_ENVIRONMENT=production \
    ORDERS_API_HOST=0.0.0.0 \
    ORDERS_LOG_JSON=true
RUN groupadd --system --gid 10001 orders \
    && useradd --system --uid 10001 --gid orders --home-dir /app --shell /usr/sbin/nologin orders
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# The gateway's liveness; workers and the sandbox override it in docker-compose.yml.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('HEALTHCHECK_URL', 'http://127.0.0.1:8000/healthz'), timeout=2)"]
ENTRYPOINT ["orders"]
CMD ["api"]
