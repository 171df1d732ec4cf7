"""dlq: the filters, and what replay decides for each dead letter (pure: no broker, no DB)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.core.limits import EventLimits
from pipeline.errors import ConfigError
from pipeline.ops.dlq import parse_filter, plan_replay, raw_as_text
from pipeline.ops.fixes import parse_set, parse_unset
from producers.keys import event_key

NOW = 1_700_000_000
NOW_US = NOW * 1_000_000
LIMITS = EventLimits()
AGENT_ID = "0B9F3C3E-8D0C-4F5E-9A7E-2F1D1C0B9A8E"


def letter(raw: bytes, **columns: Any) -> dict[str, Any]:
    return {"id": 7, "raw": raw, "replayed_at": None, "replayed_to": None, **columns}


def product(**fields: Any) -> dict[str, Any]:
    return {"event_name": "purchase", "channel": "web", "user_id": "u1", "timestamp": NOW} | fields


def plan(raw: bytes, *fixes: str, **flags: Any) -> Any:
    parsed = [parse_unset(f[1:]) if f.startswith("-") else parse_set(f) for f in fixes]
    return plan_replay(letter(raw), parsed, LIMITS, "events", NOW_US, **flags)


class TestFilter:
    def test_reasons_times_and_limit(self) -> None:
        f = parse_filter(NOW_US, ["not_json, schema_invalid", "too_deep"], "1h", "1700000000", 0)
        assert f.reasons == ("not_json", "schema_invalid", "too_deep")
        assert f.since_us == NOW_US - 3600 * 10**6 and f.until_us == NOW_US
        assert f.limit is None and f.narrows

    def test_no_filter_and_the_default_limit(self) -> None:
        f = parse_filter(NOW_US)
        assert not f.narrows and f.limit == 50
        assert parse_filter(NOW_US, limit=50).narrows is False  # a limit alone is no filter

    @pytest.mark.parametrize(
        ("kwargs", "words"),
        [
            ({"limit": -1}, "--limit -1"),
            ({"since": "soon"}, "--since 'soon'"),
            ({"until": "2023-13-01T00:00:00Z"}, "--until"),
            ({"since": "1h", "until": "2h"}, "--until '2h' must be later than --since '1h'"),
            ({"reasons": [" , "]}, "--reason"),
        ],
    )
    def test_bad_options_are_named(self, kwargs: dict[str, Any], words: str) -> None:
        with pytest.raises(ConfigError, match=f"^{words}"):
            parse_filter(NOW_US, **kwargs)


class TestReplayPlan:
    def test_a_fixed_event_is_published_with_its_dedup_key(self) -> None:
        raw = orjson.dumps(product(timestamp=NOW + 30 * 86400))  # too far in the future
        p = plan(raw, f"timestamp={NOW - 60}")
        assert p.publish and p.invalid is None
        fixed = orjson.loads(p.value)
        assert fixed == product(timestamp=NOW - 60)
        # The key the producers' publisher uses for this event: copies share a partition.
        assert p.key == (event_key(fixed) or "").encode()
        assert p.key.startswith(b"h:")

    def test_an_event_id_is_the_key_and_an_agent_ids_is_lower_case(self) -> None:
        p = plan(orjson.dumps(product(event_id="E-1", channel=None)), 'channel="ios"')
        assert p.publish and p.key == b"E-1"
        agent = {
            "event_version": "v0",
            "event_id": AGENT_ID,
            "event_type": "run.completed",
            "occurred_at": "2023-11-14T22:00:00Z",
            "tenant": {"tenant_id": "t", "workspace_id": "w", "project_id": "p"},
            "run": {"agent_id": "a", "workflow_id": "f", "run_id": "r", "status": "ok"},
            "trace": {"trace_id": "x", "span_id": "y"},
        }
        bad = dict(agent, run={**agent["run"], "latency_ms": -5})
        p = plan(orjson.dumps(bad), "run.latency_ms=12")
        assert p.publish and p.key == AGENT_ID.lower().encode()
        assert orjson.loads(p.value)["run"]["latency_ms"] == 12

    def test_without_fixes_the_raw_bytes_go_as_they_were(self) -> None:
        raw = b'{"event_name": "x", "channel": "web", "user_id": "u", "timestamp": 1700000000}'
        p = plan(raw)
        assert p.publish and p.value == raw  # verbatim, spacing included

    def test_a_still_invalid_event_is_skipped_with_the_workers_reason(self) -> None:
        raw = orjson.dumps(product(timestamp="yesterday"))
        p = plan(raw, 'channel="ios"')
        assert not p.publish and not p.already
        assert p.skip is not None and p.skip.startswith("still invalid: schema_invalid: timestamp")
        assert "--force" in p.skip
        future = plan(orjson.dumps(product()), f"timestamp={NOW + 2 * 3600}")
        assert future.skip is not None and "too_far_in_future" in future.skip

    def test_force_publishes_it_anyway_without_a_key(self) -> None:
        p = plan(b"\xffnot json", force=True)
        assert p.publish and p.value == b"\xffnot json" and p.key is None
        assert p.invalid is not None and p.invalid.startswith("not_json")

    def test_fixes_cannot_apply_to_raw_that_is_not_a_json_object(self) -> None:
        for raw in (b"\xffnot json", b'{"trunc', b'"just a string"', b"[]"):
            p = plan(raw, "timestamp=1", force=True)
            assert not p.publish and "--set/--unset cannot apply" in (p.skip or ""), raw
        assert "not JSON" in (plan(b"{", "a=1").skip or "")

    def test_a_fix_that_does_not_fit_is_a_skip(self) -> None:
        p = plan(orjson.dumps(product()), "channel.x=1")
        assert p.skip == "the fix does not fit: --set channel.x=1: channel is not an object"

    def test_replayed_before_is_skipped_unless_again(self) -> None:
        when = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
        row = letter(orjson.dumps(product()), replayed_at=when, replayed_to="events/3/17")
        p = plan_replay(row, [], LIMITS, "events", NOW_US)
        assert not p.publish and p.already
        assert p.skip == (
            "already replayed 2026-12-05 10:00:00 to events/3/17 (--again to publish again)"
        )
        again = plan_replay(row, [], LIMITS, "events", NOW_US, again=True)
        assert again.publish and again.key == plan(orjson.dumps(product())).key

    def test_an_envelope_element_is_one_event(self) -> None:
        # The raw of an element is that element's JSON: it is replayed as one message.
        element = orjson.dumps(product(tags="not-a-list"))
        p = plan(element, "-tags")
        assert p.publish and b"tags" not in (p.value or b"")


def test_raw_as_text() -> None:
    assert raw_as_text(b'{"a":[1,2]}') == ("json", '{\n  "a": [\n    1,\n    2\n  ]\n}')
    assert raw_as_text(b'{"trunc') == ("text", '{"trunc')
    assert raw_as_text(b"") == ("text", "")
    kind, text = raw_as_text(bytes(range(250, 256)) + b"abc")
    assert kind == "hex" and text == "00000000  fa fb fc fd fe ff 61 62 63"
    assert raw_as_text(b"x" * 17 + b"\xff")[1].splitlines()[1].startswith("00000010  78 ff")
