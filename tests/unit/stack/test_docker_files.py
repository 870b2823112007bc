"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine); this keeps them
naming the same versions, ports and settings as the native stack they stand in for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from cdcstream.core.settings import Settings
from cdcstream.stack.base import StackPaths
from cdcstream.stack.services import SERVICES

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    services: dict[str, Any] = data["services"]
    return services


def _host_ports(svc: dict[str, Any]) -> set[int]:
    return {int(p.split(":")[1]) for p in svc.get("ports", [])}


def test_every_native_service_is_in_compose_with_its_ports(compose: dict[str, Any]) -> None:
    for name, cls in SERVICES.items():
        assert name in compose, f"{name} missing from docker-compose.yml"
        assert cls.ports[0] in _host_ports(compose[name]), f"{name}: port {cls.ports[0]} not published"


@pytest.mark.parametrize(("name", "needle"), [
    ("postgres", "postgres:{v}"), ("kafka", "apache/kafka:{v}"), ("elasticsearch", "elasticsearch:{v}"),
    ("objectstore", "versitygw:{v}"), ("mariadb", "mariadb:{v}"), ("vault", "vault:{v}"),
])
def test_image_versions_match_native(compose: dict[str, Any], name: str, needle: str) -> None:
    version = SERVICES[name].version.split("-")[0]
    assert needle.format(v=version) in compose[name]["image"]


def test_connect_uses_the_debezium_line_and_providers(compose: dict[str, Any]) -> None:
    assert "3.6.1" in compose["connect"]["image"]
    env = compose["connect"]["environment"]
    assert env["CONNECT_CONFIG_PROVIDERS"] == "file,dir,env"


def test_settings_that_matter_agree(compose: dict[str, Any]) -> None:
    assert "wal_level=logical" in compose["postgres"]["command"]
    assert compose["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "--binlog-format=ROW" in compose["mariadb"]["command"]
    info = SERVICES["objectstore"](StackPaths()).info()
    assert compose["objectstore"]["environment"]["ROOT_ACCESS_KEY"] == info["access_key"]


def test_dockerfile_runs_the_worker_unprivileged_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "USER cdcstream" in text and "HEALTHCHECK" in text
    assert f"EXPOSE {Settings().web_port}" in text


def test_connect_reads_the_workers_provider_credentials(compose: dict[str, Any]) -> None:
    """Provider mode is the default for secret references: Connect must read the 0600 files the
    worker's image writes, at the path the ``${dir:<path>:...}`` placeholders carry."""
    import re

    uid = re.search(r"--uid (\d+) cdcstream", (ROOT / "Dockerfile").read_text())
    assert uid is not None and compose["connect"]["user"] == uid.group(1)
    creds = compose["worker"]["environment"]["CDCSTREAM_CREDENTIALS_DIR"]
    assert f"credentials:{creds}" in compose["worker"]["volumes"]
    assert f"credentials:{creds}:ro" in compose["connect"]["volumes"]
