"""dlq replay's fixes: --set PATH=JSON and --unset PATH on an event, and the time options."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.ops.fixes import (
    FixError,
    apply_fixes,
    describe_fixes,
    parse_path,
    parse_set,
    parse_unset,
)
from pipeline.ops.timearg import parse_time_option

EVENT: dict[str, Any] = {
    "event_name": "purchase",
    "timestamp": "yesterday",
    "tags": ["a", "b"],
    "run": {"agent_id": "x"},
    "metadata": {"items": [{"sku": "s1"}]},
}


class TestPaths:
    def test_dots_and_indices(self) -> None:
        assert parse_path("timestamp", "--set") == ("timestamp",)
        assert parse_path("run.latency_ms", "--set") == ("run", "latency_ms")
        assert parse_path("tags[1]", "--set") == ("tags", 1)
        assert parse_path("metadata.items[0].sku", "--set") == ("metadata", "items", 0, "sku")
        assert parse_path("m.grid[1][2]", "--unset") == ("m", "grid", 1, 2)

    @pytest.mark.parametrize("bad", ["", "a..b", ".a", "a.", "tags[x]", "[0]", "a[1]b"])
    def test_malformed_paths_name_the_option(self, bad: str) -> None:
        with pytest.raises(ConfigError, match="--unset"):
            parse_path(bad, "--unset")


class TestSet:
    def test_value_is_json(self) -> None:
        assert parse_set("timestamp=1700000000").value == 1700000000
        assert parse_set('channel="web"').value == "web"
        assert parse_set("run.latency_ms=12.5").value == 12.5
        assert parse_set("metadata=null").value is None
        assert parse_set('tags=["x"]').value == ["x"]
        assert parse_set('a="b=1"').path == ("a",) and parse_set('a="b=1"').value == "b=1"

    def test_a_bare_string_is_refused_with_the_fix(self) -> None:
        with pytest.raises(
            ConfigError, match=r"--set 'channel=web'.*must be JSON.*channel=\"web\""
        ):
            parse_set("channel=web")

    def test_no_equals_sign(self) -> None:
        with pytest.raises(ConfigError, match="--set 'timestamp': write PATH=JSON"):
            parse_set("timestamp")

    def test_set_replaces_creates_and_leaves_the_original_alone(self) -> None:
        fixed = apply_fixes(
            EVENT,
            [
                parse_set("timestamp=1700000000"),
                parse_set("run.latency_ms=12"),
                parse_set('tags[1]="c"'),
                parse_set('metadata.items[0].sku="s2"'),
                parse_set('trace.span_id="ab"'),  # missing objects are created
            ],
        )
        assert fixed["timestamp"] == 1700000000
        assert fixed["run"] == {"agent_id": "x", "latency_ms": 12}
        assert fixed["tags"] == ["a", "c"]
        assert fixed["metadata"]["items"][0]["sku"] == "s2"
        assert fixed["trace"] == {"span_id": "ab"}
        assert EVENT["timestamp"] == "yesterday" and EVENT["tags"] == ["a", "b"]
        assert "latency_ms" not in EVENT["run"] and "trace" not in EVENT

    @pytest.mark.parametrize(
        ("fix", "message"),
        [
            ("tags[5]=1", "tags has no element 5"),
            ("event_name.x=1", "event_name is not an object"),
            ("missing[0].x=1", "missing is missing"),
            ("tags[0].x=1", r"tags\[0\] is not an object"),
        ],
    )
    def test_a_fix_that_does_not_fit(self, fix: str, message: str) -> None:
        with pytest.raises(FixError, match=message) as info:
            apply_fixes(EVENT, [parse_set(fix)])
        assert str(info.value).startswith(f"--set {fix}:")


class TestUnset:
    def test_removes_fields_and_elements(self) -> None:
        fixed = apply_fixes(
            EVENT, [parse_unset("timestamp"), parse_unset("tags[0]"), parse_unset("run.agent_id")]
        )
        assert "timestamp" not in fixed and fixed["tags"] == ["b"] and fixed["run"] == {}

    def test_a_missing_path_changes_nothing(self) -> None:
        fixes = [parse_unset("nope"), parse_unset("run.nope.deeper"), parse_unset("tags[9]")]
        assert apply_fixes(EVENT, fixes) == EVENT

    def test_order_is_kept(self) -> None:
        fixed = apply_fixes(EVENT, [parse_unset("run"), parse_set('run.status="ok"')])
        assert fixed["run"] == {"status": "ok"}

    def test_described_for_the_replay_record(self) -> None:
        assert describe_fixes([]) is None
        assert (
            describe_fixes([parse_set("timestamp=1"), parse_unset("tags")])
            == "set timestamp=1; unset tags"
        )


NOW_US = 1_700_000_000 * 1_000_000


class TestTimes:
    def test_absolute(self) -> None:
        assert parse_time_option("1700000000", "--from", NOW_US) == NOW_US
        assert parse_time_option("1700000000.5", "--from", NOW_US) == NOW_US + 500_000
        assert parse_time_option("2023-11-14T22:13:20Z", "--to", NOW_US) == NOW_US
        assert parse_time_option("2023-11-15T03:43:20+05:30", "--to", NOW_US) == NOW_US

    def test_relative_only_where_allowed(self) -> None:
        assert parse_time_option("1h", "--since", NOW_US, relative=True) == NOW_US - 3600 * 10**6
        assert parse_time_option("30m", "--since", NOW_US, True) == NOW_US - 1800 * 10**6
        assert parse_time_option("2d", "--since", NOW_US, True) == NOW_US - 2 * 86400 * 10**6
        assert parse_time_option("1w", "--since", NOW_US, True) == NOW_US - 7 * 86400 * 10**6
        with pytest.raises(ConfigError, match="--from '1h'"):
            parse_time_option("1h", "--from", NOW_US)

    @pytest.mark.parametrize("bad", ["yesterday", "2023-11-14", "-5", "1y", "2023-11-14T22:13Z"])
    def test_bad_values_name_the_option(self, bad: str) -> None:
        with pytest.raises(ConfigError, match=f"^--since '{bad}': give unix seconds"):
            parse_time_option(bad, "--since", NOW_US, relative=True)
