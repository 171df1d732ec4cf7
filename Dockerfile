# One image for every Python service of the pipeline (migrate, worker, gateway, loadgen);
# docker-compose.yml picks the command. Default: the Faust stream worker.
#
# Two stages: the first builds the wheel (the product's code with its migrations and
# JSON Schemas inside), the second installs only that wheel. No source tree in the
# final image: the console scripts run the installed package from any directory.

# --- build: the wheel, with the build backend the lock pins ---------------------------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY requirements.lock ./
RUN pip install --upgrade -c requirements.lock setuptools
COPY pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY producers/ producers/
COPY migrations/ migrations/
COPY schemas/ schemas/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# --- the image: the wheel installed at the versions of requirements.lock ---------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WORKER_WEB_HOST=0.0.0.0 \
    WORKER_WEB_PORT=6066 \
    WORKER_DATA_DIR=/var/lib/pipeline/worker

# The exact versions of requirements.lock (the ones CI tested) for every dependency.
COPY --from=build /dist/ /tmp/dist/
COPY requirements.lock /tmp/dist/
RUN pip install --no-cache-dir -c /tmp/dist/requirements.lock /tmp/dist/event_pipeline-*.whl \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --home-dir /var/lib/pipeline --shell /usr/sbin/nologin pipeline \
    && mkdir -p /var/lib/pipeline/worker \
    && chown -R pipeline /var/lib/pipeline

USER pipeline
WORKDIR /var/lib/pipeline

# Worker web server (/health/live, /health/ready) and gateway.
EXPOSE 6066 8080

CMD ["pipeline", "worker"]
