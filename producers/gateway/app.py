"""The gateway as one ASGI application: ingestion, jobs, metrics, the live page, health, OpenAPI.

Every request is counted for Prometheus (``telemetry.py``, served on ``/prometheus``).

Routes only coordinate: bodies are judged in ``ingest.py``, publishes go
through ``publish.py``, SQL lives in ``queries.py`` (run by ``jobs.py``,
``analytics.py`` and ``live.py``). Every client error is an :class:`HttpError`; a publish the
broker did not acknowledge is a 503 with ``Retry-After``; a 202 is sent only
after the broker acknowledged.

    app = Gateway(GatewaySettings.from_env())   # uvicorn producers.gateway.app:create_app --factory
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import asyncpg

from pipeline.errors import PublishError
from producers.gateway import analytics, jobs, openapi, queries
from producers.gateway import live as live_view
from producers.gateway.accesslog import AccessLog
from producers.gateway.auth import Caller, KeyCheck, RateLimiter
from producers.gateway.http import (
    HttpError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    error,
    json_response,
)
from producers.gateway.ingest import (
    Limits,
    bulk_events,
    ingestion,
    request_sha256,
    single_agent_event,
    single_product_event,
)
from producers.gateway.publish import Broker
from producers.gateway.settings import GatewaySettings
from producers.gateway.telemetry import PATH as PROMETHEUS_PATH
from producers.gateway.telemetry import UNMATCHED, GatewayMetrics, exposition
from producers.publisher import Receipt

__all__ = ["ROUTE_TEMPLATES", "Gateway", "create_app"]

log = logging.getLogger("producers.gateway")

T = TypeVar("T")
Handler = Callable[["Gateway", Request, Caller], Awaitable[Response]]

_DB_DOWN = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)
_NOT_MIGRATED = (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError)
_ACKED_JOBS_KEPT = 100_000


class _Route:
    __slots__ = ("auth", "handler", "limit", "template")

    def __init__(self, handler: Handler, auth: bool = True, limit: str | None = None) -> None:
        self.handler = handler
        self.auth = auth
        self.limit = limit  # which rate limit applies: "ingest", "read" or none
        self.template = UNMATCHED  # the path, as the metrics name it (set below the tables)


def _now_us() -> int:
    return time.time_ns() // 1000


class Gateway:
    """The ASGI callable. ``published`` sums every acknowledged publish (end offsets)."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        p = settings.pipeline
        self.limits = Limits(**asdict(p.event_limits()), max_events=settings.max_bulk_events)
        self.metrics = GatewayMetrics()
        self.broker = Broker(settings, self.metrics)
        self.keys = KeyCheck(settings.api_keys)
        self.limiters = {
            "read": RateLimiter(settings.metrics_rate_limit_per_minute),
            "ingest": RateLimiter(settings.ingest_rate_limit_per_minute),
        }
        self.auth_failures = RateLimiter(settings.auth_failures_per_minute)
        self.pool: asyncpg.Pool | None = None
        self.published = Receipt()
        self.access = AccessLog() if settings.access_log else None
        self._last_publish_warning = -1e9
        # Jobs this process saw acknowledged: a replay of one of them publishes nothing.
        self._acked_jobs: OrderedDict[str, None] = OrderedDict()
        doc = openapi.document(settings)
        self._openapi_json = openapi.as_json(doc)
        self._openapi_yaml = openapi.as_yaml(doc)
        self._live_page = live_view.page()

    # --- ASGI ---

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        if not self.keys.enabled:
            log.warning("API_KEYS is not set: the gateway accepts requests without an API key")
        dsn = self.settings.pipeline.require_database_url()
        self.pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=self.settings.db_pool_size, command_timeout=30
        )
        await self.broker.start()

    async def shutdown(self) -> None:
        """Flush the producer (every pending publish is acknowledged or failed), close the pool."""
        await self.broker.stop()
        if self.access is not None:
            self.access.flush()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        caller: Caller | None = None
        template = UNMATCHED
        try:
            methods = self._match(request)
            template = next(iter(methods.values())).template
            route = self._route(request, methods)
            caller = self._authenticate(request) if route.auth else None
            if route.limit is not None:
                who = caller.key_id if caller is not None and caller.key_id else None
                self._limit(route.limit, who or f"addr-{request.client}")
            response = await route.handler(self, request, caller or Caller(None, None))
        except HttpError as exc:
            response = exc.response()
        except PublishError as exc:
            self._warn_publish(exc)
            response = self._unavailable("the broker did not acknowledge the events; retry")
        except Exception:
            log.exception("unhandled error", extra={"method": request.method, "path": request.path})
            response = json_response(500, {"errors": [error(None, "internal error")]})
        await response.send(send)
        elapsed = time.perf_counter() - started
        self.metrics.request(template, request.method, response.status, elapsed)
        if self.access is not None:
            self.access.request(
                method=request.method,
                path=request.path,
                status=response.status,
                ms=round(elapsed * 1000, 3),
                bytes=len(response.body),
                client=request.client,
                caller=caller.key_id if caller is not None else None,
            )

    def _authenticate(self, request: Request) -> Caller:
        """The caller; 401 for a bad key, 429 once an address failed too often."""
        address = f"addr-{request.client}"
        now = time.monotonic()
        try:
            self.auth_failures.refuse_if_spent(address, now, "failed authentications")
        except HttpError:
            self.metrics.rate_limited.labels(limit="auth").inc()
            raise
        try:
            return self.keys.identify(request.headers)
        except HttpError as exc:
            if exc.status == 401:
                self.metrics.auth_refused.inc()
                self.auth_failures.spend(address, now)
            raise

    def _limit(self, limit: str, who: str) -> None:
        """Take a token of rate limit ``limit`` for ``who``, or raise the 429."""
        try:
            self.limiters[limit].check(who, time.monotonic())
        except HttpError:
            self.metrics.rate_limited.labels(limit=limit).inc()
            raise

    def _match(self, request: Request) -> dict[str, _Route]:
        """The routes of the request's path, by method; 404 when there are none."""
        path = request.path
        methods = _ROUTES.get(path)
        if methods is None:
            prefix, _, tail = path.rpartition("/")
            methods = _PARAM_ROUTES.get(prefix) if tail else None
            if methods is None:
                raise HttpError(404, [error("path", f"no endpoint at {path}")])
            request.path_params["jobId"] = tail
        return methods

    def _route(self, request: Request, methods: dict[str, _Route]) -> _Route:
        route = methods.get(request.method)
        if route is None:
            allow = ", ".join(sorted(methods))
            raise HttpError(
                405,
                [error("method", f"{request.method} is not allowed here; use {allow}")],
                headers={"Allow": allow},
            )
        return route

    def _warn_publish(self, exc: PublishError) -> None:
        """One warning per 5 s of broker trouble; the request log has every 503."""
        now = time.monotonic()
        if now - self._last_publish_warning >= 5.0:
            self._last_publish_warning = now
            log.warning("publish not acknowledged: answering 503", extra={"error": str(exc)})

    def _unavailable(self, message: str) -> Response:
        retry = str(self.settings.retry_after_seconds)
        return json_response(503, {"errors": [error(None, message)]}, {"Retry-After": retry})

    async def _db(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        pool = self.pool
        if pool is None:
            raise HttpError(503, [error(None, "the database is not connected")], self._retry())
        try:
            async with pool.acquire(timeout=5) as conn:
                return await work(conn)
        except _NOT_MIGRATED:
            log.exception("database schema missing")
            raise HttpError(
                503, [error(None, "the database is not migrated (python -m pipeline migrate)")]
            ) from None
        except _DB_DOWN as exc:
            log.warning("database unavailable", extra={"error": repr(exc)})
            raise HttpError(
                503, [error(None, "the database is unavailable")], self._retry()
            ) from None

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_seconds)}

    def _published(self, receipt: Receipt) -> None:
        self.published.merge(receipt)

    # --- ingestion ---

    async def post_event(self, request: Request, caller: Caller) -> Response:
        caller.require_every_tenant("product events")
        doc, raw = await request.json(self.settings.max_body_bytes)
        event = single_product_event(doc, raw, self.limits, _now_us())
        self._published(await self.broker.publish_one(event))
        event_id = doc.get("event_id")
        return json_response(
            202, {"accepted": 1, "event_id": event_id or event.key, "dedup_key": event.key}
        )

    async def post_agent_event(self, request: Request, caller: Caller) -> Response:
        doc, raw = await request.json(self.settings.max_body_bytes)
        event = single_agent_event(doc, raw, self.limits, _now_us())
        caller.require_tenant(doc["tenant"]["tenant_id"], "tenant.tenant_id")
        self._published(await self.broker.publish_one(event))
        return json_response(
            202, {"accepted": 1, "event_id": doc["event_id"], "dedup_key": event.key}
        )

    async def post_bulk(self, request: Request, caller: Caller) -> Response:
        caller.require_every_tenant("product events")
        doc, _ = await request.json(self.settings.max_body_bytes)
        accepted, errors = bulk_events(doc, self.limits, _now_us())
        if not accepted:
            raise HttpError(400, errors, extra={"accepted": 0, "rejected": len(errors)})
        self._published(await self.broker.publish_many(accepted))
        body: dict[str, Any] = {"accepted": len(accepted), "rejected": len(errors)}
        if errors:
            body["errors"] = errors
        return json_response(202, body)

    async def post_ingestion(self, request: Request, caller: Caller) -> Response:
        doc, _ = await request.json(self.settings.max_body_bytes)
        key = jobs.check_idempotency_key(request.headers.get("idempotency-key"))
        job = ingestion(doc, self.limits, _now_us())
        caller.require_tenant(job.tenant_id, "tenantId")
        sha = request_sha256(doc)
        claim = await self._db(lambda conn: jobs.claim_job(conn, job, key, sha))
        body: dict[str, Any] = {
            "jobId": claim.job_id,
            "status": "accepted",
            "accepted": len(job.events),
        }
        headers: dict[str, str] = {}
        if not claim.created:
            body["replayed"] = True
            headers["Idempotent-Replayed"] = "true"
            if not await self._replay_needs_publish(claim.job_id):
                return json_response(202, body, headers)
            job = ingestion(doc, self.limits, _now_us(), job_id=claim.job_id)
        self._published(await self.broker.publish_many(job.events))
        self._remember_acked(claim.job_id)
        return json_response(202, body, headers)

    async def _replay_needs_publish(self, job_id: str) -> bool:
        """A replay publishes again only a job not known to be acknowledged.

        Known: this process saw its publish acknowledged, or the sink finished it.
        Otherwise (the first try got a 503, or another gateway took it and its
        fate is unknown) the events are sent again: their ids are
        ``<job_id>:<seq>``, so the sink counts each one once whatever arrives twice.
        """
        if job_id in self._acked_jobs:
            return False
        status = await self._db(lambda conn: jobs.job_status(conn, uuid.UUID(job_id), None))
        return bool(status["status"] != "completed")

    def _remember_acked(self, job_id: str) -> None:
        self._acked_jobs[job_id] = None
        if len(self._acked_jobs) > _ACKED_JOBS_KEPT:
            self._acked_jobs.popitem(last=False)

    async def get_ingestion(self, request: Request, caller: Caller) -> Response:
        job_id = jobs.parse_job_id(request.path_params["jobId"])
        status = await self._db(lambda conn: jobs.job_status(conn, job_id, caller.tenants))
        return json_response(200, status)

    async def get_results(self, request: Request, caller: Caller) -> Response:
        job_id = jobs.parse_job_id(request.path_params["jobId"])
        results = await self._db(lambda conn: jobs.job_results(conn, job_id, caller.tenants))
        return json_response(200, results)

    # --- metrics ---

    async def get_metrics(self, request: Request, caller: Caller) -> Response:
        caller.require_every_tenant("channel metrics")
        q = analytics.parse_metrics_query(request.query, _now_us())
        return json_response(200, await self._db(lambda conn: analytics.channel_metrics(conn, q)))

    async def get_overview(self, request: Request, caller: Caller) -> Response:
        q = analytics.parse_overview_query(request.query, _now_us())
        scope = _tenant_scope(q, caller)
        overview = await self._db(lambda conn: analytics.agent_overview(conn, q, scope))
        return json_response(200, overview)

    # --- the live page ---

    async def get_live(self, request: Request, caller: Caller) -> Response:
        caller.require_every_tenant("live data (channels, lag, dead letters)")
        q = live_view.parse_live_query(request.query, _now_us())
        topic = self.settings.pipeline.events_topic
        snapshot = await self._db(lambda conn: live_view.live_snapshot(conn, q, topic))
        return json_response(200, snapshot)

    async def live_page(self, request: Request, caller: Caller) -> Response:
        """The page holds no data: it asks for an API key itself and sends it to /v1/live."""
        return self._live_page

    async def get_failures(self, request: Request, caller: Caller) -> Response:
        q = analytics.parse_failures_query(request.query, _now_us())
        scope = _tenant_scope(q.window, caller)
        failures = await self._db(lambda conn: analytics.run_failures(conn, q, scope))
        return json_response(200, failures)

    # --- health and documents ---

    async def live(self, request: Request, caller: Caller) -> Response:
        return json_response(200, {"status": "ok"})

    async def ready(self, request: Request, caller: Caller) -> Response:
        checks = {"broker": await self._check_broker(), "database": await self._check_database()}
        ok = all(v == "ok" for v in checks.values())
        body = {"status": "ready" if ok else "unavailable", "checks": checks}
        return json_response(200 if ok else 503, body, None if ok else self._retry())

    # Readiness answers anyone: "ok" or "unavailable", never an address or an
    # exception text; the reason goes to the log.
    async def _check_broker(self) -> str:
        try:
            await self.broker.ping(timeout=2.0)
        except PublishError as exc:
            log.warning("not ready: broker", extra={"error": str(exc)})
            return "unavailable"
        return "ok"

    async def _check_database(self) -> str:
        try:
            await self._db(lambda conn: conn.fetchval(queries.PING, timeout=2.0))
        except HttpError as exc:
            log.warning("not ready: database", extra={"error": str(exc.errors[0]["error"])})
            return "unavailable"
        return "ok"

    async def prometheus(self, request: Request, caller: Caller) -> Response:
        """This process's metrics for Prometheus: OpenMetrics when ``Accept`` asks for it."""
        body, content_type = exposition(self.metrics.registry, request.headers.get("accept", ""))
        return Response(200, body, [(b"content-type", content_type.encode())])

    async def openapi_json(self, request: Request, caller: Caller) -> Response:
        return Response(200, self._openapi_json, [(b"content-type", b"application/json")])

    async def openapi_yaml(self, request: Request, caller: Caller) -> Response:
        return Response(200, self._openapi_yaml, [(b"content-type", b"application/yaml")])


