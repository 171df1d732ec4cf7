"""A real Apache Kafka 4.x broker in KRaft mode, from jars that Maven fetches (``kafka_jars.py``).

:func:`start_kafka` runs one combined broker+controller node (``process.roles=broker,
controller``) on 127.0.0.1, and :func:`start_kafka_cluster` runs ``n`` of them sharing one
static voter set. Each node gets, in its data folder:

* ``server.properties`` (written by :func:`write_server_properties`),
* ``log4j2.properties`` (everything to stdout, i.e. to the node's log file),
* ``cluster.id`` (a cluster's lives in the cluster's base folder),
* ``logs/`` (``log.dirs``: topic data and the KRaft metadata log).

The storage is formatted (``kafka.tools.StorageTool format``) only when ``logs/`` has no
``meta.properties`` yet, so stopping and starting a node on the same data folder keeps its
topics and committed offsets.

Choices worth knowing:

* The quorum is *static* (``controller.quorum.voters``, kraft.version 0): the voters are
  fixed by the config and need no ``--standalone`` / ``--initial-controllers`` at format
  time, and a single node may even come back on other ports. A cluster node restarted with
  :func:`restart_kafka` keeps its ports, since the other voters know it by them.
* ``auto.create.topics.enable=false``: like a production cluster, topics must be created
  (the pipeline creates its own with ``pipeline.topics.ensure_topics``); a producer to a
  missing topic fails rather than silently making a 1-partition topic. Pass
  ``extra_config={"auto.create.topics.enable": "true"}`` to change it.
* The internal topics are small (``__consumer_offsets`` and ``__transaction_state`` have 5
  partitions, not 50) so that the first group or transaction does not wait for 50
  partitions on a 2-core machine; their replication factor is ``min(3, nodes)`` and the
  transaction log's min ISR ``min(2, nodes)``.
* Heap: 512 MiB for a single node, 384 MiB each for cluster nodes (``-Xms`` = ``-Xmx``).

"Ready" means: the node answers a Metadata request (aiokafka's admin ``list_topics``), sees
every broker of its cluster, and, once ``__consumer_offsets`` exists, every partition of it
has been loaded by its group coordinator (an OffsetFetch for a probe group per partition
answers without error). The last step matters with aiokafka 0.14: during that load a broker
answers OffsetFetch v3 with COORDINATOR_LOAD_IN_PROGRESS as a *top-level* error and no
partitions, which aiokafka reads as "no committed offset" (and then ``auto_offset_reset``).

Every function here blocks (the JVM takes seconds to start); from async code call them
with ``asyncio.to_thread``. The readiness check runs aiokafka in an event loop of its own,
on a worker thread when the calling thread already runs one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import signal
import struct
import subprocess
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.commit import OffsetFetchRequest

from pipeline.errors import KafkaBrokerError
from pipeline.ops.kafka_jars import (
    ensure_jars,
    find_java,
    storage_tool,
)
from pipeline.ops.procs import HOST, alive, free_ports, spawn_detached, tail, tail_text

__all__ = [
    "CLUSTER_HEAP_MB",
    "DEFAULT_HEAP_MB",
    "READY_SECONDS",
    "KafkaBroker",
    "cluster_bootstrap",
    "restart_cluster_node",
    "restart_kafka",
    "start_kafka",
    "start_kafka_cluster",
    "stop_kafka_cluster",
    "write_server_properties",
]

READY_SECONDS = 60.0
DEFAULT_HEAP_MB = 512
CLUSTER_HEAP_MB = 384
PROBE_CLIENT = "kafka-broker-ready"
OFFSETS_TOPIC = "__consumer_offsets"
# What kafka-run-class.sh passes, less what does not matter here.
JVM_FLAGS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
LOG4J2 = """\
# Written by pipeline/ops/kafka_broker.py: everything to stdout, i.e. the node's log file.
status = warn
# Kafka's own shutdown hook logs its controlled shutdown: log4j must not stop before it.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

