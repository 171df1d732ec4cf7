"""producers.gateway.ingest: request bodies judged by the worker's rules, errors named per field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.codec import decode_message
from pipeline.core.validate import validate_event
from producers.gateway.http import HttpError
from producers.gateway.ingest import (
    Limits,
    bulk_events,
    ingestion,
    request_sha256,
    single_agent_event,
    single_product_event,
)
from producers.keys import event_key

NOW_US = 1_700_000_000_000_000
LIMITS = Limits()
EVENT: dict[str, Any] = {
    "event_name": "page_view",
    "channel": "web",
    "user_id": "u1",
    "timestamp": 1700000000,
}
AGENT: dict[str, Any] = {
    "event_version": "v0",
    "event_id": "7D444840-9DC0-11D1-B245-5FFDCE74FAD2",
    "event_type": "run.started",
    "occurred_at": "2023-11-14T22:13:20Z",
    "tenant": {"tenant_id": "acme", "workspace_id": "ws", "project_id": "p"},
    "run": {"run_id": "r", "agent_id": "a", "workflow_id": "w", "status": "running"},
    "trace": {"trace_id": "t", "span_id": "s"},
}


def errors_of(call: Any, *args: Any) -> list[dict[str, Any]]:
    with pytest.raises(HttpError) as caught:
        call(*args)
    assert caught.value.status == 400
    return caught.value.errors


def test_a_single_product_event_keeps_the_bytes_and_the_worker_key() -> None:
    raw = orjson.dumps(EVENT)
    prepared = single_product_event(EVENT, raw, LIMITS, NOW_US)
    assert prepared.value is raw
    assert prepared.key == event_key(EVENT)


def test_a_single_agent_event_is_keyed_by_its_lower_case_id() -> None:
    prepared = single_agent_event(AGENT, orjson.dumps(AGENT), LIMITS, NOW_US)
    assert prepared.key == AGENT["event_id"].lower()


@pytest.mark.parametrize(
    ("doc", "field", "message"),
    [
        ({**EVENT, "timestamp": "2023-11-14"}, "timestamp", "must be an RFC 3339"),
        ({**EVENT, "tags": ["a", 5]}, "tags[1]", "must be a string"),
        ({**EVENT, "user_id": ""}, "user_id", "must be 1 to 128 characters"),
        ({**EVENT, "metadata": []}, "metadata", "must be a JSON object"),
        ({**EVENT, "event_version": "v0"}, "event_version", "/v1/events"),
        ([EVENT], "body", "/events/bulk"),
    ],
)
def test_product_errors_name_the_field(doc: Any, field: str, message: str) -> None:
    [error] = errors_of(single_product_event, doc, orjson.dumps(doc), LIMITS, NOW_US)
    assert error["field"] == field
    assert message in error["error"]
    assert not error["error"].startswith(field + " ")  # the field is not repeated


def test_agent_errors_name_nested_fields() -> None:
    doc = {**AGENT, "run": {**AGENT["run"], "cost_usd": -1}}
    [error] = errors_of(single_agent_event, doc, orjson.dumps(doc), LIMITS, NOW_US)
    assert error == {"field": "run.cost_usd", "error": "must not be negative"}
    [missing] = errors_of(single_agent_event, EVENT, orjson.dumps(EVENT), LIMITS, NOW_US)
    assert missing["field"] == "event_version"


def test_the_worker_time_limits_apply() -> None:
    future = {**EVENT, "timestamp": NOW_US // 1_000_000 + 3601}
    [error] = errors_of(single_product_event, future, orjson.dumps(future), LIMITS, NOW_US)
    assert error["field"] == "timestamp" and "MAX_FUTURE_SECONDS=3600" in error["error"]
    old = Limits(max_event_age_s=60)
    [late] = errors_of(single_product_event, EVENT, orjson.dumps(EVENT), old, NOW_US + 61_000_000)
    assert late["field"] == "timestamp" and "MAX_EVENT_AGE_SECONDS=60" in late["error"]


def test_an_event_larger_than_a_kafka_message_is_refused() -> None:
    raw = orjson.dumps(EVENT)
    [error] = errors_of(
        single_product_event, EVENT, raw, Limits(max_message_bytes=len(raw) - 1), NOW_US
    )
    assert error["field"] is None and "MAX_MESSAGE_BYTES" in error["error"]


def test_bulk_accepts_valid_events_and_lists_the_rest_by_index() -> None:
    docs: list[Any] = [EVENT, {**EVENT, "channel": 3}, "x", {**AGENT}, {**EVENT, "user_id": "u2"}]
    for body in (docs, {"events": docs}):  # a bare array or {"events": [...]}
        accepted, errors = bulk_events(body, LIMITS, NOW_US)
        assert [p.key for p in accepted] == [event_key(EVENT), event_key(docs[4])]
        assert [(e["index"], e["field"]) for e in errors] == [
            (1, "events[1].channel"),
            (2, "events[2]"),
            (3, "events[3].event_version"),
        ]
    # what the worker reads back from an envelope is what the gateway judged
    value = b"[" + b",".join(p.value for p in accepted) + b"]"
    for _, obj, raw in decode_message(value, LIMITS.max_message_bytes):
        assert isinstance(obj, dict)
        assert not hasattr(validate_event(obj, raw, None), "reason")  # type: ignore[arg-type]


@pytest.mark.parametrize("body", [{"events": 1}, {}, "x", [], [EVENT] * 1001])
def test_bulk_shape_errors(body: Any) -> None:
    [error] = errors_of(bulk_events, body, LIMITS, NOW_US)
    assert error["field"] == "events"


def test_an_ingestion_becomes_product_events_of_its_job() -> None:
    body = {
        "tenantId": "acme",
        "events": [
            {"type": "doc.uploaded", "timestamp": 1700000000, "payload": {"pages": 3}},
            {"type": "doc.deleted", "timestamp": "2023-11-14T22:13:20Z", "payload": None},
        ],
    }
    job = ingestion(body, LIMITS, NOW_US, job_id="0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e")
    assert job.tenant_id == "acme" and len(job.events) == 2
    first, second = (orjson.loads(p.value) for p in job.events)
    assert first == {
        "event_id": "0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e:0",
        "event_name": "doc.uploaded",
        "channel": "ingestion",
        "user_id": "acme",
        "timestamp": 1700000000,
        "metadata": {"pages": 3},
        "_ingestion": {"job_id": "0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e", "seq": 0},
    }
    assert "metadata" not in second and second["_ingestion"]["seq"] == 1
    assert [p.key for p in job.events] == [first["event_id"], second["event_id"]]
    assert ingestion(body, LIMITS, NOW_US).job_id != ingestion(body, LIMITS, NOW_US).job_id


def test_ingestion_errors_use_the_request_field_names() -> None:
    body = {
        "tenantId": "",
        "events": [
            {"type": "", "timestamp": 1},
            {"type": "x"},
            {"type": "x", "timestamp": 1, "payload": "text"},
            None,
        ],
    }
    assert errors_of(ingestion, body, LIMITS, NOW_US) == [
        {"field": "tenantId", "error": "must be 1 to 128 characters, got 0"},
    ]
    assert errors_of(ingestion, {**body, "tenantId": None}, LIMITS, NOW_US) == [
        {"field": "tenantId", "error": "is required"},
    ]
    body["tenantId"] = "acme"
    assert [(e["field"], e.get("index")) for e in errors_of(ingestion, body, LIMITS, NOW_US)] == [
        ("events[0].type", 0),
        ("events[1].timestamp", 1),
        ("events[2].payload", 2),
        ("events[3]", 3),
    ]


def test_the_request_fingerprint_ignores_key_order_and_spacing() -> None:
    a = orjson.loads(b'{"tenantId": "t", "events": [{"type": "x", "timestamp": 1}]}')
    b = orjson.loads(b'{"events":[{"timestamp":1,"type":"x"}],"tenantId":"t"}')
    assert request_sha256(a) == request_sha256(b)
    assert request_sha256(a) != request_sha256({**a, "tenantId": "u"})
