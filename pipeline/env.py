"""Reading settings from environment variables: one refusal style for every command.

Each reader takes the environment, the variable's name and its default, and
returns the default when the variable is unset or blank. A bad value raises
:class:`ConfigError` naming the variable, the value and what to set instead.
Used by ``pipeline.settings`` and the gateway's settings alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pipeline.errors import ConfigError

__all__ = [
    "env_bool",
    "env_choice",
    "env_float",
    "env_int",
    "env_name",
    "env_opt",
    "env_opt_choice",
    "env_opt_float",
    "env_port",
    "env_str",
]

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

Env = Mapping[str, str]


def env_name(env: Env, name: str, *aliases: str) -> str:
    """Which of ``name`` and its ``aliases`` (names other tools use) to read.

    The project's own name when it is set or none is; else the alias that is
    set. Two set to different values is refused: which one was meant is unclear.
    """
    given = [n for n in (name, *aliases) if env.get(n, "").strip()]
    values = {env[n].strip() for n in given}
    if len(values) > 1:
        listed = " and ".join(f"{n}={env[n].strip()!r}" for n in given)
        raise ConfigError(f"{listed} disagree: set one of them.")
    return given[0] if given else name


def env_opt(env: Env, name: str) -> str | None:
    return env.get(name, "").strip() or None


def env_str(env: Env, name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _number(
    env: Env,
    name: str,
    default: T,
    parse: Callable[[str], T],
    kind: str,
    minimum: Any,
    maximum: Any,
) -> T:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {kind}; set it to e.g. {default}.") from None
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ConfigError(f"{name}={raw!r} is not a finite number; set it to e.g. {default}.")
    if value < minimum:
        raise ConfigError(
            f"{name}={raw!r} is below the minimum {minimum}; set it to e.g. {default}."
        )
    if maximum is not None and value > maximum:
        raise ConfigError(
            f"{name}={raw!r} is above the maximum {maximum}; set it to e.g. {default}."
        )
    return value


def env_int(env: Env, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    return _number(env, name, default, int, "a whole number", minimum, maximum)


def env_float(
    env: Env, name: str, default: float, minimum: float, maximum: float | None = None
) -> float:
    return _number(env, name, default, float, "a number", minimum, maximum)


def env_opt_float(env: Env, name: str, minimum: float) -> float | None:
    if not env.get(name, "").strip():
        return None
    return env_float(env, name, minimum, minimum)


def env_port(env: Env, name: str, default: int) -> int:
    """A TCP port, 0..65535 (0: the system picks a free one)."""
    port = env_int(env, name, default, minimum=0)
    if port > 65535:
        raise ConfigError(f"{name}={port} is not a TCP port (0..65535).")
    return port


def env_choice(
    env: Env, name: str, default: str, choices: tuple[str, ...], upper: bool = False
) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = raw.upper() if upper else raw
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}.")
    return value


def env_opt_choice(env: Env, name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    return env_choice(env, name, raw, choices, upper=True)


def env_bool(env: Env, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false.")
