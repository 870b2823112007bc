"""Clean-up of a test's Elasticsearch indices."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from elasticsearch import AsyncElasticsearch


async def drop_generations(es: AsyncElasticsearch, alias: str) -> None:
    """Delete every generation of ``alias`` (``<alias>-000001``...), named one by one:
    Elasticsearch 8 refuses wildcard deletes (``action.destructive_requires_name``)."""
    names = list((await es.indices.get(index=f"{alias}-*")).body)
    if names:
        await es.indices.delete(index=names)


@contextlib.asynccontextmanager
async def scratch_alias(url: str, prefix: str, suffix: str = "") -> AsyncIterator[tuple[AsyncElasticsearch, str]]:
    """A client and a run-unique alias name, every generation of which is deleted afterwards."""
    client = AsyncElasticsearch(url)
    alias = f"{prefix}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield client, alias
    finally:
        await drop_generations(client, alias)
        await client.close()
