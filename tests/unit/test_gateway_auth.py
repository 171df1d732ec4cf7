"""producers.gateway.auth: API keys (constant-time, two headers) and the per-key token bucket."""

from __future__ import annotations

import pytest

from producers.gateway.auth import KeyCheck, RateLimiter, key_id
from producers.gateway.http import HttpError


def test_keys_off_identifies_nobody() -> None:
    assert KeyCheck(()).identify({}) is None
    assert not KeyCheck(()).enabled


@pytest.mark.parametrize(
    "headers",
    [{"authorization": "Bearer k2"}, {"authorization": "bearer  k2 "}, {"x-api-key": "k2"}],
)
def test_a_known_key_in_either_header(headers: dict[str, str]) -> None:
    assert KeyCheck(("k1", "k2")).identify(headers) == key_id("k2")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": "Basic k1"},
        {"x-api-key": "k3"},
        {"x-api-key": "K1"},
        {"authorization": "Bearer k1x"},
    ],
)
def test_anything_else_is_a_401(headers: dict[str, str]) -> None:
    with pytest.raises(HttpError) as caught:
        KeyCheck(("k1", "k2")).identify(headers)
    assert caught.value.status == 401
    assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


def test_key_ids_do_not_reveal_keys() -> None:
    assert key_id("secret") == key_id("secret") != key_id("other")
    assert "secret" not in key_id("secret")


def test_the_bucket_allows_a_burst_then_refills() -> None:
    limiter = RateLimiter(per_minute=2)
    limiter.check("a", now=0.0)
    limiter.check("a", now=0.0)
    with pytest.raises(HttpError) as caught:
        limiter.check("a", now=1.0)
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "29"
    limiter.check("b", now=1.0)  # another caller has its own bucket
    limiter.check("a", now=30.0)  # one token back after 30 s
    with pytest.raises(HttpError):
        limiter.check("a", now=30.0)


def test_zero_turns_the_limit_off() -> None:
    limiter = RateLimiter(per_minute=0)
    for _ in range(1000):
        limiter.check("a", now=0.0)
