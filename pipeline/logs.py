"""Structured logs: one JSON object per line on stderr, quiet (WARNING) by default.

Fields passed with ``extra=`` become keys of the object; secrets are never
passed (DSNs are printed only through :func:`redact_dsn`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = ["JsonFormatter", "configure", "logging_config", "redact_dsn"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for our loggers and the libraries' (Faust, aiokafka)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json"}},
        "root": {"handlers": ["stderr"], "level": level},
        # Library chatter stays at WARNING unless DEBUG is asked for.
        "loggers": {
            name: {"level": "DEBUG" if level == "DEBUG" else "WARNING"}
            for name in ("faust", "mode", "aiokafka", "kafka")
        },
    }


def configure(level: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level))


def redact_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (for logs and status lines)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
