"""``cdcstream embeddings plan TABLE``: what re-embedding a table with the configured model costs
(cdcstream/pipeline/reembed.py), before anything is sent; ``cdcstream embeddings reembed TABLE``
asks the running worker to start it (``POST /api/tables/{table}/reembed``)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from cdcstream.cli import common


def _table_options(command: Callable[..., None]) -> Callable[..., None]:
    """TABLE, --connector, --json, --config: how both commands name a table and answer."""
    for option in reversed([
            click.argument("table"),
            click.option("--connector", default=None, help="The connector, when several capture a table of this name."),
            click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
            click.option("--config", "config_path", default=None, help="Config file (default cdcstream.yaml).")]):
        command = option(command)
    return command


@click.group()
def embeddings() -> None:
    """Embedding model changes (docs/profiles.md, "Changing the embedding model")."""


@embeddings.command("plan")
@_table_options
def embeddings_plan(table: str, connector: str | None, as_json: bool, config_path: str | None) -> None:
    """The chunks of TABLE not embedded with CDCSTREAM_EMBED_MODEL at CDCSTREAM_EMBED_DIMENSIONS:
    their tiktoken count, the requests and the price of re-embedding them. Sends nothing."""
    s = common.settings()
    try:
        out = asyncio.run(_plan(s, common.config(config_path), table, connector))
    except Exception as e:  # noqa: BLE001 - unreachable node, unknown table: say which, exit 2
        click.echo(f"embeddings plan: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps({**out.__dict__, "price_usd": round(out.price(s.embed_price_per_million_tokens), 8)}))
    else:
        click.echo("\n".join(out.lines(s.embed_price_per_million_tokens)))


async def _plan(s: Any, cfg: Any, table: str, connector: str | None) -> Any:
    from elasticsearch import AsyncElasticsearch
    from openai import AsyncOpenAI

    from cdcstream.core.resolver import make_resolver
    from cdcstream.ops.verify import find_route
    from cdcstream.pipeline.embeddings import Embedder
    from cdcstream.pipeline.reembed import plan
    from cdcstream.pipeline.tokens import get_encoding
    from cdcstream.sinks.elasticsearch import client_options

    route = find_route(cfg, table, connector)
    if not route.table.profile.embeds:
        raise ValueError(f"{table} has profile {route.table.profile.value}: it has no chunks to embed")
    resolver = make_resolver(s)

    def secret(ref: Any) -> str | None:
        return None if ref is None else str(resolver.resolve(ref).get_secret_value())

    es = AsyncElasticsearch(s.es_http_url, request_timeout=60, **client_options(
        secret(s.elasticsearch_user), secret(s.elasticsearch_password), secret(s.elasticsearch_api_key),
        s.elasticsearch_ca))
    # Only for its request packing: nothing is sent.
    embedder = Embedder(AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused"), s.embed_model,
                        dimensions=s.embed_dimensions, max_inputs=s.embed_max_inputs,
                        max_input_tokens=s.embed_max_input_tokens)
    try:
        return await plan(es, route.chunks_alias, embedder, get_encoding(s.chunk_encoding))
    finally:
        await es.close()


@embeddings.command("reembed")
@_table_options
def embeddings_reembed(table: str, connector: str | None, as_json: bool, config_path: str | None) -> None:
    """Start re-embedding TABLE's chunks on the running worker with its configured model and
    dimensions (the worker's CDCSTREAM_EMBED_MODEL / CDCSTREAM_EMBED_DIMENSIONS). Searches answer
    from the current chunks until the new ones are complete; progress on /status. Needs the
    admin token (CDCSTREAM_API_TOKEN)."""
    from urllib.parse import quote

    from cdcstream.cli.api import _client, _fail
    from cdcstream.ops.verify import find_route

    try:
        route = find_route(common.config(config_path), table, connector)
    except Exception as e:  # noqa: BLE001 - unknown table: say which, exit 2
        click.echo(f"embeddings reembed: {e}", err=True)
        sys.exit(2)
    t = route.table_id
    ident = f"{t.connector}.{t.schema}.{t.table}"  # the API's table id
    status, data = _client(True).call("POST", f"/api/tables/{quote(ident, safe='')}/reembed")
    if status != 200:
        _fail(status, data)
    if as_json:
        click.echo(json.dumps(data))
        return
    click.echo(f"{data['table']}: re-embedding {data['from']} -> {data['to']} with {data['model']}/"
               f"{data['dimensions']} on worker {data['worker']}{' (resumed)' if data.get('resumed') else ''}; "
               f"progress on /status")


def register(main: click.Group) -> None:
    main.add_command(embeddings)
