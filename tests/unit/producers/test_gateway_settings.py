"""producers.gateway.settings.GatewaySettings.from_env: defaults, every variable, refusals."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from producers.gateway.auth import ApiKey
from producers.gateway.settings import GatewaySettings

A = "a" * 32
B = "b" * 40


def test_defaults() -> None:
    gs = GatewaySettings.from_env({})
    assert (gs.host, gs.port, gs.max_body_bytes, gs.max_bulk_events) == (
        "127.0.0.1",
        8080,
        5_242_880,
        1000,
    )
    assert gs.api_keys == () and not gs.auth_enabled
    assert gs.metrics_rate_limit_per_minute == 120 and gs.access_log
    assert gs.pipeline.events_topic == "events"
    assert (gs.ingest_rate_limit_per_minute, gs.auth_failures_per_minute) == (60_000, 30)
    assert (gs.max_pending_bytes, gs.max_header_bytes) == (64 * 1024 * 1024, 16_384)
    assert (gs.header_timeout_seconds, gs.max_connections) == (10.0, 1000)


def test_every_variable() -> None:
    gs = GatewaySettings.from_env(
        {
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": "9000",
            "GATEWAY_MAX_BODY_BYTES": "4096",
            "GATEWAY_MAX_BULK_EVENTS": "10",
            "GATEWAY_ENVELOPE_EVENTS": "5",
            "API_KEYS": f" {A}, {B}=acme|globex ,,",
            "GATEWAY_INGEST_RATE_LIMIT_PER_MINUTE": "100",
            "GATEWAY_AUTH_FAILURES_PER_MINUTE": "5",
            "GATEWAY_MAX_PENDING_BYTES": "1048576",
            "GATEWAY_MAX_HEADER_BYTES": "8192",
            "GATEWAY_HEADER_TIMEOUT_SECONDS": "2",
            "GATEWAY_MAX_CONNECTIONS": "50",
            "METRICS_RATE_LIMIT_PER_MINUTE": "0",
            "GATEWAY_PUBLISH_TIMEOUT_SECONDS": "2.5",
            "GATEWAY_RETRY_AFTER_SECONDS": "3",
            "GATEWAY_LINGER_MS": "1",
            "GATEWAY_DB_POOL_SIZE": "4",
            "GATEWAY_ACCESS_LOG": "off",
            "GATEWAY_SHUTDOWN_GRACE_SECONDS": "5",
            "EVENTS_TOPIC": "ev",
        }
    )
    assert (gs.host, gs.port, gs.max_body_bytes, gs.max_bulk_events) == (
        "0.0.0.0",
        9000,
        4096,
        10,
    )
    assert gs.envelope_events == 5
    assert gs.api_keys == (ApiKey(A), ApiKey(B, frozenset({"acme", "globex"})))
    assert (gs.ingest_rate_limit_per_minute, gs.auth_failures_per_minute) == (100, 5)
    assert (gs.max_pending_bytes, gs.max_header_bytes) == (1_048_576, 8192)
    assert (gs.header_timeout_seconds, gs.max_connections) == (2.0, 50)
    assert gs.metrics_rate_limit_per_minute == 0 and gs.publish_timeout_seconds == 2.5
    assert (gs.retry_after_seconds, gs.linger_ms, gs.db_pool_size) == (3, 1, 4)
    assert not gs.access_log and gs.shutdown_grace_seconds == 5.0
    assert gs.pipeline.events_topic == "ev"
    assert " api_keys=" not in repr(gs) and A not in repr(gs)  # keys never reach a log line


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "http"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_MAX_BODY_BYTES", "10"),
        ("GATEWAY_PUBLISH_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_ACCESS_LOG", "maybe"),
        ("METRICS_RATE_LIMIT_PER_MINUTE", "-1"),
        ("API_KEYS", "too-short"),
        ("GATEWAY_MAX_CONNECTIONS", "0"),
        ("GATEWAY_HEADER_TIMEOUT_SECONDS", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        GatewaySettings.from_env({name: value})


def test_the_command_refuses_to_start_without_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from producers.gateway.__main__ import main

    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main([]) == 2
    assert "DATABASE_URL" in capsys.readouterr().err
    monkeypatch.setenv("DATABASE_URL", "postgresql://x@127.0.0.1/x")
    monkeypatch.setenv("GATEWAY_PORT", "nope")
    assert main([]) == 2
    assert "GATEWAY_PORT" in capsys.readouterr().err


def test_required_keys_refuse_an_open_gateway() -> None:
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env({"GATEWAY_REQUIRE_API_KEYS": "true"})
    message = str(caught.value)
    assert "API_KEYS" in message and "GATEWAY_REQUIRE_API_KEYS=false" in message
    assert "secrets.token_urlsafe" in message  # how to make a key
    keyed = GatewaySettings.from_env({"GATEWAY_REQUIRE_API_KEYS": "true", "API_KEYS": A})
    assert keyed.auth_enabled
    assert not GatewaySettings.from_env({"GATEWAY_REQUIRE_API_KEYS": "false"}).auth_enabled


def test_the_platform_names_port_and_seed_rate_limit_are_honoured() -> None:
    # Cloud Run and Heroku set PORT; the seeds name the metrics limit this way.
    gs = GatewaySettings.from_env({"PORT": "8123", "RATE_LIMIT_METRICS_PER_MIN": "7"})
    assert (gs.port, gs.metrics_rate_limit_per_minute) == (8123, 7)
    same = GatewaySettings.from_env({"PORT": "8123", "GATEWAY_PORT": "8123"})
    assert same.port == 8123


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "8123", "GATEWAY_PORT": "9000"},
        {"RATE_LIMIT_METRICS_PER_MIN": "7", "METRICS_RATE_LIMIT_PER_MINUTE": "8"},
    ],
)
def test_a_name_and_its_alias_that_disagree_are_refused_naming_both(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewaySettings.from_env(env)
    assert all(f"{k}={v!r}" in str(caught.value) for k, v in env.items())


def test_a_bad_port_is_reported_under_the_name_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"^PORT='http'"):
        GatewaySettings.from_env({"PORT": "http"})
