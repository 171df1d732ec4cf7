"""The project's exceptions: one module, so callers know what they can catch."""

from __future__ import annotations

__all__ = ["ConfigError", "FatalSinkError", "PipelineError", "PublishError", "StackError"]


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
