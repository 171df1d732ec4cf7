"""Where the shipped files are read from, and migrate never saying "up to date" without them.

In this checkout pipeline.resources reads the repository's own top-level
``migrations/`` and ``schemas/`` (the one copy); tests/integration/test_install.py
proves that an installed wheel reads the copy inside its package instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.resources import migrations_folder, schemas_folder
from pipeline.sink.migrate import apply_migrations, migration_files

REPO = Path(__file__).resolve().parents[2]


def test_a_checkout_reads_its_own_top_level_folders() -> None:
    assert Path(str(migrations_folder())) == REPO / "migrations"
    assert Path(str(schemas_folder())) == REPO / "schemas"


def test_the_migrations_are_every_numbered_sql_file_in_order() -> None:
    names = [p.name for p in migration_files()]
    assert names[0] == "0001_core.sql"
    assert names == sorted(p.name for p in (REPO / "migrations").glob("[0-9][0-9][0-9][0-9]*.sql"))


def test_a_missing_migrations_folder_is_an_error_not_up_to_date(tmp_path: Path) -> None:
    # Refused before connecting: the URL below answers nothing.
    with pytest.raises(ConfigError, match="no migrations in"):
        asyncio.run(apply_migrations("postgresql://u@127.0.0.1:9/db", tmp_path / "absent"))
