"""The gateway's own settings, read once from the environment.

Kafka, PostgreSQL and the event limits come from :class:`pipeline.settings.Settings`
(the same variables as every other command); this object holds only what the
HTTP service adds. Every variable is documented in docs/gateway.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.env import env_bool, env_float, env_int, env_name, env_port
from pipeline.errors import ConfigError
from pipeline.settings import Settings
from producers.gateway.auth import GENERATE_KEY, ApiKey, parse_api_keys

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway reads, with documented defaults."""

    pipeline: Settings = field(default_factory=Settings)
    host: str = "127.0.0.1"  # loopback unless told otherwise (GATEWAY_HOST=0.0.0.0)
    port: int = 8080
    # Whole request body; a single event is further bounded by MAX_MESSAGE_BYTES.
    max_body_bytes: int = 5_242_880
    max_bulk_events: int = 1000
    # Events per Kafka message (envelope) for bulk and ingestion posts.
    envelope_events: int = 100
    api_keys: tuple[ApiKey, ...] = field(default=(), repr=False)
    # On: no API_KEYS is a configuration error rather than an open gateway (compose sets it).
    require_api_keys: bool = False
    # Requests per minute per API key (per client address when keys are off); 0: off.
    metrics_rate_limit_per_minute: int = 120
    ingest_rate_limit_per_minute: int = 60_000
    # Failed authentications per minute per client address before it gets 429s.
    auth_failures_per_minute: int = 30
    # Bytes of events accepted but not yet acknowledged by the broker; beyond: 503.
    max_pending_bytes: int = 64 * 1024 * 1024
    # The HTTP server: request head size, time to send it, open connections.
    max_header_bytes: int = 16_384
    header_timeout_seconds: float = 10.0
    max_connections: int = 1000
    # How long a publish may wait for the broker's acknowledgement before a 503.
    publish_timeout_seconds: float = 10.0
    retry_after_seconds: int = 5
    linger_ms: int = 0
    db_pool_size: int = 10
    access_log: bool = True
    shutdown_grace_seconds: float = 25.0

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def with_overrides(self, **changes: Any) -> GatewaySettings:
        return replace(self, **changes)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, pipeline: Settings | None = None
    ) -> GatewaySettings:
        e = os.environ if env is None else env
        d = cls()
        keys = parse_api_keys(e.get("API_KEYS", ""))
        require_keys = env_bool(e, "GATEWAY_REQUIRE_API_KEYS", d.require_api_keys)
        if require_keys and not keys:
            raise ConfigError(
                "API_KEYS is empty and GATEWAY_REQUIRE_API_KEYS is on: set API_KEYS to"
                " <key>[=<tenant>|<tenant>],... (keys of at least 32 characters; generate"
                f" one with {GENERATE_KEY}), or set GATEWAY_REQUIRE_API_KEYS=false to accept"
                " requests without a key"
            )
        return cls(
            pipeline=pipeline if pipeline is not None else Settings.from_env(e),
            host=e.get("GATEWAY_HOST", "").strip() or d.host,
            port=env_port(e, env_name(e, "GATEWAY_PORT", "PORT"), d.port),
            max_body_bytes=env_int(e, "GATEWAY_MAX_BODY_BYTES", d.max_body_bytes, 1024, 1 << 30),
            max_bulk_events=env_int(e, "GATEWAY_MAX_BULK_EVENTS", d.max_bulk_events, 1, 100_000),
            envelope_events=env_int(e, "GATEWAY_ENVELOPE_EVENTS", d.envelope_events, 1, 10_000),
            api_keys=keys,
            require_api_keys=require_keys,
            metrics_rate_limit_per_minute=env_int(
                e,
                env_name(e, "METRICS_RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_METRICS_PER_MIN"),
                d.metrics_rate_limit_per_minute,
                0,
                10**9,
            ),
            ingest_rate_limit_per_minute=env_int(
                e, "GATEWAY_INGEST_RATE_LIMIT_PER_MINUTE", d.ingest_rate_limit_per_minute, 0, 10**9
            ),
            auth_failures_per_minute=env_int(
                e, "GATEWAY_AUTH_FAILURES_PER_MINUTE", d.auth_failures_per_minute, 0, 10**9
            ),
            max_pending_bytes=env_int(
                e, "GATEWAY_MAX_PENDING_BYTES", d.max_pending_bytes, 1 << 20, 1 << 40
            ),
            max_header_bytes=env_int(
                e, "GATEWAY_MAX_HEADER_BYTES", d.max_header_bytes, 1024, 1 << 20
            ),
            header_timeout_seconds=env_float(
                e, "GATEWAY_HEADER_TIMEOUT_SECONDS", d.header_timeout_seconds, 0.1
            ),
            max_connections=env_int(e, "GATEWAY_MAX_CONNECTIONS", d.max_connections, 1, 1_000_000),
            publish_timeout_seconds=env_float(
                e, "GATEWAY_PUBLISH_TIMEOUT_SECONDS", d.publish_timeout_seconds, 0.1
            ),
            retry_after_seconds=env_int(
                e, "GATEWAY_RETRY_AFTER_SECONDS", d.retry_after_seconds, 1, 3600
            ),
            linger_ms=env_int(e, "GATEWAY_LINGER_MS", d.linger_ms, 0, 1000),
            db_pool_size=env_int(e, "GATEWAY_DB_POOL_SIZE", d.db_pool_size, 1, 1000),
            access_log=env_bool(e, "GATEWAY_ACCESS_LOG", d.access_log),
            shutdown_grace_seconds=env_float(
                e, "GATEWAY_SHUTDOWN_GRACE_SECONDS", d.shutdown_grace_seconds, 0.0
            ),
        )
