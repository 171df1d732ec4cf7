"""The shape limits of an event: nesting depth and field sizes, in single messages and envelopes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.codec import decode_message
from pipeline.core.events import Invalid, ProductEvent, Source
from pipeline.core.limits import (
    FIELD_MAX_BYTES,
    MAX_DEPTH,
    TOO_DEEP,
    TOO_LARGE,
    EventLimits,
    bracket_bound,
    field_name,
    too_deep,
)
from pipeline.core.planner import RawMessage, plan_batch
from pipeline.core.validate import validate_event
from tests.samples import AGENT

PRODUCT = b'{"event_name":"e","channel":"web","user_id":"u","timestamp":1700000000'


def nested(levels: int) -> bytes:
    """A JSON value ``levels`` deep: ``{"x": ... {"x": 1} ...}``."""
    return b'{"x":' * levels + b"1" + b"}" * levels


def with_field(name: str, value: bytes) -> bytes:
    return PRODUCT + b',"' + name.encode() + b'":' + value + b"}"


def verdicts(value: bytes) -> list[object]:
    out: list[object] = []
    for index, item, raw in decode_message(value, 50_000_000):
        if isinstance(item, Invalid):
            out.append(item)
        else:
            out.append(validate_event(item, raw, Source("t", 0, 0, index)))
    return out


def only(value: bytes) -> object:
    (verdict,) = verdicts(value)
    return verdict


def assert_refused(verdict: object, reason: str, field: str | None) -> None:
    assert isinstance(verdict, Invalid), verdict
    assert (verdict.reason, verdict.field) == (reason, field), verdict
    if field is not None:
        assert verdict.detail.startswith(field + " "), verdict.detail


@pytest.mark.parametrize("field", ["metadata", "unknown_field"])
def test_an_event_exactly_at_the_depth_limit_is_stored(field: str) -> None:
    # The event object is level 1, so its field may hold MAX_DEPTH - 1 levels.
    assert isinstance(only(with_field(field, nested(MAX_DEPTH - 1))), ProductEvent)


@pytest.mark.parametrize("levels", [MAX_DEPTH, 300, 1000])
@pytest.mark.parametrize("field", ["metadata", "unknown_field", "tags"])
def test_an_event_one_level_too_deep_is_refused_naming_its_field(field: str, levels: int) -> None:
    value = with_field(field, nested(levels) if field != "tags" else b"[" * levels + b"]" * levels)
    assert_refused(only(value), TOO_DEEP, field)
    assert_refused(only(b"[" + value + b"]"), TOO_DEEP, field)


def test_a_too_deep_element_of_an_envelope_does_not_affect_its_neighbours() -> None:
    good = with_field("metadata", b'{"a":1}')
    bad = with_field("metadata", nested(400))  # past orjson's own serialisation limit
    results = verdicts(b"[" + good + b"," + bad + b"," + good + b"]")
    assert isinstance(results[0], ProductEvent)
    assert_refused(results[1], TOO_DEEP, "metadata")
    assert isinstance(results[2], ProductEvent)


def test_nesting_the_json_parser_refuses_is_too_deep() -> None:
    (verdict,) = verdicts(with_field("metadata", nested(5000)))
    assert isinstance(verdict, Invalid)
    assert (verdict.reason, verdict.field) == (TOO_DEEP, "body")


@pytest.mark.parametrize("section", ["run", "trace", "tenant"])
def test_an_agent_section_nested_too_deep_is_refused(section: str) -> None:
    event = orjson.loads(orjson.dumps(AGENT))
    event[section]["extra"] = orjson.loads(nested(MAX_DEPTH))
    assert_refused(only(orjson.dumps(event)), TOO_DEEP, section)


def test_an_agent_section_too_large_is_refused() -> None:
    event = orjson.loads(orjson.dumps(AGENT))
    event["run"]["prompt"] = "p" * FIELD_MAX_BYTES
    assert_refused(only(orjson.dumps(event)), TOO_LARGE, "run")


def test_one_large_unknown_field_is_refused() -> None:
    value = with_field("blob", b'"' + b"x" * FIELD_MAX_BYTES + b'"')
    assert_refused(only(value), TOO_LARGE, "blob")


def test_unknown_fields_are_bounded_together() -> None:
    half = b'"' + b"x" * (FIELD_MAX_BYTES // 2) + b'"'
    one = with_field("a", half)
    assert isinstance(only(one), ProductEvent)
    two = one[:-1] + b',"b":' + half + b"}"
    verdict = only(two)
    assert isinstance(verdict, Invalid) and verdict.reason == TOO_LARGE
    assert verdict.field in {"a", "b"}
    assert "together" in verdict.detail


def test_large_known_fields_do_not_count_as_unknown() -> None:
    big_metadata = b'{"k":"' + b"x" * (FIELD_MAX_BYTES - 100) + b'"}'
    tags = orjson.dumps(["t" * 128] * 32)
    assert isinstance(
        only(with_field("metadata", big_metadata)[:-1] + b',"tags":' + tags + b"}"), ProductEvent
    )


def test_brackets_inside_strings_only_raise_the_bound() -> None:
    value = with_field("metadata", b'{"a":"' + b"[{" * 100 + b'"}')
    assert bracket_bound(value) > MAX_DEPTH
    assert isinstance(only(value), ProductEvent)


def test_the_depth_walk_is_iterative_and_names_the_field() -> None:
    doc: Any = 1
    for _ in range(100_000):
        doc = [doc]
    assert too_deep({"a": 1, "deep": doc}, MAX_DEPTH) == "deep"
    assert too_deep(doc, MAX_DEPTH) == "[0]"
    assert too_deep(doc, 0) == "body"
    assert too_deep({"events": [{"a": 1}, {"metadata": doc}]}, 5, 3) == "events[1].metadata"
    assert too_deep({"a": {"b": [1]}}, 3) is None
    assert too_deep({"a": {"b": [1]}}, 2) == "a"


def test_field_names_are_bounded_and_free_of_nul() -> None:
    assert field_name("a\x00b") == "a\\u0000b"
    assert len(field_name("k" * 10_000)) == 67


def test_the_planner_dead_letters_too_deep_and_too_large_events() -> None:
    messages = [
        RawMessage("t", 0, 0, with_field("metadata", nested(100))),
        RawMessage("t", 0, 1, b"[" + with_field("metadata", nested(400)) + b"]"),
        RawMessage("t", 0, 2, with_field("blob", b'"' + b"x" * 20_000 + b'"')),
        RawMessage("t", 0, 3, with_field("metadata", b"{}")),
    ]
    plan = plan_batch(messages, EventLimits(), 1_700_000_000_000_000, {})
    assert [(d.reason, d.field, d.source.offset) for d in plan.dead] == [
        (TOO_DEEP, "metadata", 0),
        (TOO_DEEP, "metadata", 1),
        (TOO_LARGE, "blob", 2),
    ]
    assert [e.source.offset for e in plan.products] == [3]
    assert plan.progress[0].next_offset == 4
