"""Apply the plain-SQL files in ``migrations/`` in order, once each, and record them.

Each file runs in its own transaction together with its row in
``schema_migrations``; an advisory lock keeps two concurrent ``migrate`` runs
(e.g. several compose replicas) from racing.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from pipeline.errors import ConfigError
from pipeline.sink import sql
from pipeline.sink.connect import connect

__all__ = ["MIGRATIONS_DIR", "apply_migrations", "pending_migrations"]

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_LOCK_ID = 0x6576_7470  # arbitrary, constant: "evtp"


def _migration_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.sql") if p.name[:4].isdigit())


async def pending_migrations(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    await conn.execute(sql.CREATE_MIGRATIONS_TABLE)
    done = {r["version"] for r in await conn.fetch(sql.SELECT_MIGRATIONS)}
    return [p.name for p in _migration_files(folder) if p.name not in done]


async def apply_migrations(dsn: str, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    if not _migration_files(folder):
        # An installed wheel holds no migrations/: "up to date" would be a lie.
        raise ConfigError(
            f"no migrations in {folder}: run python -m pipeline migrate from a clone of the "
            "repository (or the Docker image), where migrations/ sits next to pipeline/"
        )
    conn = await connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute(sql.ADVISORY_LOCK, _LOCK_ID)
        try:
            for name in await pending_migrations(conn, folder):
                script = (folder / name).read_text()
                async with conn.transaction():
                    await conn.execute(script)
                    await conn.execute(sql.RECORD_MIGRATION, name)
                applied.append(name)
        finally:
            await conn.execute(sql.ADVISORY_UNLOCK, _LOCK_ID)
    finally:
        await conn.close()
    return applied
