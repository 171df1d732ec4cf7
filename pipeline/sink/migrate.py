"""Apply the plain-SQL migrations in order, once each, and record them.

The files are the repository's ``migrations/``, shipped in the wheel as
``pipeline/migrations`` (pipeline.resources finds them either way). Each file
runs in its own transaction together with its row in ``schema_migrations``; an
advisory lock keeps two concurrent ``migrate`` runs (e.g. several compose
replicas) from racing.
"""

from __future__ import annotations

from importlib.resources.abc import Traversable

import asyncpg

from pipeline.errors import ConfigError
from pipeline.resources import migrations_folder
from pipeline.sink import sql
from pipeline.sink.connect import connect

__all__ = ["apply_migrations", "migration_files", "pending_migrations"]

_LOCK_ID = 0x6576_7470  # arbitrary, constant: "evtp"


def migration_files(folder: Traversable | None = None) -> list[Traversable]:
    """The numbered ``*.sql`` files of ``folder`` (default: the shipped ones), in order."""
    folder = migrations_folder() if folder is None else folder
    if not folder.is_dir():
        return []
    found = (p for p in folder.iterdir() if p.name.endswith(".sql") and p.name[:4].isdigit())
    return sorted(found, key=lambda p: p.name)


async def pending_migrations(
    conn: asyncpg.Connection, folder: Traversable | None = None
) -> list[str]:
    await conn.execute(sql.CREATE_MIGRATIONS_TABLE)
    done = {r["version"] for r in await conn.fetch(sql.SELECT_MIGRATIONS)}
    return [p.name for p in migration_files(folder) if p.name not in done]


async def apply_migrations(dsn: str, folder: Traversable | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    folder = migrations_folder() if folder is None else folder
    files = {p.name: p for p in migration_files(folder)}
    if not files:
        # Nothing to compare the database with: "up to date" would be a lie.
        raise ConfigError(
            f"no migrations in {folder}: the installation is incomplete; reinstall "
            "event-pipeline from its wheel or sdist, which ship them as pipeline/migrations"
        )
    conn = await connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute(sql.ADVISORY_LOCK, _LOCK_ID)
        try:
            for name in await pending_migrations(conn, folder):
                script = files[name].read_text(encoding="utf-8")
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute(sql.RECORD_MIGRATION, name)
                applied.append(name)
        finally:
            await conn.execute(sql.ADVISORY_UNLOCK, _LOCK_ID)
    finally:
        await conn.close()
    return applied
