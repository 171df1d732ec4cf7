"""verify's comparison on crafted expect documents and table states (no I/O)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.errors import ConfigError
from pipeline.ops.verify import (
    Check,
    Observed,
    compare,
    format_checks,
    load_expect_file,
    parse_expected,
)

H1, H2 = "2026-11-21T10:00:00+00:00", "2026-11-21T11:00:00+00:00"
AGENT_ROW = [H1, "t0", "ws-main", "p0", "agent-1", "wf-0", 3, 2, 1, 8, 1.234567, 4500.0, 3]
DOC: dict[str, Any] = {
    "unique_events": 18,
    "product_events": 10,
    "agent_events": 8,
    "duplicates": 2,
    "late_events": 1,
    "dead_letters": {"not_json": 1, "schema_invalid": 2},
    "channel_rollups": [[H1, "web", "page_view", 6, 4], [H2, "ios", "purchase", 4, 3]],
    "agent_rollups": [AGENT_ROW],
    "sent_messages": 23,
    "sent_events": 23,
    "end_offsets": {"0": 12, "1": 11},
    "topic": "events",
}


def observed(doc: dict[str, Any] = DOC, **changes: Any) -> Observed:
    """The tables as they are after a correct run of ``doc``'s load (then ``changes``)."""
    exp = parse_expected(doc, "test")
    state: dict[str, Any] = {
        "product_events": exp.product_events,
        "agent_events": exp.agent_events,
        "late_events": exp.late_events,
        "dead_letters": dict(exp.dead_letters),
        "channel_rows": dict(exp.channel_rows),
        "agent_rows": dict(exp.agent_rows),
        "durable": dict(exp.end_offsets or {}),
    }
    state.update(changes)
    return Observed(**state)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_matching_state_passes_every_check() -> None:
    checks = compare(parse_expected(DOC, "test"), observed())
    assert [c.name for c in checks] == [
        "processed",
        "product events stored",
        "agent events stored",
        "duplicates dropped",
        "late events",
        "dead letters by reason",
        "channel rollups",
        "agent rollups",
        "rollups add up to the raw tables",
    ]
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    lines = format_checks(checks)
    assert lines[-1] == "all 9 checks passed"
    assert lines[0].startswith("OK        processed: 23 of 23 sent messages durable")
    assert "OK        duplicates dropped: 2 (sent 23 - stored 18 - dead 3)" in lines


def test_a_tampered_channel_row_is_shown_with_both_values() -> None:
    exp = parse_expected(DOC, "test")
    rows = dict(exp.channel_rows)
    key = next(k for k in rows if k[1] == "ios")
    rows[key] = (5, 3)
    checks = by_name(compare(exp, observed(channel_rows=rows)))
    bad = checks["channel rollups"]
    assert not bad.ok and bad.summary == "1 row(s) differ (expected 2 rows, found 2)"
    assert bad.diff == [
        "2026-11-21 11:00 ios purchase: expected events=4 unique_users=3, "
        "found events=5 unique_users=3"
    ]
    assert sum(not c.ok for c in checks.values()) == 1
    lines = format_checks(list(checks.values()))
    assert "MISMATCH  channel rollups: 1 row(s) differ (expected 2 rows, found 2)" in lines
    assert lines[-1] == "1 of 9 checks failed"


def test_missing_and_extra_rows() -> None:
    exp = parse_expected(DOC, "test")
    rows = dict(exp.channel_rows)
    gone = next(k for k in rows if k[1] == "web")
    del rows[gone]
    rows[(gone[0], "email", "signup")] = (1, 1)
    bad = by_name(compare(exp, observed(channel_rows=rows)))["channel rollups"]
    assert not bad.ok
    assert sorted(bad.diff) == [
        "2026-11-21 10:00 email signup: expected no row, found events=1 unique_users=1",
        "2026-11-21 10:00 web page_view: expected events=6 unique_users=4, found no row",
    ]


def test_at_most_five_differing_rows_are_shown() -> None:
    doc = copy.deepcopy(DOC)
    doc["channel_rollups"] = [[H1, "web", f"e{i}", 1, 1] for i in range(9)]
    got = by_name(compare(parse_expected(doc, "t"), observed(doc, channel_rows={})))
    assert got["channel rollups"].summary == "9 row(s) differ (expected 9 rows, found 0)"
    assert len(got["channel rollups"].diff) == 5


def test_agent_floats_compare_within_rounding_only() -> None:
    exp = parse_expected(DOC, "test")
    key = next(iter(exp.agent_rows))
    values = list(exp.agent_rows[key])
    values[4] += 1e-9  # cost_usd summed in another order
    assert by_name(compare(exp, observed(agent_rows={key: tuple(values)})))["agent rollups"].ok
    values[4] += 0.01
    bad = by_name(compare(exp, observed(agent_rows={key: tuple(values)})))["agent rollups"]
    assert not bad.ok and "cost_usd=1.234567" in bad.diff[0] and "cost_usd=1.244567" in bad.diff[0]


