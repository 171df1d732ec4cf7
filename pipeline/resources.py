"""The files the product ships besides its code: the SQL migrations and the JSON Schema contracts.

The repository keeps one copy of each, in its top-level ``migrations/`` and
``schemas/``. A wheel or sdist carries them inside the package, as the data
packages ``pipeline.migrations`` and ``pipeline.schemas`` (pyproject.toml maps
the two folders there with ``package-dir``). Every reader goes through this
module, which asks importlib.resources: an installed wheel reads its own copy,
wherever it is installed and whatever the working directory.

In a source checkout (``make setup``'s editable install, or the repository on
``sys.path``) those two names do not import: the checkout has no
``pipeline/migrations/``, and setuptools' editable finder does not serve a
namespace package that ``package-dir`` maps (pypa/setuptools#4943). There the
folders are read where they are, at the top of the checkout this very code was
imported from (recognised by its pyproject.toml), so a checkout never reads an
installed copy and an installation never reads a checkout's.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["MIGRATIONS_PACKAGE", "SCHEMAS_PACKAGE", "migrations_folder", "schemas_folder"]

MIGRATIONS_PACKAGE = "pipeline.migrations"
SCHEMAS_PACKAGE = "pipeline.schemas"
# The folder holding the ``pipeline`` package: a checkout's root, or site-packages.
_ROOT = Path(__file__).resolve().parent.parent


def _shipped(package: str, folder: str) -> Traversable:
    try:
        return resources.files(package)
    except ModuleNotFoundError:
        pass
    if (_ROOT / "pyproject.toml").is_file():
        return _ROOT / folder
    raise ConfigError(
        f"this installation of event-pipeline lacks {package} (the repository's {folder}/): "
        "reinstall it from its wheel or sdist (pip install event_pipeline-*.whl)"
    )


def migrations_folder() -> Traversable:
    """The numbered ``*.sql`` files: ``pipeline/migrations`` installed, else ``migrations``."""
    return _shipped(MIGRATIONS_PACKAGE, "migrations")


def schemas_folder() -> Traversable:
    """The ``*.schema.json`` contracts: ``pipeline/schemas`` installed, else ``schemas``."""
    return _shipped(SCHEMAS_PACKAGE, "schemas")
