"""Ingestion jobs: the row the gateway writes before publishing, and what it reads back.

The contract with the worker's sink (migrations/0002_ingestion_jobs.sql): the
gateway inserts ``ingestion_jobs`` with ``accepted`` = the number of events,
then publishes them; the sink keeps ``stored``, ``duplicates`` and
``dead_lettered`` exact in the same transaction as the events and tags each
stored event with ``raw_events.ingestion_job_id``.

Idempotency: ``(tenant_id, idempotency_key)`` is unique. The same key with the
same body (SHA-256 of its canonical JSON) is the same job and publishes
nothing again; the same key with another body is a 409.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from producers.gateway import queries
from producers.gateway.http import HttpError, error
from producers.gateway.ingest import Ingestion

__all__ = [
    "JobClaim",
    "check_idempotency_key",
    "claim_job",
    "job_results",
    "job_status",
    "parse_job_id",
    "status_of",
]

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True, slots=True)
class JobClaim:
    job_id: str
    created: bool  # False: an earlier request with this key and body made the job


def parse_job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise HttpError(400, [error("jobId", "must be a UUID")]) from None


def check_idempotency_key(raw: str | None) -> str | None:
    if raw is None:
        return None
    if not 0 < len(raw) <= MAX_IDEMPOTENCY_KEY or not raw.isprintable():
        raise HttpError(
            400,
            [error("Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters")],
        )
    return raw


async def claim_job(
    conn: asyncpg.Connection, job: Ingestion, idempotency_key: str | None, sha256: str
) -> JobClaim:
    """Insert the job row, or find the earlier job of this idempotency key (409 if its
    body differed)."""
    inserted = await conn.fetchval(
        queries.INSERT_JOB,
        uuid.UUID(job.job_id),
        job.tenant_id,
        idempotency_key,
        sha256,
        len(job.events),
    )
    if inserted is not None:
        return JobClaim(str(inserted), True)
    earlier = await conn.fetchrow(queries.SELECT_JOB_BY_KEY, job.tenant_id, idempotency_key)
    if earlier is None:  # deleted in between: rare enough to ask for a retry
        raise HttpError(409, [error("Idempotency-Key", "is being reused concurrently; retry")])
    if earlier["request_sha256"] != sha256:
        raise HttpError(
            409,
            [error("Idempotency-Key", "was already used with a different request body")],
        )  # no job id: the earlier request may be another caller's
    return JobClaim(str(earlier["job_id"]), False)


def status_of(accepted: int, done: int) -> str:
    if done == 0:
        return "accepted"
    return "completed" if done >= accepted else "processing"


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def job_status(
    conn: asyncpg.Connection, job_id: uuid.UUID, tenants: frozenset[str] | None
) -> dict[str, Any]:
    """The job's counts; 404 when there is none, or its tenant is not in ``tenants``.

    ``tenants`` None: every tenant. A job of another tenant is answered exactly
    as a job that does not exist, so its id tells a caller nothing.
    """
    row = await conn.fetchrow(queries.SELECT_JOB, job_id)
    if row is None or (tenants is not None and row["tenant_id"] not in tenants):
        raise HttpError(404, [error("jobId", "no such ingestion job")])
    done = row["stored"] + row["duplicates"] + row["dead_lettered"]
    return {
        "jobId": str(row["job_id"]),
        "tenantId": row["tenant_id"],
        "status": status_of(row["accepted"], done),
        "accepted": row["accepted"],
        "processed": done,
        "stored": row["stored"],
        "duplicates": row["duplicates"],
        "deadLettered": row["dead_lettered"],
        "createdAt": _iso(row["created_at"]),
        "updatedAt": _iso(row["updated_at"]),
    }


async def job_results(
    conn: asyncpg.Connection, job_id: uuid.UUID, tenants: frozenset[str] | None
) -> dict[str, Any]:
    status = await job_status(conn, job_id, tenants)
    rows = await conn.fetch(queries.JOB_RESULTS, job_id)
    return {
        "jobId": status["jobId"],
        "tenantId": status["tenantId"],
        "status": status["status"],
        "totalEvents": sum(r["events"] for r in rows),
        "results": [
            {
                "type": r["event_name"],
                "count": r["events"],
                "firstEventAt": _iso(r["first_event_at"]),
                "lastEventAt": _iso(r["last_event_at"]),
            }
            for r in rows
        ],
    }
