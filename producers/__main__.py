"""``producers generate`` (or ``python -m producers generate``): publish a realistic load and
say what it must produce. ``producers gateway`` runs the HTTP gateway (also ``pipeline-gateway``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import PipelineError
from pipeline.logs import quiet_kafka_client
from pipeline.settings import Settings
from producers.generate import LoadOptions, build_workload, publish_workload
from producers.publisher import Publisher

__all__ = ["main", "script"]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="publish a synthetic load of product and agent events")
    g.add_argument("--count", type=int, default=20_000, help="events in all (default 20000)")
    g.add_argument("--rate", type=float, default=0.0, help="events per second (0: max)")
    g.add_argument("--duplicates", type=float, default=0.10, help="share re-sent (0.10)")
    g.add_argument("--invalid", type=float, default=0.02, help="share invalid (0.02)")
    g.add_argument("--late", type=float, default=0.02, help="share sent after their hour (0.02)")
    g.add_argument("--agents", type=float, default=0.25, help="share of AI-agent run events")
    g.add_argument("--channels", default="web,ios,android,email", help="comma-separated")
    g.add_argument("--hours", type=int, default=3, help="distinct UTC hours (3)")
    g.add_argument("--envelope", type=int, default=1, help="events per message (1: single)")
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--expect-file", type=Path, help="write the expected rollups here (JSON)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser(
        "gateway",
        help="the HTTP gateway and metrics API (docs/gateway.md); also: pipeline-gateway",
    )
    return p


def _options(a: argparse.Namespace) -> LoadOptions:
    for name in ("duplicates", "invalid", "late", "agents"):
        if not 0 <= getattr(a, name) <= 1:
            raise PipelineError(f"--{name} must be a share between 0 and 1")
    if a.count < 1 or a.hours < 1 or a.envelope < 1:
        raise PipelineError("--count, --hours and --envelope must be at least 1")
    if not a.rate >= 0 or a.rate == float("inf"):
        raise PipelineError(
            f"--rate {a.rate}: give events per second, at least 0 (0: as fast as possible)"
        )
    channels = tuple(c.strip() for c in a.channels.split(",") if c.strip())
    if not channels:
        raise PipelineError(f"--channels {a.channels!r}: name at least one channel, e.g. web,ios")
    return LoadOptions(
        count=a.count,
        duplicate_rate=a.duplicates,
        invalid_rate=a.invalid,
        late_rate=a.late,
        agent_rate=a.agents,
        channels=channels,
        hours=a.hours,
        envelope_size=a.envelope,
        seed=a.seed,
    )


async def generate(
    settings: Settings, opts: LoadOptions, rate: float, quiet: bool
) -> dict[str, Any]:
    async with Publisher(settings) as pub:
        workload = build_workload(opts, pub.partitions)
        receipt = await publish_workload(pub, workload, rate=rate, progress=not quiet)
    summary = workload.expected()
    summary["sent_messages"] = receipt.messages
    summary["sent_events"] = receipt.events
    summary["end_offsets"] = {str(p): o for p, o in sorted(receipt.end_offsets.items())}
    summary["topic"] = settings.events_topic
    return summary


def _print_summary(s: dict[str, Any]) -> None:
    dead = ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letters"].items())) or "none"
    print(f"sent {s['sent_events']} events in {s['sent_messages']} messages to {s['topic']}")
    kinds = f"{s['product_events']} product, {s['agent_events']} agent"
    print(f"  unique valid   {s['unique_events']} ({kinds})")
    print(f"  duplicates     {s['duplicates']}")
    print(f"  invalid        {sum(s['dead_letters'].values())} ({dead})")
    print(f"  rollup rows    {len(s['channel_rollups'])} channel, {len(s['agent_rollups'])} agent")


def main(argv: list[str] | None = None, prog: str = "python -m producers") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gateway"]:
        from producers.gateway.__main__ import main as gateway_main

        return gateway_main(argv[1:], prog=f"{prog} gateway")
    args = _parser(prog).parse_args(argv)
    quiet_kafka_client()
    try:
        settings = Settings.from_env()
        summary = asyncio.run(generate(settings, _options(args), args.rate, args.quiet))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.expect_file:
        args.expect_file.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    _print_summary(summary)
    return 0


def script() -> int:
    """The ``producers`` console script (pyproject.toml): its help names it so."""
    return main(prog="producers")


if __name__ == "__main__":
    sys.exit(main())
