"""The published JSON Schema contracts (``schemas/``) and ``pipeline.core.validate`` agree.

One corpus of events, each with the verdict the contract gives it (accepted, or
refused naming a field), is run through the JSON Schema files (jsonschema, with
format checking) and through ``validate_event``. A case marked ``code_bug`` is
one where ``validate_event`` breaks the contract: it is expected to fail
(strict xfail) until the code is fixed. No I/O besides reading the schema files.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.core.codec import NOT_AN_OBJECT, decode_message
from pipeline.core.events import AgentEvent, Invalid, ProductEvent, Source
from pipeline.core.limits import TOO_LARGE
from pipeline.core.validate import METADATA_MAX_BYTES, SCHEMA_INVALID, validate_event
from pipeline.resources import schemas_folder

SCHEMA_DIR = schemas_folder()
SCHEMA_FILES = {
    "product": SCHEMA_DIR / "product-event.v1.schema.json",
    "agent": SCHEMA_DIR / "agent-event.v0.schema.json",
}
SCHEMAS: dict[str, dict[str, Any]] = {
    kind: json.loads(path.read_text(encoding="utf-8")) for kind, path in SCHEMA_FILES.items()
}
VALIDATORS = {
    kind: Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for kind, schema in SCHEMAS.items()
}
EVENT_CLASSES = {"product": ProductEvent, "agent": AgentEvent}
SOURCE = Source("events", 0, 0)

PRODUCT: dict[str, Any] = {
    "event_name": "page_view",
    "channel": "web",
    "user_id": "u-1842",
    "timestamp": 1_700_000_000,
}
AGENT: dict[str, Any] = {
    "event_version": "v0",
    "event_id": "7d444840-9dc0-11d1-b245-5ffdce74fad2",
    "event_type": "run.started",
    "occurred_at": "2023-11-14T22:13:20Z",
    "tenant": {"tenant_id": "acme", "workspace_id": "ws-main", "project_id": "support-bot"},
    "run": {
        "run_id": "run-5b1e",
        "agent_id": "triage-agent",
        "workflow_id": "ticket-triage",
        "status": "running",
    },
    "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
}

DROP = object()  # as a change value: remove the property
ACCEPTED = "<accepted>"  # as the expected field: the event is valid


def _patch(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``changes`` ({"dotted.path": value or DROP}) applied."""
    obj = copy.deepcopy(base)
    for path, value in changes.items():
        *parents, name = path.split(".")
        target = obj
        for parent in parents:
            target = target[parent]
        if value is DROP:
            del target[name]
        else:
            target[name] = value
    return obj


