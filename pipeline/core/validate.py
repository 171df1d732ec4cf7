"""Validation of decoded events against the published contracts in ``schemas/``.

Hand-written checks, one pass per event, no generic schema interpreter on the
hot path; ``tests/unit/core/test_schemas.py`` keeps them in step with the JSON
Schema files. An object with ``event_version`` is an AI-agent run event, any
other object a product event. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pipeline.core.dedup import product_dedup_key
from pipeline.core.events import AgentEvent, Invalid, JobRef, ProductEvent, Source
from pipeline.core.limits import FIELD_MAX_BYTES, MAX_TAGS, TAG_MAX_CHARS, Breach, check_shape
from pipeline.core.timeparse import parse_rfc3339, parse_timestamp
from pipeline.core.window import hour_start_us

__all__ = ["MAX_TAGS", "METADATA_MAX_BYTES", "SCHEMA_INVALID", "job_of", "validate_event"]

SCHEMA_INVALID = "schema_invalid"
METADATA_MAX_BYTES = FIELD_MAX_BYTES
AGENT_VERSIONS = ("v0",)


# \u0000 preceded by an even number of backslashes: an escaped NUL, not the text "\u0000".
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")


_MISSING = object()
_MAX_INT_SECONDS = 253_402_300_800  # 10000-01-01T00:00:00Z
# The top-level fields each contract names (schemas/); the others are bounded together.
_PRODUCT_FIELDS = frozenset(
    [
        "event_name",
        "channel",
        "user_id",
        "timestamp",
        "event_id",
        "campaign_id",
        "tags",
        "metadata",
        "_ingestion",
    ]
)
_AGENT_FIELDS = frozenset(
    ["event_version", "event_id", "event_type", "occurred_at", "tenant", "run", "trace"]
)


class _Bad(Exception):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail)
        self.field = field
        self.detail = detail


def validate_event(
    obj: dict[str, Any], payload: bytes, source: Source
) -> ProductEvent | AgentEvent | Invalid:
    """Check one event object; ``payload`` is its JSON text, kept for the raw table."""
    if b"\\u0000" in payload and _NUL.search(payload):
        # PostgreSQL text and jsonb cannot hold NUL: refuse it here, not in the sink.
        return Invalid(SCHEMA_INVALID, "contains a NUL character (\\u0000), which cannot be stored")
    agent = "event_version" in obj
    try:
        # First: nothing below may recurse into, or serialise, an unbounded value.
        check_shape(obj, payload, _AGENT_FIELDS if agent else _PRODUCT_FIELDS)
        if agent:
            return _agent_event(obj, payload, source)
        return _product_event(obj, payload, source)
    except _Bad as bad:
        return Invalid(SCHEMA_INVALID, f"{bad.field} {bad.detail}", bad.field)
    except Breach as breach:
        return Invalid(breach.reason, f"{breach.field} {breach.detail}", breach.field)


def _text(
    obj: dict[str, Any], name: str, max_len: int, *, prefix: str = "", required: bool = True
) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise _Bad(prefix + name, "is required")
        return None
    if not isinstance(value, str):
        raise _Bad(prefix + name, f"must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= max_len:
        raise _Bad(prefix + name, f"must be 1 to {max_len} characters, got {len(value)}")
    return value


def _required_text(obj: dict[str, Any], name: str, max_len: int, prefix: str = "") -> str:
    value = _text(obj, name, max_len, prefix=prefix)
    assert value is not None  # _text raised otherwise
    return value


def _texts(obj: dict[str, Any], spec: tuple[tuple[str, int], ...], prefix: str = "") -> list[str]:
    """Required strings by (name, max length): one tight loop, the precise error when not."""
    out: list[str] = []
    for name, max_len in spec:
        value = obj.get(name)
        if type(value) is not str or not 0 < len(value) <= max_len:
            value = _required_text(obj, name, max_len, prefix)  # raises with field and detail
        out.append(value)
    return out


def _optional_text(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or (type(value) is str and 0 < len(value) <= 128):
        return value
    return _text(obj, name, 128, required=False)  # raises


_PRODUCT_TEXTS = (("event_name", 128), ("channel", 64), ("user_id", 128))


def _product_event(obj: dict[str, Any], payload: bytes, source: Source) -> ProductEvent:
    event_name, channel, user_id = _texts(obj, _PRODUCT_TEXTS)
    ts = obj.get("timestamp", _MISSING)
    if type(ts) is int and 0 <= ts < _MAX_INT_SECONDS:
        ts_us = ts * 1_000_000  # the common case, without the general parser
    elif ts is _MISSING:
        raise _Bad("timestamp", "is required")
    else:
        try:
            ts_us = parse_timestamp(ts)
        except ValueError as exc:
            raise _Bad("timestamp", str(exc)) from None
    event_id = _optional_text(obj, "event_id")
    _optional_text(obj, "campaign_id")
    _check_tags(obj.get("tags"))
    _check_metadata(obj.get("metadata"))
    job = _job_ref(obj.get("_ingestion"))
    return ProductEvent(
        dedup_key=product_dedup_key(event_name, user_id, ts_us, event_id),
        event_name=event_name,
        channel=channel,
        user_id=user_id,
        ts_us=ts_us,
        hour_us=hour_start_us(ts_us),
        payload=payload,
        source=source,
        job=job,
    )


def job_of(obj: dict[str, Any]) -> JobRef | None:
    """The ingestion job of an event object, or None (also when it is malformed)."""
    try:
        return _job_ref(obj.get("_ingestion"))
    except _Bad:
        return None


def _job_ref(value: object) -> JobRef | None:
    """``_ingestion: {job_id, seq}``, set by the gateway on events of an ingestion job."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Bad("_ingestion", "must be an object with job_id and seq")
    job_id, seq = value.get("job_id"), value.get("seq")
    if not isinstance(job_id, str) or not _UUID.match(job_id):
        raise _Bad("_ingestion.job_id", "must be a UUID")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < 2**31:
        raise _Bad("_ingestion.seq", "must be a non-negative integer")
    return job_id.lower(), seq


