"""``python -m pipeline <command>``: the operator's front door.

Commands: worker, migrate, topics, stack (up|down|status), status, rebuild-rollups,
retention, reset-offsets, demo, bench, and reference (the benchmark's hand-rolled loop).
Bad configuration ends with a one-line message naming the setting, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError
from pipeline.settings import Settings

__all__ = ["main"]


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    import faust

    from pipeline.app import create_app
    from pipeline.health import HealthServer
    from pipeline.logs import logging_config

    if args.web_port is not None:
        settings = settings.with_overrides(web_port=args.web_port)
    app = create_app(settings)
    health = HealthServer(app, settings.web_host, settings.web_port, settings.stuck_after_seconds)
    worker = faust.Worker(
        app,
        health,
        loglevel=settings.log_level,
        logging_config=logging_config(settings.log_level),
        redirect_stdouts=False,
        quiet=True,
    )
    _tune_gc()
    worker.execute_from_commandline()  # returns only through SystemExit
    return 0


def _tune_gc() -> None:
    """Fewer cyclic-GC passes: a batch decodes ~10^5 short-lived, acyclic objects.

    With the default threshold (700 allocations) the collector ran hundreds of
    times per batch and took ~30% of plan time (bench: plan 13.5 → 9.6 µs per
    event). Objects alive after start-up (modules, Faust) are frozen out of it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _reference(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.reference import run_reference

    _tune_gc()
    return run_reference(settings, args.index, args.of)


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(settings.require_database_url()))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.topics import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    for name, partitions in created.items():
        print(f"created topic {name} ({partitions} partitions)")
    if not created:
        print("all topics exist")
    return 0


def _stack(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import stack

    return stack.main([args.action, "--dir", args.dir, "--broker", args.broker])


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.demo import run_demo

    return run_demo(settings, count=args.count, keep=args.keep)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.bench import run_bench

    return run_bench(
        settings, args.count, args.json, runs=args.runs, only=args.only, broker=args.broker
    )


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.status import run_status

    return run_status(settings, as_json=args.json)


def _rebuild(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.maintenance import parse_hour, rebuild_rollups

    start, end = parse_hour(args.start, "--from"), parse_hour(args.end, "--to")
    r = asyncio.run(rebuild_rollups(settings.require_database_url(), start, end))
    print(
        f"rebuilt {r.channel_rows} channel and {r.agent_rows} agent rollup rows "
        f"for {r.start.isoformat()} .. {r.end.isoformat()}"
    )
    return 0


def _retention(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.maintenance import apply_retention

    deleted = asyncio.run(apply_retention(settings.require_database_url(), args.days))
    print(", ".join(f"{table}: {n} deleted" for table, n in deleted.items()))
    return 0


def _reset(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.maintenance import apply_offset_reset, plan_offset_reset
    from pipeline.textable import format_table

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
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
    d = sub.add_parser("demo", help="stack + worker + demo load + rollups, end to end")
    d.add_argument("--count", type=int, default=20_000, help="events to publish")
    d.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    d.set_defaults(run=_demo)
    b = sub.add_parser("bench", help="throughput and latency benchmark")
    b.add_argument("--count", type=int, default=200_000, help="events per run")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--runs", type=int, default=3, help="runs per scenario; figures are medians")
    b.add_argument(
        "--only", default=None, help="scenarios whose name holds one of these comma-separated words"
    )
    b.add_argument(
        "--broker", choices=["tansu", "kafka"], default="tansu", help="the broker to measure on"
    )
    b.set_defaults(run=_bench)
    r = sub.add_parser(
        "reference", help="benchmark only: the worker's job in a hand-rolled aiokafka loop"
    )
    r.add_argument("--index", type=int, default=0, help="this process, 0-based")
    r.add_argument("--of", type=int, default=1, help="processes sharing the partitions")
    r.set_defaults(run=_reference)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run: Callable[[argparse.Namespace, Settings], int] = args.run
    try:
        return run(args, Settings.from_env())
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
