"""The OpenAPI 3.1 document of the gateway, served at /openapi.json and /openapi.yaml.

Request bodies embed the published contracts from ``schemas/`` (JSON Schema
2020-12, the dialect of OpenAPI 3.1; shipped in the wheel as ``pipeline/schemas``
and found by pipeline.resources); their ``$defs`` move to
``components/schemas`` so every ``$ref`` resolves within this one document.
The YAML form is written here too: every key and string double-quoted (JSON
escapes are YAML escapes), so it parses back to exactly the JSON document.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from pipeline.resources import schemas_folder
from producers.gateway.settings import GatewaySettings

__all__ = ["CONTRACTS", "as_json", "as_yaml", "document", "load_contract"]

CONTRACTS = {
    "ProductEvent": "product-event.v1.schema.json",
    "AgentEvent": "agent-event.v0.schema.json",
}
_ERR = "#/components/responses/"


def load_contract(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A contract without ``$schema``/``$id``/``$defs``, and its ``$defs``, refs rewritten."""
    schema = orjson.loads((schemas_folder() / CONTRACTS[name]).read_bytes())
    defs = schema.pop("$defs", {})
    for key in ("$schema", "$id"):
        schema.pop(key, None)
    return _rewrite(schema), {k: _rewrite(v) for k, v in defs.items()}


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        return out
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _ok(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": _json(_ref(schema))}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": _ERR + code} for code in codes}


def _text(name: str, max_len: int, where: str = "query", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": False,
        "description": description or f"Only rows with this {name}.",
        "schema": {"type": "string", "minLength": 1, "maxLength": max_len},
    }


