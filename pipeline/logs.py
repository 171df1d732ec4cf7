"""Structured logs: one JSON object per line on stderr, quiet by default.

At the default level (INFO) our own code logs only what an operator wants to
read: a worker's start, the partitions it owns (once per change), warnings
and errors; never a line per batch. Libraries log warnings and errors only,
each repeated message at most once per ten seconds (:class:`QuietFilter`).

Fields passed with ``extra=`` become keys of the object; secrets are never
passed (DSNs are printed only through :func:`redact_dsn`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "QuietFilter", "configure", "logging_config", "redact_dsn"]

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


LIBRARIES = ("faust", "mode", "aiokafka", "kafka")


class QuietFilter(logging.Filter):
    """Keeps the default (INFO) log to what an operator reads.

    * Lifecycle lines of Faust/mode services ("[^-HealthServer]: Starting...")
      are DEBUG material: they are dropped unless DEBUG is asked for.
    * A library repeating itself (aiokafka logs each failed connection attempt,
      hundreds a minute while a broker is down) is said once per ``window``
      seconds per message; the next line that gets through carries
      ``repeated``: how many were left out.
    """

    def __init__(self, debug: bool = False, window: float = 10.0) -> None:
        super().__init__()
        self._debug = debug
        self._window = window
        self._last: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if self._debug:
            return True
        if record.levelno <= logging.INFO and str(record.msg).startswith("[^"):
            return False
        if record.name.split(".", 1)[0] not in LIBRARIES:
            return True
        key = (record.name, record.levelno, str(record.msg))
        seen, left_out = self._last.get(key, (-self._window, 0))
        if record.created - seen < self._window:
            self._last[key] = (seen, left_out + 1)
            return False
        self._last[key] = (record.created, 0)
        if left_out:
            record.repeated = left_out
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for our loggers and the libraries' (Faust, aiokafka)."""
    debug = level == "DEBUG"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"quiet": {"()": QuietFilter, "debug": debug}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["quiet"]}
        },
        "root": {"handlers": ["stderr"], "level": level},
        # Library chatter stays at WARNING unless DEBUG is asked for.
        "loggers": {name: {"level": "DEBUG" if debug else "WARNING"} for name in LIBRARIES},
    }


def quiet_kafka_client() -> None:
    """For one-shot commands: aiokafka logs each refused connection itself, while the
    command's own one-line error (naming KAFKA_BOOTSTRAP_SERVERS) already says it all."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def configure(level: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level))


def redact_dsn(dsn: str) -> str:
    """The DSN with every secret replaced by ``***`` (for logs and status lines).

    Handles each form libpq accepts: URLs (``postgresql://u:pw@h/db``, several
    hosts ``h1:5432,h2:5433``, ``?password=`` and ``?sslpassword=`` in the
    query) and keyword strings (``host=db password='s 3cret'``). Never raises:
    what cannot be read is not shown.
    """
    try:
        if _URL.match(dsn):
            return _redact_url(dsn)
        return _KEYWORD_SECRET.sub(r"\1***", dsn)
    except Exception:  # pragma: no cover - a bug here must not hide the real error
        return "<DSN not shown>"


# Any scheme: a wrong one (mysql://u:pw@h) still must not show its password.
_URL = re.compile(r"(?i)^[a-z][a-z0-9+.-]*://")
# password=... in a keyword DSN: a quoted value (with \' escapes) or up to a space
_KEYWORD_SECRET = re.compile(r"(?i)(?<![\w])((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S*)")
_QUERY_SECRET = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


def _redact_url(dsn: str) -> str:
    scheme, rest = dsn.split("://", 1)
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:query_at], rest[query_at:]
    at = head.rfind("@")  # the userinfo ends at the last @ (the hosts hold none)
    if at >= 0:
        user, has_password, _ = head[:at].partition(":")
        head = (f"{user}:***" if has_password else user) + head[at:]
    return scheme + "://" + head + _QUERY_SECRET.sub(r"\1***", tail)
