"""``python -m pipeline dlq list|show|replay``: look at dead letters, fix them, replay them.

- ``list`` filters ``dead_letters`` by ``--reason`` (repeatable), ``--since``
  and ``--until`` (arrival time: unix seconds, RFC 3339, or a span ago such as
  ``30m``, ``1h``, ``2d``, ``1w``) and shows the newest ``--limit`` (50; 0: all)
  with a count per reason of everything the filter matches.
- ``show ID`` prints every column, the raw bytes as text (pretty JSON when
  JSON) or hex, and the replay record.
- ``replay`` publishes chosen dead letters (``--id``, repeatable, or the list
  filters: it takes what ``list`` with the same options shows) to the events
  topic again, optionally fixed (``--set PATH=JSON``, ``--unset PATH``; see
  :mod:`pipeline.ops.fixes`). Each event is first judged by the worker's own
  planning (:func:`pipeline.core.planner.plan_batch`: decoding, the contracts,
  the limits, the time limits); a still-invalid one is skipped with the reason
  unless ``--force``. The Kafka key is the event's dedup key as the worker
  computes it, and the producer's default partitioner is Kafka's murmur2, as
  the publisher's: every copy of an event lands on one partition, and the
  sink stores it once however often it is replayed. A dead letter is marked
  (``replayed_at``, ``replayed_to``, ``replay_count``, ``replay_fixes``) only
  after the broker acknowledged its publish; a marked one is skipped unless
  ``--again``. An envelope element is replayed as its own single-event message.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.core.limits import EventLimits
from pipeline.core.planner import RawMessage, plan_batch
from pipeline.core.timeparse import us_to_datetime
from pipeline.errors import ConfigError, broker_unreachable
from pipeline.logs import quiet_kafka_client
from pipeline.ops.fixes import Fix, FixError, apply_fixes, describe_fixes
from pipeline.ops.textable import format_table
from pipeline.ops.timearg import parse_time_option
from pipeline.settings import Settings
from pipeline.sink import sql
from pipeline.sink.connect import connect

__all__ = [
    "DEFAULT_LIMIT",
    "LetterFilter",
    "ReplayPlan",
    "judge",
    "list_letters",
    "parse_filter",
    "plan_replay",
    "raw_as_text",
    "replay_letters",
    "show_letter",
]

DEFAULT_LIMIT = 50
DETAIL_CHARS = 60  # detail shown per row by list (show prints it whole)
REPLAY_HEADER = "pipeline.replay_of"  # the dead letter's id, on the replayed message


@dataclass(frozen=True)
class LetterFilter:
    reasons: tuple[str, ...] | None = None
    since_us: int | None = None  # received at or after
    until_us: int | None = None  # received before
    limit: int | None = DEFAULT_LIMIT  # the newest this many; None: all

    @property
    def narrows(self) -> bool:
        """Whether a filter was given (a replay refuses to take every dead letter by default)."""
        return self.reasons is not None or self.since_us is not None or self.until_us is not None

    def args(self, with_raw: bool) -> tuple[Any, ...]:
        return (
            list(self.reasons) if self.reasons is not None else None,
            None if self.since_us is None else us_to_datetime(self.since_us),
            None if self.until_us is None else us_to_datetime(self.until_us),
            self.limit,
            with_raw,
        )


def parse_filter(
    now_us: int,
    reasons: Sequence[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
) -> LetterFilter:
    """The list filters; ``--reason`` may repeat or hold a comma-separated list."""
    names: tuple[str, ...] | None = None
    if reasons:
        names = tuple(r.strip() for text in reasons for r in text.split(",") if r.strip())
        if not names:
            raise ConfigError("--reason: name a reason, e.g. --reason schema_invalid")
    since_us = None if since is None else parse_time_option(since, "--since", now_us, True)
    until_us = None if until is None else parse_time_option(until, "--until", now_us, True)
    if since_us is not None and until_us is not None and since_us >= until_us:
        raise ConfigError(f"--until {until!r} must be later than --since {since!r}")
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit {limit}: give 0 or more (0: every match)")
    return LetterFilter(names, since_us, until_us, None if limit == 0 else limit)


# --------------------------------------------------------------------- replay, pure


@dataclass(frozen=True)
class ReplayPlan:
    """What replay does with one dead letter: publish ``value`` with ``key``, or skip."""

    letter_id: int
    value: bytes | None = None
    key: bytes | None = None  # the dedup key; None for an event without one (still invalid)
    invalid: str | None = None  # the worker's verdict on ``value`` (published with --force)
    skip: str | None = None  # why it is not published
    already: bool = False  # skipped because it was replayed before

    @property
    def publish(self) -> bool:
        return self.skip is None


def judge(
    value: bytes, limits: EventLimits, topic: str, now_us: int
) -> tuple[bytes | None, str | None]:
    """``(dedup key, None)`` for a message the worker would store, else ``(None, why)``.

    Runs the worker's own planning on the message: decoding, envelopes, the
    contracts, the shape and time limits.
    """
    plan = plan_batch([RawMessage(topic, 0, 0, value)], limits, now_us, {})
    if plan.dead:
        d = plan.dead[0]
        return None, f"{d.reason}: {d.detail}"
    events = plan.events
    if not events:  # pragma: no cover - a message is either an event or a dead letter
        return None, "holds no event"
    return events[0].dedup_key.encode(), None


def plan_replay(
    letter: Mapping[str, Any],
    fixes: Sequence[Fix],
    limits: EventLimits,
    topic: str,
    now_us: int,
    again: bool = False,
    force: bool = False,
) -> ReplayPlan:
    """Decide one dead letter's replay (``letter``: a ``dead_letters`` row with ``raw``)."""
    lid = int(letter["id"])
    if letter.get("replayed_at") is not None and not again:
        when = _when(letter["replayed_at"])
        return ReplayPlan(
            lid,
            skip=f"already replayed {when} to {letter['replayed_to']} (--again to publish again)",
            already=True,
        )
    raw = bytes(letter["raw"])
    value = raw
    if fixes:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ReplayPlan(
                lid,
                skip="its raw bytes are not JSON, so --set/--unset cannot apply "
                "(publish a corrected event yourself)",
            )
        if not isinstance(doc, dict):
            return ReplayPlan(
                lid, skip="its raw value is not a JSON object, so --set/--unset cannot apply"
            )
        try:
            value = orjson.dumps(apply_fixes(doc, fixes))
        except FixError as exc:
            return ReplayPlan(lid, skip=f"the fix does not fit: {exc}")
    key, invalid = judge(value, limits, topic, now_us)
    if invalid is not None and not force:
        return ReplayPlan(
            lid,
            value,
            invalid=invalid,
            skip=f"still invalid: {invalid} (fix it with --set/--unset, or --force to publish "
            "it anyway)",
        )
    return ReplayPlan(lid, value, key, invalid)


