"""producers.gateway.auth: API keys (constant-time, two headers) and the per-key token bucket."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from producers.gateway.auth import (
    ANONYMOUS,
    MIN_KEY_CHARS,
    ApiKey,
    Caller,
    KeyCheck,
    RateLimiter,
    key_id,
    parse_api_keys,
)
from producers.gateway.http import HttpError

K1 = "k1" + "a" * 30
K2 = "k2" + "b" * 30
KEYS = (ApiKey(K1), ApiKey(K2, frozenset({"acme"})))


def test_keys_off_identifies_nobody() -> None:
    assert KeyCheck(()).identify({}) is ANONYMOUS
    assert ANONYMOUS.key_id is None and ANONYMOUS.may_use("anyone")
    assert not KeyCheck(()).enabled


def test_api_keys_name_their_tenants() -> None:
    keys = parse_api_keys(f" {K1} , {K2}=acme| globex ,,{'c' * 32}=*")
    assert keys == (
        ApiKey(K1),
        ApiKey(K2, frozenset({"acme", "globex"})),
        ApiKey("c" * 32),
    )
    assert K1 not in repr(keys)  # a key never reaches a log through repr


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("short", "key 1 is 5 characters"),
        (f"{K1},{'x' * (MIN_KEY_CHARS - 1)}", "key 2 is 31 characters"),
        (f"{K1}=", "names no tenant"),
        (f"{K1}= | ", "names no tenant"),
    ],
)
def test_bad_api_keys_name_the_entry_and_the_fix(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_api_keys(raw)
    assert says in str(caught.value)
    assert "API_KEYS" in str(caught.value)


def test_a_scoped_key_uses_only_its_tenants() -> None:
    caller = KeyCheck(KEYS).identify({"x-api-key": K2})
    assert caller == Caller(key_id(K2), frozenset({"acme"}))
    caller.require_tenant("acme", "tenantId")
    for refuse in (
        lambda: caller.require_tenant("globex", "tenantId"),
        lambda: caller.require_every_tenant("product events"),
    ):
        with pytest.raises(HttpError) as caught:
            refuse()
        assert caught.value.status == 403
        assert "globex" not in str(caught.value.errors)
    everyone = KeyCheck(KEYS).identify({"x-api-key": K1})
    everyone.require_tenant("globex", "tenantId")
    everyone.require_every_tenant("product events")


@pytest.mark.parametrize(
    "headers",
    [{"authorization": f"Bearer {K2}"}, {"authorization": f"bearer  {K2} "}, {"x-api-key": K2}],
)
def test_a_known_key_in_either_header(headers: dict[str, str]) -> None:
    assert KeyCheck(KEYS).identify(headers).key_id == key_id(K2)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer"},
        {"authorization": f"Basic {K1}"},
        {"x-api-key": "k3"},
        {"x-api-key": K1.upper()},
        {"authorization": f"Bearer {K1}x"},
    ],
)
def test_anything_else_is_a_401(headers: dict[str, str]) -> None:
    with pytest.raises(HttpError) as caught:
        KeyCheck(KEYS).identify(headers)
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
