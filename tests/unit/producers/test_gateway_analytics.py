"""producers.gateway.analytics: query parameters, defaults and every refusal."""

from __future__ import annotations

import pytest

from pipeline.core.window import HOUR_US
from producers.gateway.analytics import (
    MAX_SPAN_HOURS,
    parse_failures_query,
    parse_metrics_query,
    parse_overview_query,
)
from producers.gateway.http import HttpError

NOW_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
HOUR_END = 1_700_002_800_000_000  # 23:00


def test_defaults_are_the_last_24_hours_by_hour() -> None:
    q = parse_metrics_query({}, NOW_US)
    assert (q.from_us, q.to_us, q.group_by) == (HOUR_END - 24 * HOUR_US, HOUR_END, "hour")
    assert q.event_name is None and q.channel is None


@pytest.mark.parametrize(
    ("raw", "us"),
    [
        ("1700000000", 1_700_000_000_000_000),
        ("1700000000.5", 1_700_000_000_500_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000_000_000),
        ("2023-11-15T03:43:20+05:30", 1_700_000_000_000_000),
        ("2023-11-15T03:43:20 05:30", 1_700_000_000_000_000),  # "+" decoded as a space
    ],
)
def test_times_in_either_spelling(raw: str, us: int) -> None:
    q = parse_metrics_query({"from": raw, "to": "1700100000"}, NOW_US)
    assert q.from_us == us


def test_filters_and_grouping() -> None:
    q = parse_metrics_query(
        {"event_name": "page_view", "channel": "web", "group_by": "day"}, NOW_US
    )
    assert (q.event_name, q.channel, q.group_by) == ("page_view", "web", "day")


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ({"group_by": "minute"}, ["group_by"]),
        ({"from": "x", "to": "y"}, ["to", "from"]),
        ({"from": "-5"}, ["from"]),
        ({"from": "1700000000", "to": "1700000000"}, ["to"]),
        ({"from": "0", "to": str(MAX_SPAN_HOURS * 3600 + 1)}, ["from"]),
        ({"event_name": "", "channel": "c" * 65}, ["event_name", "channel"]),
        ({"event_name": "a\x00"}, ["event_name"]),
    ],
)
def test_bad_parameters_are_named(query: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(HttpError) as caught:
        parse_metrics_query(query, NOW_US)
    assert caught.value.status == 400
    assert [e["field"] for e in caught.value.errors] == fields


def test_overview_window_and_filters() -> None:
    q = parse_overview_query({"window_hours": "2", "tenant_id": "acme"}, NOW_US)
    assert (q.from_us, q.to_us) == (HOUR_END - 2 * HOUR_US, HOUR_END)
    assert q.filters == ("acme", None, None, None, None)
    assert parse_overview_query({}, NOW_US).window_hours == 24
    # "\u00b2" is a digit to str.isdigit, and int() refuses it: once a 500.
    for bad in ("0", "8785", "1.5", "", "99999999", "\u00b2", "\u0663"):
        with pytest.raises(HttpError):
            parse_overview_query({"window_hours": bad}, NOW_US)


def test_failures_take_the_overview_window_and_a_limit() -> None:
    q = parse_failures_query({"window_hours": "2", "agent_id": "a", "limit": "500"}, NOW_US)
    assert (q.window.from_us, q.window.to_us, q.limit) == (HOUR_END - 2 * HOUR_US, HOUR_END, 500)
    assert q.window.filters == (None, None, None, "a", None)
    assert q.window == parse_overview_query({"window_hours": "2", "agent_id": "a"}, NOW_US)
    default = parse_failures_query({}, NOW_US)
    assert (default.window.window_hours, default.limit) == (24, 50)


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ({"limit": "501"}, ["limit"]),
        ({"limit": "0"}, ["limit"]),
        ({"limit": "-1"}, ["limit"]),
        ({"limit": "²"}, ["limit"]),
        ({"limit": ""}, ["limit"]),
        ({"limit": "10.0"}, ["limit"]),
        (
            {"window_hours": "0", "tenant_id": "", "limit": "x"},
            ["window_hours", "tenant_id", "limit"],
        ),
    ],
)
def test_failures_parameters_are_named(query: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(HttpError) as caught:
        parse_failures_query(query, NOW_US)
    assert caught.value.status == 400
    assert [e["field"] for e in caught.value.errors] == fields
    if fields == ["limit"]:
        assert caught.value.errors[0]["error"] == "must be a whole number from 1 to 500"
