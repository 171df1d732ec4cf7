"""Chaos on the worker processes: SIGKILL and restart, scaling 1 -> 3 -> 1, graceful stop.

Each test publishes a generated load (both event kinds, 10% duplicates, 2% invalid
of several kinds, 2% late) at a steady rate while it disturbs the consumer group,
then asserts the invariants exactly: raw tables = the unique valid events, rollups
= GROUP BY of the raw tables = the generator's expected counts, dead letters = the
invalid messages by reason. Progress is read from the durable offsets
(partition_progress), which the sink writes in the same transaction as the events.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from pipeline.settings import Settings
from producers.generate import LoadOptions, build_workload
from tests.chaos.chaoslib import (
    ProgressMonitor,
    PublishLog,
    current_assignment,
    durable_reached,
    first_log_after,
    messages,
    problems,
    publish_workload_chunks,
    record,
    start_worker,
    wait_advanced,
    wait_exit,
    wait_group_settled,
    wait_processed,
)
from tests.conftest import Workers, wait_for
from tests.integration.test_end_to_end import assert_invariants

pytestmark = [pytest.mark.chaos, pytest.mark.brokers]

COUNT = 20_000
RATE = 3_500.0  # events/s
SCALE_RATE = 1_200.0  # events/s: the scaling test needs a longer stream
PARTITIONS = 6
PROCESS_TIMEOUT = 120.0  # seconds until every acknowledged message must be durable
GRACEFUL_EXIT_BOUND = 15.0  # seconds from SIGTERM to exit 0
TAKEOVER_BOUND = 30.0  # seconds from a member leaving until its partitions advance again


async def test_sigkill_one_of_three_then_restart(settings: Settings, workers: Workers) -> None:
    dsn = settings.require_database_url()
    group = [start_worker(workers) for _ in range(3)]
    await wait_group_settled(group, PARTITIONS, timeout=90)
    workload = build_workload(LoadOptions(count=COUNT, seed=101, hours=3), PARTITIONS)
    # The load runs in two legs: the kill falls in the first, the restart starts the
    # second, so the restarted worker joins while there is work to share.
    second_leg = len(workload.batches) * 6 // 10
    log = PublishLog()

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        publishing = asyncio.create_task(
            publish_workload_chunks(settings, workload, RATE, log=log, stop=second_leg)
        )
        await wait_for(durable_reached(mon, COUNT * 0.2), 90, "a fifth of the load durable")
        victim = group[1]
        victim_parts = current_assignment(victim)
        t_kill = time.time()
        victim.kill()
        done_at_kill = mon.total()
        assert done_at_kill < workload.messages, "the worker must die mid-stream"
        survivors = [group[0], group[2]]
        reassigned = await wait_group_settled(survivors, PARTITIONS, timeout=60, since=t_kill)
        await wait_advanced(mon, reassigned, victim_parts, 60, "the takeover", workers.started)
        await publishing
        # Restart the killed worker (as a supervisor would) and go on publishing.
        t_restart = time.time()
        restarted = start_worker(workers)
        publishing = asyncio.create_task(
            publish_workload_chunks(settings, workload, RATE, log=log, start=second_leg)
        )
        rejoined = await wait_group_settled(
            [*survivors, restarted], PARTITIONS, timeout=60, since=t_restart
        )
        await publishing
        final = log.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    takeover = mon.handover(t_kill, reassigned, victim_parts, final)
    own = current_assignment(restarted)
    restart_advance = mon.handover(t_restart, rejoined, own, final)
    record(
        "1 sigkill 1 of 3, restart",
        durable_at_kill=done_at_kill,
        kill_to_reassigned=reassigned - t_kill,
        kill_to_victim_partitions_advance_under_new=takeover,
        restart_to_rejoined=rejoined - t_restart,
        restart_to_its_partitions_advance_under_it=restart_advance,
        restart_longest_stall=mon.longest_stall(t_restart, t_done, final),
        total_processing=t_done - t0,
    )
    await assert_invariants(settings, workload)
    for w in [*survivors, restarted]:
        assert w.proc.poll() is None, w.tail()
    assert takeover is not None and takeover < TAKEOVER_BOUND
    assert restart_advance is not None and restart_advance < TAKEOVER_BOUND


async def test_scale_1_to_3_to_1_under_load(settings: Settings, workers: Workers) -> None:
    dsn = settings.require_database_url()
    first = start_worker(workers)
    await wait_group_settled([first], PARTITIONS, timeout=60)
    workload = build_workload(LoadOptions(count=COUNT, seed=202, hours=3), PARTITIONS)

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        # A slower steady stream (~17 s): both scale steps fall inside it.
        publishing = asyncio.create_task(
            publish_workload_chunks(settings, workload, rate=SCALE_RATE)
        )
        await wait_for(durable_reached(mon, COUNT * 0.1), 90, "a tenth of the load durable")
        t_up = time.time()
        extra = [start_worker(workers), start_worker(workers)]
        up_settled = await wait_group_settled([first, *extra], PARTITIONS, 90, since=t_up)
        moved = set().union(*(current_assignment(w) for w in extra))
        # The new members really work: every partition they got moves on.
        await wait_advanced(
            mon, up_settled, moved, 60, "the new members' progress", workers.started
        )
        t_down = time.time()
        durable_at_down = mon.total()
        for w in extra:
            w.proc.send_signal(signal.SIGTERM)
        exits = await asyncio.gather(*(wait_exit(w, 60) for w in extra))
        down_settled = await wait_group_settled([first], PARTITIONS, 60, since=t_down)
        published = await publishing
        final = published.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    up_handover = mon.handover(t_up, up_settled, moved, final)
    down_handover = mon.handover(t_down, down_settled, moved, final)
    record(
        "2 scale 1->3->1",
        up_to_settled=up_settled - t_up,
        up_to_moved_partitions_advance_under_new=up_handover,
        up_longest_stall=mon.longest_stall(t_up, t_down, final),
        down_exit_seconds=max(s for _, s in exits),
        down_to_settled=down_settled - t_down,
        down_to_handed_back_advance=down_handover,
        down_longest_stall=mon.longest_stall(t_down, t_done, final),
        backlog_at_scale_down=sum(final.values()) - durable_at_down,
        scale_down_while_publishing=t_down < published.finished_at,
        sigterm_to_rebalance_start=_since(first_log_after(first, "rebalancing", t_down), t_down),
        total_processing=t_done - t0,
    )
    await assert_invariants(settings, workload)
    for w, (code, seconds) in zip(extra, exits, strict=True):
        assert code == 0, f"exit {code} after {seconds:.1f}s:\n{w.tail()}"
        assert seconds < GRACEFUL_EXIT_BOUND, f"SIGTERM took {seconds:.1f}s"
    assert first.proc.poll() is None, first.tail()
    assert up_handover is not None and up_handover < TAKEOVER_BOUND
    assert down_handover is not None and down_handover < TAKEOVER_BOUND


async def test_graceful_stop_hands_over(settings: Settings, workers: Workers) -> None:
    dsn = settings.require_database_url()
    stays, leaves = start_worker(workers), start_worker(workers)
    await wait_group_settled([stays, leaves], PARTITIONS, timeout=90)
    workload = build_workload(LoadOptions(count=COUNT, seed=707, hours=3), PARTITIONS)

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        publishing = asyncio.create_task(publish_workload_chunks(settings, workload, rate=RATE))
        await wait_for(durable_reached(mon, COUNT * 0.25), 90, "a quarter of the load durable")
        revoked = current_assignment(leaves)
        t_term = time.time()
        leaves.proc.send_signal(signal.SIGTERM)
        code, exit_seconds = await wait_exit(leaves, 60)
        taken_over = await wait_group_settled([stays], PARTITIONS, 60, since=t_term)
        await wait_advanced(mon, taken_over, revoked, TAKEOVER_BOUND, "takeover", workers.started)
        published = await publishing
        final = published.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    takeover = mon.handover(t_term, taken_over, revoked, final)
    record(
        "7 graceful stop (SIGTERM 1 of 2)",
        sigterm_to_exit=exit_seconds,
        exit_code=code,
        sigterm_to_rebalance_start=_since(first_log_after(stays, "rebalancing", t_term), t_term),
        sigterm_to_reassigned=taken_over - t_term,
        sigterm_to_revoked_partitions_advance_under_new=takeover,
        total_processing=t_done - t0,
    )
    await assert_invariants(settings, workload)
    assert code == 0, f"exit {code}:\n{leaves.tail()}"
    assert exit_seconds < GRACEFUL_EXIT_BOUND, f"SIGTERM took {exit_seconds:.1f}s"
    # The batch in hand is finished and committed, not abandoned (the database is up).
    assert messages(leaves, "batch abandoned") == [], leaves.tail()
    assert problems(leaves) == [], "\n".join(problems(leaves))
    assert takeover is not None and takeover < TAKEOVER_BOUND
    assert stays.proc.poll() is None, stays.tail()


def _since(ts: float | None, start: float) -> float | None:
    return None if ts is None else ts - start
