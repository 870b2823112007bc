"""Deleting Kafka topics after a test or a benchmark run: one helper, and matchers for it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient

BOOTSTRAP = "127.0.0.1:9092"

TopicMatch = Callable[[str], bool]


def topics_named(*names: str) -> TopicMatch:
    """Exactly these topics."""
    wanted = set(names)
    return lambda t: t in wanted


def topics_under(*prefixes: str) -> TopicMatch:
    """Each prefix as a topic name and every topic below it (``<prefix>.<anything>``): a connector's topics."""
    return lambda t: any(t == p or t.startswith(p + ".") for p in prefixes)


def topics_starting(*prefixes: str) -> TopicMatch:
    """Every topic whose name starts with one of ``prefixes`` (plain string prefix)."""
    return lambda t: t.startswith(prefixes)


def delete_topics(match: TopicMatch, *, bootstrap: str = BOOTSTRAP) -> list[str]:
    """Delete every topic ``match`` accepts; returns their names (none: nothing sent).

    Blocking (runs its own event loop): from async code call it through ``asyncio.to_thread``.
    """

    async def go() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
        await admin.start()
        try:
            names = sorted(t for t in await admin.list_topics() if match(t))
            if names:
                await admin.delete_topics(names)
            return names
        finally:
            await admin.close()

    return asyncio.run(go())