# ------------------------------------------------------------------------- display


def raw_as_text(raw: bytes) -> tuple[str, str]:
    """``(kind, text)``: ``json`` (pretty), ``text`` (UTF-8) or ``hex`` (a dump)."""
    if not raw:
        return "text", ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "hex", _hexdump(raw)
    try:
        return "json", orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return "text", text


def _hexdump(raw: bytes, width: int = 16) -> str:
    return "\n".join(f"{i:08x}  {raw[i : i + width].hex(' ')}" for i in range(0, len(raw), width))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _source(r: Mapping[str, Any]) -> str:
    index = r["envelope_index"]
    where = f"{r['source_topic']}/{r['source_partition']}/{r['source_offset']}"
    return where if index < 0 else f"{where}[{index}]"


def _replayed(r: Mapping[str, Any]) -> str:
    if r["replayed_at"] is None:
        return "no"
    return f"{_when(r['replayed_at'])} ({r['replay_count']}x) -> {r['replayed_to']}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(r: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k != "raw"}
    for k in ("received_at", "replayed_at"):
        if out.get(k) is not None:
            out[k] = out[k].isoformat().replace("+00:00", "Z")
    return out


# ---------------------------------------------------------------------- commands


async def _select(conn: asyncpg.Connection, flt: LetterFilter, raw: bool) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql.DLQ_SELECT, *flt.args(raw))]


async def _counts(conn: asyncpg.Connection, flt: LetterFilter) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql.DLQ_COUNTS, *flt.args(False)[:3])]


