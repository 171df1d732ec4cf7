"""producers.gateway.live: the live page's parameters, the shaping of its snapshot, the page."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.core.window import HOUR_US
from producers.gateway.http import HttpError
from producers.gateway.live import (
    MAX_HOURS,
    SILENT_AFTER_S,
    LiveQuery,
    page,
    parse_live_query,
    shape_agents,
    shape_channels,
    shape_completeness,
    shape_dead_letters,
    shape_lag,
)

NOW_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
HOUR_END = 1_700_002_800_000_000  # 23:00
T0 = datetime(2023, 11, 14, 20, tzinfo=UTC)  # the first hour of a 3-hour window


def query(hours: int = 3, interval: int = 300) -> LiveQuery:
    return LiveQuery(hours, HOUR_END - hours * HOUR_US, HOUR_END, interval, NOW_US)


def test_defaults_are_the_last_24_hours_and_5_minute_dead_letter_intervals() -> None:
    q = parse_live_query({}, NOW_US)
    assert (q.hours, q.from_us, q.to_us, q.dlq_interval_s) == (
        24,
        HOUR_END - 24 * HOUR_US,
        HOUR_END,
        300,
    )


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"hours": "0"}, ["hours"]),
        ({"hours": str(MAX_HOURS + 1)}, ["hours"]),
        ({"hours": "-1"}, ["hours"]),
        ({"hours": "2.5"}, ["hours"]),
        ({"hours": "9" * 40}, ["hours"]),
        ({"hours": "\u00b2"}, ["hours"]),  # a digit to str.isdigit, not to int()
        ({"hours": "\u0663"}, ["hours"]),  # ARABIC-INDIC DIGIT THREE: int() reads it
        ({"dlq_interval": "7"}, ["dlq_interval"]),
        ({"dlq_interval": ""}, ["dlq_interval"]),
        ({"hours": "x", "dlq_interval": "x"}, ["hours", "dlq_interval"]),
    ],
)
def test_bad_parameters_are_named(params: dict[str, str], fields: list[str]) -> None:
    with pytest.raises(HttpError) as caught:
        parse_live_query(params, NOW_US)
    assert caught.value.status == 400
    assert [e["field"] for e in caught.value.errors] == fields


def test_too_many_dead_letter_intervals_name_the_shortest_allowed() -> None:
    assert parse_live_query({"hours": "168", "dlq_interval": "300"}, NOW_US).hours == 168
    with pytest.raises(HttpError) as caught:
        parse_live_query({"hours": "168", "dlq_interval": "60"}, NOW_US)
    assert "at least 300 seconds" in caught.value.errors[0]["error"]


def row(**values: Any) -> dict[str, Any]:
    return values


def test_channels_are_dense_series_most_events_first_and_the_rest_last() -> None:
    rows = [
        row(hour=T0, channel="web", event_name="view", events=2, late_events=0, series=5),
        row(
            hour=T0 + timedelta(hours=2),
            channel="web",
            event_name="view",
            events=3,
            late_events=1,
            series=5,
        ),
        row(
            hour=T0 + timedelta(hours=1),
            channel="ios",
            event_name="buy",
            events=9,
            late_events=0,
            series=5,
        ),
        row(hour=T0, channel=None, event_name=None, events=50, late_events=0, series=5),
    ]
    out = shape_channels(query(), rows)
    assert [(s["channel"], s["events"], s["total"]) for s in out["series"]] == [
        ("ios", [0, 9, 0], 9),
        ("web", [2, 0, 3], 5),
        (None, [50, 0, 0], 50),
    ]
    assert out["series"][-1]["other"] and out["series"][-1]["series_folded"] == 3
    assert (out["by_hour"], out["total"], out["late_events"], out["series_total"]) == (
        [52, 9, 3],
        64,
        1,
        5,
    )
    assert shape_channels(query(), [])["series"] == []


def test_agents_per_hour_and_a_success_rate_only_where_runs_finished() -> None:
    rows = [
        row(hour=T0, runs=4, succeeded=3, failed=1, events=8),
        row(hour=T0 + timedelta(hours=2), runs=1, succeeded=0, failed=0, events=1),
    ]
    out = shape_agents(query(), rows, {"total_runs": 5})
    assert out["hourly"] == {
        "runs": [4, 0, 1],
        "succeeded": [3, 0, 0],
        "failed": [1, 0, 0],
        "success_rate": [0.75, None, None],
    }
    assert out["totals"] == {"total_runs": 5}


def test_completeness_has_every_hour_of_the_window() -> None:
    low = T0 + timedelta(hours=1, minutes=20)
    rows = [
        row(hour=T0, complete=True, events=5, late_events=1, revised=True, low_watermark=low),
        row(
            hour=T0 + timedelta(hours=1),
            complete=False,
            events=2,
            late_events=0,
            revised=False,
            low_watermark=low,
        ),
    ]
    out = shape_completeness(query(), rows)
    assert [(h["hour"], h["state"], h["events"]) for h in out["hours"]] == [
        ("2023-11-14T20:00:00Z", "complete", 5),
        ("2023-11-14T21:00:00Z", "incomplete", 2),
        ("2023-11-14T22:00:00Z", "empty", 0),
    ]
    assert out["complete"] == 1 and out["low_watermark"] == "2023-11-14T21:20:00Z"
    assert shape_completeness(query(), [])["low_watermark"] is None


def worker(
    worker_id: str,
    partitions: list[int],
    lag: Any,
    silent_s: float = 1.0,
    live: bool = True,
    beat: int = 0,
) -> dict[str, Any]:
    return row(
        worker_id=worker_id,
        partitions=partitions,
        lag=lag,
        live=live,
        heartbeat_at=T0 + timedelta(seconds=beat),
        silent_s=silent_s,
    )


def test_lag_comes_from_live_workers_only_and_the_latest_report_wins() -> None:
    workers = [
        worker("a:1", [0, 1], '{"0": 5, "1": 0}', beat=10),
        worker("b:2", [1, 2], {"1": 7}, beat=20, live=False),  # 2: high watermark unknown
        worker("c:3", [3], '{"3": 99}', silent_s=SILENT_AFTER_S + 1),
    ]
    out = shape_lag(workers, [0, 1, 2, 3, 4])
    assert out["partitions"] == [
        {"partition": 0, "lag": 5, "worker_id": "a:1"},
        {"partition": 1, "lag": 7, "worker_id": "b:2"},
        {"partition": 2, "lag": None, "worker_id": "b:2"},
        {"partition": 3, "lag": None, "worker_id": None},
        {"partition": 4, "lag": None, "worker_id": None},
    ]
    assert (out["total"], out["unowned"]) == (12, [3, 4])
    assert [(w["worker_id"], w["state"]) for w in out["workers"]] == [
        ("a:1", "live"),
        ("b:2", "unhealthy"),
        ("c:3", "silent"),
    ]


def test_dead_letters_per_interval_by_reason_up_to_now() -> None:
    q = query(interval=900)  # 20:00 .. now (22:13:20): 9 intervals of 15 minutes
    start = q.from_us // 1_000_000
    rows = [
        row(reason="not_json", start_s=start, n=2),
        row(reason="schema_invalid", start_s=start + 8 * 900, n=1),
        row(reason="not_json", start_s=start + 8 * 900, n=4),
        row(reason="late", start_s=start + 9 * 900, n=1),  # beyond now: dropped
    ]
    out = shape_dead_letters(q, rows)
    assert len(out["starts"]) == 9 and out["starts"][-1] == "2023-11-14T22:00:00Z"
    assert [(r["reason"], r["total"], r["counts"][0], r["counts"][-1]) for r in out["reasons"]] == [
        ("not_json", 6, 2, 4),
        ("schema_invalid", 1, 0, 1),
    ]
    assert (out["total"], out["last_interval"], out["interval_seconds"]) == (7, 5, 900)


# --- the page ---


def test_the_page_runs_only_its_own_inline_code() -> None:
    response = page()
    headers = dict(response.headers)
    html = response.body.decode()
    assert headers[b"content-type"] == b"text/html; charset=utf-8"
    csp = headers[b"content-security-policy"].decode()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (body,) = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"{directive} 'sha256-{digest}';" in csp


def test_the_page_loads_nothing_from_elsewhere_and_writes_no_markup_from_data() -> None:
    html = page().body.decode()
    urls = set(re.findall(r"https?://[^\s\"')]+", html))
    assert urls == {"http://www.w3.org/2000/svg"}, urls  # a namespace name, never fetched
    assert not re.search(r"\bsrc=|@import|url\(|<link(?![^>]*href=\"data:,\")", html)
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    assert "localStorage" not in html  # the key lives in sessionStorage only
