"""The benchmark's hand-rolled reference loop does the worker's job exactly.

The benchmark compares the Faust worker's rate with ``python -m pipeline
reference``; that comparison only means something if the reference does the
same job. Two reference processes share the partitions of a mixed load
(duplicates, invalid messages, both event kinds, envelopes) and the same
invariants hold as for the worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.ops.runner import stop_worker
from pipeline.settings import Settings
from pipeline.sink.reconcile import wait_until_processed
from producers.generate import LoadOptions
from tests.integration.test_end_to_end import _publish, assert_invariants
from tools.reference import start_reference

pytestmark = pytest.mark.integration


async def test_two_reference_loops_keep_the_invariants(settings: Settings, tmp_path: Path) -> None:
    procs = [start_reference(settings, tmp_path / f"reference-{i}.log", i, 2) for i in range(2)]
    try:
        workload, receipt = await _publish(
            settings, LoadOptions(count=8_000, envelope_size=20, seed=5, hours=2)
        )
        await wait_until_processed(
            settings.require_database_url(), settings.events_topic, receipt.end_offsets, 120
        )
        await assert_invariants(settings, workload)
    finally:
        codes = [stop_worker(p, timeout=30) for p in procs]
    logs = "\n".join((tmp_path / f"reference-{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], logs