_ROUTES: dict[str, dict[str, _Route]] = {
    "/events": {"POST": _Route(Gateway.post_event, limit="ingest")},
    "/events/bulk": {"POST": _Route(Gateway.post_bulk, limit="ingest")},
    "/v1/events": {"POST": _Route(Gateway.post_agent_event, limit="ingest")},
    "/v1/ingestions": {"POST": _Route(Gateway.post_ingestion, limit="ingest")},
    "/metrics": {"GET": _Route(Gateway.get_metrics, limit="read")},
    "/v1/metrics/overview": {"GET": _Route(Gateway.get_overview, limit="read")},
    "/v1/live": {"GET": _Route(Gateway.get_live, limit="read")},
    "/live": {"GET": _Route(Gateway.live_page, auth=False)},
    "/v1/runs/failures": {"GET": _Route(Gateway.get_failures, limit="read")},
    "/healthz": {"GET": _Route(Gateway.live, auth=False)},
    "/health/live": {"GET": _Route(Gateway.live, auth=False)},
    "/readyz": {"GET": _Route(Gateway.ready, auth=False)},
    "/health/ready": {"GET": _Route(Gateway.ready, auth=False)},
    "/openapi.json": {"GET": _Route(Gateway.openapi_json, auth=False)},
    "/openapi.yaml": {"GET": _Route(Gateway.openapi_yaml, auth=False)},
    # Counts and timings only, labelled by route template: open like health (docs/gateway.md).
    PROMETHEUS_PATH: {"GET": _Route(Gateway.prometheus, auth=False)},
}

