"""One contract, two runners: the Faust worker and the benchmark's hand-rolled reference loop.

Both drive the same path of a batch (intake → prepare → write-behind → commit
→ sink); only what feeds it differs (Faust's consumer, or a plain aiokafka
``getmany`` loop with static partitions). The benchmark compares their rates,
which only means something if they do the same job: each scenario runs
through each runner, and each must leave exactly the tables the generator
expects (computed independently of the code under test), with every process
stopping cleanly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.ops.runner import stop_worker
from pipeline.settings import Settings
from pipeline.sink.reconcile import wait_until_processed
from producers.generate import LoadOptions
from tests.conftest import Workers
from tests.integration.test_end_to_end import _publish, assert_invariants
from tools.reference import start_reference

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Scenario:
    load: LoadOptions
    processes: int  # runners sharing the partitions


SCENARIOS = {
    # Both kinds, duplicates, non-JSON and schema-invalid messages, late events.
    "single-event messages": Scenario(LoadOptions(count=5_000, seed=3, hours=2), 1),
    # Invalid elements inside envelopes; two processes split the partitions.
    "envelopes, two processes": Scenario(
        LoadOptions(count=8_000, envelope_size=20, seed=5, hours=2), 2
    ),
}


@pytest.mark.parametrize("runner", ["faust worker", "reference loop"])
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_each_runner_does_the_same_job(
    settings: Settings, workers: Workers, tmp_path: Path, runner: str, name: str
) -> None:
    scenario = SCENARIOS[name]
    n = scenario.processes
    if runner == "faust worker":
        procs = [workers.start().proc for _ in range(n)]
    else:
        procs = [start_reference(settings, tmp_path / f"ref-{i}.log", i, n) for i in range(n)]
    try:
        workload, receipt = await _publish(settings, scenario.load)
        await wait_until_processed(
            settings.require_database_url(), settings.events_topic, receipt.end_offsets, 120
        )
        await assert_invariants(settings, workload)
    finally:
        codes = [stop_worker(p, timeout=30) for p in procs]
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("*.log")))
    assert codes == [0] * n, logs
