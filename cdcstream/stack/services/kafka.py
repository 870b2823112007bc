"""Apache Kafka, one KRaft node (broker and controller), from Maven Central jars.

Also holds what the Kafka Connect service shares with the broker: the Maven fetch, the
log4j2 configuration and the JVM command line.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import struct
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from cdcstream.stack.base import Service, StackError, building, run
from cdcstream.stack.services.postgres import apt_install

#: Debezium 3.6.1.Final is built against Kafka 4.3.0 (``version.kafka`` in debezium-build-parent);
#: 4.3.1 is that line's bug-fix release. Checked with faust-streaming 0.15.3 + aiokafka 0.14.
KAFKA_VERSION = "4.3.1"
SCALA_VERSION = "2.13"
#: The log4j-core version Kafka 4.3.1 depends on; the SLF4J binding must be the same release.
LOG4J_VERSION = "2.25.4"
#: Kafka's published poms declare slf4j-api 1.7.36 (its distribution ships 2.0.x). SLF4J 1.7 cannot
#: see log4j-slf4j2-impl and would log nothing, so the 2.0 API is pinned next to the binding.
SLF4J_VERSION = "2.0.17"
#: Pinned so the fetch does not depend on whichever plugin version Maven would pick by default.
DEPENDENCY_PLUGIN_VERSION = "3.8.1"

HOST = "127.0.0.1"
BROKER_PORT = 9092
CONTROLLER_PORT = 9093
#: A fault test sends 5 MB values; the broker, replica fetcher and clients must all allow them.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

HEAP = ("-Xms256m", "-Xmx512m")
# Kafka's defaults from kafka-run-class.sh, plus dying on OOM so the stack reports the exit.
JVM_PERFORMANCE_OPTS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
                        "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true", "-XX:+ExitOnOutOfMemoryError")

LOG4J2_XML = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Everything to stdout: the stack manager writes it to .stack/logs/<service>.log. -->
<Configuration status="WARN">
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="STDOUT"/></Root>
    <!-- Every client and worker dumps its full config at INFO: hundreds of lines per start. -->
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.reflections" level="ERROR"/>
  </Loggers>
</Configuration>
"""


class Coordinate(NamedTuple):
    group: str
    artifact: str
    version: str
    type: str = "jar"
    classifier: str = ""

    def xml(self, tag: str) -> str:
        extra = (f"<type>{self.type}</type>" if self.type != "jar" else "") + (
            f"<classifier>{self.classifier}</classifier>" if self.classifier else "")
        return (f"<{tag}><groupId>{self.group}</groupId><artifactId>{self.artifact}</artifactId>"
                f"<version>{self.version}</version>{extra}</{tag}>")


LOGGING_DEPENDENCIES = (
    Coordinate("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
    Coordinate("org.slf4j", "slf4j-api", SLF4J_VERSION),
)


def java() -> str:
    """The ``java`` to run: JAVA_HOME's, else the one on PATH (Kafka 4 needs 17 or newer)."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise StackError("no java found; install a JDK 17 or newer (or set JAVA_HOME)")
    return found


def ensure_maven() -> str:
    if shutil.which("mvn") is None:
        apt_install("maven")  # pulls in a default JDK too
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("mvn not found after installing maven")
    return mvn


def maven_fetch(workdir: Path, lib: Path, dependencies: Sequence[Coordinate], *, copies: Sequence[Coordinate] = (),
                copies_to: Path | None = None, what: str) -> None:
    """Copy ``dependencies`` with their runtime closure into ``lib`` and ``copies`` (no closure) into ``copies_to``.

    A throwaway pom in ``workdir`` drives ``maven-dependency-plugin``; Maven keeps its own cache in
    ~/.m2, so a rebuild after deleting our cache downloads nothing.
    """
    deps = "\n    ".join(d.xml("dependency") for d in dependencies)
    # Each goal gets its own execution: a shared <configuration> outputDirectory would win over
    # the command line and send both goals' files to one place.
    executions = [
        f"<execution><id>libs</id><configuration><outputDirectory>{lib}</outputDirectory>"
        "<includeScope>runtime</includeScope></configuration></execution>"
    ]
    goals = ["dependency:copy-dependencies@libs"]
    if copies:
        if copies_to is None:
            raise ValueError("copies_to is required with copies")
        items = "".join(c.xml("artifactItem") for c in copies)
        executions.append(f"<execution><id>copies</id><configuration><outputDirectory>{copies_to}</outputDirectory>"
                          f"<artifactItems>{items}</artifactItems></configuration></execution>")
        goals.append("dependency:copy@copies")
    pom = f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.cdcstream.stack</groupId>
  <artifactId>{what}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    {deps}
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
        <executions>{"".join(executions)}</executions>
      </plugin>
    </plugins>
  </build>
</project>
"""
    (workdir / "pom.xml").write_text(pom)
    run([ensure_maven(), "-q", "-B", "-f", str(workdir / "pom.xml"), *goals], cwd=workdir,
        what=f"{what}: maven fetch")
    (workdir / "pom.xml").unlink()


def jvm_command(artifacts: Path, main: str, *args: str, heap: Sequence[str] = HEAP) -> list[str]:
    return [java(), *heap, *JVM_PERFORMANCE_OPTS, f"-Dlog4j2.configurationFile={artifacts / 'log4j2.xml'}",
            "-cp", str(artifacts / "lib" / "*"), main, *args]


def random_cluster_id() -> str:
    """What ``StorageTool random-uuid`` prints, without starting a JVM for it."""
    while True:
        # Kafka's Uuid.randomUuid() rejects ids whose base64 starts with '-' (they read as CLI flags).
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


class BrokerMetadata(NamedTuple):
    brokers: tuple[tuple[int, str, int], ...]  # (node id, host, port) of live brokers
    cluster_id: str | None
    controller_id: int


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        buf += chunk
    return buf


def kafka_metadata(host: str = HOST, port: int = BROKER_PORT, timeout: float = 2.0) -> BrokerMetadata | None:
    """One Metadata request (v4, no topics) over a raw socket; None when the broker does not answer.

    Metadata lists only unfenced brokers, so an entry for our node means the broker has caught
    up with the controller and serves clients. Kafka 4 removed Metadata v0-v3; v4 is the
    oldest it accepts and the newest without the flexible (tagged-field) encoding.
    """
    correlation = 0x0CDC
    client_id = b"cdcstream-stack"
    header = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id
    body = struct.pack(">i?", 0, False)  # topics: empty array; allow_auto_topic_creation: false
    request = header + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _read_exact(sock, 4))
            resp = _read_exact(sock, size)
    except (OSError, ConnectionError):
        return None
    try:
        corr, _throttle, n_brokers = struct.unpack_from(">iii", resp, 0)
        if corr != correlation:
            return None
        pos = 12
        brokers = []
        for _ in range(n_brokers):
            node_id, hlen = struct.unpack_from(">ih", resp, pos)
            pos += 6
            bhost = resp[pos:pos + hlen].decode()
            pos += hlen
            bport, rlen = struct.unpack_from(">ih", resp, pos)
            pos += 6 + max(rlen, 0)
            brokers.append((node_id, bhost, bport))
        (clen,) = struct.unpack_from(">h", resp, pos)
        pos += 2
        cluster_id = resp[pos:pos + clen].decode() if clen >= 0 else None
        pos += max(clen, 0)
        (controller_id,) = struct.unpack_from(">i", resp, pos)
    except (struct.error, UnicodeDecodeError):
        return None
    return BrokerMetadata(tuple(brokers), cluster_id, controller_id)


