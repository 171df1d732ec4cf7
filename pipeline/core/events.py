"""The records that flow through the pipeline, after decoding and validation.

Pure data: no I/O. Times are epoch microseconds (UTC); ``hour_us`` is the start
of the event's UTC hour.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AgentEvent", "DeadLetter", "Event", "Invalid", "JobRef", "ProductEvent", "Source"]


@dataclass(slots=True)
class Source:
    """Where a record was read: topic, partition, offset, index in its envelope.

    ``index`` is -1 for a message that held one event (not an envelope). Not
    frozen: one is made per event, and a frozen dataclass costs three times as
    much to build (its ``__init__`` goes through ``object.__setattr__``).
    """

    topic: str
    partition: int
    offset: int
    index: int = -1


JobRef = tuple[str, int]  # (ingestion job_id, seq): an event sent through POST /v1/ingestions


@dataclass(slots=True)
class ProductEvent:
    dedup_key: str
    event_name: str
    channel: str
    user_id: str
    ts_us: int
    hour_us: int
    payload: bytes  # the event's JSON, as stored in raw_events.payload
    source: Source
    late: bool = False  # its hour was already complete on its partition
    job: JobRef | None = None


@dataclass(slots=True)
class AgentEvent:
    dedup_key: str  # the event_id (a UUID)
    event_type: str
    ts_us: int
    hour_us: int
    tenant_id: str
    workspace_id: str
    project_id: str
    agent_id: str
    workflow_id: str
    run_id: str
    status: str
    cost_usd: float | None
    latency_ms: float | None
    payload: bytes
    source: Source
    late: bool = False


Event = ProductEvent | AgentEvent


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why one message or envelope element was refused.

    ``reason`` is a stable code (see README, "dead_letters"); ``field`` names the
    offending field when there is one; ``detail`` says what to fix.
    """

    reason: str
    detail: str
    field: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str
    detail: str
    field: str | None
    raw: bytes
    source: Source
