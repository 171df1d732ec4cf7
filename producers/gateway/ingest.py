"""Request bodies to publishable events, judged by the worker's own rules. Pure: no I/O.

Every event is checked with :func:`pipeline.core.validate.validate_event` and
:func:`pipeline.core.window.time_verdict` (the worker's limits), so what the gateway
accepts the worker stores, and what the worker would dead-letter the client
hears about as a 400 naming the field. Each accepted event leaves as its Kafka
key (the dedup key) and its JSON bytes.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from pipeline.core.events import AgentEvent, Invalid, ProductEvent, Source
from pipeline.core.limits import EventLimits
from pipeline.core.validate import validate_event
from pipeline.core.window import time_verdict
from producers.gateway.http import HttpError, error

__all__ = [
    "INGESTION_CHANNEL",
    "Ingestion",
    "Limits",
    "Prepared",
    "bulk_events",
    "ingestion",
    "request_sha256",
    "single_agent_event",
    "single_product_event",
]

INGESTION_CHANNEL = "ingestion"
_SOURCE = Source("gateway", -1, -1)
# Product-event fields as an ingestion request names them.
_INGESTION_FIELDS = {"event_name": "type", "metadata": "payload", "timestamp": "timestamp"}


@dataclass(frozen=True, slots=True)
class Limits(EventLimits):
    """The worker's event limits (refused here what it would dead-letter), and a bulk's size."""

    max_events: int = 1000


class Prepared(NamedTuple):
    """One accepted event: its Kafka key (the dedup key) and the bytes to publish."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Ingestion:
    job_id: str
    tenant_id: str
    events: list[Prepared]


def single_product_event(doc: Any, raw: bytes, limits: Limits, now_us: int) -> Prepared:
    """``POST /events``: one product event, published as the bytes the client sent."""
    if not isinstance(doc, dict):
        raise HttpError(
            400, [error("body", "must be one event object; post arrays to /events/bulk")]
        )
    if "event_version" in doc:
        raise HttpError(
            400, [error("event_version", "marks an AI-agent run event: post it to /v1/events")]
        )
    return _one(doc, raw, limits, now_us)


def single_agent_event(doc: Any, raw: bytes, limits: Limits, now_us: int) -> Prepared:
    """``POST /v1/events``: one AI-agent run event (``event_version: "v0"``)."""
    if not isinstance(doc, dict):
        raise HttpError(400, [error("body", "must be one agent run event object")])
    if "event_version" not in doc:
        raise HttpError(400, [error("event_version", 'is required: "v0"')])
    return _one(doc, raw, limits, now_us)


def _one(doc: dict[str, Any], raw: bytes, limits: Limits, now_us: int) -> Prepared:
    result = _judge(doc, raw, limits, now_us)
    if isinstance(result, dict):
        raise HttpError(400, [result])
    return Prepared(result.dedup_key, raw)


def bulk_events(
    doc: Any, limits: Limits, now_us: int
) -> tuple[list[Prepared], list[dict[str, Any]]]:
    """``POST /events/bulk``: each event judged on its own; the valid ones and the errors."""
    items = doc.get("events") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise HttpError(400, [error("events", 'post a JSON array of events or {"events": [...]}')])
    _check_count(items, limits)
    accepted: list[Prepared] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        at = f"events[{i}]"
        if not isinstance(item, dict):
            errors.append(error(at, "must be a JSON object", index=i))
            continue
        if "event_version" in item:
            errors.append(
                error(f"{at}.event_version", "marks an agent run event: use /v1/events", index=i)
            )
            continue
        raw = orjson.dumps(item)
        result = _judge(item, raw, limits, now_us)
        if isinstance(result, dict):
            errors.append(_at(result, at, i))
        else:
            accepted.append(Prepared(result.dedup_key, raw))
    return accepted, errors


