"""A single-node Apache Kafka 4.x broker in KRaft mode (broker and controller in one JVM).

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (``make kafka-jars``); the storage is
formatted once with ``kafka.tools.StorageTool format --standalone``; data persists under the service folder.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

from fleetloop.platform.errors import SetupError
from fleetloop.platform.services.spec import Health, ServiceSpec
from fleetloop.platform.settings import Settings

__all__ = ["SPEC", "check_java", "kafka_health", "server_properties"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # [B] room for large columnar telemetry batches

LOG4J2 = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
appender.err.filter.threshold.type = ThresholdFilter
appender.err.filter.threshold.level = warn
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
rootLogger.appenderRef.err.ref = err
"""


def server_properties(settings: Settings, data_dir: Path) -> str:
    """The broker's configuration: loopback listeners, one node, sized for a small machine."""
    h, p, c = settings.host, settings.kafka_port, settings.kafka_controller_port
    lines = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{h}:{c}",
        "listeners": f"PLAINTEXT://{h}:{p},CONTROLLER://{h}:{c}",
        "advertised.listeners": f"PLAINTEXT://{h}:{p}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": str(settings.kafka_partitions),
        # Topics come from the catalogue's admin step; a typo must not create a topic silently.
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "8",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        # Sized for a small machine (broker, fleet and pipeline share a few cores): fewer threads, less
        # switching; one network thread moves >250 MB/s of telemetry here (docs/adr/0021).
        "num.network.threads": "1",
        "num.io.threads": "2",
        "log.retention.hours": "168",
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in lines.items())


def check_java(java: str) -> None:
    """Raise SetupError unless ``java`` runs and is version 17 or newer."""
    exe = shutil.which(java)
    if exe is None:
        raise SetupError(
            f"Java ({java!r}) was not found; Kafka needs Java 17+: install OpenJDK 17 "
            "(apt-get install openjdk-17-jre-headless) or set FLEETLOOP_JAVA to its path"
        )
    out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    m = re.search(r'version "(\d+)', out.stderr + out.stdout)
    if m is None or int(m.group(1)) < 17:
        raise SetupError(
            f"{exe} is not Java 17+ ({(out.stderr or out.stdout).strip()[:80]}); install OpenJDK 17 or set "
            "FLEETLOOP_JAVA to a Java 17+ binary, then run `fleetloop up kafka`"
        )


def _check_jars(libs: Path) -> None:
    if not libs.is_dir() or not any(libs.glob("kafka_2.13-*.jar")):
        raise SetupError(
            f"Kafka's jars are missing in {libs}; run `make kafka-jars` (fetches them from Maven Central "
            "with deploy/kafka/pom.xml) or set FLEETLOOP_KAFKA_LIBS_DIR to a folder that has them"
        )


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: 16 random bytes in URL-safe base64, never starting with "-".

    Kafka's own ``Uuid.randomUuid`` redraws such ids too: one in 64 would start with "-", which
    command-line parsers take for an option.
    """
    while True:
        cid = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _prepare(settings: Settings, folder: Path) -> None:
    check_java(settings.java)
    _check_jars(settings.kafka_libs_dir)
    data = folder / "data"
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "server.properties").write_text(server_properties(settings, data))
    (folder / "log4j2.properties").write_text(LOG4J2)
    if (data / "meta.properties").exists():
        return  # formatted before: the data survives restarts
    cluster_id = new_cluster_id()
    cmd = [
        settings.java,
        "-cp",
        f"{settings.kafka_libs_dir}/*",
        f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={folder / 'logs'}",
        "kafka.tools.StorageTool",
        "format",
        "--standalone",
        # The "=" form: an id may not start with "-", but the parser must never read one as an option.
        f"--cluster-id={cluster_id}",
        "-c",
        str(folder / "server.properties"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise SetupError(
            f"formatting Kafka's storage in {data} failed ({res.returncode}): {(res.stderr or res.stdout)[-800:]}\n"
            "Fix what it names and run `fleetloop up kafka` again (`fleetloop down kafka --purge` starts from empty "
            "storage, deleting its topics)"
        )


def _command(settings: Settings, folder: Path) -> list[str]:
    heap = settings.kafka_heap_mb
    return [
        settings.java,
        f"-Xms{max(128, heap // 2)}m",
        f"-Xmx{heap}m",
        # The client-tier JIT only: the C2 compiler would spend ~1.5 CPU-s warming up on the first million frames
        # (half the broker's CPU on a fresh broker), for no gain a local broker can measure; the parallel
        # collector costs less CPU than G1 with ~1 MB request buffers (G1 allocates those as humongous objects).
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseParallelGC",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={folder / 'logs'}",
        "-cp",
        f"{settings.kafka_libs_dir}/*",
        "kafka.Kafka",
        str(folder / "server.properties"),
    ]


def kafka_health(settings: Settings) -> Health:
    """Healthy when a describe-cluster call through the admin API names at least one broker."""
    import logging

    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # refused connections while starting are expected
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            request_timeout_ms=5000,
            client_id="fleetloop-health",
        )
    except (KafkaError, OSError, ValueError) as e:
        return Health(False, f"no answer from {settings.bootstrap_servers}: {type(e).__name__}")
    try:
        cluster = admin.describe_cluster()
    except (KafkaError, OSError) as e:
        return Health(False, f"describe-cluster failed: {type(e).__name__}: {e}")
    finally:
        admin.close()
    brokers = cluster.get("brokers") or []
    if not brokers:
        return Health(False, "describe-cluster returned no brokers")
    return Health(True, f"cluster {cluster.get('cluster_id')} with {len(brokers)} broker(s)")


def _post_start(settings: Settings) -> str | None:
    try:
        from fleetloop.platform.bus import admin
    except ImportError:  # the bus is optional for the launcher itself
        return None
    created = admin.ensure_topics(settings)
    return f"{len(created)} topic(s) created" if created else "topics present"


SPEC = ServiceSpec(
    name="kafka",
    description="Apache Kafka 4.x broker + controller (KRaft, single node)",
    address=lambda s: s.bootstrap_servers,
    is_external=lambda s: s.kafka_external,
    ports=lambda s: [s.kafka_port, s.kafka_controller_port],
    command=_command,
    health=kafka_health,
    cmdline_marker="kafka.Kafka",
    prepare=_prepare,
    post_start=_post_start,
)