def product(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    return _patch(PRODUCT, changes or {})


def agent(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    return _patch(AGENT, changes or {})


def kind_of(obj: dict[str, Any]) -> str:
    # The rule of both the schemas (product's `not required event_version`) and the code.
    return "agent" if "event_version" in obj else "product"


@dataclass(frozen=True)
class Case:
    id: str
    obj: dict[str, Any]
    field: str | None  # ACCEPTED, or the field validate_event must name (None: no field)
    code_bug: str | None = None  # validate_event breaks the contract here: why


def ok(case_id: str, obj: dict[str, Any], code_bug: str | None = None) -> Case:
    return Case(case_id, obj, ACCEPTED, code_bug)


def bad(case_id: str, obj: dict[str, Any], field: str | None, code_bug: str | None = None) -> Case:
    return Case(case_id, obj, field, code_bug)


UUID_CASES_BUG = (
    "validate_event checks agent event_id with uuid.UUID(), which also takes 32 hex digits "
    "without hyphens, braces, '_', '+' and spaces: non-canonical spellings are accepted and give "
    "a different dedup key than the canonical spelling of the same UUID"
)
FROMISOFORMAT_BUG = (
    "timeparse.parse_rfc3339 relies on datetime.fromisoformat, which accepts ISO 8601 forms "
    "that are not RFC 3339"
)

CASES: list[Case] = [
    # ---- product event: accepted -------------------------------------------------------
    ok("product/minimal-int-timestamp", product()),
    ok("product/timestamp-float", product({"timestamp": 1_700_000_000.25})),
    ok("product/timestamp-integral-float", product({"timestamp": 1_700_000_000.0})),
    ok("product/timestamp-zero", product({"timestamp": 0})),
    ok("product/timestamp-max-9999-12-31", product({"timestamp": 253_402_300_799})),
    ok(
        "product/timestamp-last-float-before-year-10000",
        product({"timestamp": math.nextafter(253_402_300_800.0, 0)}),
    ),
    ok("product/timestamp-Z-string", product({"timestamp": "2023-11-14T22:13:20Z"})),
    ok("product/timestamp-plus-05:30", product({"timestamp": "2023-11-15T03:43:20+05:30"})),
    ok("product/timestamp-minus-05:00-ms", product({"timestamp": "2023-11-14T17:13:20.250-05:00"})),
    ok("product/timestamp-minus-00:00", product({"timestamp": "2023-11-14T22:13:20-00:00"})),
    ok("product/timestamp-lowercase-t", product({"timestamp": "2023-11-14t22:13:20Z"})),
    ok("product/timestamp-nanoseconds", product({"timestamp": "2023-11-14T22:13:20.123456789Z"})),
    ok("product/timestamp-leap-day", product({"timestamp": "2024-02-29T12:00:00Z"})),
    ok("product/timestamp-epoch-string", product({"timestamp": "1970-01-01T00:00:00Z"})),
    ok("product/timestamp-year-9999", product({"timestamp": "9999-12-31T23:59:59.999999Z"})),
    ok("product/event_name-128-chars", product({"event_name": "e" * 128})),
    ok("product/event_name-128-code-points", product({"event_name": "é" * 127 + "🎉"})),
    ok("product/channel-64-chars", product({"channel": "c" * 64})),
    ok("product/user_id-128-chars", product({"user_id": "u" * 128})),
    ok("product/event_id-uuid", product({"event_id": "0f8fad5b-d9cb-469f-a165-70867728950e"})),
    ok("product/event_id-any-string", product({"event_id": "order-77812-paid"})),
    ok("product/event_id-128-chars", product({"event_id": "i" * 128})),
    ok("product/campaign_id-128-chars", product({"campaign_id": "k" * 128})),
    ok("product/tags-32", product({"tags": [f"t{i}" for i in range(32)]})),
    ok("product/tags-empty-array", product({"tags": []})),
    ok("product/tag-128-chars", product({"tags": ["t" * 128]})),
    ok("product/metadata-nested-object", product({"metadata": {"a": [1, {"b": None}], "c": "ü"}})),
    ok("product/metadata-empty-object", product({"metadata": {}})),
    ok(
        "product/optionals-null",
        product({"event_id": None, "campaign_id": None, "tags": None, "metadata": None}),
    ),
    ok("product/extra-properties", product({"client": {"app_version": "5.2.0"}, "n": 3})),
    ok(
        "product/backslash-u0000-text-is-not-NUL",
        product({"metadata": {"path": "C:\\u0000"}}),
    ),
    ok(
        "product/timestamp-lowercase-z",
        product({"timestamp": "2023-11-14T22:13:20z"}),
    ),
    # ---- product event: refused ---------------------------------------------------------
    bad("product/event_name-missing", product({"event_name": DROP}), "event_name"),
    bad("product/event_name-null", product({"event_name": None}), "event_name"),
    bad("product/event_name-number", product({"event_name": 42}), "event_name"),
    bad("product/event_name-empty", product({"event_name": ""}), "event_name"),
    bad("product/event_name-129-chars", product({"event_name": "e" * 129}), "event_name"),
    bad(
        "product/event_name-129-code-points",
        product({"event_name": "é" * 128 + "🎉"}),
        "event_name",
    ),
    bad("product/channel-missing", product({"channel": DROP}), "channel"),
    bad("product/channel-array", product({"channel": ["web"]}), "channel"),
    bad("product/channel-empty", product({"channel": ""}), "channel"),
    bad("product/channel-65-chars", product({"channel": "c" * 65}), "channel"),
    bad("product/user_id-missing", product({"user_id": DROP}), "user_id"),
    bad("product/user_id-number", product({"user_id": 1842}), "user_id"),
    bad("product/user_id-empty", product({"user_id": ""}), "user_id"),
    bad("product/user_id-129-chars", product({"user_id": "u" * 129}), "user_id"),
    bad("product/timestamp-missing", product({"timestamp": DROP}), "timestamp"),
    bad("product/timestamp-null", product({"timestamp": None}), "timestamp"),
    bad("product/timestamp-boolean", product({"timestamp": True}), "timestamp"),
    bad("product/timestamp-negative", product({"timestamp": -1}), "timestamp"),
    bad("product/timestamp-negative-float", product({"timestamp": -0.5}), "timestamp"),
    bad(
        "product/timestamp-tiny-negative-float",
        product({"timestamp": -4e-7}),
        "timestamp",
    ),
    bad("product/timestamp-after-9999", product({"timestamp": 253_402_300_800}), "timestamp"),
    bad("product/timestamp-object", product({"timestamp": {"s": 1}}), "timestamp"),
    bad("product/timestamp-digits-string", product({"timestamp": "1700000000"}), "timestamp"),
    bad("product/timestamp-no-offset", product({"timestamp": "2023-11-14T22:13:20"}), "timestamp"),
    bad(
        "product/timestamp-no-offset-fraction",
        product({"timestamp": "2023-11-14T22:13:20.5"}),
        "timestamp",
    ),
    bad("product/timestamp-date-only", product({"timestamp": "2023-11-14"}), "timestamp"),
    bad(
        "product/timestamp-before-1970", product({"timestamp": "1969-12-31T23:59:59Z"}), "timestamp"
    ),
    bad("product/timestamp-feb-30", product({"timestamp": "2024-02-30T00:00:00Z"}), "timestamp"),
    bad(
        "product/timestamp-feb-29-2023", product({"timestamp": "2023-02-29T00:00:00Z"}), "timestamp"
    ),
    bad("product/timestamp-hour-24", product({"timestamp": "2023-11-14T24:00:00Z"}), "timestamp"),
    bad(
        "product/timestamp-leap-second", product({"timestamp": "2016-12-31T23:59:60Z"}), "timestamp"
    ),
    bad(
        "product/timestamp-offset-24:00",
        product({"timestamp": "2023-11-14T22:13:20+24:00"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-trailing-newline",
        product({"timestamp": "2023-11-14T22:13:20Z\n"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-zone-name",
        product({"timestamp": "2023-11-14T22:13:20 UTC"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-space-separator",
        product({"timestamp": "2023-11-14 22:13:20Z"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-no-seconds",
        product({"timestamp": "2023-11-14T22:13+05:30"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-offset-without-colon",
        product({"timestamp": "2023-11-14T22:13:20+0530"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-offset-hours-only",
        product({"timestamp": "2023-11-14T22:13:20+05"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-offset-minute-60",
        product({"timestamp": "2023-11-14T22:13:20+05:60"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-offset-with-seconds",
        product({"timestamp": "2023-11-14T22:13:20+05:30:15"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-comma-fraction",
        product({"timestamp": "2023-11-14T22:13:20,5Z"}),
        "timestamp",
    ),
    bad(
        "product/timestamp-empty-fraction",
        product({"timestamp": "2023-11-14T22:13:20.Z"}),
        "timestamp",
    ),
    bad("product/event_id-empty", product({"event_id": ""}), "event_id"),
    bad("product/event_id-number", product({"event_id": 77812}), "event_id"),
    bad("product/event_id-129-chars", product({"event_id": "i" * 129}), "event_id"),
    bad("product/campaign_id-empty", product({"campaign_id": ""}), "campaign_id"),
    bad("product/campaign_id-number", product({"campaign_id": 5}), "campaign_id"),
    bad("product/campaign_id-129-chars", product({"campaign_id": "k" * 129}), "campaign_id"),
    bad("product/tags-33", product({"tags": [f"t{i}" for i in range(33)]}), "tags"),
    bad("product/tags-string", product({"tags": "promo"}), "tags"),
    bad("product/tags-object", product({"tags": {"promo": True}}), "tags"),
    bad("product/tag-empty", product({"tags": ["promo", ""]}), "tags[1]"),
    bad("product/tag-129-chars", product({"tags": ["t" * 129]}), "tags[0]"),
    bad("product/tag-number", product({"tags": [7]}), "tags[0]"),
    bad("product/tag-null", product({"tags": ["a", "b", None]}), "tags[2]"),
    bad("product/metadata-array", product({"metadata": [1, 2]}), "metadata"),
    bad("product/metadata-string", product({"metadata": "{}"}), "metadata"),
    bad("product/with-event_version-null", product({"event_version": None}), "event_version"),
    bad("product/with-event_version-v1", product({"event_version": "v1"}), "event_version"),
    bad("product/NUL-in-user_id", product({"user_id": "u\x001"}), None),
    bad("product/NUL-in-metadata-value", product({"metadata": {"a": ["x\x00"]}}), None),
    bad("product/NUL-in-metadata-key", product({"metadata": {"a\x00": 1}}), None),
    bad("product/NUL-in-extra-key", product({"x\x00": 1}), None),
    # ---- agent event: accepted -----------------------------------------------------------
    ok("agent/minimal", agent()),
    ok("agent/cost-and-latency", agent({"run.cost_usd": 0.0123, "run.latency_ms": 5321})),
    ok("agent/cost-and-latency-zero", agent({"run.cost_usd": 0, "run.latency_ms": 0.0})),
    ok("agent/cost-and-latency-null", agent({"run.cost_usd": None, "run.latency_ms": None})),
    ok("agent/event_id-uppercase", agent({"event_id": "0B1C3E5A-8F2D-4C6B-9A7E-1D2F3A4B5C6D"})),
    ok("agent/event_id-nil-uuid", agent({"event_id": "00000000-0000-0000-0000-000000000000"})),
    ok("agent/event_type-64-chars", agent({"event_type": "r" * 64})),
    ok(
        "agent/occurred_at-plus-05:30-fraction",
        agent({"occurred_at": "2023-11-15T03:43:20.5+05:30"}),
    ),
    bad(
        "agent/occurred_at-year-0001",
        agent({"occurred_at": "0001-01-01T00:00:00Z"}),
        "occurred_at",
    ),
    ok("agent/tenant-ids-128-chars", agent({f"tenant.{k}": "t" * 128 for k in AGENT["tenant"]})),
    ok(
        "agent/run-ids-128-status-64",
        agent(
            {
                "run.run_id": "r" * 128,
                "run.agent_id": "a" * 128,
                "run.workflow_id": "w" * 128,
                "run.status": "s" * 64,
            }
        ),
    ),
    ok(
        "agent/trace-ids-128-chars",
        agent({"trace.trace_id": "t" * 128, "trace.span_id": "s" * 128}),
    ),
    ok(
        "agent/extra-properties",
        agent({"source": "sdk", "run.error": None, "tenant.region": "eu", "trace.sampled": True}),
    ),
    ok(
        "agent/occurred_at-lowercase-z",
        agent({"occurred_at": "2023-11-14T22:13:20z"}),
    ),
    # ---- agent event: refused ------------------------------------------------------------
    bad("agent/event_version-v1", agent({"event_version": "v1"}), "event_version"),
    bad("agent/event_version-null", agent({"event_version": None}), "event_version"),
    bad("agent/event_version-number", agent({"event_version": 0}), "event_version"),
    bad("agent/event_id-missing", agent({"event_id": DROP}), "event_id"),
    bad("agent/event_id-not-uuid", agent({"event_id": "run-5b1e-started"}), "event_id"),
    bad("agent/event_id-number", agent({"event_id": 12345}), "event_id"),
    bad("agent/event_id-empty", agent({"event_id": ""}), "event_id"),
    bad(
        "agent/event_id-bad-hex-digit",
        agent({"event_id": "7d444840-9dc0-11d1-b245-5ffdce74fadg"}),
        "event_id",
    ),
    bad(
        "agent/event_id-uuid-with-newline",
        agent({"event_id": "7d444840-9dc0-11d1-b245-5ffdce74fad2\n"}),
        "event_id",
    ),
    bad(
        "agent/event_id-32-hex-no-hyphens",
        agent({"event_id": "7d4448409dc011d1b2455ffdce74fad2"}),
        "event_id",
    ),
    bad(
        "agent/event_id-braces",
        agent({"event_id": "{7d4448409dc011d1b2455ffdce74fad2}"}),
        "event_id",
    ),
    bad(
        "agent/event_id-underscore",
        agent({"event_id": "7d44484_-9dc0-11d1-b245-5ffdce74fad2"}),
        "event_id",
    ),
    bad("agent/event_type-missing", agent({"event_type": DROP}), "event_type"),
    bad("agent/event_type-empty", agent({"event_type": ""}), "event_type"),
    bad("agent/event_type-65-chars", agent({"event_type": "r" * 65}), "event_type"),
    bad("agent/occurred_at-missing", agent({"occurred_at": DROP}), "occurred_at"),
    bad("agent/occurred_at-unix-seconds", agent({"occurred_at": 1_700_000_000}), "occurred_at"),
    bad(
        "agent/occurred_at-no-offset", agent({"occurred_at": "2023-11-14T22:13:20"}), "occurred_at"
    ),
    bad("agent/occurred_at-date-only", agent({"occurred_at": "2023-11-14"}), "occurred_at"),
    bad(
        "agent/occurred_at-year-0000", agent({"occurred_at": "0000-01-01T00:00:00Z"}), "occurred_at"
    ),
    bad("agent/tenant-missing", agent({"tenant": DROP}), "tenant"),
    bad("agent/tenant-string", agent({"tenant": "acme"}), "tenant"),
    bad("agent/tenant.tenant_id-missing", agent({"tenant.tenant_id": DROP}), "tenant.tenant_id"),
    bad(
        "agent/tenant.workspace_id-empty", agent({"tenant.workspace_id": ""}), "tenant.workspace_id"
    ),
    bad("agent/tenant.project_id-missing", agent({"tenant.project_id": DROP}), "tenant.project_id"),
    bad(
        "agent/tenant.project_id-129-chars",
        agent({"tenant.project_id": "p" * 129}),
        "tenant.project_id",
    ),
    bad("agent/run-missing", agent({"run": DROP}), "run"),
    bad("agent/run-array", agent({"run": []}), "run"),
    bad("agent/run.run_id-missing", agent({"run.run_id": DROP}), "run.run_id"),
    bad("agent/run.agent_id-number", agent({"run.agent_id": 3}), "run.agent_id"),
    bad(
        "agent/run.workflow_id-129-chars", agent({"run.workflow_id": "w" * 129}), "run.workflow_id"
    ),
    bad("agent/run.status-missing", agent({"run.status": DROP}), "run.status"),
    bad("agent/run.status-65-chars", agent({"run.status": "s" * 65}), "run.status"),
    bad("agent/run.cost_usd-negative", agent({"run.cost_usd": -0.01}), "run.cost_usd"),
    bad("agent/run.cost_usd-string", agent({"run.cost_usd": "0.5"}), "run.cost_usd"),
    bad("agent/run.cost_usd-boolean", agent({"run.cost_usd": True}), "run.cost_usd"),
    bad("agent/run.latency_ms-negative", agent({"run.latency_ms": -1}), "run.latency_ms"),
    bad("agent/trace-missing", agent({"trace": DROP}), "trace"),
    bad("agent/trace.trace_id-empty", agent({"trace.trace_id": ""}), "trace.trace_id"),
    bad("agent/trace.span_id-missing", agent({"trace.span_id": DROP}), "trace.span_id"),
    bad("agent/NUL-in-run-status", agent({"run.status": "fail\x00ed"}), None),
]


def schema_verdict(obj: Any) -> set[str]:
    """The contracts ``obj`` is valid against."""
    return {kind for kind, validator in VALIDATORS.items() if validator.is_valid(obj)}


def code_verdict(obj: dict[str, Any]) -> ProductEvent | AgentEvent | Invalid:
    # The payload as the worker sees an envelope element: compact JSON.
    return validate_event(obj, orjson.dumps(obj), SOURCE)


def _schema_params() -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES]


def _code_params() -> list[Any]:
    return [
        pytest.param(
            c,
            id=c.id,
            marks=[pytest.mark.xfail(strict=True, reason=c.code_bug)] if c.code_bug else [],
        )
        for c in CASES
    ]


def test_corpus_is_large_and_ids_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_schema_file_is_valid_json_schema(kind: str) -> None:
    schema = SCHEMAS[kind]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(SCHEMA_FILES[kind].name)
    assert schema["title"] and schema["description"] and schema["examples"]


def test_shared_definitions_are_identical() -> None:
    assert SCHEMAS["product"]["$defs"] == SCHEMAS["agent"]["$defs"]


@pytest.mark.parametrize("case", _schema_params())
def test_schema_verdict(case: Case) -> None:
    kinds = schema_verdict(case.obj)
    if case.field == ACCEPTED:
        assert kinds == {kind_of(case.obj)}
    else:
        assert kinds == set()


@pytest.mark.parametrize("case", _code_params())
def test_validate_event_agrees_with_schema(case: Case) -> None:
    schema_accepts = bool(schema_verdict(case.obj))
    result = code_verdict(case.obj)
    code_accepts = not isinstance(result, Invalid)
    assert code_accepts == schema_accepts == (case.field == ACCEPTED), result
    if isinstance(result, Invalid):
        assert result.reason == SCHEMA_INVALID
        assert result.field == case.field, result.detail
    else:
        assert isinstance(result, EVENT_CLASSES[kind_of(case.obj)])


def _examples() -> list[Any]:
    return [
        pytest.param(kind, example, id=f"{kind}/example-{i}")
        for kind, schema in sorted(SCHEMAS.items())
        for i, example in enumerate(schema["examples"])
    ]


@pytest.mark.parametrize(("kind", "example"), _examples())
def test_schema_examples_are_valid_everywhere(kind: str, example: dict[str, Any]) -> None:
    VALIDATORS[kind].validate(example)
    assert schema_verdict(example) == {kind}
    assert isinstance(code_verdict(example), EVENT_CLASSES[kind])


def _property_examples() -> list[Any]:
    """Each property's own ``examples``, to be put in the minimal event of its kind."""
    params = []
    bases = {"product": PRODUCT, "agent": AGENT}
    for kind, schema in sorted(SCHEMAS.items()):
        sections = [("", schema)] + [
            (f"{name}.", sub) for name, sub in schema["properties"].items() if "properties" in sub
        ]
        for prefix, section in sections:
            for name, prop in section["properties"].items():
                examples = prop.get("examples", [])
                if prop.get("$ref") == "#/$defs/rfc3339_date_time":
                    examples = schema["$defs"]["rfc3339_date_time"]["examples"]
                for i, value in enumerate(examples):
                    obj = _patch(bases[kind], {prefix + name: value})
                    params.append(pytest.param(kind, obj, id=f"{kind}/{prefix}{name}-{i}"))
    return params


@pytest.mark.parametrize(("kind", "obj"), _property_examples())
def test_property_examples_are_valid_everywhere(kind: str, obj: dict[str, Any]) -> None:
    assert schema_verdict(obj) == {kind}
    assert isinstance(code_verdict(obj), EVENT_CLASSES[kind])


def _with_metadata_of(size: int) -> dict[str, Any]:
    metadata = {"pad": ""}
    metadata["pad"] = "x" * (size - len(orjson.dumps(metadata)))
    assert len(orjson.dumps(metadata)) == size
    return product({"metadata": metadata})


def test_metadata_size_limit_is_documented_and_enforced_by_the_code() -> None:
    # JSON Schema cannot count bytes: the schema documents the limit and accepts
    # both; the worker refuses one byte over.
    prop = SCHEMAS["product"]["properties"]["metadata"]
    assert str(METADATA_MAX_BYTES) in prop["description"]
    assert str(METADATA_MAX_BYTES) in prop["$comment"]
    at_limit = _with_metadata_of(METADATA_MAX_BYTES)
    over = _with_metadata_of(METADATA_MAX_BYTES + 1)
    assert schema_verdict(at_limit) == schema_verdict(over) == {"product"}
    assert isinstance(code_verdict(at_limit), ProductEvent)
    refused = code_verdict(over)
    assert isinstance(refused, Invalid)
    assert (refused.reason, refused.field) == (TOO_LARGE, "metadata")


def test_metadata_limit_does_not_depend_on_the_producers_spelling() -> None:
    raw = (
        b'{"event_name":"e","channel":"web","user_id":"u","timestamp":1700000000,'
        b'"metadata":{"n":[' + b",".join([b"1e5"] * 2000) + b"]}}"
    )
    obj = orjson.loads(raw)
    assert len(raw) < METADATA_MAX_BYTES < len(orjson.dumps(obj["metadata"]))
    as_envelope_element = validate_event(obj, orjson.dumps(obj), SOURCE)
    as_single_message = validate_event(obj, raw, SOURCE)
    assert isinstance(as_envelope_element, Invalid)
    assert isinstance(as_single_message, Invalid)


@pytest.mark.parametrize(
    "value", ["page_view", 17, None, True], ids=["string", "number", "null", "boolean"]
)
def test_non_objects_are_refused_by_schema_and_codec(value: Any) -> None:
    assert schema_verdict(value) == set()
    assert schema_verdict([PRODUCT]) == set()  # an envelope: judged element by element
    [(_index, item, _raw)] = decode_message(orjson.dumps(value), 1 << 20)
    assert isinstance(item, Invalid)
    assert item.reason == NOT_AN_OBJECT
