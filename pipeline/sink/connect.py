"""Connecting to PostgreSQL, with failures an operator can act on.

Every command connects through :func:`connect` or :func:`create_pool`, so a
wrong ``DATABASE_URL`` ends in one line naming it (password hidden) and the
fix, never an asyncpg traceback: not a PostgreSQL URL, a database that does
not exist, a refused login, a server that does not answer.

:func:`is_permanent` tells the worker which failures no retry can cure (a
database that does not exist, a refused login): it stops on those, and retries
the rest (a server down or unreachable) with the variable named in its log.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from pipeline.errors import ConfigError
from pipeline.logs import redact_dsn

__all__ = ["connect", "create_pool", "explain", "is_permanent"]

_PERMANENT = (
    asyncpg.InvalidCatalogNameError,  # the database does not exist
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, or not allowed
    asyncpg.exceptions.ClientConfigurationError,  # not a PostgreSQL URL
)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help: the URL, the database name or the login is wrong."""
    return isinstance(exc, _PERMANENT) or (
        isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError)
    )


def explain(dsn: str, exc: BaseException, name: str = "DATABASE_URL") -> ConfigError:
    """The one-line error for a failed connection to ``dsn`` (read from ``name``)."""
    shown = f"{name}={redact_dsn(dsn)}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return ConfigError(
            f"{shown}: {exc}. Create it (createdb, or python -m pipeline stack up for a local "
            "one) or fix the database name in the URL."
        )
    refused = asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    if isinstance(exc, refused):
        return ConfigError(f"{shown}: the server refused the login ({exc}); fix user or password.")
    if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.PostgresError):
        return ConfigError(
            f"{shown} is not a PostgreSQL URL ({exc}); use "
            "postgresql://user:password@host:port/database."
        )
    if isinstance(exc, OSError | TimeoutError):
        return ConfigError(
            f"{shown}: PostgreSQL does not answer ({exc}); start it, or fix the host and port."
        )
    return ConfigError(f"{shown}: cannot connect ({exc!r}).")


async def connect(dsn: str, timeout: float = 10.0, name: str = "DATABASE_URL") -> Any:
    """``asyncpg.connect``, with a :class:`ConfigError` naming ``name`` when it fails."""
    try:
        return await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        raise explain(dsn, exc, name) from None


async def create_pool(dsn: str, name: str = "DATABASE_URL", **kwargs: Any) -> Any:
    """``asyncpg.create_pool``, with a :class:`ConfigError` naming ``name`` when it fails."""
    try:
        return await asyncpg.create_pool(dsn, **kwargs)
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError) as exc:
        raise explain(dsn, exc, name) from exc
