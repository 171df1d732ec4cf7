"""Apply the plain-SQL files in ``migrations/`` in order, once each, and record them.

Each file runs in its own transaction together with its row in
``schema_migrations``; an advisory lock keeps two concurrent ``migrate`` runs
(e.g. several compose replicas) from racing.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from pipeline.errors import ConfigError

__all__ = ["MIGRATIONS_DIR", "apply_migrations", "pending_migrations"]

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_ID = 0x6576_7470  # arbitrary, constant: "evtp"


def _migration_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.sql") if p.name[:4].isdigit())


async def pending_migrations(conn: asyncpg.Connection, folder: Path = MIGRATIONS_DIR) -> list[str]:
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
    return [p.name for p in _migration_files(folder) if p.name not in done]


async def apply_migrations(dsn: str, folder: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise ConfigError(f"cannot connect to DATABASE_URL: {exc}") from None
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            for name in await pending_migrations(conn, folder):
                sql = (folder / name).read_text()
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied
