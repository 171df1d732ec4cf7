"""migrate never says "up to date" when it has no migrations to compare against."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.sink.migrate import MIGRATIONS_DIR, apply_migrations


def test_the_repository_ships_its_migrations() -> None:
    assert sorted(p.name for p in MIGRATIONS_DIR.glob("0*.sql"))[0] == "0001_core.sql"


def test_a_missing_migrations_folder_is_an_error_not_up_to_date(tmp_path: Path) -> None:
    # Refused before connecting: the URL below answers nothing.
    with pytest.raises(ConfigError, match="no migrations in"):
        asyncio.run(apply_migrations("postgresql://u@127.0.0.1:9/db", tmp_path / "absent"))