def test_an_hour_in_another_spelling_is_the_same_hour() -> None:
    doc = copy.deepcopy(DOC)
    doc["channel_rollups"][0][0] = "2026-11-21T10:00:00Z"
    doc["agent_rollups"][0][0] = "2026-11-21T15:30:00+05:30"
    assert all(c.ok for c in compare(parse_expected(doc, "t"), observed()))


def test_counts_dead_letters_duplicates_and_progress() -> None:
    exp = parse_expected(DOC, "test")
    got = by_name(
        compare(
            exp,
            observed(
                product_events=11,
                dead_letters={"not_json": 1, "schema_invalid": 1, "too_deep": 1},
                late_events=0,
                durable={0: 12, 1: 7},
            ),
        )
    )
    assert got["product events stored"].summary == "expected 10, found 11"
    assert got["late events"].summary == "expected 1, found 0"
    assert got["dead letters by reason"].diff == [
        "schema_invalid: expected 2, found 1",
        "too_deep: expected 0, found 1",
    ]
    assert got["duplicates dropped"].summary == (
        "expected 2, found 1 (sent 23 - stored 19 - dead 3)"
    )
    processed = got["processed"]
    assert not processed.ok
    assert processed.summary.startswith("19 of 23 sent messages durable (2 partitions)")
    assert "--wait" in processed.summary
    assert processed.diff == ["partition 1: durable offset 7, sent up to 11"]
    assert got["agent events stored"].ok and got["channel rollups"].ok


def test_rollups_that_do_not_add_up_to_raw() -> None:
    got = by_name(compare(parse_expected(DOC, "t"), observed(rollup_mismatches=["x", "y"])))
    check = got["rollups add up to the raw tables"]
    assert not check.ok and check.diff == ["x", "y"]


def test_without_sent_counts_or_offsets_those_checks_are_left_out() -> None:
    doc = {k: v for k, v in DOC.items() if k not in ("sent_events", "end_offsets", "topic")}
    names = [c.name for c in compare(parse_expected(doc, "t"), observed(doc))]
    assert "processed" not in names and "duplicates dropped" not in names
    assert len(names) == 7


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.pop("product_events"), "product_events must be a count"),
        (lambda d: d.update(duplicates=-1), "duplicates must be a count"),
        (lambda d: d.update(late_events=True), "late_events must be a count"),
        (lambda d: d.update(dead_letters=[1]), "dead_letters must be an object"),
        (lambda d: d["channel_rollups"].append([H1, "web", 1]), r"channel_rollups\[2\] must be"),
        (lambda d: d["agent_rollups"][0].__setitem__(6, "3"), r"agent_rollups\[0\] must be"),
        (lambda d: d["channel_rollups"][0].__setitem__(0, "10h"), "hour '10h' must be an RFC 3339"),
        (lambda d: d.update(channel_rollups={}), "channel_rollups must be a list"),
        (lambda d: d.update(end_offsets={"a": 1}), "end_offsets must map partition numbers"),
    ],
)
def test_a_malformed_document_is_named(change: Any, words: str) -> None:
    doc = copy.deepcopy(DOC)
    change(doc)
    with pytest.raises(ConfigError, match=f"^--expect-file f.json: .*{words}"):
        parse_expected(doc, "--expect-file f.json")


def test_the_file_missing_not_json_or_not_an_object(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; write one with python -m producers"):
        load_expect_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=f"--expect-file {bad}: not JSON"):
        load_expect_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_expect_file(bad)
    good = tmp_path / "good.json"
    good.write_bytes(orjson.dumps(DOC))
    assert load_expect_file(good).end_offsets == {0: 12, 1: 11}


def test_agent_latency_histograms_are_checked_when_the_file_has_them() -> None:
    doc = {**DOC, "agent_latency_histograms": [[*AGENT_ROW[:6], [0, 2, 0, 1, 0, 0]]]}
    exp = parse_expected(doc, "test")
    key = next(iter(exp.agent_rows))
    assert exp.latency_rows == {key: (0, 2, 0, 1)}  # trailing empty buckets trimmed
    good = by_name(compare(exp, observed(doc, latency_rows={key: (0, 2, 0, 1)})))
    assert good["agent latency histograms"].ok
    assert good["agent latency histograms"].summary == "1 rows, 3 samples"
    bad = by_name(compare(exp, observed(doc, latency_rows={key: (0, 3, 0, 1)})))
    check = bad["agent latency histograms"]
    assert not check.ok and check.diff == [
        "2026-11-21 10:00 t0 ws-main p0 agent-1 wf-0: expected {1: 2, 3: 1}, found {1: 3, 3: 1}"
    ]
    # Files from before the histograms have no such check.
    assert "agent latency histograms" not in by_name(compare(parse_expected(DOC, "t"), observed()))


@pytest.mark.parametrize("counts", [[1, -1], [1.5], "x", [True]])
def test_a_malformed_histogram_is_named(counts: Any) -> None:
    doc = {**DOC, "agent_latency_histograms": [[*AGENT_ROW[:6], counts]]}
    with pytest.raises(ConfigError, match="agent_latency_histograms"):
        parse_expected(doc, "test")
