"""``python -m tools <command>``: the demo and the benchmark, tools around the product.

Commands: demo (stack + worker + demo load + rollups, end to end), bench
(throughput and latency), reference (the benchmark's hand-rolled loop, started
by bench). Bad configuration ends with a one-line message naming the setting, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import run_command
from pipeline.settings import Settings

__all__ = ["main"]


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from tools.demo import run_demo

    return run_demo(settings, count=args.count, keep=args.keep)


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from tools.bench import run_bench

    return run_bench(
        settings, args.count, args.json, runs=args.runs, only=args.only, broker=args.broker
    )


def _reference(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline.worker.main import tune_gc
    from tools.reference import run_reference

    tune_gc()
    return run_reference(settings, args.index, args.of)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
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
    return run_command(_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
