"""One settings object, read once from the environment and passed down.

Library code never reads ``os.environ``: only :meth:`Settings.from_env` does.
Every variable is documented in the README ("Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.core.limits import EventLimits
from pipeline.env import (
    env_choice,
    env_float,
    env_int,
    env_opt,
    env_opt_choice,
    env_opt_float,
    env_port,
    env_str,
)
from pipeline.errors import ConfigError

__all__ = ["KafkaSecurity", "Settings"]


_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_PROFILES = ("kafka", "tansu")


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS/SASL settings passed to every Kafka client the project creates."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer/Consumer/AdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        if self.protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with production-safe defaults."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security: KafkaSecurity = KafkaSecurity()
    # "tansu" applies the measured settings for the local broker (docs/design.md, "Brokers"):
    # short session timeout so groups join in seconds, changelog batch size 1.
    broker_profile: str = "kafka"
    database_url: str | None = field(default=None, repr=False)
    events_topic: str = "events"
    dlq_topic: str = "events.dlq"
    events_partitions: int = 6
    # Replicas of each topic `python -m pipeline topics` creates (3 on a production cluster).
    topic_replication: int = 1
    # How long the group waits for a silent (crashed) worker before moving its
    # partitions; None: Faust's default (60 s) on Apache Kafka, 6 s on the tansu profile.
    session_timeout_seconds: float | None = None
    app_id: str = "event-pipeline"
    # Sink batching: a batch is taken when it holds batch_max messages or
    # batch_seconds passed since its first message; it is written in
    # transactions of at most batch_bytes of message values each.
    batch_max: int = 2000
    batch_seconds: float = 0.5
    batch_bytes: int = 4 * 1024 * 1024
    # Transactions a worker commits at once, on disjoint partitions (one connection each).
    sink_lanes: int = 2
    # Messages fetched ahead of the agent (in runs of records, delivery.py); memory grows
    # by about this times the average message size.
    buffer_messages: int = 16_384
    # Event time: an hour is complete once every active partition's watermark
    # passed hour end + grace; a partition idle this long stops holding it back.
    completeness_grace_seconds: int = 300
    partition_idle_seconds: int = 300
    # 0 = off: events of any age are stored and counted (the default).
    max_event_age_seconds: int = 0
    max_future_seconds: int = 3600
    max_message_bytes: int = 1_048_576
    dedup_capacity: int = 2_000_000
    web_port: int = 6066  # taken and not set by WORKER_WEB_PORT: a free one is chosen
    web_port_fixed: bool = False  # WORKER_WEB_PORT (or --web-port) named it
    web_host: str = "127.0.0.1"
    data_dir: str = ".stack/worker"
    log_level: str = "INFO"
    db_retry_max_seconds: float = 10.0
    # A partition with lag and no progress for this long makes /health/live fail.
    stuck_after_seconds: float = 60.0

    @property
    def is_tansu(self) -> bool:
        return self.broker_profile == "tansu"

    def event_limits(self) -> EventLimits:
        """The limits the worker dead-letters by, and the gateway refuses by."""
        return EventLimits(
            max_message_bytes=self.max_message_bytes,
            max_event_age_s=self.max_event_age_seconds,
            max_future_s=self.max_future_seconds,
            grace_s=self.completeness_grace_seconds,
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "DATABASE_URL is not set. Point it at PostgreSQL "
                "(postgresql://user@host:5432/db) or start the local stack with "
                '`eval "$(python -m pipeline stack up)"`.'
            )
        return self.database_url

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``env`` (default: the process environment)."""
        e = os.environ if env is None else env
        d = cls()
        events_topic = env_str(e, "EVENTS_TOPIC", d.events_topic)
        security = KafkaSecurity(
            protocol=env_choice(e, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", _SECURITY_PROTOCOLS),
            sasl_mechanism=env_opt_choice(e, "KAFKA_SASL_MECHANISM", _SASL_MECHANISMS),
            sasl_username=env_opt(e, "KAFKA_SASL_USERNAME"),
            sasl_password=env_opt(e, "KAFKA_SASL_PASSWORD"),
            ssl_cafile=env_opt(e, "KAFKA_SSL_CAFILE"),
        )
        if security.protocol.startswith("SASL") and not (
            security.sasl_username and security.sasl_password
        ):
            raise ConfigError(
                f"KAFKA_SECURITY_PROTOCOL={security.protocol} needs KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD."
            )
        return cls(
            kafka_bootstrap_servers=env_str(
                e, "KAFKA_BOOTSTRAP_SERVERS", d.kafka_bootstrap_servers
            ),
            kafka_security=security,
            broker_profile=env_choice(e, "KAFKA_BROKER_PROFILE", d.broker_profile, _PROFILES),
            database_url=env_opt(e, "DATABASE_URL"),
            events_topic=events_topic,
            dlq_topic=env_str(e, "DLQ_TOPIC", f"{events_topic}.dlq"),
            events_partitions=env_int(e, "EVENTS_PARTITIONS", d.events_partitions, minimum=1),
            topic_replication=env_int(
                e, "TOPIC_REPLICATION_FACTOR", d.topic_replication, minimum=1
            ),
            session_timeout_seconds=env_opt_float(e, "WORKER_SESSION_TIMEOUT_SECONDS", minimum=3.0),
            app_id=env_str(e, "PIPELINE_APP_ID", d.app_id),
            batch_max=env_int(e, "SINK_BATCH_MAX", d.batch_max, minimum=1),
            batch_seconds=env_float(e, "SINK_BATCH_SECONDS", d.batch_seconds, minimum=0.01),
            batch_bytes=env_int(e, "SINK_BATCH_BYTES", d.batch_bytes, minimum=1),
            sink_lanes=env_int(e, "SINK_LANES", d.sink_lanes, minimum=1),
            buffer_messages=env_int(e, "WORKER_BUFFER_MESSAGES", d.buffer_messages, minimum=1),
            completeness_grace_seconds=env_int(
                e, "COMPLETENESS_GRACE_SECONDS", d.completeness_grace_seconds, minimum=0
            ),
            partition_idle_seconds=env_int(
                e, "PARTITION_IDLE_SECONDS", d.partition_idle_seconds, minimum=1
            ),
            max_event_age_seconds=env_int(e, "MAX_EVENT_AGE_SECONDS", 0, minimum=0),
            max_future_seconds=env_int(e, "MAX_FUTURE_SECONDS", d.max_future_seconds, minimum=0),
            max_message_bytes=env_int(e, "MAX_MESSAGE_BYTES", d.max_message_bytes, minimum=1024),
            dedup_capacity=env_int(e, "DEDUP_CAPACITY", d.dedup_capacity, minimum=0),
            web_port=env_port(e, "WORKER_WEB_PORT", d.web_port),
            web_port_fixed=env_opt(e, "WORKER_WEB_PORT") is not None,
            web_host=env_str(e, "WORKER_WEB_HOST", d.web_host),
            data_dir=env_str(e, "WORKER_DATA_DIR", d.data_dir),
            log_level=env_choice(
                e, "LOG_LEVEL", d.log_level, ("DEBUG", "INFO", "WARNING", "ERROR"), upper=True
            ),
            db_retry_max_seconds=env_float(
                e, "DB_RETRY_MAX_SECONDS", d.db_retry_max_seconds, minimum=0.1
            ),
            stuck_after_seconds=env_float(
                e, "WORKER_STUCK_SECONDS", d.stuck_after_seconds, minimum=1.0
            ),
        )