class KafkaService(Service):
    name = "kafka"
    version = KAFKA_VERSION
    ports = (BROKER_PORT, CONTROLLER_PORT)
    start_timeout = 90.0

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{BROKER_PORT}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    @property
    def log_dir(self) -> Path:
        return self.data / "kraft"

    @property
    def config_file(self) -> Path:
        return self.data / "server.properties"

    def cluster_id(self) -> str | None:
        try:
            for line in (self.log_dir / "meta.properties").read_text().splitlines():
                if line.startswith("cluster.id="):
                    return line.split("=", 1)[1].strip()
        except FileNotFoundError:
            pass
        return None

    def info(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, "controller": f"{HOST}:{CONTROLLER_PORT}",
                "cluster_id": self.cluster_id(), "max_message_bytes": MAX_MESSAGE_BYTES}

    # --- install ---------------------------------------------------------------
    def install(self) -> None:
        with building(self.artifacts) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private
            maven_fetch(tmp, tmp / "lib", [
                Coordinate("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
                *LOGGING_DEPENDENCIES,
            ], what="kafka")
            (tmp / "log4j2.xml").write_text(LOG4J2_XML)
            self.mark_complete(tmp)

    # --- run -------------------------------------------------------------------
    def server_properties(self) -> dict[str, str | int]:
        return {
            "process.roles": "broker,controller",
            "node.id": 1,
            "controller.quorum.voters": f"1@{HOST}:{CONTROLLER_PORT}",
            "listeners": f"PLAINTEXT://{HOST}:{BROKER_PORT},CONTROLLER://{HOST}:{CONTROLLER_PORT}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{BROKER_PORT}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "auto.create.topics.enable": "false",
            "num.partitions": 1,
            "group.initial.rebalance.delay.ms": 0,
            # One node: every internal topic has one replica. Fewer partitions than the default 50
            # make the first group join (which creates __consumer_offsets) quick.
            "offsets.topic.replication.factor": 1,
            "offsets.topic.num.partitions": 10,
            "transaction.state.log.replication.factor": 1,
            "transaction.state.log.min.isr": 1,
            "transaction.state.log.num.partitions": 10,
            "share.coordinator.state.topic.replication.factor": 1,
            "share.coordinator.state.topic.min.isr": 1,
            "share.coordinator.state.topic.num.partitions": 10,
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "replica.fetch.max.bytes": MAX_MESSAGE_BYTES,
            # The log cleaner (compacted changelog/offset topics) preallocates 128 MB by default.
            "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
        }

    def prepare(self) -> None:
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        if (self.log_dir / "meta.properties").exists():
            return
        # A format that died half-way leaves files the next format refuses; start over.
        shutil.rmtree(self.log_dir, ignore_errors=True)
        run(jvm_command(self.artifacts, "kafka.tools.StorageTool", "format", "--cluster-id", random_cluster_id(),
                        "--config", str(self.config_file), heap=("-Xmx256m",)),
            what="kafka: formatting storage")

    def command(self) -> list[str]:
        return jvm_command(self.artifacts, "kafka.Kafka", str(self.config_file))

    def healthy(self) -> bool:
        meta = kafka_metadata(timeout=1.5)
        return meta is not None and any(b[2] == BROKER_PORT for b in meta.brokers)
