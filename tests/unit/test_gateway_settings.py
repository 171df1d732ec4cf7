"""producers.gateway.settings.GatewaySettings.from_env: defaults, every variable, refusals."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from producers.gateway.settings import GatewaySettings


def test_defaults() -> None:
    gs = GatewaySettings.from_env({})
    assert (gs.host, gs.port, gs.max_body_bytes, gs.max_bulk_events) == (
        "0.0.0.0",
        8080,
        5_242_880,
        1000,
    )
    assert gs.api_keys == () and not gs.auth_enabled
    assert gs.metrics_rate_limit_per_minute == 120 and gs.access_log
    assert gs.pipeline.events_topic == "events"


def test_every_variable() -> None:
    gs = GatewaySettings.from_env(
        {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": "9000",
            "GATEWAY_MAX_BODY_BYTES": "4096",
            "GATEWAY_MAX_BULK_EVENTS": "10",
            "GATEWAY_ENVELOPE_EVENTS": "5",
            "API_KEYS": " a, b ,,c ",
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
        "127.0.0.1",
        9000,
        4096,
        10,
    )
    assert gs.envelope_events == 5 and gs.api_keys == ("a", "b", "c")
    assert gs.metrics_rate_limit_per_minute == 0 and gs.publish_timeout_seconds == 2.5
    assert (gs.retry_after_seconds, gs.linger_ms, gs.db_pool_size) == (3, 1, 4)
    assert not gs.access_log and gs.shutdown_grace_seconds == 5.0
    assert gs.pipeline.events_topic == "ev"
    assert "api_keys" not in repr(gs)  # keys never reach a log line through repr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_PORT", "http"),
        ("GATEWAY_PORT", "70000"),
        ("GATEWAY_MAX_BODY_BYTES", "10"),
        ("GATEWAY_PUBLISH_TIMEOUT_SECONDS", "0"),
        ("GATEWAY_ACCESS_LOG", "maybe"),
        ("METRICS_RATE_LIMIT_PER_MINUTE", "-1"),
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
