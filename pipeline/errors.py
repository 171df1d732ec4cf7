"""The project's exceptions: one module, so callers know what they can catch."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FatalSinkError",
    "KafkaBrokerError",
    "KafkaToolsMissingError",
    "PipelineError",
    "PublishError",
    "StackError",
    "broker_unreachable",
]


class PipelineError(Exception):
    """Base class: every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class FatalSinkError(PipelineError):
    """The sink cannot ever succeed (schema missing, permissions): the worker must stop."""


class StackError(PipelineError):
    """The local stack (embedded broker or PostgreSQL) could not be started or found."""


class PublishError(PipelineError):
    """The broker did not acknowledge a publish."""


class KafkaBrokerError(StackError):
    """The Kafka jars could not be fetched, or a broker did not start or stop."""


class KafkaToolsMissingError(KafkaBrokerError):
    """``java`` (17+) is not installed, or ``mvn`` is not and the jars are not cached."""


def broker_unreachable(bootstrap: str, exc: BaseException) -> ConfigError:
    """The one line for a broker that does not answer at ``KAFKA_BOOTSTRAP_SERVERS``."""
    return ConfigError(
        f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}: the broker does not answer ({exc}); start it "
        "(python -m pipeline stack up) or fix the address."
    )
