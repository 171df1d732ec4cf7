# One image for every Python service of the pipeline (migrate, worker, gateway, loadgen);
# docker-compose.yml picks the command. Default: the Faust stream worker.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WORKER_WEB_HOST=0.0.0.0 \
    WORKER_WEB_PORT=6066 \
    WORKER_DATA_DIR=/var/lib/pipeline/worker

WORKDIR /app

# The repository (minus what .dockerignore leaves out), installed as a package at
# the exact versions of requirements.lock (the ones CI tested).
# The source stays in /app as well: "python -m pipeline" run from /app finds
# pipeline/ next to migrations/, which the migrate command reads.
COPY . /app
RUN pip install --no-cache-dir -c requirements.lock . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin pipeline \
    && mkdir -p /var/lib/pipeline/worker \
    && chown -R pipeline /var/lib/pipeline

USER pipeline

# Worker web server (/health/live, /health/ready) and gateway.
EXPOSE 6066 8080

CMD ["python", "-m", "pipeline", "worker"]