def list_letters(settings: Settings, flt: LetterFilter, as_json: bool) -> int:
    async def fetch() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        conn = await connect(settings.require_database_url())
        try:
            return await _select(conn, flt, False), await _counts(conn, flt)
        finally:
            await conn.close()

    rows, counts = asyncio.run(fetch())
    total = sum(c["n"] for c in counts)
    if as_json:
        doc = {
            "total": total,
            "shown": len(rows),
            "counts": {c["reason"]: c["n"] for c in counts},
            "replayed": {c["reason"]: c["replayed"] for c in counts},
            "dead_letters": [_jsonable(r) for r in rows],
        }
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not rows:
        print("no dead letters match")
        return 0
    print(
        format_table(
            ["id", "received (UTC)", "reason", "field", "source", "detail", "replayed"],
            [
                [
                    r["id"],
                    _when(r["received_at"]),
                    r["reason"],
                    r["field"] or "-",
                    _source(r),
                    _clip(r["detail"], DETAIL_CHARS),
                    _replayed(r),
                ]
                for r in rows
            ],
        )
    )
    by_reason = ", ".join(
        f"{c['reason']} {c['n']}" + (f" ({c['replayed']} replayed)" if c["replayed"] else "")
        for c in counts
    )
    print(f"\n{total} match: {by_reason}")
    if len(rows) < total:
        print(f"showing the newest {len(rows)}; --limit N (0: all) to see more")
    return 0