def _schemas(max_events: int) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name in CONTRACTS:
        contract, defs = load_contract(name)
        schemas[name] = contract
        for key, value in defs.items():
            if schemas.setdefault(key, value) != value:
                raise ValueError(f"the contracts disagree on $defs/{key}")
    product = schemas["ProductEvent"]
    error_item = {
        "type": "object",
        "required": ["field", "error"],
        "properties": {
            "field": {
                "type": ["string", "null"],
                "description": "The offending field (e.g. `timestamp`, `events[3].tags[0]`,"
                " `Content-Type`), or null when the request as a whole is refused.",
            },
            "error": {"type": "string", "description": "What is wrong and how to fix it."},
            "index": {"type": "integer", "description": "Position in the request's events."},
        },
    }
    schemas |= {
        "Error": error_item,
        "Errors": {
            "type": "object",
            "required": ["errors"],
            "properties": {
                "errors": {"type": "array", "items": _ref("Error")},
                "accepted": {"type": "integer"},
                "rejected": {"type": "integer"},
                "jobId": {"type": "string", "format": "uuid"},
            },
        },
        "BulkRequest": {
            "description": 'A bare JSON array of product events, or {"events": [...]}.',
            "oneOf": [
                {"$ref": "#/components/schemas/BulkEvents"},
                {
                    "type": "object",
                    "required": ["events"],
                    "properties": {"events": _ref("BulkEvents")},
                },
            ],
        },
        "BulkEvents": {
            "type": "array",
            "minItems": 1,
            "maxItems": max_events,
            "items": product,
        },
        "IngestionRequest": {
            "type": "object",
            "required": ["tenantId", "events"],
            "properties": {
                "tenantId": {"type": "string", "minLength": 1, "maxLength": 128},
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_events,
                    "items": _ref("IngestionEvent"),
                },
            },
        },
        "IngestionEvent": {
            "type": "object",
            "required": ["type", "timestamp"],
            "properties": {
                "type": {"type": "string", "minLength": 1, "maxLength": 128},
                "timestamp": product["properties"]["timestamp"],
                "payload": {
                    "type": ["object", "null"],
                    "description": "Free-form JSON object, at most 16384 bytes.",
                },
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["accepted", "event_id", "dedup_key"],
            "properties": {
                "accepted": {"type": "integer", "const": 1},
                "event_id": {"type": "string"},
                "dedup_key": {"type": "string"},
            },
        },
        "BulkAccepted": {
            "type": "object",
            "required": ["accepted", "rejected"],
            "properties": {
                "accepted": {"type": "integer"},
                "rejected": {"type": "integer"},
                "errors": {"type": "array", "items": _ref("Error")},
            },
        },
        "JobAccepted": {
            "type": "object",
            "required": ["jobId", "status", "accepted"],
            "properties": {
                "jobId": {"type": "string", "format": "uuid"},
                "status": {"const": "accepted"},
                "accepted": {"type": "integer"},
                "replayed": {"type": "boolean"},
            },
        },
        "JobStatus": {
            "type": "object",
            "required": [
                "jobId",
                "tenantId",
                "status",
                "accepted",
                "stored",
                "duplicates",
                "deadLettered",
                "processed",
                "createdAt",
                "updatedAt",
            ],
            "properties": {
                "jobId": {"type": "string", "format": "uuid"},
                "tenantId": {"type": "string"},
                "status": {"enum": ["accepted", "processing", "completed"]},
                "accepted": {"type": "integer"},
                "processed": {"type": "integer"},
                "stored": {"type": "integer"},
                "duplicates": {"type": "integer"},
                "deadLettered": {"type": "integer"},
                "createdAt": {"type": "string", "format": "date-time"},
                "updatedAt": {"type": "string", "format": "date-time"},
            },
        },
        "JobResults": {
            "type": "object",
            "required": ["jobId", "tenantId", "status", "totalEvents", "results"],
            "properties": {
                "jobId": {"type": "string", "format": "uuid"},
                "tenantId": {"type": "string"},
                "status": {"enum": ["accepted", "processing", "completed"]},
                "totalEvents": {"type": "integer"},
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "count", "firstEventAt", "lastEventAt"],
                        "properties": {
                            "type": {"type": "string"},
                            "count": {"type": "integer"},
                            "firstEventAt": {"type": "string", "format": "date-time"},
                            "lastEventAt": {"type": "string", "format": "date-time"},
                        },
                    },
                },
            },
        },
        "Metrics": {
            "type": "object",
            "required": ["from", "to", "group_by", "totals", "buckets"],
            "properties": {
                "event_name": {"type": ["string", "null"]},
                "channel": {"type": ["string", "null"]},
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time"},
                "group_by": {"enum": ["hour", "day", "channel"]},
                "totals": {
                    "type": "object",
                    "required": ["events", "unique_users"],
                    "properties": {
                        "events": {"type": "integer"},
                        "unique_users": {"type": "integer"},
                    },
                },
                "buckets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["events", "unique_users", "late_events"],
                        "properties": {
                            "start": {"type": "string", "format": "date-time"},
                            "channel": {"type": "string"},
                            "events": {"type": "integer"},
                            "unique_users": {"type": "integer"},
                            "late_events": {"type": "integer"},
                        },
                    },
                },
            },
        },
        "Overview": {
            "type": "object",
            "required": [
                "window_hours",
                "from",
                "to",
                "filters",
                "total_runs",
                "success_rate",
                "total_cost_usd",
                "avg_latency_ms",
            ],
            "properties": {
                "window_hours": {"type": "integer"},
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time"},
                "filters": {"type": "object"},
                "total_runs": {"type": "integer"},
                "succeeded": {"type": "integer"},
                "failed": {"type": "integer"},
                "events": {"type": "integer"},
                "success_rate": {"type": "number"},
                "total_cost_usd": {"type": "number"},
                "avg_latency_ms": {"type": "number"},
                **{
                    f"p{p}_latency_ms": {
                        "type": "number",
                        "description": f"Nearest-rank {p}th percentile of run.latency_ms,"
                        " estimated from log-spaced histograms: within 4.43% of the exact"
                        " value (0.015625 ms below 0.03125 ms). 0.0 without samples.",
                    }
                    for p in (50, 95, 99)
                },
                "latency_samples": {"type": "integer"},
                "latency_percentile_samples": {
                    "type": "integer",
                    "description": "Samples behind the percentiles; fewer than latency_samples"
                    " while hours stored before the histograms are not rebuilt.",
                },
            },
        },
        "Failures": {
            "type": "object",
            "required": ["window_hours", "from", "to", "filters", "limit", "failures"],
            "properties": {
                "window_hours": {"type": "integer"},
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time"},
                "filters": {"type": "object"},
                "limit": {"type": "integer"},
                "failures": {
                    "type": "array",
                    "description": "Newest first; equal times by event_id, descending.",
                    "items": _ref("Failure"),
                },
            },
        },
        "Failure": {
            "type": "object",
            "required": [
                "event_id",
                "run_id",
                "occurred_at",
                "tenant_id",
                "workspace_id",
                "project_id",
                "agent_id",
                "workflow_id",
                "status",
                "latency_ms",
                "cost_usd",
                "error",
            ],
            "properties": {
                "event_id": {"type": "string", "description": "The dedup key (lower case)."},
                "run_id": {"type": "string"},
                "occurred_at": {"type": "string", "format": "date-time"},
                "tenant_id": {"type": "string"},
                "workspace_id": {"type": "string"},
                "project_id": {"type": "string"},
                "agent_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "status": {"type": "string"},
                "latency_ms": {"type": ["number", "null"]},
                "cost_usd": {"type": ["number", "null"]},
                "error": {
                    "description": "The event's run.error as sent (any JSON value), null"
                    " when it has none.",
                },
            },
        },
        "Live": _live_schema(),
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"type": "string"},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    }
    return schemas