def _check_tags(tags: object) -> None:
    if tags is None:
        return
    if not isinstance(tags, list):
        raise _Bad("tags", "must be an array of strings")
    if len(tags) > MAX_TAGS:
        raise _Bad("tags", f"must hold at most {MAX_TAGS} strings, got {len(tags)}")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not 0 < len(tag) <= TAG_MAX_CHARS:
            raise _Bad(f"tags[{i}]", f"must be a string of 1 to {TAG_MAX_CHARS} characters")


def _check_metadata(metadata: object) -> None:
    # Its size and depth are bounded by check_shape, with every other field.
    if metadata is not None and not isinstance(metadata, dict):
        raise _Bad("metadata", "must be a JSON object")


def _section(obj: dict[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise _Bad(name, "is required" if value is None else "must be a JSON object")
    return value


def _number(obj: dict[str, Any], name: str, prefix: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Bad(prefix + name, "must be a number")
    if value < 0:
        raise _Bad(prefix + name, "must not be negative")
    return float(value)


_TRACE_TEXTS = (("trace_id", 128), ("span_id", 128))
_TENANT_TEXTS = (("tenant_id", 128), ("workspace_id", 128), ("project_id", 128))
_RUN_TEXTS = (("agent_id", 128), ("workflow_id", 128), ("run_id", 128), ("status", 64))


def _agent_event(obj: dict[str, Any], payload: bytes, source: Source) -> AgentEvent:
    version = obj.get("event_version")
    if version not in AGENT_VERSIONS:
        raise _Bad("event_version", f"must be one of {', '.join(AGENT_VERSIONS)}, got {version!r}")
    event_id = _required_text(obj, "event_id", 36)
    if not _UUID.match(event_id):
        raise _Bad("event_id", "must be a UUID such as 0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e")
    event_type = _required_text(obj, "event_type", 64)
    occurred_at = obj.get("occurred_at")
    if not isinstance(occurred_at, str):
        raise _Bad(
            "occurred_at", "is required" if occurred_at is None else "must be an RFC 3339 string"
        )
    try:
        ts_us = parse_rfc3339(occurred_at)
    except ValueError as exc:
        raise _Bad("occurred_at", str(exc)) from None
    tenant = _section(obj, "tenant")
    run = _section(obj, "run")
    trace = _section(obj, "trace")
    _texts(trace, _TRACE_TEXTS, "trace.")
    tenant_id, workspace_id, project_id = _texts(tenant, _TENANT_TEXTS, "tenant.")
    agent_id, workflow_id, run_id, status = _texts(run, _RUN_TEXTS, "run.")
    return AgentEvent(
        dedup_key=event_id.lower(),
        event_type=event_type,
        ts_us=ts_us,
        hour_us=hour_start_us(ts_us),
        tenant_id=tenant_id,
        workspace_id=workspace_id,
        project_id=project_id,
        agent_id=agent_id,
        workflow_id=workflow_id,
        run_id=run_id,
        status=status,
        cost_usd=_number(run, "cost_usd", "run."),
        latency_ms=_number(run, "latency_ms", "run."),
        payload=payload,
        source=source,
    )
