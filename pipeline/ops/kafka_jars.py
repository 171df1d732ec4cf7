"""The Apache Kafka jars, fetched once by Maven from Maven Central, and the JVM to run them.

No tarball and no Docker: ``pipeline/ops/kafka/pom.xml`` pins ``kafka_2.13`` (plus the
SLF4J binding), and ``mvn dependency:copy-dependencies`` copies it and its dependencies
into a cache folder (``~/.cache/event-pipeline/kafka-<version>/lib``, or
``$KAFKA_JARS_DIR``). A stamp records what was fetched, so it happens once per version.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import KafkaBrokerError, KafkaToolsMissingError
from pipeline.ops.procs import tail_text

__all__ = ["KAFKA_VERSION", "POM", "ensure_jars", "jars_dir", "find_java", "storage_tool"]

KAFKA_VERSION = "4.1.2"
"""The ``kafka.version`` of ``pipeline/ops/kafka/pom.xml`` (a test keeps them equal)."""

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

JAVA_MIN_MAJOR = 17
STAMP = ".event-pipeline-kafka.stamp"
MISSING_TOOLS = (
    "Apache Kafka needs Java 17+ and Maven (apt-get install openjdk-17-jre-headless maven): {what}"
)
STORAGE_TOOLS = ("kafka.tools.StorageTool", "org.apache.kafka.tools.StorageTool")


def jars_dir() -> Path:
    """Where the jars go: ``$KAFKA_JARS_DIR``, else the user's cache folder."""
    override = os.environ.get("KAFKA_JARS_DIR")
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "event-pipeline" / f"kafka-{KAFKA_VERSION}" / "lib"


def find_java() -> str:
    """The ``java`` on PATH, checked to be 17 or newer."""
    java = shutil.which("java")
    if java is None:
        raise KafkaToolsMissingError(MISSING_TOOLS.format(what="no `java` on PATH"))
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KafkaToolsMissingError(
            MISSING_TOOLS.format(what=f"`java -version` failed: {e}")
        ) from e
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if found is None:
        raise KafkaToolsMissingError(MISSING_TOOLS.format(what="cannot tell the version of `java`"))
    major = int(found.group(1))
    if major == 1 and found.group(2):  # "1.8.0" is Java 8
        major = int(found.group(2))
    if major < JAVA_MIN_MAJOR:
        raise KafkaToolsMissingError(MISSING_TOOLS.format(what=f"`java` is Java {major}"))
    return java


def _stamp_text() -> str:
    if not POM.is_file():
        raise KafkaBrokerError(f"{POM} is missing: it lists the Kafka jars to fetch")
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    return f"kafka {KAFKA_VERSION}\npom {digest}\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_jars() -> Path:
    """The folder holding the broker's jars, fetched with Maven the first time.

    Raises :class:`KafkaBrokerError` with a one-line message when ``java`` (17+) is
    missing, or ``mvn`` is missing and the jars are not there yet, or Maven fails.
    """
    find_java()
    lib = jars_dir()
    stamp = lib / STAMP
    want = _stamp_text()
    if stamp.is_file() and stamp.read_text() == want:
        return lib
    with _locked(lib.parent / f".{lib.name}.lock"):
        if stamp.is_file() and stamp.read_text() == want:
            return lib  # another process fetched them while we waited
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaToolsMissingError(MISSING_TOOLS.format(what="no `mvn` on PATH"))
        lib.mkdir(parents=True, exist_ok=True)
        stamp.unlink(missing_ok=True)
        for old in lib.glob("*.jar"):  # another version's jars must not share the classpath
            old.unlink()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired as e:
            raise KafkaBrokerError(f"Maven did not fetch the Kafka jars in {e.timeout} s") from e
        if done.returncode != 0:
            tail = tail_text(done.stdout + done.stderr, 30)
            raise KafkaBrokerError(
                f"Maven could not fetch the Kafka {KAFKA_VERSION} jars "
                f"(exit {done.returncode}):\n{tail}"
            )
        if not any(lib.glob("kafka_2.13-*.jar")):
            raise KafkaBrokerError(f"Maven ran but left no kafka_2.13 jar in {lib}")
        stamp.write_text(want)
    return lib


def storage_tool(lib: Path) -> str:
    """The StorageTool class these jars have (it moved between Kafka versions)."""
    wanted = {name.replace(".", "/") + ".class": name for name in STORAGE_TOOLS}
    for jar in sorted(lib.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as archive:
            names = set(archive.namelist())
        for entry, name in wanted.items():
            if entry in names:
                return name
    raise KafkaBrokerError(f"none of {', '.join(STORAGE_TOOLS)} is in the jars of {lib}")
