"""Kafka Connect (distributed mode, one worker) with the Debezium source connectors as plugins."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, http_get
from cdcstream.stack.services.kafka import (
    BROKER_PORT,
    HOST,
    KAFKA_VERSION,
    LOG4J2_XML,
    LOGGING_DEPENDENCIES,
    MAX_MESSAGE_BYTES,
    Coordinate,
    jvm_command,
    maven_fetch,
)

#: The newest Debezium line Maven Central serves in full; built against Kafka 4.3 (see kafka.py).
DEBEZIUM_VERSION = "3.6.1.Final"
#: Maven Central serves no 3.6.x (nor 3.5.1+) of the dedicated MariaDB connector; 3.5.0.Final is the
#: newest there. Each plugin gets its own class loader with its own debezium-core, so the mix is safe.
DEBEZIUM_MARIADB_VERSION = "3.5.0.Final"
REST_PORT = 8083
HEAP = ("-Xms256m", "-Xmx1g")

PLUGINS = (
    Coordinate("io.debezium", "debezium-connector-postgres", DEBEZIUM_VERSION, "tar.gz", "plugin"),
    Coordinate("io.debezium", "debezium-connector-mysql", DEBEZIUM_VERSION, "tar.gz", "plugin"),
    Coordinate("io.debezium", "debezium-connector-mariadb", DEBEZIUM_MARIADB_VERSION, "tar.gz", "plugin"),
)
POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"
MYSQL_CONNECTOR = "io.debezium.connector.mysql.MySqlConnector"
MARIADB_CONNECTOR = "io.debezium.connector.mariadb.MariaDbConnector"

GROUP_ID = "cdcstream-connect"
CONFIG_TOPIC = f"{GROUP_ID}-configs"
OFFSET_TOPIC = f"{GROUP_ID}-offsets"
STATUS_TOPIC = f"{GROUP_ID}-status"


def _untar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tf:
        tf.extractall(dest, filter="data")  # rejects absolute paths, '..' and device files


class ConnectService(Service):
    name = "connect"
    version = f"{KAFKA_VERSION}-debezium-{DEBEZIUM_VERSION}"
    ports = (REST_PORT,)
    depends_on = ("kafka",)
    start_timeout = 120.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{REST_PORT}"

    @property
    def plugin_path(self) -> Path:
        return self.artifacts / "plugins"

    @property
    def config_file(self) -> Path:
        return self.data / "connect-distributed.properties"

    def info(self) -> dict[str, Any]:
        return {"rest": self.url, "group_id": GROUP_ID, "plugin_path": str(self.plugin_path),
                "plugins": {p.artifact: p.version for p in PLUGINS},
                "internal_topics": [CONFIG_TOPIC, OFFSET_TOPIC, STATUS_TOPIC]}

    # --- install ---------------------------------------------------------------
    def install(self) -> None:
        with building(self.artifacts) as tmp:
            tmp.chmod(0o755)  # mkdtemp makes it private
            archives = tmp / "archives"
            maven_fetch(tmp, tmp / "lib", [
                Coordinate("org.apache.kafka", "connect-runtime", KAFKA_VERSION),
                Coordinate("org.apache.kafka", "connect-json", KAFKA_VERSION),
                Coordinate("org.apache.kafka", "connect-transforms", KAFKA_VERSION),
                *LOGGING_DEPENDENCIES,
            ], copies=PLUGINS, copies_to=archives, what="connect")
            for plugin in PLUGINS:
                archive = archives / f"{plugin.artifact}-{plugin.version}-{plugin.classifier}.{plugin.type}"
                # Each tarball holds one top-level directory named after the connector.
                _untar(archive, tmp / "plugins")
                if not (tmp / "plugins" / plugin.artifact).is_dir():
                    raise StackError(f"connect: {archive.name} did not unpack into {plugin.artifact}/")
            shutil.rmtree(archives)
            (tmp / "log4j2.xml").write_text(LOG4J2_XML)
            self.mark_complete(tmp)

    # --- run -------------------------------------------------------------------
    def worker_properties(self) -> dict[str, str | int]:
        return {
            "bootstrap.servers": f"{HOST}:{BROKER_PORT}",
            "group.id": GROUP_ID,
            "key.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "key.converter.schemas.enable": "true",
            "value.converter.schemas.enable": "true",
            "config.storage.topic": CONFIG_TOPIC,
            "offset.storage.topic": OFFSET_TOPIC,
            "status.storage.topic": STATUS_TOPIC,
            "config.storage.replication.factor": 1,
            "offset.storage.replication.factor": 1,
            "status.storage.replication.factor": 1,
            # The default is 60 s: a worker killed in a test would replay a minute of changes.
            "offset.flush.interval.ms": 5000,
            "listeners": f"http://{HOST}:{REST_PORT}",
            "rest.advertised.host.name": HOST,
            "rest.advertised.port": REST_PORT,
            "plugin.path": str(self.plugin_path),
            # Reads the plugins' ServiceLoader manifests instead of scanning every class (~0.5 s vs ~6 s).
            "plugin.discovery": "service_load",
            # ${file:path:key}, ${dir:path:file} and ${env:VAR} in connector configs; the REST API
            # keeps returning the placeholder, never the secret.
            "config.providers": "file,dir,env",
            "config.providers.file.class": "org.apache.kafka.common.config.provider.FileConfigProvider",
            "config.providers.dir.class": "org.apache.kafka.common.config.provider.DirectoryConfigProvider",
            "config.providers.env.class": "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
            # Connectors may set producer.override.* (e.g. a larger max.request.size for one source).
            "connector.client.config.override.policy": "All",
            "producer.max.request.size": MAX_MESSAGE_BYTES,
            "consumer.max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
        }

    def prepare(self) -> None:
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in self.worker_properties().items()))

    def command(self) -> list[str]:
        return jvm_command(self.artifacts, "org.apache.kafka.connect.cli.ConnectDistributed", str(self.config_file),
                           heap=HEAP)

    def _get_json(self, path: str) -> Any:
        status, body = http_get(self.url + path, timeout=2.0)
        if status != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def healthy(self) -> bool:
        # /health (KIP-1017) turns 200 once the worker has joined its group and read the config
        # topic, i.e. when it can create connectors; / and /connector-plugins answer earlier.
        root = self._get_json("/")
        if not isinstance(root, dict) or "version" not in root:
            return False
        health = self._get_json("/health")
        if not isinstance(health, dict) or health.get("status") != "healthy":
            return False
        plugins = self._get_json("/connector-plugins")
        return isinstance(plugins, list) and any(
            isinstance(p, dict) and p.get("class") == POSTGRES_CONNECTOR for p in plugins)
