# syntax=docker/dockerfile:1.7
# One production image for every process of the platform (`orders api`, `orders worker --queue ...`,
# `orders db upgrade`), and a `sandbox` target that adds the sandbox providers for demo stacks. Built
# by docker-compose.yml; linted by the test suite (hadolint), never built in CI (no Docker engine).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtualenv with the platform's pinned dependencies and its sources ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first (exactly the lock's pins), so a code change does not reinstall them.
COPY requirements/production.txt ./requirements/
RUN pip install --no-deps -r requirements/production.txt
COPY pyproject.toml README.md alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
COPY api ./api
COPY cli ./cli
# Editable: alembic finds migrations/ next to the sources, which stay at /app in the runtime stage.
# Only the product: the development tools (tools/: dev stack, sandbox, bench) are not in this image.
RUN pip install --no-deps -e . && python -m compileall -q /app

# --- sandbox-build: the sandbox providers for a demo stack (docker-compose.yml), not for production --
FROM build AS sandbox-build
COPY tools ./tools
RUN pip install --no-deps -e ./tools && python -m compileall -q /app/tools

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

# --- sandbox: the runtime image plus the sandbox payment gateway and carrier (`orders sandbox`) ----
FROM runtime AS sandbox
COPY --from=sandbox-build /opt/venv /opt/venv
COPY --from=sandbox-build --chown=root:root /app/tools /app/tools
CMD ["sandbox"]

# The last stage is what a plain `docker build .` makes: the production image.
FROM runtime AS production
