"""Valid events the hostile-input tests start from (and then break on purpose)."""

from __future__ import annotations

from typing import Any

PRODUCT: dict[str, Any] = {
    "event_name": "e",
    "channel": "web",
    "user_id": "u",
    "timestamp": 1_700_000_000,
}
AGENT: dict[str, Any] = {
    "event_version": "v0",
    "event_id": "0b9f3c3e-8d0c-4f5e-9a7e-2f1d1c0b9a8e",
    "event_type": "run.completed",
    "occurred_at": "2023-11-14T22:13:20Z",
    "tenant": {"tenant_id": "t", "workspace_id": "w", "project_id": "p"},
    "run": {"agent_id": "a", "workflow_id": "f", "run_id": "r", "status": "ok"},
    "trace": {"trace_id": "x", "span_id": "y"},
}
