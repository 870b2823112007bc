"""The project's own Kafka topics, defined once: `cdcstream topics plan | apply` and the
worker's start-up check both read this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cdcstream.core.config import Config
from cdcstream.core.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    purpose: str
    external: bool = False  # created by Debezium, only checked

    def describe(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(self.config.items()))
        return f"{self.name}: {self.partitions} partition(s) {cfg} ({self.purpose})"


def internal_topics(settings: Settings) -> list[TopicSpec]:
    a = settings.app_id
    return [
        TopicSpec(f"{a}-control", 1, {"cleanup.policy": "delete", "retention.ms": str(30 * 86400_000)},
                  "profile changes and other commands; one partition keeps them in order"),
        TopicSpec(f"{a}-dlq", 1, {"cleanup.policy": "delete", "retention.ms": str(30 * 86400_000),
                                  "max.message.bytes": "16777216"},
                  "events that could not be decoded or written, with the reason and origin"),
    ]


def captured_topics(settings: Settings, config: Config) -> list[TopicSpec]:
    return [TopicSpec(t, settings.partitions, {}, f"Debezium change events of {tid}", external=True)
            for t, tid in config.topic_map().items()]


@dataclass
class TopicCheck:
    spec: TopicSpec
    exists: bool
    partitions: int | None
    problems: list[str]


async def check(settings: Settings, config: Config | None = None) -> list[TopicCheck]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        specs = internal_topics(settings) + (captured_topics(settings, config) if config else [])
        existing = set(await admin.list_topics())
        present = [s.name for s in specs if s.name in existing]
        described = {d["topic"]: d for d in await admin.describe_topics(present)} if present else {}
        configs: dict[str, dict[str, str]] = {}
        internal_present = [s.name for s in specs if s.name in existing and not s.external]
        if internal_present:
            from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

            res = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in internal_present])
            for r in res:
                for _code, _msg, _typ, name, entries in r.resources:
                    configs[name] = {e[0]: e[1] for e in entries}
        out: list[TopicCheck] = []
        for s in specs:
            if s.name not in existing:
                out.append(TopicCheck(s, False, None, [] if s.external else ["missing"]))
                continue
            n = len(described.get(s.name, {}).get("partitions", []))
            problems = []
            if n != s.partitions:
                problems.append(f"has {n} partitions, expected {s.partitions}")
            for k, v in s.config.items():
                actual = configs.get(s.name, {}).get(k)
                if actual is not None and actual != v:
                    problems.append(f"{k}={actual}, expected {v}")
            out.append(TopicCheck(s, True, n, problems))
        return out
    finally:
        await admin.close()


async def apply(settings: Settings) -> list[str]:
    """Create missing internal topics; return what was created. Existing ones are only checked."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [s for s in internal_topics(settings) if s.name not in existing]
        if new:
            await admin.create_topics([NewTopic(s.name, s.partitions, settings.replication_factor,
                                                topic_configs=s.config) for s in new])
        return [s.name for s in new]
    finally:
        await admin.close()
