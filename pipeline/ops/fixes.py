"""Fixes to a dead-lettered event before it is replayed: ``--set PATH=JSON``, ``--unset PATH``.

A path is dotted, with ``[n]`` for an array element, as the ``field`` column of
``dead_letters`` names them: ``timestamp``, ``run.latency_ms``, ``tags[3]``,
``metadata.items[0].sku``. The value of ``--set`` is JSON (``12``, ``"web"``,
``null``, ``{"a": 1}``). ``--set`` creates missing objects on its way; an
array element must exist. ``--unset`` of a path the event lacks changes
nothing (one fix can be applied to many letters). A name holding ``.`` or
``[`` cannot be addressed. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.errors import ConfigError

__all__ = [
    "Fix",
    "FixError",
    "apply_fixes",
    "describe_fixes",
    "parse_path",
    "parse_set",
    "parse_unset",
]

Path = tuple[str | int, ...]

_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d{1,9}\])*)\Z")


class FixError(ValueError):
    """A fix that does not fit this event (the event is not changed)."""


@dataclass(frozen=True)
class Fix:
    """One ``--set`` (``unset`` False, with a value) or ``--unset``, and how it was written."""

    path: Path
    text: str
    unset: bool = False
    value: Any = None


def parse_path(text: str, option: str) -> Path:
    if not text:
        raise ConfigError(f"{option}: name a field, e.g. timestamp or run.latency_ms")
    path: list[str | int] = []
    for segment in text.split("."):
        m = _SEGMENT.match(segment)
        if m is None:
            raise ConfigError(
                f"{option} {text!r}: a path is field names joined by dots, with [n] for an "
                "array element, e.g. run.latency_ms or tags[0]"
            )
        path.append(m.group(1))
        path.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return tuple(path)


def parse_set(text: str) -> Fix:
    """``PATH=JSON`` from ``--set``."""
    name, eq, raw = text.partition("=")
    if not eq:
        raise ConfigError(f"--set {text!r}: write PATH=JSON, e.g. --set timestamp=1700000000")
    path = parse_path(name.strip(), "--set")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(
            f"--set {text!r}: the value must be JSON; a string needs quotes, e.g. "
            f"--set '{name.strip()}=\"{raw}\"'"
        ) from None
    return Fix(path, text, value=value)


def parse_unset(text: str) -> Fix:
    return Fix(parse_path(text.strip(), "--unset"), text.strip(), unset=True)


def describe_fixes(fixes: Sequence[Fix]) -> str | None:
    """The fixes as one line for the replay record (None: published as it was)."""
    if not fixes:
        return None
    return "; ".join(f"unset {f.text}" if f.unset else f"set {f.text}" for f in fixes)


def apply_fixes(event: dict[str, Any], fixes: Sequence[Fix]) -> dict[str, Any]:
    """A copy of ``event`` with ``fixes`` applied in order; FixError when one does not fit."""
    fixed: dict[str, Any] = orjson.loads(orjson.dumps(event))  # a deep copy, JSON only
    for fix in fixes:
        if fix.unset:
            _unset(fixed, fix)
            continue
        try:
            _set(fixed, fix)
        except FixError as exc:
            raise FixError(f"--set {fix.text}: {exc}") from None
    return fixed


def _show(path: Path) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _set(doc: dict[str, Any], fix: Fix) -> None:
    node: Any = doc
    path = fix.path
    for i, step in enumerate(path[:-1]):
        nxt = path[i + 1]
        node = _child(node, step, path[: i + 1], create={} if isinstance(nxt, str) else None)
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise FixError(f"{_show(path[:-1])} has no element {last}")
        node[last] = fix.value
    else:
        if not isinstance(node, dict):
            raise FixError(f"{_show(path[:-1])} is not an object")
        node[last] = fix.value


def _child(node: Any, step: str | int, where: Path, create: Any) -> Any:
    if isinstance(step, int):
        if not isinstance(node, list) or step >= len(node):
            raise FixError(f"{_show(where)}: there is no such array element")
        return node[step]
    if not isinstance(node, dict):
        raise FixError(f"{_show(where[:-1])} is not an object")
    if step not in node or node[step] is None:
        if create is None:
            raise FixError(f"{_show(where)} is missing, so it has no elements")
        node[step] = create
    return node[step]


def _unset(doc: dict[str, Any], fix: Fix) -> None:
    node: Any = doc
    for step in fix.path[:-1]:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return
        elif not isinstance(node, dict) or step not in node:
            return
        node = node[step]
    last = fix.path[-1]
    if isinstance(last, int):
        if isinstance(node, list) and last < len(node):
            del node[last]
    elif isinstance(node, dict):
        node.pop(last, None)