def show_letter(settings: Settings, letter_id: int, as_json: bool) -> int:
    async def fetch() -> dict[str, Any] | None:
        conn = await connect(settings.require_database_url())
        try:
            row = await conn.fetchrow(sql.DLQ_SELECT_IDS, [letter_id])
            return None if row is None else dict(row)
        finally:
            await conn.close()

    r = asyncio.run(fetch())
    if r is None:
        raise ConfigError(f"dead letter {letter_id} does not exist (python -m pipeline dlq list)")
    kind, text = raw_as_text(bytes(r["raw"]))
    if as_json:
        doc = _jsonable(r)
        doc["raw_kind"] = kind
        # JSON raw as the JSON value itself; otherwise the text or the hex dump.
        doc["raw"] = orjson.loads(bytes(r["raw"])) if kind == "json" else text
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    fields = [
        ("id", r["id"]),
        ("received_at", r["received_at"].isoformat()),
        ("reason", r["reason"]),
        ("field", r["field"] or "-"),
        ("detail", r["detail"]),
        ("source_topic", r["source_topic"]),
        ("source_partition", r["source_partition"]),
        ("source_offset", r["source_offset"]),
        (
            "envelope_index",
            f"{r['envelope_index']}"
            + (
                " (the whole message)"
                if r["envelope_index"] < 0
                else " (an element of an envelope)"
            ),
        ),
        ("raw", f"{r['raw_bytes']} bytes, {kind}"),
        ("replayed_at", "-" if r["replayed_at"] is None else r["replayed_at"].isoformat()),
        ("replayed_to", r["replayed_to"] or "-"),
        ("replay_count", r["replay_count"]),
        ("replay_fixes", r["replay_fixes"] or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name:<{width}}  {value}")
    print()
    print(text)
    return 0


def replay_letters(
    settings: Settings,
    now_us: int,
    ids: Sequence[int],
    flt: LetterFilter,
    fixes: Sequence[Fix],
    again: bool = False,
    force: bool = False,
    dry_run: bool = False,
    yes: bool = False,
) -> int:
    """The replay command; exit 0 when everything chosen was published or had been before."""
    if not ids and not flt.narrows:
        raise ConfigError(
            "dlq replay: choose dead letters with --id N (repeatable) or a filter "
            "(--reason, --since, --until); it never takes them all by default"
        )
    if ids and flt.narrows:
        raise ConfigError(
            "dlq replay: give --id or a filter (--reason, --since, --until), not both"
        )
    return asyncio.run(_replay(settings, now_us, ids, flt, fixes, again, force, dry_run, yes))


async def _replay(
    settings: Settings,
    now_us: int,
    ids: Sequence[int],
    flt: LetterFilter,
    fixes: Sequence[Fix],
    again: bool,
    force: bool,
    dry_run: bool,
    yes: bool,
) -> int:
    topic = settings.events_topic
    conn = await connect(settings.require_database_url())
    try:
        if ids:
            letters = [dict(r) for r in await conn.fetch(sql.DLQ_SELECT_IDS, list(ids))]
            missing = sorted(set(ids) - {r["id"] for r in letters})
            if missing:
                raise ConfigError(
                    f"--id {missing[0]}: no such dead letter (python -m pipeline dlq list)"
                )
        else:
            letters = await _select(conn, flt, True)
            total = sum(c["n"] for c in await _counts(conn, flt))
            if len(letters) < total:
                print(
                    f"taking the newest {len(letters)} of {total} matching dead letters "
                    "(--limit N, 0: all)"
                )
        limits = settings.event_limits()
        plans = [plan_replay(r, fixes, limits, topic, now_us, again, force) for r in letters]
        by_id = {r["id"]: r for r in letters}
        for p in plans:
            r = by_id[p.letter_id]
            head = f"dead letter {p.letter_id} ({r['reason']}, {_source(r)})"
            if p.skip is not None:
                print(f"{head}: skipped, {p.skip}")
                continue
            key = "none" if p.key is None else p.key.decode(errors="replace")
            note = f" (still invalid, --force: {p.invalid})" if p.invalid else ""
            print(f"{head}: {'would publish' if dry_run else 'to publish'}, key {key}{note}")
            if dry_run and p.value is not None:
                _, text = raw_as_text(p.value)
                print("    " + text.replace("\n", "\n    "))
        chosen = [p for p in plans if p.publish]
        problems = sum(1 for p in plans if not p.publish and not p.already)
        if dry_run:
            print(f"dry run: would publish {len(chosen)} event(s) to {topic}; nothing changed")
            return 1 if problems else 0
        if chosen and not yes:
            if not sys.stdin.isatty():
                print("not published: pass --yes to confirm (or --dry-run to look only)")
                return 2
            answer = input(f"publish {len(chosen)} event(s) to {topic}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not published")
                return 1
        acked, failed = await _publish(settings, topic, chosen) if chosen else ([], [])
        if acked:
            described = describe_fixes(fixes)
            await conn.execute(
                sql.DLQ_MARK_REPLAYED,
                [p.letter_id for p, _ in acked],
                [dest for _, dest in acked],
                [described] * len(acked),
            )
    finally:
        await conn.close()
    for p, dest in acked:
        print(f"replayed dead letter {p.letter_id} -> {dest}")
    for p, why in failed:
        print(f"dead letter {p.letter_id}: not acknowledged by the broker ({why}); not marked")
    already = sum(1 for p in plans if p.already)
    print(
        f"replayed {len(acked)}, skipped {already} already replayed and {problems} invalid "
        f"or not fixable, {len(failed)} not acknowledged"
    )
    return 1 if problems or failed else 0


async def _publish(
    settings: Settings, topic: str, plans: Sequence[ReplayPlan]
) -> tuple[list[tuple[ReplayPlan, str]], list[tuple[ReplayPlan, str]]]:
    """Publish each plan (acks=all); ``(acknowledged with topic/partition/offset, failed)``.

    No partition is given: aiokafka's default partitioner is Kafka's murmur2 of the
    key, the one ``producers.publisher`` computes, so a replayed event lands on the
    partition of every other copy of it.
    """
    quiet_kafka_client()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        max_request_size=settings.max_message_bytes * 2 + 65_536,
        request_timeout_ms=30_000,
        **settings.kafka_security.aiokafka_kwargs(),
    )
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise broker_unreachable(settings.kafka_bootstrap_servers, exc) from None
    acked: list[tuple[ReplayPlan, str]] = []
    failed: list[tuple[ReplayPlan, str]] = []
    try:
        sent: list[tuple[ReplayPlan, asyncio.Future[Any]]] = []
        for p in plans:
            try:
                headers = [(REPLAY_HEADER, str(p.letter_id).encode())]
                sent.append((p, await producer.send(topic, p.value, key=p.key, headers=headers)))
            except KafkaError as exc:
                failed.append((p, repr(exc)))
        results = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        for (p, _), meta in zip(sent, results, strict=True):
            if isinstance(meta, BaseException):
                failed.append((p, repr(meta)))
            else:
                acked.append((p, f"{meta.topic}/{meta.partition}/{meta.offset}"))
    finally:
        await producer.stop()
    return acked, failed