_T = TypeVar("_T")


# ---------------------------------------------------------------------------- config


def write_server_properties(
    data_dir: Path,
    *,
    node_id: int,
    port: int,
    controller_port: int,
    voters: Mapping[int, int],
    extra_config: Mapping[str, str] | None = None,
) -> Path:
    """Write ``data_dir/server.properties`` for one combined broker+controller node.

    ``voters`` maps every controller's node id to its controller port (all on 127.0.0.1);
    it must include ``node_id``. Replication of the internal topics follows its size.
    """
    if voters.get(node_id) != controller_port:
        raise ValueError(f"voters {dict(voters)} must map node {node_id} to {controller_port}")
    size = len(voters)
    replicas = str(min(3, size))
    min_isr = str(min(2, size))
    props: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        "controller.quorum.voters": ",".join(
            f"{vid}@{HOST}:{vport}" for vid, vport in sorted(voters.items())
        ),
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": min_isr,
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "4",
        "num.recovery.threads.per.data.dir": "1",
        "log.flush.interval.messages": "9223372036854775807",
    }
    props.update(extra_config or {})
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "server.properties"
    lines = ["# Written by pipeline/ops/kafka_broker.py", *(f"{k}={v}" for k, v in props.items())]
    path.write_text("\n".join(lines) + "\n")
    (data_dir / "log4j2.properties").write_text(LOG4J2)
    return path


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes in URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _cluster_id(path: Path) -> str:
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    cluster_id = _new_cluster_id()
    path.write_text(cluster_id + "\n")
    return cluster_id


def _format_storage(java: str, lib: Path, data_dir: Path, cluster_id: str) -> None:
    """Format ``log.dirs`` unless it already is (a restart keeps its topics)."""
    if (data_dir / "logs" / "meta.properties").is_file():
        return
    cmd = [
        java,
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        "-cp",
        f"{lib}/*",
        storage_tool(lib),
        "format",
        f"--cluster-id={cluster_id}",  # an id may start with "-": never a separate word
        "--config",
        str(data_dir / "server.properties"),
        "--ignore-formatted",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as e:
        raise KafkaBrokerError(f"formatting {data_dir} took over {e.timeout} s") from e
    if done.returncode != 0:
        raise KafkaBrokerError(
            f"formatting the Kafka storage in {data_dir} failed (exit {done.returncode}):\n"
            + tail_text(done.stdout + done.stderr, 20)
        )


# ---------------------------------------------------------------------------- processes


@dataclass
class KafkaBroker:
    """One running Kafka node (broker+controller), started by this module."""

    pid: int
    port: int
    controller_port: int
    bootstrap: str
    data_dir: Path
    log_file: Path
    node_id: int = 1
    heap_mb: int = DEFAULT_HEAP_MB
    cluster_size: int = 1
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def exit_code(self) -> int | None:
        """The JVM's exit status once it has exited (143 after a SIGTERM, -9 after a
        SIGKILL); None while it runs or when this process did not start it."""
        return None if self._process is None else self._process.poll()

    def alive(self) -> bool:
        """Whether the JVM is still running (a zombie counts as gone)."""
        if self._process is not None:
            return self._process.poll() is None
        return alive(self.pid)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown), wait up to ``timeout`` s, then SIGKILL."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would; returns once the process is gone."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        if not self.alive():
            self._reap()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if self._wait_gone(timeout):
            return
        if sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            if self._wait_gone(10.0):
                return
        raise KafkaBrokerError(f"Kafka node {self.node_id} (pid {self.pid}) did not exit")

    def _wait_gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        self._reap()
        return True

    def _reap(self) -> None:
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(1.0)