def _live_schema() -> dict[str, Any]:
    """GET /v1/live: every per-hour list has one entry per hour of ``hour_starts``."""
    ints = {"type": "array", "items": {"type": "integer"}}
    iso = {"type": "string", "format": "date-time"}

    def obj(required: list[str], **properties: Any) -> dict[str, Any]:
        return {"type": "object", "required": required, "properties": properties}

    series = obj(
        ["channel", "event_name", "other", "events", "total", "late_events"],
        channel={"type": ["string", "null"]},
        event_name={"type": ["string", "null"]},
        other={"type": "boolean", "description": "The series beyond the top ones, summed."},
        series_folded={"type": "integer", "description": "How many series `other` sums."},
        events=ints,
        total={"type": "integer"},
        late_events={"type": "integer"},
    )
    hour = obj(
        ["hour", "state", "events", "late_events", "revised"],
        hour=iso,
        state={"enum": ["complete", "incomplete", "empty"]},
        events={"type": "integer"},
        late_events={"type": "integer"},
        revised={"type": "boolean"},
    )
    partition = obj(
        ["partition", "lag", "worker_id"],
        partition={"type": "integer"},
        lag={"type": ["integer", "null"], "description": "null: no live worker reports it."},
        worker_id={"type": ["string", "null"]},
    )
    worker = obj(
        ["worker_id", "state", "partitions", "heartbeat_at", "silent_s"],
        worker_id={"type": "string"},
        state={"enum": ["live", "unhealthy", "silent"]},
        partitions=ints,
        heartbeat_at=iso,
        silent_s={"type": "number"},
    )
    reason = obj(
        ["reason", "counts", "total"],
        reason={"type": "string"},
        counts=ints,
        total={"type": "integer"},
    )
    rates = {"type": "array", "items": {"type": ["number", "null"]}}
    doc = obj(
        [
            "generated_at",
            "hours",
            "from",
            "to",
            "hour_starts",
            "channels",
            "agents",
            "completeness",
            "lag",
            "dead_letters",
        ],
        generated_at=iso,
        hours={"type": "integer"},
        to=iso,
        hour_starts={"type": "array", "items": iso},
        channels=obj(
            ["series", "series_total", "by_hour", "total", "late_events"],
            series={"type": "array", "items": series},
            series_total={"type": "integer"},
            by_hour=ints,
            total={"type": "integer"},
            late_events={"type": "integer"},
        ),
        agents=obj(
            ["hourly", "totals"],
            hourly=obj(
                ["runs", "succeeded", "failed", "success_rate"],
                runs=ints,
                succeeded=ints,
                failed=ints,
                success_rate=rates,
            ),
            totals=_ref("Overview"),
        ),
        completeness=obj(
            ["low_watermark", "complete", "hours"],
            low_watermark={"type": ["string", "null"], "format": "date-time"},
            complete={"type": "integer"},
            hours={"type": "array", "items": hour},
        ),
        lag=obj(
            ["partitions", "total", "unowned", "workers", "silent_after_s"],
            partitions={"type": "array", "items": partition},
            total={"type": "integer"},
            unowned=ints,
            workers={"type": "array", "items": worker},
            silent_after_s={"type": "number"},
        ),
        dead_letters=obj(
            ["interval_seconds", "starts", "reasons", "total", "last_interval"],
            interval_seconds={"type": "integer"},
            starts={"type": "array", "items": iso},
            reasons={"type": "array", "items": reason},
            total={"type": "integer"},
            last_interval={"type": "integer"},
        ),
    )
    doc["properties"]["from"] = iso  # a keyword in Python
    return doc


