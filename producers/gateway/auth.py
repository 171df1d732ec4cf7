"""API keys, the tenants each may use, and rate limits. Pure: no I/O (the clock is passed in).

Keys come from ``API_KEYS``: comma-separated entries ``<key>`` (every tenant)
or ``<key>=<tenant>|<tenant>...`` (only those tenants). A key is at least
``MIN_KEY_CHARS`` characters. A request carries one as ``Authorization: Bearer
<key>`` or ``X-API-Key: <key>``; it is compared with every configured key in
constant time. Logs and rate-limit buckets name a key only by a short hash,
never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.errors import ConfigError
from producers.gateway.http import HttpError, error

__all__ = [
    "GENERATE_KEY",
    "MIN_KEY_CHARS",
    "ApiKey",
    "Caller",
    "KeyCheck",
    "RateLimiter",
    "key_id",
    "parse_api_keys",
]

MIN_KEY_CHARS = 32
GENERATE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True, slots=True)
class ApiKey:
    secret: str
    tenants: frozenset[str] | None = None  # None: every tenant

    def __repr__(self) -> str:  # never the secret
        return f"ApiKey({key_id(self.secret)}, tenants={sorted(self.tenants or ['*'])})"


def parse_api_keys(raw: str, variable: str = "API_KEYS") -> tuple[ApiKey, ...]:
    """``key`` or ``key=tenant|tenant`` entries, comma-separated; ConfigError names a bad one."""
    keys: list[ApiKey] = []
    for n, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        secret, has_tenants, tenants = (part.strip() for part in entry.partition("="))
        if len(secret) < MIN_KEY_CHARS:
            raise ConfigError(
                f"{variable}: key {n} is {len(secret)} characters; an API key needs at least"
                f" {MIN_KEY_CHARS}. Generate one with: {GENERATE_KEY}"
            )
        names = frozenset(t.strip() for t in tenants.split("|") if t.strip())
        if has_tenants and not names:
            raise ConfigError(
                f"{variable}: key {n} ends with '=' but names no tenant; write"
                " <key>=<tenant>|<tenant>, or leave '=' out for every tenant"
            )
        keys.append(ApiKey(secret, None if not has_tenants or "*" in names else names))
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: a key's id (None when keys are off) and the tenants it may use."""

    key_id: str | None
    tenants: frozenset[str] | None  # None: every tenant

    def may_use(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def require_tenant(self, tenant: str, field: str) -> None:
        """403 unless the caller may write ``tenant`` (named in its own request)."""
        if not self.may_use(tenant):
            raise HttpError(403, [error(field, "this API key may not use that tenant")])

    def require_every_tenant(self, what: str) -> None:
        """403 for a key scoped to tenants: ``what`` is not tenant data."""
        if self.tenants is not None:
            raise HttpError(
                403,
                [error("Authorization", f"{what} need an API key for every tenant")],
            )


ANONYMOUS = Caller(None, None)


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (for logs and rate-limit buckets)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyCheck:
    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = [(k.secret.encode(), k.tenants) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> Caller:
        """The caller (anonymous when keys are off); 401 when no key matches."""
        if not self._keys:
            return ANONYMOUS
        presented = _presented(headers)
        if presented is None:
            raise _unauthorized("an API key is required: Authorization: Bearer <key> or X-API-Key")
        candidate = presented.encode()
        found: Caller | None = None
        for key, tenants in self._keys:  # no early exit: the time does not tell which matched
            if hmac.compare_digest(candidate, key):
                found = Caller(key_id(presented), tenants)
        if found is None:
            raise _unauthorized("the API key is not valid")
        return found


def _presented(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def _unauthorized(message: str) -> HttpError:
    return HttpError(401, [error("Authorization", message)], headers={"WWW-Authenticate": "Bearer"})


class RateLimiter:
    """A token bucket per caller: ``per_minute`` requests, refilled continuously.

    A bucket holds at most ``per_minute`` tokens, so a quiet caller may burst
    that many; ``per_minute == 0`` turns the limit off.
    """

    def __init__(self, per_minute: int, max_callers: int = 100_000) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_callers = max_callers
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, caller: str, now: float) -> None:
        """Take one token for ``caller`` or raise 429 with ``Retry-After``."""
        if self._capacity <= 0:
            return
        tokens = self._tokens(caller, now)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            raise self._refusal(tokens, "requests")
        self._put(caller, tokens - 1.0, now)

    def spend(self, caller: str, now: float) -> None:
        """Take one token (if any is left) without refusing: to count failures."""
        if self._capacity > 0:
            self._put(caller, max(0.0, self._tokens(caller, now) - 1.0), now)

    def refuse_if_spent(self, caller: str, now: float, what: str) -> None:
        """429 with ``Retry-After`` while ``caller`` has no token left; takes none."""
        if self._capacity > 0 and caller in self._buckets:
            tokens = self._tokens(caller, now)
            if tokens < 1.0:
                raise self._refusal(tokens, what)

    def _tokens(self, caller: str, now: float) -> float:
        tokens, last = self._buckets.get(caller, (self._capacity, now))
        return min(self._capacity, tokens + (now - last) * self._rate)

    def _put(self, caller: str, tokens: float, now: float) -> None:
        if len(self._buckets) >= self._max_callers and caller not in self._buckets:
            self._buckets.clear()  # bounded memory; forgetting only forgives
        self._buckets[caller] = (tokens, now)

    def _refusal(self, tokens: float, what: str) -> HttpError:
        wait = math.ceil((1.0 - tokens) / self._rate)
        return HttpError(
            429,
            [error(None, f"rate limit of {int(self._capacity)} {what} per minute exceeded")],
            headers={"Retry-After": str(max(1, wait))},
        )