# One trailing path segment: /v1/ingestions/{jobId}, /v1/results/{jobId}.
_PARAM_ROUTES: dict[str, dict[str, _Route]] = {
    "/v1/ingestions": {"GET": _Route(Gateway.get_ingestion)},
    "/v1/results": {"GET": _Route(Gateway.get_results)},
}


def _name_routes() -> tuple[str, ...]:
    """Give each route its path template (the metrics' ``route`` label); all templates."""
    named = [
        *_ROUTES.items(),
        *((f"{prefix}/{{jobId}}", methods) for prefix, methods in _PARAM_ROUTES.items()),
    ]
    for template, methods in named:
        for route in methods.values():
            route.template = template
    return tuple(template for template, _ in named)


# Every path the gateway serves, as templates (tests check manifests' probes against it).
ROUTE_TEMPLATES = _name_routes()


def _tenant_scope(q: analytics.OverviewQuery, caller: Caller) -> list[str] | None:
    """The tenants a read may cover (None: every one); 404 for a tenant_id outside them."""
    tenant = q.filters[0]
    if tenant is not None and not caller.may_use(tenant):
        raise HttpError(404, [error("tenant_id", "no such tenant")])
    return None if caller.tenants is None else sorted(caller.tenants)


def create_app(settings: GatewaySettings | None = None) -> Gateway:
    """The app for ``uvicorn --factory``; settings from the environment by default."""
    return Gateway(settings or GatewaySettings.from_env())


@asynccontextmanager
async def running(app: Gateway) -> AsyncIterator[Gateway]:
    """Start and stop the app's resources without a server (tests, scripts)."""
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()
