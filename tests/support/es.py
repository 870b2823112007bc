"""Clean-up of a test's Elasticsearch indices."""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch


async def drop_generations(es: AsyncElasticsearch, alias: str) -> None:
    """Delete every generation of ``alias`` (``<alias>-000001``...), named one by one:
    Elasticsearch 8 refuses wildcard deletes (``action.destructive_requires_name``)."""
    names = list((await es.indices.get(index=f"{alias}-*")).body)
    if names:
        await es.indices.delete(index=names)
