"""``pipeline-gateway [--host H] [--port P]``: serve the gateway with uvicorn.

The same as ``producers gateway``, ``python -m producers gateway`` and
``python -m producers.gateway``. All other configuration comes from the
environment (docs/gateway.md). SIGTERM or SIGINT stops it gracefully: no new
connections, requests in flight finish (up to GATEWAY_SHUTDOWN_GRACE_SECONDS),
then the Kafka producer is flushed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.errors import PipelineError
from pipeline.logs import configure
from producers.gateway.settings import GatewaySettings

__all__ = ["main", "script", "serve"]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="The HTTP gateway (docs/gateway.md).")
    p.add_argument("--host", help="listen address (default GATEWAY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default GATEWAY_PORT or 8080)")
    return p


def serve(settings: GatewaySettings) -> None:
    """Run uvicorn until SIGTERM/SIGINT."""
    import uvicorn

    from producers.gateway.app import Gateway
    from producers.gateway.server import uvicorn_config

    uvicorn.Server(uvicorn_config(Gateway(settings), settings)).run()


def _plain(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of msg
    return True


def main(argv: list[str] | None = None, prog: str = "python -m producers.gateway") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        settings = GatewaySettings.from_env()
        settings.pipeline.require_database_url()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        settings = settings.with_overrides(host=args.host)
    if args.port is not None:
        settings = settings.with_overrides(port=args.port)
    configure(settings.pipeline.log_level)
    logging.getLogger("uvicorn.error").addFilter(_plain)
    serve(settings)
    return 0


def script() -> int:
    """The ``pipeline-gateway`` console script (pyproject.toml): its help names it so."""
    return main(prog="pipeline-gateway")


if __name__ == "__main__":
    sys.exit(main())