def ingestion(doc: Any, limits: Limits, now_us: int, job_id: str | None = None) -> Ingestion:
    """``POST /v1/ingestions``: ``{tenantId, events: [{type, timestamp, payload}]}``.

    All or nothing: a job is published whole or not at all. Each event becomes
    a product event on channel ``ingestion`` whose ``event_id`` is
    ``<job_id>:<seq>`` (so a replay of the job can never count twice).
    """
    if not isinstance(doc, dict):
        raise HttpError(400, [error("body", "must be an object {tenantId, events}")])
    tenant = doc.get("tenantId")
    items = doc.get("events")
    if not isinstance(items, list):
        raise HttpError(
            400, [error("events", "is required: an array of {type, timestamp, payload}")]
        )
    _check_count(items, limits)
    _check_tenant(tenant)
    job = job_id or str(uuid.uuid4())
    prepared: list[Prepared] = []
    errors: list[dict[str, Any]] = []
    for seq, item in enumerate(items):
        at = f"events[{seq}]"
        if not isinstance(item, dict):
            errors.append(error(at, "must be an object {type, timestamp, payload}", index=seq))
            continue
        event = _ingestion_event(job, seq, tenant, item)
        raw = orjson.dumps(event)
        result = _judge(event, raw, limits, now_us)
        if isinstance(result, dict):
            errors.append(_ingestion_error(result, at, seq))
        else:
            prepared.append(Prepared(result.dedup_key, raw))
    if errors:
        raise HttpError(400, _unique(errors))
    return Ingestion(job, str(tenant), prepared)


def request_sha256(doc: Any) -> str:
    """The fingerprint of a request body: SHA-256 of its canonical JSON (sorted keys)."""
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _check_tenant(tenant: Any) -> None:
    """The tenant is every job event's ``user_id``: judged once, by the same rule."""
    probe = {"event_name": "x", "channel": INGESTION_CHANNEL, "user_id": tenant, "timestamp": 0}
    result = validate_event(probe, orjson.dumps(probe), _SOURCE)
    if isinstance(result, Invalid):
        raise HttpError(400, [_ingestion_error(_invalid(result), "tenantId", -1)])


def _ingestion_event(job: str, seq: int, tenant: Any, item: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"{job}:{seq}",
        "event_name": item.get("type"),
        "channel": INGESTION_CHANNEL,
        "user_id": tenant,
    }
    if "timestamp" in item:
        event["timestamp"] = item["timestamp"]
    if item.get("payload") is not None:
        event["metadata"] = item["payload"]
    event["_ingestion"] = {"job_id": job, "seq": seq}
    return event


def _ingestion_error(err: dict[str, Any], at: str, seq: int) -> dict[str, Any]:
    name = err["field"]
    if name == "user_id":
        return error("tenantId", err["error"])
    if name is None:
        return error(at, err["error"], index=seq)
    head, dot, rest = name.partition(".")
    mapped = _INGESTION_FIELDS.get(head, head) + dot + rest
    return error(f"{at}.{mapped}", err["error"], index=seq)


def _judge(
    doc: dict[str, Any], raw: bytes, limits: Limits, now_us: int
) -> ProductEvent | AgentEvent | dict[str, Any]:
    """The validated event, or the one error that refuses it."""
    if len(raw) > limits.max_message_bytes:
        return error(
            None,
            f"the event is {len(raw)} bytes of JSON; the limit is {limits.max_message_bytes}"
            " (MAX_MESSAGE_BYTES)",
        )
    result = validate_event(doc, raw, _SOURCE)
    if isinstance(result, Invalid):
        return _invalid(result)
    verdict = time_verdict(result.ts_us, now_us, limits.max_event_age_s, limits.max_future_s)
    if verdict is None:
        return result
    field = "timestamp" if isinstance(result, ProductEvent) else "occurred_at"
    if verdict == "too_late":
        why = f"is older than MAX_EVENT_AGE_SECONDS={limits.max_event_age_s}"
    else:
        why = f"is more than MAX_FUTURE_SECONDS={limits.max_future_s} ahead of now"
    return error(field, why)


def _invalid(result: Invalid) -> dict[str, Any]:
    text = result.detail
    if result.field and text.startswith(result.field + " "):
        text = text[len(result.field) + 1 :]
    return error(result.field, text)


def _at(err: dict[str, Any], at: str, index: int) -> dict[str, Any]:
    name = err["field"]
    return error(f"{at}.{name}" if name else at, err["error"], index=index)


def _check_count(items: list[Any], limits: Limits) -> None:
    if not 0 < len(items) <= limits.max_events:
        raise HttpError(
            400,
            [error("events", f"must hold 1 to {limits.max_events} events, got {len(items)}")],
        )


def _unique(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[bytes] = set()
    out = []
    for e in errors:
        k = orjson.dumps(e, option=orjson.OPT_SORT_KEYS)
        if k not in seen:
            seen.add(k)
            out.append(e)
    return out
