"""pipeline.core.validate.validate_event: every field rule, and what Invalid says about it.

tests/unit/core/test_schemas.py keeps the rules in step with the JSON Schema files;
this file checks the behaviour: the event built, and Invalid.reason/field/detail.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.dedup import product_dedup_key
from pipeline.core.events import AgentEvent, Invalid, ProductEvent, Source
from pipeline.core.limits import TOO_LARGE
from pipeline.core.validate import (
    MAX_TAGS,
    METADATA_MAX_BYTES,
    SCHEMA_INVALID,
    job_of,
    validate_event,
)
from pipeline.core.window import HOUR_US

SRC = Source("events", 3, 42, 1)
US = 1_700_000_000_000_000
H22 = 1_699_999_200_000_000
UUID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"

PRODUCT: dict[str, Any] = {
    "event_name": "page_view",
    "channel": "web",
    "user_id": "u1",
    "timestamp": "2023-11-15T03:43:20+05:30",
}

AGENT: dict[str, Any] = {
    "event_version": "v0",
    "event_id": UUID,
    "event_type": "run.completed",
    "occurred_at": "2023-11-14T22:13:20Z",
    "tenant": {"tenant_id": "t1", "workspace_id": "ws", "project_id": "p1"},
    "run": {
        "run_id": "run-1",
        "agent_id": "agent-1",
        "workflow_id": "wf-1",
        "status": "completed",
        "cost_usd": 0.25,
        "latency_ms": 1200,
    },
    "trace": {"trace_id": "tr-1", "span_id": "sp-1"},
}


def check(obj: dict[str, Any], payload: bytes | None = None) -> ProductEvent | AgentEvent | Invalid:
    return validate_event(obj, orjson.dumps(obj) if payload is None else payload, SRC)


def product(**changes: Any) -> dict[str, Any]:
    obj = dict(PRODUCT, **changes)
    return {k: v for k, v in obj.items() if v is not _DROP}


def agent(path: str, value: Any) -> dict[str, Any]:
    """AGENT with ``path`` ("run.cost_usd") set to ``value`` (or removed with _DROP)."""
    obj = copy.deepcopy(AGENT)
    *parents, name = path.split(".")
    target = obj
    for p in parents:
        target = target[p]
    if value is _DROP:
        target.pop(name, None)
    else:
        target[name] = value
    return obj


_DROP = object()


def assert_invalid(
    result: object, field: str | None, *fragments: str, reason: str = SCHEMA_INVALID
) -> Invalid:
    assert isinstance(result, Invalid), result
    assert result.reason == reason
    assert result.field == field
    if field is not None:
        assert result.detail.startswith(f"{field} "), result.detail
    for fragment in fragments:
        assert fragment in result.detail, result.detail
    return result


class TestValidProduct:
    def test_builds_the_event(self) -> None:
        payload = orjson.dumps(PRODUCT)
        event = validate_event(PRODUCT, payload, SRC)
        assert isinstance(event, ProductEvent)
        assert event.event_name == "page_view"
        assert event.channel == "web"
        assert event.user_id == "u1"
        assert event.ts_us == US
        assert event.hour_us == H22
        assert event.payload is payload
        assert event.source == SRC
        assert event.late is False
        assert event.dedup_key == product_dedup_key("page_view", "u1", US, None)

    def test_event_id_is_the_dedup_key(self) -> None:
        event = check(product(event_id="evt-1"))
        assert isinstance(event, ProductEvent)
        assert event.dedup_key == "evt-1"

    def test_optional_fields(self) -> None:
        event = check(
            product(
                event_id="e" * 128,
                campaign_id="c" * 128,
                tags=["t" * 128] * MAX_TAGS,
                metadata={"nested": {"a": [1, 2, {"b": None}]}},
                extra_field="kept in the payload",
            )
        )
        assert isinstance(event, ProductEvent)

    @pytest.mark.parametrize("name", ["event_id", "campaign_id", "tags", "metadata"])
    def test_optional_fields_may_be_null(self, name: str) -> None:
        assert isinstance(check(product(**{name: None})), ProductEvent)

    def test_empty_tags_and_metadata(self) -> None:
        assert isinstance(check(product(tags=[], metadata={})), ProductEvent)

    @pytest.mark.parametrize(
        ("name", "limit"), [("event_name", 128), ("channel", 64), ("user_id", 128)]
    )
    def test_text_at_its_length_limit(self, name: str, limit: int) -> None:
        assert isinstance(check(product(**{name: "x" * limit})), ProductEvent)

    def test_length_counts_characters_not_bytes(self) -> None:
        event = check(product(event_name="é" * 128, user_id="ユ" * 128, channel="🙂" * 64))
        assert isinstance(event, ProductEvent)
        assert event.event_name == "é" * 128

    @pytest.mark.parametrize("ts", [0, 1700000000.5, "1970-01-01T00:00:00Z"])
    def test_timestamp_forms(self, ts: object) -> None:
        assert isinstance(check(product(timestamp=ts)), ProductEvent)

    def test_event_version_absent_means_product(self) -> None:
        # A product event carrying agent-looking fields is still a product event.
        event = check(product(event_type="run.started", tenant={"tenant_id": "t"}))
        assert isinstance(event, ProductEvent)


class TestInvalidProduct:
    @pytest.mark.parametrize("name", ["event_name", "channel", "user_id", "timestamp"])
    def test_required_field_missing(self, name: str) -> None:
        result = check(product(**{name: _DROP}))
        assert_invalid(result, name, "is required")
        assert result.detail == f"{name} is required"  # type: ignore[union-attr]

    @pytest.mark.parametrize("name", ["event_name", "channel", "user_id"])
    def test_required_text_null(self, name: str) -> None:
        assert_invalid(check(product(**{name: None})), name, "is required")

    @pytest.mark.parametrize(
        ("name", "value", "kind"),
        [
            ("event_name", 5, "int"),
            ("channel", ["web"], "list"),
            ("user_id", 12.5, "float"),
            ("user_id", True, "bool"),
            ("event_id", 123, "int"),
            ("campaign_id", {"id": 1}, "dict"),
        ],
    )
    def test_text_of_the_wrong_type(self, name: str, value: object, kind: str) -> None:
        assert_invalid(check(product(**{name: value})), name, f"must be a string, got {kind}")

    @pytest.mark.parametrize(
        ("name", "limit"),
        [
            ("event_name", 128),
            ("channel", 64),
            ("user_id", 128),
            ("event_id", 128),
            ("campaign_id", 128),
        ],
    )
    def test_text_too_long(self, name: str, limit: int) -> None:
        assert_invalid(
            check(product(**{name: "x" * (limit + 1)})),
            name,
            f"must be 1 to {limit} characters, got {limit + 1}",
        )

    @pytest.mark.parametrize(
        "name", ["event_name", "channel", "user_id", "event_id", "campaign_id"]
    )
    def test_text_empty(self, name: str) -> None:
        assert_invalid(check(product(**{name: ""})), name, "got 0")

    @pytest.mark.parametrize(
        ("ts", "fragment"),
        [
            (None, "unix seconds"),
            (True, "unix seconds"),
            ([1700000000], "unix seconds"),
            ({"s": 1}, "unix seconds"),
            ("yesterday", "RFC 3339"),
            ("1700000000", "RFC 3339"),
            ("2023-11-14T22:13:20.000", "offset"),
            (-1, "non-negative"),
            (-0.5, "non-negative"),
            (253_402_300_800, "outside"),
            ("1969-12-31T23:59:59Z", "outside"),
        ],
    )
    def test_bad_timestamp(self, ts: object, fragment: str) -> None:
        assert_invalid(check(product(timestamp=ts)), "timestamp", fragment)

    def test_tags_not_a_list(self) -> None:
        assert_invalid(check(product(tags="not-a-list")), "tags", "must be an array of strings")
        assert_invalid(check(product(tags={"a": 1})), "tags", "must be an array")

    def test_too_many_tags(self) -> None:
        assert_invalid(
            check(product(tags=["t"] * (MAX_TAGS + 1))),
            "tags",
            f"at most {MAX_TAGS} strings, got {MAX_TAGS + 1}",
        )

    @pytest.mark.parametrize(
        ("tags", "field"),
        [
            (["ok", 5], "tags[1]"),
            ([""], "tags[0]"),
            (["a", "b", "t" * 129], "tags[2]"),
            ([None], "tags[0]"),
            ([["nested"]], "tags[0]"),
        ],
    )
    def test_bad_tag_names_its_index(self, tags: list[Any], field: str) -> None:
        assert_invalid(check(product(tags=tags)), field, "string of 1 to 128 characters")

    @pytest.mark.parametrize("metadata", [[1, 2], "text", 5, True])
    def test_metadata_not_an_object(self, metadata: object) -> None:
        assert_invalid(check(product(metadata=metadata)), "metadata", "must be a JSON object")

    def test_metadata_size_limit(self) -> None:
        # orjson.dumps({"k": "x" * n}) is n + 8 bytes.
        at_limit = product(metadata={"k": "x" * (METADATA_MAX_BYTES - 8)})
        assert len(orjson.dumps(at_limit["metadata"])) == METADATA_MAX_BYTES
        assert isinstance(check(at_limit), ProductEvent)
        over = product(metadata={"k": "x" * (METADATA_MAX_BYTES - 7)})
        assert_invalid(
            check(over), "metadata", f"at most {METADATA_MAX_BYTES} bytes", reason=TOO_LARGE
        )

    def test_large_event_with_small_metadata_is_fine(self) -> None:
        big = product(
            metadata={"k": "x" * 8000},
            tags=["t" * 128] * MAX_TAGS,
            padding="p" * 10_000,
        )
        assert len(orjson.dumps(big)) > METADATA_MAX_BYTES
        assert isinstance(check(big), ProductEvent)

    def test_one_of_several_bad_fields_is_reported(self) -> None:
        result = check({"timestamp": "nope", "tags": 5})
        assert isinstance(result, Invalid)
        assert result.field in {"event_name", "channel", "user_id", "timestamp", "tags"}
        assert_invalid(result, result.field)


class TestValidAgent:
    def test_builds_the_event(self) -> None:
        payload = orjson.dumps(AGENT)
        event = validate_event(AGENT, payload, SRC)
        assert isinstance(event, AgentEvent)
        assert event.dedup_key == UUID
        assert event.event_type == "run.completed"
        assert event.ts_us == US
        assert event.hour_us == H22
        assert (event.tenant_id, event.workspace_id, event.project_id) == ("t1", "ws", "p1")
        assert (event.agent_id, event.workflow_id, event.run_id) == ("agent-1", "wf-1", "run-1")
        assert event.status == "completed"
        assert event.cost_usd == 0.25
        assert event.latency_ms == 1200.0
        assert isinstance(event.latency_ms, float)
        assert event.payload is payload
        assert event.source == SRC
        assert event.late is False

    def test_upper_case_uuid_is_keyed_in_lower_case(self) -> None:
        event = check(agent("event_id", UUID.upper()))
        assert isinstance(event, AgentEvent)
        assert event.dedup_key == UUID

    @pytest.mark.parametrize("name", ["cost_usd", "latency_ms"])
    def test_optional_numbers(self, name: str) -> None:
        for value in (_DROP, None):
            event = check(agent(f"run.{name}", value))
            assert isinstance(event, AgentEvent)
            assert getattr(event, name) is None
        event = check(agent(f"run.{name}", 0))
        assert isinstance(event, AgentEvent)
        assert getattr(event, name) == 0.0

    def test_occurred_at_with_offset_buckets_in_utc(self) -> None:
        event = check(agent("occurred_at", "2023-11-15T03:43:20.5+05:30"))
        assert isinstance(event, AgentEvent)
        assert event.ts_us == US + 500_000
        assert event.hour_us == H22

    def test_extra_fields_are_allowed_and_kept_in_the_payload(self) -> None:
        obj = agent("run.model", "gpt")
        event = check(obj)
        assert isinstance(event, AgentEvent)
        assert orjson.loads(event.payload)["run"]["model"] == "gpt"


class TestInvalidAgent:
    @pytest.mark.parametrize("version", ["v1", "V0", "", 0, None, ["v0"]])
    def test_unknown_event_version(self, version: object) -> None:
        assert_invalid(
            check(agent("event_version", version)), "event_version", "must be one of v0", "got "
        )

    @pytest.mark.parametrize(
        ("path", "fragment"),
        [
            ("event_id", "is required"),
            ("event_type", "is required"),
            ("occurred_at", "is required"),
            ("tenant", "is required"),
            ("run", "is required"),
            ("trace", "is required"),
            ("tenant.tenant_id", "is required"),
            ("tenant.workspace_id", "is required"),
            ("tenant.project_id", "is required"),
            ("run.agent_id", "is required"),
            ("run.workflow_id", "is required"),
            ("run.run_id", "is required"),
            ("run.status", "is required"),
            ("trace.trace_id", "is required"),
            ("trace.span_id", "is required"),
        ],
    )
    def test_required_fields(self, path: str, fragment: str) -> None:
        assert_invalid(check(agent(path, _DROP)), path, fragment)
        assert_invalid(check(agent(path, None)), path, fragment)

    @pytest.mark.parametrize("section", ["tenant", "run", "trace"])
    @pytest.mark.parametrize("value", [[], "x", 1, True])
    def test_sections_must_be_objects(self, section: str, value: object) -> None:
        assert_invalid(check(agent(section, value)), section, "must be a JSON object")

    @pytest.mark.parametrize(
        ("path", "limit"),
        [
            ("event_type", 64),
            ("tenant.tenant_id", 128),
            ("tenant.workspace_id", 128),
            ("tenant.project_id", 128),
            ("run.agent_id", 128),
            ("run.workflow_id", 128),
            ("run.run_id", 128),
            ("run.status", 64),
            ("trace.trace_id", 128),
            ("trace.span_id", 128),
        ],
    )
    def test_text_limits(self, path: str, limit: int) -> None:
        assert isinstance(check(agent(path, "x" * limit)), AgentEvent)
        assert_invalid(check(agent(path, "x" * (limit + 1))), path, f"1 to {limit} characters")
        assert_invalid(check(agent(path, "")), path, "got 0")
        assert_invalid(check(agent(path, 7)), path, "must be a string, got int")

    @pytest.mark.parametrize(
        ("event_id", "fragment"),
        [
            ("not-a-uuid", "must be a UUID"),
            ("6f9619ff-8b86-d011-b42d-00cf4fc964fg", "must be a UUID"),
            ("6f9619ff-8b86-d011-b42d", "must be a UUID"),
            ("{" + UUID + "}", "1 to 36 characters, got 38"),
            ("urn:uuid:" + UUID, "1 to 36 characters"),
            (12345, "must be a string"),
        ],
    )
    def test_bad_event_id(self, event_id: object, fragment: str) -> None:
        assert_invalid(check(agent("event_id", event_id)), "event_id", fragment)

    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            (1700000000, "must be an RFC 3339 string"),
            (1700000000.5, "must be an RFC 3339 string"),
            (True, "must be an RFC 3339 string"),
            ("yesterday", "RFC 3339"),
            ("2023-11-14T22:13:20.000", "offset"),
            ("2023-11-14 22:13:20Z", "RFC 3339"),
            ("1969-12-31T23:59:59Z", "outside"),
        ],
    )
    def test_bad_occurred_at(self, value: object, fragment: str) -> None:
        assert_invalid(check(agent("occurred_at", value)), "occurred_at", fragment)

    @pytest.mark.parametrize("name", ["cost_usd", "latency_ms"])
    @pytest.mark.parametrize(
        ("value", "fragment"),
        [
            (-0.01, "must not be negative"),
            (-1, "must not be negative"),
            ("1.5", "must be a number"),
            (True, "must be a number"),
            (False, "must be a number"),
            ([1], "must be a number"),
            (float("nan"), "must be a number"),
            (float("inf"), "must be a number"),
        ],
    )
    def test_bad_numbers(self, name: str, value: object, fragment: str) -> None:
        obj = agent(f"run.{name}", value)
        # NaN/inf are not JSON; hand the object over with a placeholder payload.
        result = validate_event(obj, b"{}", SRC)
        assert_invalid(result, f"run.{name}", fragment)

    @pytest.mark.parametrize(
        "spelling",
        [
            UUID.replace("-", ""),  # uuid.UUID() takes it; a second dedup key would follow
            UUID[:13] + UUID[14:18] + "-" + UUID[18:],  # misplaced hyphen
            " " + UUID[1:],
        ],
    )
    def test_one_uuid_has_one_spelling(self, spelling: str) -> None:
        # Anything but the hyphenated form would give one event two dedup keys.
        result = check(agent("event_id", spelling))
        assert_invalid(result, "event_id", "must be a UUID")


class TestNul:
    @pytest.mark.parametrize(
        "obj",
        [
            dict(PRODUCT, user_id="u\x001"),
            dict(PRODUCT, metadata={"note": "a\x00b"}),
            dict(PRODUCT, metadata={"k\x00": 1}),
            agent("run.status", "ok\x00"),
        ],
    )
    def test_nul_is_refused_as_schema_invalid(self, obj: dict[str, Any]) -> None:
        result = check(obj)
        assert isinstance(result, Invalid)
        assert result.reason == SCHEMA_INVALID
        assert "NUL" in result.detail
        assert "\\u0000" in result.detail

    def test_nul_is_refused_before_other_checks(self) -> None:
        result = check({"user_id": "\x00"})  # also misses required fields
        assert isinstance(result, Invalid)
        assert "NUL" in result.detail

    @pytest.mark.parametrize("text", ["C:\\u0000dir", "\\\\u0000", "\\u00000"])
    def test_escaped_backslashes_before_u0000_are_not_a_nul(self, text: str) -> None:
        obj = product(metadata={"path": text})
        assert "\x00" not in text
        assert b"\\u0000" in orjson.dumps(obj)
        assert isinstance(check(obj), ProductEvent)

    @pytest.mark.parametrize("text", ["\\\x00", "\\\\\x00"])
    def test_a_nul_after_escaped_backslashes_is_still_a_nul(self, text: str) -> None:
        result = check(product(metadata={"path": text}))
        assert isinstance(result, Invalid)
        assert "NUL" in result.detail


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@settings(max_examples=50, deadline=None, database=None)
@given(
    name=_text,
    channel=_text,
    user=_text,
    seconds=st.integers(0, 4_000_000_000),
    event_id=st.none() | _text,
)
def test_any_well_formed_product_event_is_accepted(
    name: str, channel: str, user: str, seconds: int, event_id: str | None
) -> None:
    obj = {"event_name": name, "channel": channel, "user_id": user, "timestamp": seconds}
    if event_id is not None:
        obj["event_id"] = event_id
    event = check(obj)
    assert isinstance(event, ProductEvent)
    assert event.ts_us == seconds * 1_000_000
    assert event.hour_us % HOUR_US == 0
    assert event.hour_us <= event.ts_us < event.hour_us + HOUR_US
    assert event.dedup_key == (event_id or product_dedup_key(name, user, event.ts_us, None))


@settings(max_examples=50, deadline=None, database=None)
@given(
    st.dictionaries(
        st.sampled_from([*PRODUCT, "event_id", "tags"]),
        st.none() | st.integers(-(2**63), 2**63 - 1),
    )
)
def test_junk_objects_give_a_field_and_a_detail(obj: dict[str, Any]) -> None:
    # No text field is ever a string here, so nothing can be accepted.
    result = check(obj)
    assert isinstance(result, Invalid)
    assert result.reason == SCHEMA_INVALID
    assert result.field is not None
    assert result.detail.startswith(f"{result.field} ")


@settings(max_examples=50, deadline=None, database=None)
@given(st.text(st.sampled_from(["\\", "u", "0", "\x00", "a", '"']), max_size=12))
def test_nul_is_refused_exactly_when_the_text_holds_one(text: str) -> None:
    result = check(product(metadata={"s": text}, campaign_id=text or "c"))
    if "\x00" in text:
        assert isinstance(result, Invalid)
        assert "NUL" in result.detail
    else:
        assert isinstance(result, ProductEvent)


class TestIngestionRef:
    """``_ingestion: {job_id, seq}``: set by the gateway on events of an ingestion job."""

    def test_absent_or_null_means_no_job(self) -> None:
        for obj in (product(), product(_ingestion=None)):
            event = check(obj)
            assert isinstance(event, ProductEvent)
            assert event.job is None

    def test_job_ref_is_read_and_the_id_lower_cased(self) -> None:
        event = check(product(_ingestion={"job_id": UUID.upper(), "seq": 7}))
        assert isinstance(event, ProductEvent)
        assert event.job == (UUID, 7)

    def test_seq_range(self) -> None:
        for seq in (0, 2**31 - 1):
            event = check(product(_ingestion={"job_id": UUID, "seq": seq}))
            assert isinstance(event, ProductEvent)

    @pytest.mark.parametrize(
        ("value", "field"),
        [
            ("job-1", "_ingestion"),
            ([UUID, 1], "_ingestion"),
            ({"seq": 1}, "_ingestion.job_id"),
            ({"job_id": "not-a-uuid", "seq": 1}, "_ingestion.job_id"),
            ({"job_id": UUID.replace("-", ""), "seq": 1}, "_ingestion.job_id"),
            ({"job_id": UUID}, "_ingestion.seq"),
            ({"job_id": UUID, "seq": -1}, "_ingestion.seq"),
            ({"job_id": UUID, "seq": 2**31}, "_ingestion.seq"),
            ({"job_id": UUID, "seq": 1.0}, "_ingestion.seq"),
            ({"job_id": UUID, "seq": True}, "_ingestion.seq"),
            ({"job_id": UUID, "seq": "1"}, "_ingestion.seq"),
        ],
    )
    def test_bad_refs_name_the_field(self, value: object, field: str) -> None:
        assert_invalid(check(product(_ingestion=value)), field)


BAD_REFS = [
    "job-1",
    [UUID, 1],
    {"seq": 1},
    {"job_id": "not-a-uuid", "seq": 1},
    {"job_id": UUID.replace("-", ""), "seq": 1},
    {"job_id": UUID + "0", "seq": 1},
    {"job_id": UUID},
    {"job_id": UUID, "seq": -1},
    {"job_id": UUID, "seq": 2**31},
    {"job_id": UUID, "seq": 1.0},
    {"job_id": UUID, "seq": True},
    {"job_id": UUID, "seq": "1"},
]


class TestJobOf:
    """``job_of(obj)``: the (job_id, seq) of any event object, valid or not; else None."""

    def test_reads_the_ref_and_lower_cases_the_id(self) -> None:
        assert job_of(product(_ingestion={"job_id": UUID.upper(), "seq": 7})) == (UUID, 7)
        assert job_of({"_ingestion": {"job_id": UUID, "seq": 0}}) == (UUID, 0)

    def test_agrees_with_the_validated_event(self) -> None:
        obj = product(_ingestion={"job_id": UUID.upper(), "seq": 2**31 - 1})
        event = check(obj)
        assert isinstance(event, ProductEvent)
        assert job_of(obj) == event.job == (UUID, 2**31 - 1)

    def test_an_otherwise_invalid_object_still_names_its_job(self) -> None:
        obj = product(channel=None, timestamp="yesterday", _ingestion={"job_id": UUID, "seq": 3})
        assert isinstance(check(obj), Invalid)
        assert job_of(obj) == (UUID, 3)

    def test_absent_or_null_is_none(self) -> None:
        assert job_of(product()) is None
        assert job_of(product(_ingestion=None)) is None
        assert job_of({}) is None

    @pytest.mark.parametrize("value", BAD_REFS)
    def test_a_malformed_ref_is_none_not_an_error(self, value: object) -> None:
        assert job_of(product(_ingestion=value)) is None
        assert isinstance(check(product(_ingestion=value)), Invalid)
