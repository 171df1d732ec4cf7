"""Chaos on the network: PostgreSQL unreachable for 12 s, the broker unreachable for 20 s.

Both outages are made by cutting a TCP path through a FaultProxy the test owns
(faultproxy.py): nothing is restarted. For the broker, a dedicated broker (Tansu, or
Apache Kafka with ``advertised.listeners`` set to the proxy) advertises the proxy's
address, so the workers AND the producer reach it only through the proxy and come
back through it after the cut; on Kafka the cut outlasts the session timeout, so the
group evicts the workers and they rejoin. Both run on both brokers. The workers must
stay alive through the outage, retry, and resume; at the end the invariants hold exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from producers.generate import LoadOptions, build_workload
from tests.chaos.chaoslib import (
    ProgressMonitor,
    ProxiedBroker,
    PublishLog,
    accept_oversized,
    dead_letter_digests,
    durable_reached,
    expected_dead_letters,
    first_log_after,
    log_records,
    make_poison,
    mix_poison,
    problems,
    publish_workload_chunks,
    read_topic,
    record,
    start_worker,
    wait_group_settled,
    wait_processed,
)
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.faultproxy import Mode as CutMode
from tests.conftest import Workers, wait_for
from tests.integration.test_end_to_end import assert_invariants

pytestmark = pytest.mark.chaos

COUNT = 20_000
RATE = 3_500.0
PARTITIONS = 6
OUTAGE_SECONDS = 20.0
# Longer than the sink's longest backoff (10 s in the tests): retries fall inside the
# outage and after it. Run on both brokers: a worker stuck in database retries must
# keep its group membership on Apache Kafka too.
DB_OUTAGE_SECONDS = 12.0
PROCESS_TIMEOUT = 120.0
RECOVERY_BOUND = 30.0  # seconds from restore until the durable offsets move again


@pytest.mark.brokers
@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
async def test_database_unreachable_for_12s(
    settings: Settings, workers: Workers, db_proxy: tuple[FaultProxy, str], mode: CutMode
) -> None:
    """refuse: PostgreSQL down (connections reset at once, so the sink's backoff is
    what paces recovery); blackhole: a network partition (connections hang unanswered
    until the path heals, when they are reset)."""
    proxy, dsn_via_proxy = db_proxy
    dsn = settings.require_database_url()  # the test's own view, not through the proxy
    group = [start_worker(workers, DATABASE_URL=dsn_via_proxy) for _ in range(2)]
    await wait_group_settled(group, PARTITIONS, timeout=90)
    workload = build_workload(LoadOptions(count=COUNT, seed=303, hours=3), PARTITIONS)

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        publishing = asyncio.create_task(publish_workload_chunks(settings, workload, rate=RATE))
        await wait_for(durable_reached(mon, COUNT * 0.25), 90, "a quarter of the load durable")
        proxy.cut(mode)
        t_cut = time.time()
        await asyncio.sleep(2.0)  # a transaction in flight at the cut may still commit
        frozen = mon.total()
        await asyncio.sleep(DB_OUTAGE_SECONDS - 2.0)  # hold the outage
        during = mon.total()
        alive_during = [w.proc.poll() is None for w in group]
        proxy.restore()
        t_restore = time.time()
        published = await publishing
        final = published.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    record(
        f"3 PostgreSQL cut {DB_OUTAGE_SECONDS:.0f}s ({mode}, {settings.broker_profile})",
        durable_at_cut=sum(mon.at(t_cut).values()),
        restore_to_first_advance=mon.first_advance(t_restore, final, final, need="any"),
        restore_to_all_partitions_advance=mon.first_advance(t_restore, final, final),
        restore_to_all_processed=t_done - t_restore,
        total_processing=t_done - t0,
        proxy=str(proxy.stats),
    )
    assert alive_during == [True, True], "a worker exited during the database outage"
    assert during == frozen, "the durable offsets moved while PostgreSQL was unreachable"
    hit = proxy.stats.torn_down + proxy.stats.refused + proxy.stats.blackholed
    assert hit > 0, "the cut hit no connection"
    retried = [r for w in group for r in log_records(w) if "retry" in str(r.get("msg"))]
    assert retried, "no worker logged a retry while PostgreSQL was unreachable"
    await assert_invariants(settings, workload)
    for w in group:
        assert w.proc.poll() is None, w.tail()
        assert not [p for p in problems(w) if "Traceback" in p or "critical" in p], w.tail()
    first = mon.first_advance(t_restore, final, final, need="any")
    assert first is not None and first < RECOVERY_BOUND


@pytest.mark.brokers
async def test_broker_unreachable_for_20s(
    settings: Settings, workers: Workers, proxied_broker: ProxiedBroker
) -> None:
    via_proxy = settings.with_overrides(kafka_bootstrap_servers=proxied_broker.bootstrap)
    await ensure_topics(via_proxy)
    if settings.broker_profile == "kafka":  # the poison holds messages past Kafka's 1 MB
        await accept_oversized(via_proxy, 3 * settings.max_message_bytes)
    dsn = settings.require_database_url()
    env = {"KAFKA_BOOTSTRAP_SERVERS": proxied_broker.bootstrap}
    group = [start_worker(workers, **env) for _ in range(2)]
    await wait_group_settled(group, PARTITIONS, timeout=90)
    # Valid events from the generator, bad ones with known reasons: a publish cut
    # mid-flight may be retried and land twice, so the dead letters are checked
    # against what the topic really holds.
    opts = LoadOptions(count=COUNT, seed=404, hours=3, invalid_rate=0.0)
    workload = build_workload(opts, PARTITIONS)
    poison = make_poison(400, PARTITIONS, seed=404)
    mix_poison(workload, poison, seed=404)
    proxy = proxied_broker.proxy

    log = PublishLog()

    async with ProgressMonitor(dsn, settings.events_topic) as mon:
        t0 = time.time()
        publishing = asyncio.create_task(
            publish_workload_chunks(via_proxy, workload, RATE, retry_for=90, log=log)
        )
        await wait_for(durable_reached(mon, COUNT * 0.25), 90, "a quarter of the load durable")
        proxy.cut("refuse")
        t_cut = time.time()
        # What the workers could have fetched before the cut: at most what the
        # broker had acknowledged (plus a chunk in flight). Offsets past these can
        # only be read after the restore.
        before_cut = dict(log.receipt.end_offsets)
        await asyncio.sleep(OUTAGE_SECONDS)
        alive_during = [w.proc.poll() is None for w in group]
        proxy.restore()
        t_restore = time.time()
        published = await publishing
        final = published.receipt.end_offsets
        await wait_processed(settings, final, PROCESS_TIMEOUT, workers.started)
        t_done = time.time()

    first = mon.first_past(t_restore, before_cut, final, need="any")
    rejoined = [first_log_after(w, "partitions assigned", t_restore) for w in group]
    values = await read_topic(proxied_broker.bootstrap, settings.events_topic, final)
    record(
        f"4 broker cut 20s ({settings.broker_profile})",
        durable_at_cut=sum(mon.at(t_cut).values()),
        acknowledged_at_cut=sum(before_cut.values()),
        durable_at_restore=sum(mon.at(t_restore).values()),
        restore_to_reassigned=max((t - t_restore for t in rejoined if t), default=None),
        restore_to_first_advance_past_cut=first,
        restore_to_all_partitions_past_cut=mon.first_past(t_restore, before_cut, final),
        restore_to_all_processed=t_done - t_restore,
        total_processing=t_done - t0,
        publish_retries=len(published.failures),
        records_in_topic=len(values),
        records_planned=workload.messages,
        proxy=str(proxy.stats),
    )
    assert alive_during == [True, True], "a worker exited during the broker outage"
    assert proxy.stats.torn_down > 0, "the cut hit no connection"
    # Every bad message the broker holds (once or, after a retried publish, more
    # often) is a dead letter with its reason; every planned one is there.
    in_topic = Counter(values)
    missing = [p.value[:60] for p in poison if in_topic[p.value] == 0]
    assert not missing, f"acknowledged bad messages missing from the topic: {missing[:5]}"
    expected = expected_dead_letters(poison, in_topic)
    assert await dead_letter_digests(dsn) == expected
    workload.invalid = Counter()
    for (reason, _), n in expected.items():
        workload.invalid[reason] += n
    await assert_invariants(settings, workload)
    for w in group:
        assert w.proc.poll() is None, w.tail()
    assert first is not None and first < RECOVERY_BOUND
