"""API keys and per-key rate limits. Pure: no I/O (the clock is passed in).

Keys come from ``API_KEYS`` (comma-separated). A request carries one as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; it is compared with
every configured key in constant time. Logs and rate-limit buckets name a key
only by a short hash, never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping

from producers.gateway.http import HttpError, error

__all__ = ["KeyCheck", "RateLimiter", "key_id"]


def key_id(key: str) -> str:
    """A stable, non-secret name for a key (for logs and rate-limit buckets)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyCheck:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> str | None:
        """The caller's key id; ``None`` when keys are off; 401 when none matches."""
        if not self._keys:
            return None
        presented = _presented(headers)
        if presented is None:
            raise _unauthorized("an API key is required: Authorization: Bearer <key> or X-API-Key")
        candidate = presented.encode()
        matched = False
        for key in self._keys:  # no early exit: the time does not tell which key matched
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise _unauthorized("the API key is not valid")
        return key_id(presented)


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
        tokens, last = self._buckets.get(caller, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[caller] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            raise HttpError(
                429,
                [error(None, f"rate limit of {int(self._capacity)} requests per minute exceeded")],
                headers={"Retry-After": str(max(1, wait))},
            )
        if len(self._buckets) >= self._max_callers and caller not in self._buckets:
            self._buckets.clear()  # bounded memory; forgetting only forgives
        self._buckets[caller] = (tokens - 1.0, now)