def _responses() -> dict[str, Any]:
    retry = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}

    def err(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "content": _json(_ref("Errors"))}
        if headers:
            out["headers"] = headers
        return out

    return {
        "400": err("The request is invalid: each bad field is named."),
        "401": err("No API key, or an unknown one (only when API_KEYS is set)."),
        "403": err(
            "The API key may not use that tenant, or this endpoint needs a key for every tenant."
        ),
        "404": err("No such resource, or one outside the API key's tenants."),
        "409": err("The Idempotency-Key was used with a different body."),
        "413": err("The body is larger than GATEWAY_MAX_BODY_BYTES."),
        "415": err("The body is not declared as JSON (Content-Type: application/json)."),
        "429": err(
            "Rate limit exceeded for this API key, or too many failed authentications from"
            " this address.",
            retry,
        ),
        "503": err(
            "The broker did not acknowledge, the publish queue is full, or the database is"
            " unreachable: retry.",
            retry,
        ),
    }


def _post(summary: str, body: str, ok: dict[str, Any], *errs: str, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": _json(_ref(body))},
        "responses": {"202": ok, **_errors("400", "401", "403", "413", "415", "429", "503", *errs)},
    }
    return op | extra


def _paths() -> dict[str, Any]:
    time_param = "Unix seconds or an RFC 3339 date-time (e.g. 2023-11-14T22:00:00Z)."
    job_id = {
        "name": "jobId",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    health = {"description": "Status.", "content": _json(_ref("Health"))}
    agent_window = [
        {
            "name": "window_hours",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 8784, "default": 24},
        },
        *(
            _text(name, 128)
            for name in ("tenant_id", "workspace_id", "project_id", "agent_id", "workflow_id")
        ),
    ]
    return {
        "/events": {
            "post": _post(
                "Publish one product event",
                "ProductEvent",
                _ok("Acknowledged by the broker.", "Accepted"),
            )
        },
        "/events/bulk": {
            "post": _post(
                "Publish up to GATEWAY_MAX_BULK_EVENTS product events; the valid ones are accepted",
                "BulkRequest",
                _ok("The valid events were acknowledged by the broker.", "BulkAccepted"),
            )
        },
        "/v1/events": {
            "post": _post(
                "Publish one AI-agent run event",
                "AgentEvent",
                _ok("Acknowledged by the broker.", "Accepted"),
            )
        },
        "/v1/ingestions": {
            "post": _post(
                "Create an ingestion job (all events or none)",
                "IngestionRequest",
                _ok("The job's events were acknowledged by the broker.", "JobAccepted"),
                "409",
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Same key and body: the same job, published once.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
            )
        },
        "/v1/ingestions/{jobId}": {
            "get": {
                "summary": "Status and counts of an ingestion job",
                "parameters": [job_id],
                "responses": {
                    "200": _ok("The job.", "JobStatus"),
                    **_errors("400", "401", "404", "429", "503"),
                },
            }
        },
        "/v1/results/{jobId}": {
            "get": {
                "summary": "Stored events of an ingestion job, by type",
                "parameters": [job_id],
                "responses": {
                    "200": _ok("Aggregates by type.", "JobResults"),
                    **_errors("400", "401", "404", "429", "503"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Product-event rollups: totals and buckets by hour, day or channel",
                "parameters": [
                    _text("event_name", 128),
                    _text("channel", 64),
                    {
                        "name": "from",
                        "in": "query",
                        "description": "Start, inclusive (hour starts). " + time_param,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "to",
                        "in": "query",
                        "description": "End, exclusive. " + time_param,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "group_by",
                        "in": "query",
                        "schema": {"enum": ["hour", "day", "channel"], "default": "hour"},
                    },
                ],
                "responses": {
                    "200": _ok("Rollups.", "Metrics"),
                    **_errors("400", "401", "403", "404", "429", "503"),
                },
            }
        },
        "/v1/metrics/overview": {
            "get": {
                "summary": "AI-agent run rollups over the last window_hours UTC hours",
                "parameters": agent_window,
                "responses": {
                    "200": _ok("Overview.", "Overview"),
                    **_errors("400", "401", "403", "404", "429", "503"),
                },
            }
        },
        "/v1/live": {
            "get": {
                "summary": "The live page's data: hourly rollups, agent runs, completeness,"
                " lag per partition (as workers report it), dead letters per interval",
                "parameters": [
                    {
                        "name": "hours",
                        "in": "query",
                        "description": "The last N UTC hours, the current one included.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 168, "default": 24},
                    },
                    {
                        "name": "dlq_interval",
                        "in": "query",
                        "description": "Seconds per dead-letter interval; at most 2016 intervals"
                        " over the window.",
                        "schema": {"enum": [60, 300, 600, 900, 1800, 3600], "default": 300},
                    },
                ],
                "responses": {
                    "200": _ok("A snapshot.", "Live"),
                    **_errors("400", "401", "403", "404", "429", "503"),
                },
            }
        },
        "/live": {
            "get": {
                "summary": "The live page: one self-contained HTML page that polls /v1/live"
                " (it asks for an API key itself when the gateway needs one)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/runs/failures": {
            "get": {
                "summary": "The newest failed runs (run.failed) of the last window_hours UTC hours",
                "parameters": [
                    *agent_window,
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "At most this many failures.",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                ],
                "responses": {
                    "200": _ok("Failed runs, newest first.", "Failures"),
                    **_errors("400", "401", "404", "429", "503"),
                },
            }
        },
        **{
            path: {
                "get": {
                    "summary": summary,
                    "security": [],
                    "responses": {"200": health, "503": health},
                }
            }
            for path, summary in (
                ("/healthz", "Liveness"),
                ("/health/live", "Liveness (alias of /healthz)"),
                ("/readyz", "Readiness: broker and database reachable"),
                ("/health/ready", "Readiness (alias of /readyz)"),
            )
        },
        "/prometheus": {
            "get": {
                "summary": "The gateway's own metrics for Prometheus (requests, latency,"
                " publishes, rate limits, process); not the rollups (those are /metrics)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenMetrics when Accept asks for"
                        " application/openmetrics-text, else the Prometheus text format.",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    }
                },
            }
        },
    }


def document(settings: GatewaySettings) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Event pipeline gateway",
            "version": "1.0.0",
            "description": "Publishes events to Kafka (a 202 only after the broker acknowledged)"
            " and reads the PostgreSQL rollups. See docs/gateway.md.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(settings.max_bulk_events),
            "responses": _responses(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
    if settings.auth_enabled:
        doc["security"] = [{"bearer": []}, {"apiKey": []}]
    return copy.deepcopy(doc)


def as_json(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def as_yaml(doc: dict[str, Any]) -> bytes:
    lines: list[str] = []
    _yaml(doc, 0, lines)
    return ("\n".join(lines) + "\n").encode()


def _scalar(value: Any) -> str:
    return orjson.dumps(value).decode()


def _yaml(node: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(node, dict):
        for key, value in node.items():
            head = f"{pad}{_scalar(str(key))}:"
            if isinstance(value, dict | list) and value:
                lines.append(head)
                _yaml(value, indent + 2, lines)
            else:
                lines.append(f"{head} {_flow(value)}")
    else:
        for item in node:
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}-")
                _yaml(item, indent + 2, lines)
            else:
                lines.append(f"{pad}- {_flow(item)}")


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)