def _spawn(
    java: str, lib: Path, data_dir: Path, log_file: Path, heap_mb: int
) -> subprocess.Popen[bytes]:
    props = data_dir / "server.properties"
    cmd = [
        java,
        f"-Xmx{heap_mb}m",
        f"-Xms{heap_mb}m",
        *JVM_FLAGS,
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        f"{lib}/*",
        "kafka.Kafka",
        str(props),
    ]
    return spawn_detached(cmd, log_file, cwd=data_dir)


def _run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion in a loop of its own, even if this thread runs one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-ready") as pool:
        return pool.submit(asyncio.run, coro).result()


async def _answers(node: KafkaBroker) -> str | None:
    """None once ``node`` serves metadata, sees all its cluster's brokers and every group
    coordinator has loaded its offsets; else why not."""
    host, _, port = node.bootstrap.rpartition(":")
    try:  # a plain connect first: aiokafka logs an ERROR for every refused bootstrap
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 2.0)
    except (OSError, TimeoutError) as e:
        return f"not listening: {e}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=node.bootstrap, request_timeout_ms=5000, client_id=PROBE_CLIENT
    )
    try:
        await admin.start()
        topics = await admin.list_topics()  # internal ones included
        cluster = await admin.describe_cluster()
        seen = len(cluster["brokers"])
        if seen < node.cluster_size:
            return f"sees {seen} of {node.cluster_size} brokers"
    except (KafkaError, OSError, TimeoutError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    if OFFSETS_TOPIC not in topics:
        return None  # no group has committed yet: nothing to load
    return await _offsets_loaded(node)


def _java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()``: over UTF-16 code units, in 32-bit signed arithmetic."""
    data = text.encode("utf-16-be")
    value = 0
    for (unit,) in struct.iter_unpack(">H", data):
        value = (31 * value + unit) & 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _offsets_partition(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition of ``group``, as Kafka computes it."""
    code = _java_string_hash(group)
    return (0 if code == -(1 << 31) else abs(code)) % partitions


def _probe_groups(partitions: int) -> list[str]:
    """One (unused) group id per ``__consumer_offsets`` partition."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < partitions:
        group = f"{PROBE_CLIENT}-{index}"
        found.setdefault(_offsets_partition(group, partitions), group)
        index += 1
    return [found[p] for p in range(partitions)]


async def _offsets_loaded(node: KafkaBroker) -> str | None:
    """None unless a ``__consumer_offsets`` partition is still loading.

    A restarted broker answers OffsetFetch with COORDINATOR_LOAD_IN_PROGRESS in the
    response's top-level error code (and no partitions) until it has read its part of
    ``__consumer_offsets``. aiokafka 0.14 ignores that top-level code and reports "no
    committed offset", so a consumer joining then would apply ``auto_offset_reset``: we
    are not ready before every partition has loaded.
    """
    props = _read_properties(node.data_dir / "server.properties")
    partitions = int(props.get("offsets.topic.num.partitions", "50"))
    client = AIOKafkaClient(
        bootstrap_servers=node.bootstrap, request_timeout_ms=5000, client_id=PROBE_CLIENT
    )
    try:
        await client.bootstrap()
        for group in _probe_groups(partitions):
            coordinator = await client.coordinator_lookup(0, group)
            response = await client.send(coordinator, OffsetFetchRequest(group, []))
            if response.error_code:
                return f"the coordinator of {group} answers error {response.error_code}"
    except (KafkaError, OSError, TimeoutError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    return None


async def _wait_ready(nodes: Sequence[KafkaBroker], deadline: float) -> None:
    pending = list(nodes)
    why: dict[int, str] = {}
    while pending:
        for node in list(pending):
            if not node.alive():
                raise KafkaBrokerError(
                    f"Kafka node {node.node_id} exited before it was ready; "
                    f"the end of {node.log_file}:\n{tail(node.log_file, 40)}"
                )
            reason = await _answers(node)
            if reason is None:
                pending.remove(node)
            else:
                why[node.node_id] = reason
        if not pending:
            return
        if time.monotonic() > deadline:
            node = pending[0]
            raise KafkaBrokerError(
                f"Kafka node {node.node_id} at {node.bootstrap} was not ready in time "
                f"(last: {why.get(node.node_id)}); the end of {node.log_file}:\n"
                f"{tail(node.log_file, 40)}"
            )
        await asyncio.sleep(0.25)


def _launch(nodes_spec: Sequence[_Spec], ready_timeout: float) -> list[KafkaBroker]:
    """Start every node (a quorum needs a majority up at once), then wait for all."""
    java = find_java()
    lib = ensure_jars()
    deadline = time.monotonic() + ready_timeout
    started: list[KafkaBroker] = []
    try:
        for spec in nodes_spec:
            props = _read_properties(spec.data_dir / "server.properties")
            _format_storage(java, lib, spec.data_dir, spec.cluster_id)
            proc = _spawn(java, lib, spec.data_dir, spec.log_file, spec.heap_mb)
            started.append(
                KafkaBroker(
                    pid=proc.pid,
                    port=spec.port,
                    controller_port=spec.controller_port,
                    bootstrap=f"{HOST}:{spec.port}",
                    data_dir=spec.data_dir,
                    log_file=spec.log_file,
                    node_id=int(props["node.id"]),
                    heap_mb=spec.heap_mb,
                    cluster_size=spec.cluster_size,
                    _process=proc,
                )
            )
        _run_async(_wait_ready(started, deadline))
    except BaseException:
        for node in started:
            with contextlib.suppress(KafkaBrokerError):
                node.kill()
        raise
    return started


@dataclass(frozen=True)
class _Spec:
    data_dir: Path
    log_file: Path
    port: int
    controller_port: int
    heap_mb: int
    cluster_id: str
    cluster_size: int


def start_kafka(
    data_dir: Path,
    log_file: Path,
    port: int | None = None,
    controller_port: int | None = None,
    *,
    node_id: int = 1,
    heap_mb: int = DEFAULT_HEAP_MB,
    ready_timeout: float = READY_SECONDS,
    extra_config: Mapping[str, str] | None = None,
) -> KafkaBroker:
    """Start a single-node KRaft Kafka (broker+controller) on 127.0.0.1.

    Ports default to free ones. ``data_dir`` gets ``server.properties`` (rewritten on each
    call), the cluster id and the data; the storage is formatted only the first time, so a
    later call on the same ``data_dir`` finds its topics and offsets again. Returns once the
    broker answers a metadata request, or raises :class:`KafkaBrokerError` with the end of
    ``log_file`` if it exits or ``ready_timeout`` passes.
    """
    data_dir = data_dir.resolve()
    if port is None or controller_port is None:
        free = free_ports(2)
        port = free[0] if port is None else port
        controller_port = free[1] if controller_port is None else controller_port
    write_server_properties(
        data_dir,
        node_id=node_id,
        port=port,
        controller_port=controller_port,
        voters={node_id: controller_port},
        extra_config=extra_config,
    )
    spec = _Spec(
        data_dir=data_dir,
        log_file=log_file.resolve(),
        port=port,
        controller_port=controller_port,
        heap_mb=heap_mb,
        cluster_id=_cluster_id(data_dir / "cluster.id"),
        cluster_size=1,
    )
    return _launch([spec], ready_timeout)[0]


def start_kafka_cluster(
    base_dir: Path,
    n: int = 3,
    *,
    heap_mb: int = CLUSTER_HEAP_MB,
    ready_timeout: float = 2 * READY_SECONDS,
    extra_config: Mapping[str, str] | None = None,
) -> list[KafkaBroker]:
    """Start ``n`` KRaft nodes, each broker+controller, with node ids 1..n.

    Node ``i`` lives in ``base_dir/node-i`` and logs to ``base_dir/node-i.log``; they share
    the cluster id in ``base_dir/cluster.id`` and a static voter set. Internal topics are
    replicated ``min(3, n)`` times. Returns once every node answers and sees all ``n``
    brokers. Restart one with :func:`restart_cluster_node`; stop all with
    :func:`stop_kafka_cluster` (about 6 s: the last KRaft voter waits 5 s for a quorum).

    A SIGKILLed leader is replaced once the controller fences it, after
    ``broker.session.timeout.ms`` (9 s by default: an acks=all send waited 8-11 s here);
    ``extra_config={"broker.session.timeout.ms": "3000", "broker.heartbeat.interval.ms":
    "500"}`` brings that to about 5 s.
    """
    if n < 1:
        raise ValueError("a cluster needs at least one node")
    base_dir = base_dir.resolve()
    cluster_id = _cluster_id(base_dir / "cluster.id")
    ports = free_ports(2 * n)
    voters = {i + 1: ports[n + i] for i in range(n)}
    specs: list[_Spec] = []
    for i in range(n):
        node_id = i + 1
        data_dir = base_dir / f"node-{node_id}"
        write_server_properties(
            data_dir,
            node_id=node_id,
            port=ports[i],
            controller_port=voters[node_id],
            voters=voters,
            extra_config=extra_config,
        )
        specs.append(
            _Spec(
                data_dir=data_dir,
                log_file=base_dir / f"node-{node_id}.log",
                port=ports[i],
                controller_port=voters[node_id],
                heap_mb=heap_mb,
                cluster_id=cluster_id,
                cluster_size=n,
            )
        )
    return _launch(specs, ready_timeout)


def restart_kafka(
    broker: KafkaBroker, *, timeout: float = 30.0, ready_timeout: float = READY_SECONDS
) -> KafkaBroker:
    """Stop ``broker`` if it still runs, and start it again as it was: same data folder,
    ``server.properties``, ports and log file (appended to). Returns the new process's
    :class:`KafkaBroker`; for a cluster node, once it sees all the cluster's brokers again.
    """
    broker.stop(timeout)
    props = broker.data_dir / "server.properties"
    if not props.is_file():
        raise KafkaBrokerError(f"{props} is missing: cannot restart node {broker.node_id}")
    id_file = broker.data_dir / "cluster.id"
    if not id_file.is_file():
        id_file = broker.data_dir.parent / "cluster.id"
    spec = _Spec(
        data_dir=broker.data_dir,
        log_file=broker.log_file,
        port=broker.port,
        controller_port=broker.controller_port,
        heap_mb=broker.heap_mb,
        cluster_id=_cluster_id(id_file),
        cluster_size=broker.cluster_size,
    )
    return _launch([spec], ready_timeout)[0]


def restart_cluster_node(
    nodes: list[KafkaBroker],
    node_id: int,
    *,
    timeout: float = 30.0,
    ready_timeout: float = READY_SECONDS,
) -> KafkaBroker:
    """Restart (stopping it first if it runs) the node with ``node_id``, on its own ports
    and data folder; ``nodes`` is updated in place and the new node is returned."""
    for index, node in enumerate(nodes):
        if node.node_id == node_id:
            nodes[index] = restart_kafka(node, timeout=timeout, ready_timeout=ready_timeout)
            return nodes[index]
    raise KafkaBrokerError(f"no node {node_id} in {[n.node_id for n in nodes]}")


def stop_kafka_cluster(nodes: Sequence[KafkaBroker], timeout: float = 30.0) -> None:
    """SIGTERM every node at once, wait up to ``timeout`` s, SIGKILL what is left."""
    for node in nodes:
        if node.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
    failed: list[str] = []
    for node in nodes:
        try:
            node.stop(timeout)
        except KafkaBrokerError as e:
            failed.append(str(e))
    if failed:
        raise KafkaBrokerError("; ".join(failed))


def cluster_bootstrap(nodes: Sequence[KafkaBroker]) -> str:
    """The ``bootstrap_servers`` string naming every node."""
    return ",".join(node.bootstrap for node in nodes)
