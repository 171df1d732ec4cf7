"""verify, query and dlq list|show|replay, run as a user runs them (processes, the
environment) against a real worker, the suite's broker and PostgreSQL.

Expectations come from what the test published or from the raw tables, never from the
code under test.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from pipeline.ops.runner import worker_env
from pipeline.settings import Settings
from pipeline.sink.reconcile import reconcile, wait_until_processed
from producers.keyhash import partition_for
from producers.publisher import Publisher
from tests.conftest import Workers, wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HOUR = 3600
BASE = 1_700_000_000 - 1_700_000_000 % HOUR  # 2023-11-14T22:00:00Z
BASE_HOUR = datetime.fromtimestamp(BASE, UTC)


def run(
    settings: Settings, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline <args>`` with the test's settings; stdin is not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env={**os.environ, **worker_env(settings), **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def purchase(user: str, ts: Any, **more: Any) -> dict[str, Any]:
    return {"event_name": "purchase", "channel": "web", "user_id": user, "timestamp": ts} | more


# --------------------------------------------------------------------------- dlq


async def test_dlq_list_show_and_replay_through_a_worker(
    settings: Settings, workers: Workers
) -> None:
    workers.start()
    dsn = settings.require_database_url()
    valid = [purchase(f"u{i % 10}", BASE + i) for i in range(40)]  # 40 events, 10 users
    future = purchase("u-new", int(time.time()) + 7 * 86400, event_id="fix-me-1")
    missing_channel = {"event_name": "purchase", "user_id": "u1", "timestamp": BASE}
    envelope = [
        {"event_name": "signup", "channel": "ios", "user_id": "u-ok", "timestamp": BASE + 1},
        {"event_name": "signup", "channel": "ios", "user_id": "u-e", "timestamp": "yesterday"},
    ]
    async with Publisher(settings) as pub:
        receipt = await pub.publish_events([*valid, future, missing_channel])
        receipt.merge(
            await pub.publish_raw(
                [
                    (None, b"not json {"),
                    (None, b"\xff\xfe\x00binary"),
                    (b"env-key", orjson.dumps(envelope)),
                ]
            )
        )
    await wait_until_processed(dsn, settings.events_topic, receipt.end_offsets, 120)

    # list: every dead letter, by reason, with its source.
    listed = orjson.loads(ok(run(settings, "dlq", "list", "--json")))
    assert listed["counts"] == {"not_json": 2, "schema_invalid": 2, "too_far_in_future": 1}
    assert listed["total"] == listed["shown"] == 5
    rows = {r["id"]: r for r in listed["dead_letters"]}
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows.values():
        by_reason[r["reason"]].append(r)
        assert r["source_topic"] == settings.events_topic and r["replayed_at"] is None
    fix_id = by_reason["too_far_in_future"][0]["id"]
    element = next(r for r in by_reason["schema_invalid"] if r["envelope_index"] == 1)
    no_channel = next(r for r in by_reason["schema_invalid"] if r["envelope_index"] == -1)
    assert no_channel["field"] == "channel" and element["field"] == "timestamp"
    text = ok(run(settings, "dlq", "list", "--reason", "not_json", "--since", "1h"))
    assert "2 match: not_json 2" in text
    assert {ln.split()[0] for ln in text.splitlines()[2:4]} == {
        str(r["id"]) for r in by_reason["not_json"]
    }
    assert "no dead letters match" in ok(run(settings, "dlq", "list", "--until", "1h"))

    # show: every column; JSON pretty, UTF-8 text as is, other bytes in hex.
    shown = ok(run(settings, "dlq", "show", str(fix_id)))
    assert "reason            too_far_in_future" in shown
    assert '\n  "event_id": "fix-me-1"\n}' in shown and "replay_count      0" in shown
    texts = [ok(run(settings, "dlq", "show", str(r["id"]))) for r in by_reason["not_json"]]
    assert any(t.rstrip().endswith("not json {") for t in texts)
    assert any("00000000  ff fe 00 62 69 6e 61 72 79" in t for t in texts)

    fixed_ts = BASE + 100
    fix = ["dlq", "replay", "--id", str(fix_id), "--set", f"timestamp={fixed_ts}"]
    key = b"fix-me-1"
    part = partition_for(key, settings.events_partitions)

    # --dry-run prints the fixed event and changes nothing; no terminal, no --yes: refused.
    dry = ok(run(settings, *fix, "--dry-run"))
    assert f'"timestamp": {fixed_ts},' in dry and "nothing changed" in dry
    refused = run(settings, *fix)
    assert refused.returncode == 2 and "pass --yes" in refused.stdout
    assert await _letter(dsn, fix_id, "replay_count") == 0

    # The replay: published on the partition of its dedup key, then marked.
    out = ok(run(settings, *fix, "--yes"))
    dest = await _letter(dsn, fix_id, "replayed_to")
    topic, p, offset = dest.rsplit("/", 2)
    assert (topic, int(p)) == (settings.events_topic, part)
    # Nothing else reached that partition: the dry run and the refused run published nothing.
    assert int(offset) == receipt.end_offsets.get(part, 0)
    assert f"replayed dead letter {fix_id} -> {dest}" in out
    assert await _letter(dsn, fix_id, "replay_count") == 1
    assert await _letter(dsn, fix_id, "replay_fixes") == f"set timestamp={fixed_ts}"
    await wait_until_processed(dsn, settings.events_topic, {part: int(offset) + 1}, 60)
    assert await _rollup(dsn, BASE_HOUR, "web", "purchase") == (41, 11)
    assert (
        await _count(dsn, "SELECT count(*) FROM raw_events WHERE dedup_key = $1", "fix-me-1") == 1
    )

    # Again: skipped, and nothing published.
    again = ok(run(settings, *fix, "--yes"))
    assert "already replayed" in again and "replayed 0," in again
    assert await _letter(dsn, fix_id, "replay_count") == 1

    # --again publishes a second copy to the same partition; the sink stores it once.
    ok(run(settings, *fix, "--yes", "--again"))
    second = await _letter(dsn, fix_id, "replayed_to")
    assert second == f"{settings.events_topic}/{part}/{int(offset) + 1}"
    assert await _letter(dsn, fix_id, "replay_count") == 2
    await wait_until_processed(dsn, settings.events_topic, {part: int(offset) + 2}, 60)
    assert (
        await _count(dsn, "SELECT count(*) FROM raw_events WHERE dedup_key = $1", "fix-me-1") == 1
    )
    assert await _count(dsn, "SELECT count(*) FROM raw_events") == 42  # 40 + envelope's + fixed
    assert await _rollup(dsn, BASE_HOUR, "web", "purchase") == (41, 11)
    assert (await reconcile(dsn)).consistent
    assert await _count(dsn, "SELECT count(*) FROM dead_letters") == 5

    # The broker does not acknowledge: one line naming it, and the letter is not marked.
    down = run(settings, *fix, "--yes", "--again", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9")
    one_line_error(down, "KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9", "does not answer")
    assert await _letter(dsn, fix_id, "replay_count") == 2
    assert await _letter(dsn, fix_id, "replayed_to") == second

    # Still invalid without a fix: skipped with the worker's reason, not marked, exit 1.
    still = ok(run(settings, "dlq", "replay", "--id", str(no_channel["id"]), "--yes"), 1)
    assert "still invalid: schema_invalid: channel is required" in still
    assert await _letter(dsn, no_channel["id"], "replayed_at") is None
    by_filter = ok(run(settings, "dlq", "replay", "--reason", "not_json", "--dry-run"), 1)
    assert by_filter.count("skipped, still invalid: not_json") == 2
    assert "would publish 0 event(s)" in by_filter
    not_json = by_reason["not_json"][0]["id"]
    cannot = ok(run(settings, "dlq", "replay", "--id", str(not_json), "--set", "a=1", "--yes"), 1)
    assert "not JSON, so --set/--unset cannot apply" in cannot

    # An envelope element goes as its own single-event message, fixed.
    ok(
        run(
            settings,
            *("dlq", "replay", "--id", str(element["id"]), "--set", f"timestamp={BASE + 5}"),
            "--yes",
        )
    )
    dest = await _letter(dsn, element["id"], "replayed_to")
    p2, o2 = (int(x) for x in dest.rsplit("/", 2)[1:])

    async def stored() -> Any:
        return await _fetchrow(dsn, "SELECT * FROM raw_events WHERE user_id = 'u-e'")

    row = await wait_for(stored, 60, "the replayed envelope element in raw_events")
    assert (row["source_partition"], row["source_offset"]) == (p2, o2)
    assert orjson.loads(row["payload"]) == {**envelope[1], "timestamp": BASE + 5}

    # Neither --id nor a filter: refused.
    one_line_error(run(settings, "dlq", "replay", "--yes"), "--id", "filter")
    one_line_error(run(settings, "dlq", "replay", "--id", "99999", "--yes"), "--id 99999")
    one_line_error(run(settings, "dlq", "list", "--since", "soon"), "--since 'soon'")


async def _fetchrow(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchrow(query, *args)
    finally:
        await conn.close()


async def _count(dsn: str, query: str, *args: Any) -> int:
    return int((await _fetchrow(dsn, query, *args))[0])


async def _letter(dsn: str, letter_id: int, column: str) -> Any:
    return (await _fetchrow(dsn, f"SELECT {column} FROM dead_letters WHERE id = $1", letter_id))[0]


async def _rollup(dsn: str, hour: datetime, channel: str, name: str) -> tuple[int, int]:
    row = await _fetchrow(
        dsn,
        "SELECT event_count, unique_users FROM rollup_channel_hourly "
        "WHERE hour = $1 AND channel = $2 AND event_name = $3",
        hour,
        channel,
        name,
    )
    return row["event_count"], row["unique_users"]


# ---------------------------------------------------------------- verify and query


async def test_verify_and_query_on_a_generated_load(
    settings: Settings, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    dsn = settings.require_database_url()
    expect = tmp_path / "expected.json"
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "producers",
            "generate",
            "--count",
            "3000",
            "--quiet",
            "--expect-file",
            str(expect),
        ],
        cwd=REPO,
        env={**os.environ, **worker_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr

    out = ok(run(settings, "verify", "--expect-file", str(expect), "--wait", "180"))
    lines = out.splitlines()
    assert lines[-1] == "all 10 checks passed", out
    assert "OK        agent latency histograms: " in out
    assert all(ln.startswith("OK ") for ln in lines[:-1]), out

    await _check_query(settings, dsn)

    # A tampered rollup row: a MISMATCH naming it, exit 1.
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "UPDATE rollup_channel_hourly SET event_count = event_count + 1 WHERE (hour, channel, "
            "event_name) = (SELECT hour, channel, event_name FROM rollup_channel_hourly "
            "ORDER BY 1, 2, 3 LIMIT 1) RETURNING hour, channel, event_name, event_count"
        )
    finally:
        await conn.close()
    out = ok(run(settings, "verify", "--expect-file", str(expect)), 1)
    assert "MISMATCH  channel rollups: 1 row(s) differ" in out
    where = f"{row['hour']:%Y-%m-%d %H:00} {row['channel']} {row['event_name']}"
    assert f"found events={row['event_count']} " in next(
        ln for ln in out.splitlines() if where in ln
    )
    assert "MISMATCH  rollups add up to the raw tables" in out
    assert "OK        product events stored" in out
    assert out.splitlines()[-1] == "2 of 10 checks failed"

    # A latency histogram emptied (as on a row stored before histograms existed).
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE rollup_agent_hourly SET latency_hist = '{}' WHERE ctid = (SELECT ctid "
            "FROM rollup_agent_hourly WHERE latency_hist <> '{}' LIMIT 1)"
        )
    finally:
        await conn.close()
    out = ok(run(settings, "verify", "--expect-file", str(expect)), 1)
    assert "MISMATCH  agent latency histograms: 1 row(s) differ" in out, out

    one_line_error(run(settings, "verify", "--expect-file", str(tmp_path / "no.json")), "no.json")
    (tmp_path / "bad.json").write_text("{")
    one_line_error(run(settings, "verify", "--expect-file", str(tmp_path / "bad.json")), "not JSON")


async def _check_query(settings: Settings, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        product = [
            dict(r)
            for r in await conn.fetch(
                "SELECT channel, event_name, user_id, occurred_at, late FROM raw_events"
            )
        ]
        agent = [dict(r) for r in await conn.fetch("SELECT * FROM raw_agent_events")]
    finally:
        await conn.close()
    hours = sorted({_hour(e["occurred_at"]) for e in product})
    first, last = hours[0], hours[-1]
    span = ["--from", first.isoformat(), "--to", (last + timedelta(hours=1)).isoformat()]

    def q(*args: str) -> dict[str, Any]:
        doc: dict[str, Any] = orjson.loads(ok(run(settings, "query", *args, "--json")))
        return doc

    for group in ("hour", "day", "channel"):
        assert _buckets(q(*span, "--group-by", group)) == _expect(product, group), group
    web = [e for e in product if e["channel"] == "web"]
    assert _buckets(q(*span, "--channel", "web")) == _expect(web, "hour")
    buys = [e for e in product if e["event_name"] == "purchase"]
    doc = q(*span, "--event-name", "purchase", "--group-by", "day")
    assert _buckets(doc) == _expect(buys, "day")
    assert doc["totals"] == {
        "events": len(buys),
        "unique_users": len({e["user_id"] for e in buys}),
        "late_events": sum(e["late"] for e in buys),
    }
    # Hours whose start lies in [from, to): the first hour is left out from its second on.
    later = q("--from", (first + timedelta(seconds=1)).isoformat(), "--to", span[3])
    assert _buckets(later) == _expect(
        [e for e in product if _hour(e["occurred_at"]) > first], "hour"
    )
    # The default range is the last 24 hours: the whole load.
    table = ok(run(settings, "query"))
    assert table.splitlines()[1].split() == ["hour", "(UTC)", "events", "unique", "users", "late"]
    assert f"total: {len(product)} events, {len({e['user_id'] for e in product})} unique" in table

    t0 = [a for a in agent if a["tenant_id"] == "t0"]
    doc = q(*span, "--agents", "--tenant", "t0", "--group-by", "agent")
    assert [b["bucket"] for b in doc["buckets"]] == sorted({a["agent_id"] for a in t0})
    for b in doc["buckets"]:
        mine = [a for a in t0 if a["agent_id"] == b["bucket"]]
        kinds = [a["event_type"] for a in mine]
        won, lost = kinds.count("run.completed"), kinds.count("run.failed")
        lat = [a["latency_ms"] for a in mine if a["latency_ms"] is not None]
        assert (b["runs"], b["succeeded"], b["failed"], b["events"]) == (
            kinds.count("run.started"),
            won,
            lost,
            len(mine),
        )
        assert math.isclose(b["success_rate"], won / (won + lost), abs_tol=1e-6)
        cost = sum(a["cost_usd"] or 0 for a in mine)
        assert math.isclose(b["cost_usd"], cost, abs_tol=1e-5)
        assert math.isclose(b["avg_latency_ms"], sum(lat) / len(lat), abs_tol=1e-2)

    one_line_error(run(settings, "query", "--group-by", "week"), "--group-by 'week'")
    one_line_error(run(settings, "query", "--agents", "--channel", "web"), "--channel")


def _hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _bucket(e: dict[str, Any], group: str) -> str:
    if group == "hour":
        return _hour(e["occurred_at"]).isoformat().replace("+00:00", "Z")
    if group == "day":
        return f"{e['occurred_at']:%Y-%m-%d}"
    return str(e["channel"])


def _expect(events: list[dict[str, Any]], group: str) -> list[tuple[str, int, int, int]]:
    """(bucket, events, distinct users, late) computed from the raw rows."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        grouped[_bucket(e, group)].append(e)
    return [
        (b, len(es), len({e["user_id"] for e in es}), sum(e["late"] for e in es))
        for b, es in sorted(grouped.items())
    ]


def _buckets(doc: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    return [(b["bucket"], b["events"], b["unique_users"], b["late_events"]) for b in doc["buckets"]]
