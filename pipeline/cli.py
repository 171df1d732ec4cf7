"""Running a command-line tool's subcommand: parse, read the settings, refuse cleanly.

Every ``python -m`` front door (``pipeline``, ``tools``) ends the same way on bad
configuration: one line naming the setting, exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from aiokafka.errors import KafkaConnectionError

from pipeline.errors import PipelineError, broker_unreachable
from pipeline.settings import Settings

__all__ = ["Command", "run_command"]

Command = Callable[[argparse.Namespace, Settings], int]


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Run the subcommand ``parser`` picks (its ``run`` default) with the environment's settings."""
    args = parser.parse_args(argv)
    run: Command = args.run
    try:
        settings = Settings.from_env()
        try:
            return run(args, settings)
        except KafkaConnectionError as exc:
            raise broker_unreachable(settings.kafka_bootstrap_servers, exc) from None
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `status | head`: the reader left. Nothing more to say; no traceback at exit
        # either (Python flushes stdout once more on the way out).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a command killed by SIGPIPE
