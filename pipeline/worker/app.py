"""The Faust app factory: topics, the dedup table, durable-offset seeks, the agent.

The data flow, wired in :func:`create_app`: the agent (:func:`_wire_agent`)
hands each take to the ``Intake``, which prepares it (``prepare.py``) and
submits it to the ``WriteBehind``, which commits it (``commit.py``) through the
``Sink``; the ``PartitionBook`` (``partitions.py``) is where each partition
stands. All of these are Faust-free and tested on their own; this module is
the Faust seam's wiring.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import faust
from faust.types import TP

from pipeline.settings import Settings
from pipeline.sink.writer import Sink
from pipeline.topics import DEDUP_TABLE
from pipeline.worker import consumer, delivery
from pipeline.worker.commit import Committer
from pipeline.worker.connections import Runtime
from pipeline.worker.dedup_table import DedupState
from pipeline.worker.intake import Intake
from pipeline.worker.metrics import WorkerMetrics
from pipeline.worker.partitions import PartitionBook
from pipeline.worker.prepare import Preparer
from pipeline.worker.writebehind import WriteBehind

__all__ = ["PipelineApp", "create_app"]

log = logging.getLogger(__name__)

EXIT_FATAL = 70  # EX_SOFTWARE: a supervisor restarts the worker
RECHECK_STOPPED_S = 5.0  # how often stopped partitions look for an operator's reset
TAIL_PROBE_S = 2.0  # how often idle partitions check for a log tail of control markers
# Fault injection for the tests: delay each seek to the durable offsets by this long.
_SEEK_DELAY_S = float(os.environ.get("PIPELINE_TEST_SEEK_DELAY_S", "0") or 0)


class PipelineApp(faust.App):
    """A Faust app whose partitions resume at the offsets PostgreSQL holds."""

    runtime: Runtime
    metrics: WorkerMetrics
    partitions: PartitionBook
    committer: Committer
    write_behind: WriteBehind
    intake: Intake
    _joined = False  # the first assignment was logged

    def _new_transport(self) -> Any:
        return consumer.new_transport(self)  # its Consumer is consumer.DurableConsumer

    async def seek_to_durable(self, only: set[int] | None = None) -> dict[TP, int]:
        """Seek the events topic's assigned partitions to their durable offsets.

        Each partition's baseline is its durable row in PostgreSQL, or the log
        start when it has none; a partition whose durable offset lies outside
        the broker's log is stopped instead (``PartitionBook.stopped``). Runs
        fetched before these seeks are stale (``Preparer.prepare`` drops them).
        """
        kafka: Any = self.consumer
        topic = self.runtime.settings.events_topic
        tps = [
            tp
            for tp in kafka.assignment()
            if tp.topic == topic and (only is None or tp.partition in only)
        ]
        if not tps:
            if only is None:
                self._announce({})  # a standby replica: it owns nothing (yet)
            return {}
        partitions = [tp.partition for tp in tps]
        durable, logs = await self.runtime.assignment_state(partitions)
        starts = self.partitions.on_assigned(partitions, durable, logs)
        offsets = {tp: starts[tp.partition] for tp in tps if tp.partition in starts}
        if _SEEK_DELAY_S:  # fault injection (tests): runs fetched meanwhile are stale
            await asyncio.sleep(_SEEK_DELAY_S)
        # In the consumer's own thread: seeking from this thread races with its
        # fetcher (KeyError in aiokafka's fetcher, a crashed worker).
        epochs = await kafka.seek_durable(offsets)
        self.partitions.on_positioned({tp.partition: e for tp, e in epochs.items()}, starts)
        resume_at = {tp.partition: o for tp, o in offsets.items()}
        if only is None:  # an assignment: one line per rebalance, at the default level
            self._announce(resume_at)
        else:
            log.debug("seeking to durable offsets", extra={"partitions": resume_at})
        return offsets

    def _announce(self, resume_at: dict[int, int]) -> None:
        """Say which partitions this worker owns now, and where each resumes."""
        first, self._joined = not self._joined, True
        log.info(
            "joined consumer group" if first else "partitions assigned",
            extra={
                "group": self.conf.id,
                "topic": self.runtime.settings.events_topic,
                "partitions": dict(sorted(resume_at.items())),
                "stopped": sorted(self.partitions.stopped),
            },
        )

    def on_init_dependencies(self) -> Any:
        services = super().on_init_dependencies()
        # Faust's Monitor sensor records several statistics per message for its
        # web views, which this worker does not serve (/metrics comes from
        # WorkerMetrics): leave it out of the per-message path.
        self.sensors.remove(self.monitor)
        return services

    def on_rebalance_start(self) -> None:
        super().on_rebalance_start()
        # No sensor is left, so the sensors' rebalance state is an empty dict,
        # which Faust reports as "Missing sensor state" at every rebalance.
        if self._rebalancing_sensor_state == {}:
            self._rebalancing_sensor_state = {"no sensors": None}

    async def on_stop(self) -> None:
        # The batch in flight first: Faust's last commit then covers it.
        await self.intake.stop()
        await self.write_behind.wait(timeout=30.0)
        await super().on_stop()
        await self.runtime.close()


def _faust_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "broker": f"kafka://{settings.kafka_bootstrap_servers}",
        "store": "memory://",
        "topic_partitions": settings.events_partitions,
        "topic_allow_declare": False,  # `python -m pipeline topics` creates them
        "consumer_auto_offset_reset": "earliest",
        "datadir": str(Path(settings.data_dir) / f"{settings.app_id}-{os.getpid()}"),
        "web_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        # The events topic comes in runs of records (delivery.py): at most
        # SINK_BATCH_MAX records per fetch handed over, so per run, and about
        # WORKER_BUFFER_MESSAGES records in runs fetched ahead of the agent.
        "broker_max_poll_records": settings.batch_max,
        "stream_buffer_maxsize": max(2, settings.buffer_messages // settings.batch_max),
    }
    credentials = _credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    if settings.is_tansu:  # measured settings (docs/design.md, "Brokers")
        options.update(
            broker_session_timeout=6.0,
            broker_heartbeat_interval=1.0,
            producer_max_batch_size=1,
        )
    if settings.session_timeout_seconds is not None:
        options.update(
            broker_session_timeout=settings.session_timeout_seconds,
            broker_heartbeat_interval=max(settings.session_timeout_seconds / 6, 0.5),
        )
    return options


def _credentials(settings: Settings) -> Any:
    sec = settings.kafka_security
    kwargs = sec.aiokafka_kwargs()
    if sec.protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            mechanism=kwargs["sasl_mechanism"],
            ssl_context=kwargs.get("ssl_context"),
        )
    if sec.protocol == "SSL":
        return faust.SSLCredentials(kwargs["ssl_context"])
    return None


def create_app(settings: Settings) -> PipelineApp:
    consumer.check_faust_version()
    settings.require_database_url()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    app = PipelineApp(settings.app_id, **_faust_options(settings))
    app.runtime = Runtime(settings)
    topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    table = app.Table(
        DEDUP_TABLE,
        default=None,
        partitions=settings.events_partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
    )
    # The path of a batch (intake.py): prepare -> write-behind -> commit -> sink.
    app.metrics = metrics = WorkerMetrics()
    app.partitions = book = PartitionBook(DedupState(table, settings.dedup_capacity), metrics)
    preparer = Preparer(settings, book, metrics, refetch=app.runtime.broker_log.read)
    sink = Sink(app.runtime.pool, settings.db_retry_max_seconds)
    app.committer = Committer(sink, book, app.runtime.dlq.publish, metrics)
    app.write_behind = WriteBehind(app.committer, on_fatal=_die, lanes=settings.sink_lanes)
    app.intake = Intake(
        settings,
        preparer,
        app.write_behind,
        lambda partitions: _abandon_check(app, partitions, settings.events_topic),
        on_fatal=_die,
    )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: PipelineApp, revoked: set[TP], **_: Any) -> None:
        # Let the batch in flight commit before the hand-over (it gives up on
        # its own if the sink is retrying through an outage).
        await sender.write_behind.wait(timeout=2.0)
        sender.partitions.on_revoked(
            tp.partition for tp in revoked if tp.topic == topic.get_topic_name()
        )

    @app.timer(interval=RECHECK_STOPPED_S)  # type: ignore[untyped-decorator]
    async def resume_reset_partitions() -> None:
        # A stopped partition (durable offset outside the log) resumes once an
        # operator's reset-offsets put its durable offset back in range.
        if app.partitions.stopped:
            await app.seek_to_durable(only=set(app.partitions.stopped))

    @app.timer(interval=TAIL_PROBE_S)  # type: ignore[untyped-decorator]
    async def probe_idle_tails() -> None:
        # Trailing control markers (upstream transactions) hold no record: the
        # durable offset would stop short of the log end forever (PartitionBook.tail_probes).
        if app.should_stop or not app.intake.idle or app.write_behind.in_flight:
            return
        try:
            probes = app.partitions.tail_probes(_fetched_through(app, settings.events_topic))
        except Exception as exc:  # a helper: it must never stop the worker
            log.warning("tail probe skipped", extra={"error": repr(exc)})
            return
        if probes:
            await app.intake.put(list(probes))

    _wire_agent(app, topic, settings)
    return app


def _fetched_through(app: PipelineApp, topic: str) -> dict[int, int]:
    """Per assigned partition, how far the consumer has fetched (its position)."""
    kafka: Any = app.consumer
    ends: dict[int, int] = {}
    for tp in kafka.assignment():
        if tp.topic == topic and (position := kafka.fetch_position(tp)) is not None:
            ends[tp.partition] = position
    return ends


def _wire_agent(app: PipelineApp, topic: faust.TopicT, settings: Settings) -> None:
    @app.agent(topic, name="process-events")  # type: ignore[arg-type]
    async def process_events(stream: faust.Stream[bytes]) -> None:
        # A fetch hands over at most one run per partition (delivery.py), of at
        # most SINK_BATCH_MAX records in all: a take of that many runs is about
        # one fetch, or what came within SINK_BATCH_SECONDS.
        takes = stream.take_events(settings.events_partitions, settings.batch_seconds)
        async for events in takes:
            # The runs of records as fetched (delivery.RecordRun): planning reads
            # their records and what their fetch proved.
            await app.intake.put([cast(delivery.RecordRun, e.message) for e in events])


def _abandon_check(app: PipelineApp, partitions: set[int], topic: str) -> Callable[[], bool]:
    def abandon() -> bool:
        if app.should_stop:
            return True
        owned = {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}
        return not partitions <= owned

    return abandon


def _die(exc: BaseException) -> None:
    # Exit before take_events' `finally` can ack the batch: nothing of it is
    # durable, so nothing of it may be committed.
    log.critical("fatal sink error, exiting", extra={"error": str(exc)})
    logging.shutdown()
    os._exit(EXIT_FATAL)
