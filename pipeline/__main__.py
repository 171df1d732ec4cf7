"""``pipeline <command>`` (or ``python -m pipeline <command>``): the operator's front door.

Commands: worker, migrate, topics, stack (up|down|status), status, rebuild-rollups,
retention, reset-offsets; for analysts and operators: verify (the tables against a load's
expect file), query (rollups of a range), dlq (list|show|replay dead letters).
The demo and the benchmark are tools around the product: ``python -m tools demo|bench``.
Bad configuration ends with a one-line message naming the setting, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from pipeline.cli import run_command
from pipeline.logs import quiet_kafka_client
from pipeline.settings import Settings

__all__ = ["main", "script"]


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.worker.main import run_worker

    return run_worker(settings, args.web_port)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.sink.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(settings.require_database_url()))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.topics import ensure_topics

    quiet_kafka_client()
    created = asyncio.run(ensure_topics(settings))
    for name, partitions in created.items():
        print(f"created topic {name} ({partitions} partitions)")
    if not created:
        print("all topics exist")
    return 0


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops import stack

    return stack.main([args.action, "--dir", args.dir, "--broker", args.broker])


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.status import run_status

    return run_status(settings, as_json=args.json)


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.maintenance import parse_hour, rebuild_rollups

    start, end = parse_hour(args.start, "--from"), parse_hour(args.end, "--to")
    r = asyncio.run(rebuild_rollups(settings.require_database_url(), start, end))
    print(
        f"rebuilt {r.channel_rows} channel and {r.agent_rows} agent rollup rows "
        f"for {r.start.isoformat()} .. {r.end.isoformat()}"
    )
    return 0


def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.maintenance import apply_retention

    deleted = asyncio.run(apply_retention(settings.require_database_url(), args.days))
    print(", ".join(f"{table}: {n} deleted" for table, n in deleted.items()))
    return 0


def _reset(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.maintenance import apply_offset_reset, plan_offset_reset
    from pipeline.ops.textable import format_table

    quiet_kafka_client()
    resets = asyncio.run(plan_offset_reset(settings, args.to, args.partition))
    print(
        format_table(
            ["partition", "durable", "log start", "log end", "state", "resets to"],
            [
                [
                    r.partition,
                    "-" if r.durable is None else r.durable,
                    r.log.start,
                    r.log.end,
                    "OUT OF RANGE" if r.out_of_range else "ok",
                    r.target,
                ]
                for r in resets
            ],
        )
    )
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            print("not changed: pass --yes to confirm (or --dry-run to look only)")
            return 2
        if input("write these durable offsets? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not changed")
            return 1
    asyncio.run(apply_offset_reset(settings, resets))
    print(
        f"{len(resets)} partition(s) of {settings.events_topic} reset; stopped partitions "
        "resume within seconds, others at the workers' next assignment (restart them)"
    )
    return 0


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.verify import run_verify

    return run_verify(settings, args.expect_file, args.wait)


def _query(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops.query import parse_query, run_query

    spec = parse_query(
        time.time_ns() // 1000,
        start=args.start,
        end=args.end,
        group_by=args.group_by,
        agents=args.agents,
        channel=args.channel,
        event_name=args.event_name,
        tenant=args.tenant,
        agent=args.agent,
        workflow=args.workflow,
    )
    return run_query(settings, spec, args.json)


def _dlq(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.ops import dlq
    from pipeline.ops.fixes import parse_set, parse_unset

    now_us = time.time_ns() // 1000
    if args.action == "show":
        return dlq.show_letter(settings, args.letter_id, args.json)
    flt = dlq.parse_filter(now_us, args.reason, args.since, args.until, args.limit)
    if args.action == "list":
        return dlq.list_letters(settings, flt, args.json)
    fixes = [parse_set(t) for t in args.set] + [parse_unset(t) for t in args.unset]
    return dlq.replay_letters(
        settings,
        now_us,
        args.id,
        flt,
        fixes,
        again=args.again,
        force=args.force,
        dry_run=args.dry_run,
        yes=args.yes,
    )


def _dlq_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", action="append", help="a reason (repeatable, or comma-separated)")
    when = "RFC 3339, unix seconds, or a span ago: 30m, 1h, 2d, 1w"
    p.add_argument("--since", help=f"received at or after: {when}")
    p.add_argument("--until", help=f"received before: {when}")
    p.add_argument(
        "--limit", type=int, default=50, help="the newest N that match (default 50; 0: all)"
    )


def _dlq_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser("dlq", help="dead letters: list, show, replay (optionally fixed)")
    actions = d.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="dead letters by reason and arrival, newest first")
    _dlq_filters(ls)
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    sh = actions.add_parser("show", help="one dead letter: every column, its raw bytes")
    sh.add_argument("letter_id", type=int, metavar="ID")
    sh.add_argument("--json", action="store_true", help="print one JSON object")
    rp = actions.add_parser(
        "replay", help="publish dead letters to the events topic again, optionally fixed"
    )
    rp.add_argument(
        "--id", type=int, action="append", default=[], help="a dead letter's id (repeatable)"
    )
    _dlq_filters(rp)
    rp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=JSON",
        help="set a field first, e.g. timestamp=1700000000 or run.latency_ms=12 (repeatable)",
    )
    rp.add_argument(
        "--unset", action="append", default=[], metavar="PATH", help="remove a field (repeatable)"
    )
    rp.add_argument("--again", action="store_true", help="publish ones replayed before too")
    rp.add_argument(
        "--force", action="store_true", help="publish events the validator still refuses"
    )
    rp.add_argument(
        "--dry-run", action="store_true", help="print what would be published, change nothing"
    )
    rp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    d.set_defaults(run=_dlq)


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run a stream worker (Faust)")
    w.add_argument("--web-port", type=int, default=None, help="this worker's HTTP port")
    w.set_defaults(run=_worker)
    sub.add_parser("migrate", help="apply SQL migrations").set_defaults(run=_migrate)
    sub.add_parser("topics", help="create the Kafka topics").set_defaults(run=_topics)
    s = sub.add_parser("stack", help="the embedded local broker and PostgreSQL")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument("--dir", default=".stack", help="state folder (default .stack)")
    s.add_argument(
        "--broker",
        choices=["tansu", "kafka"],
        default="tansu",
        help="up: tansu (memory-only, default) or kafka (Apache Kafka; needs Java 17 and Maven)",
    )
    s.set_defaults(run=_stack)
    st = sub.add_parser("status", help="consumer group, lag per partition, complete hours")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(run=_status)
    rb = sub.add_parser("rebuild-rollups", help="recompute rollups of [--from, --to) from raw")
    rb.add_argument("--from", dest="start", required=True, help="RFC 3339 or unix seconds")
    rb.add_argument("--to", dest="end", required=True, help="exclusive; RFC 3339 or unix seconds")
    rb.set_defaults(run=_rebuild)
    rt = sub.add_parser(
        "retention", help="delete raw events, dead letters and ingestion jobs older than N days"
    )
    rt.add_argument("--days", type=int, required=True)
    rt.set_defaults(run=_retention)
    ro = sub.add_parser(
        "reset-offsets",
        help="move durable offsets: replay, or resolve a partition stopped out of range",
    )
    ro.add_argument(
        "--to",
        default="earliest",
        help="earliest (the log start: replays, safe), latest (the log end: skips what the "
        "log holds) or an offset; default earliest",
    )
    ro.add_argument("--partition", type=int, default=None, help="default: every partition")
    ro.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    ro.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    ro.set_defaults(run=_reset)
    v = sub.add_parser(
        "verify", help="check the tables against the expect file of python -m producers generate"
    )
    v.add_argument("--expect-file", type=Path, required=True, help="the generator's JSON file")
    v.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to this long until the workers processed the load",
    )
    v.set_defaults(run=_verify)
    q = sub.add_parser("query", help="rollups of a time range, by hour, day or channel")
    when = "RFC 3339 or unix seconds"
    q.add_argument("--from", dest="start", help=f"{when}; default 24 hours before --to")
    q.add_argument("--to", dest="end", help=f"exclusive; {when}; default the current hour's end")
    q.add_argument("--channel", help="product events of this channel only")
    q.add_argument("--event-name", help="product events of this name only")
    q.add_argument(
        "--group-by",
        help="hour (default), day or channel; with --agents: hour, day, tenant, agent, workflow",
    )
    q.add_argument("--agents", action="store_true", help="agent runs instead of product events")
    q.add_argument("--tenant", help="with --agents: this tenant_id only")
    q.add_argument("--agent", help="with --agents: this agent_id only")
    q.add_argument("--workflow", help="with --agents: this workflow_id only")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(run=_query)
    _dlq_parser(sub)
    return p


def main(argv: list[str] | None = None, prog: str = "python -m pipeline") -> int:
    return run_command(_parser(prog), argv)


def script() -> int:
    """The ``pipeline`` console script (pyproject.toml): its help names it so."""
    return main(prog="pipeline")


if __name__ == "__main__":
    sys.exit(main())
