"""A model change on the real node with real embeddings: a chunks alias re-embedded from 384 to
256 dimensions into its next generation while live writes and kNN searches go on
(cdcstream/pipeline/reembed.py over the mirror's migration machinery).

The server is the stack's own ``embedserver.py`` started on a free loopback port from the
stack's embeddings venv: its ``dimensions`` support is newer than the shared instance (which
other engineers use and which is not restarted for a test), and its counters are this test's
alone, so tokens counted at the server compare exactly with the plan.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from elasticsearch import AsyncElasticsearch, NotFoundError
from openai import AsyncOpenAI

from cdcstream.pipeline.embeddings import Embedder
from cdcstream.pipeline.reembed import PAGE, Reembedder, Reembedding, Vectors, plan, serving_model
from cdcstream.pipeline.tokens import get_encoding
from cdcstream.sinks.base import IndexOp
from cdcstream.sinks.elasticsearch import EsMirror
from cdcstream.stack.services.embeddings import MODEL
from tests.support.embedserver import private_embedserver
from tests.support.es import scratch_alias

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = 300  # more than a page: the fill and the plan's request count cross page boundaries


@pytest.fixture(scope="module")
def server(require: Callable[[str], dict[str, Any]]) -> Iterator[str]:
    require("embeddings")  # the venv is installed with the stack's embeddings service
    with private_embedserver() as url:
        yield url


def _embedder(url: str, dims: int) -> Embedder:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    return Embedder(client, MODEL, dimensions=dims, max_inputs=64, max_input_tokens=512, send_dimensions=dims != 384)


@pytest.fixture
async def es(require: Callable[[str], dict[str, Any]]) -> AsyncIterator[tuple[AsyncElasticsearch, str]]:
    async with scratch_alias(require("elasticsearch")["url"], "test-reembed", "-chunks") as scratch:
        yield scratch


CONFIG = """\
connectors:
  - name: shop-pg
    connection: {{kind: postgres, host: 127.0.0.1, database: shop, user: cdc, password: env:SHOP_PG_PASSWORD}}
    tables:
      - {{name: public.articles, profile: full, text_columns: [body], index: {index}}}
"""


def _cli_plan(tmp_path: Path, alias: str, dims: int) -> dict[str, Any]:
    """docs/profiles.md's ``cdcstream embeddings plan`` block run as written in bash (the
    dimensions set to ``dims``), with a config naming the test's alias."""
    block = re.search(r"^<!-- test: reembed-plan -->\n```sh\n(.*?)^```", (ROOT / "docs" / "profiles.md").read_text(),
                      re.M | re.S)
    assert block is not None
    cfg = tmp_path / "cdcstream.yaml"
    cfg.write_text(CONFIG.format(index=alias.removesuffix("-chunks")))
    env = {**os.environ, "CDCSTREAM_CONFIG": str(cfg), "CDCSTREAM_EMBED_MAX_INPUTS": "64",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = block.group(1).replace("CDCSTREAM_EMBED_DIMENSIONS=256", f"CDCSTREAM_EMBED_DIMENSIONS={dims}")
    out = subprocess.run(["bash", "-ec", cmd], capture_output=True, text=True, env=env, timeout=120,
                         check=True, cwd=tmp_path)
    return dict(json.loads(out.stdout))


async def _seed(client: AsyncElasticsearch, alias: str, embedder: Embedder, texts: list[str]) -> EsMirror:
    """``alias`` with one chunk per text (ids c0, c1, ...), embedded by ``embedder``."""
    enc = get_encoding("cl100k_base")
    vecs = await embedder.embed(texts, [len(enc.encode(t)) for t in texts])
    mirror = EsMirror(client)
    await mirror.ensure_index(alias, _mapping(embedder.dimensions or 0), {"refresh_interval": "1s"})
    await mirror.apply([IndexOp("index", alias, f"c{i}", 100 + i, {
        "text": t, "tokens": len(enc.encode(t)), "model": MODEL, "dimensions": embedder.dimensions, "embedding": v})
        for i, (t, v) in enumerate(zip(texts, vecs, strict=True))])
    await client.indices.refresh(index=alias)
    return mirror


def _mapping(dims: int) -> dict[str, Any]:
    return {"dynamic": False, "properties": {
        "text": {"type": "text"}, "tokens": {"type": "integer"}, "model": {"type": "keyword"},
        "dimensions": {"type": "integer"},
        "embedding": {"type": "dense_vector", "dims": dims, "index": True, "similarity": "cosine"}}}


def test_embedserver_shortens_vectors_to_the_requested_dimensions(server: str) -> None:
    r = requests.post(f"{server}/v1/embeddings", json={"model": MODEL, "input": ["a short text"], "dimensions": 64},
                      timeout=60)
    v = r.json()["data"][0]["embedding"]
    assert len(v) == 64
    assert abs(sum(x * x for x in v) - 1.0) < 1e-4
    bad = requests.post(f"{server}/v1/embeddings", json={"model": MODEL, "input": ["x"], "dimensions": 999},
                        timeout=60)
    assert bad.status_code == 400


async def test_384_to_256_reembeds_into_the_next_generation_while_searches_answer(
        server: str, es: tuple[AsyncElasticsearch, str], tmp_path: Path) -> None:
    client, alias = es
    enc = get_encoding("cl100k_base")
    run = uuid.uuid4().hex[:6]
    texts = [f"order {run}-{i}: " + "parcel shipped late, customer asks for a refund " * (1 + i % 7)
             for i in range(CHUNKS)]
    a, b = _embedder(server, 384), _embedder(server, 256)
    mirror = await _seed(client, alias, a, texts)

    estimate = await plan(client, alias, b, enc)
    assert (estimate.chunks, estimate.stale) == (CHUNKS, CHUNKS)
    assert estimate.current == {f"{MODEL}/384": CHUNKS}
    assert estimate.requests == sum(-(-min(PAGE, CHUNKS - p) // 64) for p in range(0, CHUNKS, PAGE))
    cli = _cli_plan(tmp_path, alias, 256)
    assert (cli["stale"], cli["tokens"], cli["requests"]) == (estimate.stale, estimate.tokens, estimate.requests)
    assert cli["price_usd"] == pytest.approx(estimate.tokens * 0.02 / 1e6)
    assert _cli_plan(tmp_path, alias, 384)["stale"] == 0  # the configured model: nothing to do

    # Searches embed their query with the model of the generation answering them.
    queries = {384: (await a.embed(["refund for a late parcel"], [6]))[0],
               256: (await b.embed(["refund for a late parcel"], [6]))[0]}
    searched: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def search_loop() -> None:
        while not stop.is_set():
            index, _model, dims = await serving_model(client, alias)
            assert dims is not None
            try:
                r = await client.search(index=index, knn={"field": "embedding", "query_vector": queries[dims],
                                                          "k": 5, "num_candidates": 20}, size=5)
            except NotFoundError:
                continue  # the generation was dropped after the swap: ask again
            assert len(r["hits"]["hits"]) == 5
            searched.append((index, dims))
            await asyncio.sleep(0.05)

    searcher = asyncio.create_task(search_loop())
    stats_before = requests.get(f"{server}/stats", timeout=5).json()
    charged: list[int] = []

    async def charge(alias_: str, tokens: int) -> None:
        assert alias_ == alias
        charged.append(tokens)

    reembedder = Reembedder(mirror, b, enc, charge)
    mig = await reembedder.start(alias)
    # A live change while the fill runs: written to the new generation at a newer version,
    # embedded with the new model; the fill's older copy of c0 must not overwrite it.
    live = f"order {run}-live: the parcel arrived, refund cancelled"
    live_vec, live_tokens = await b.embed_counted([live], [len(enc.encode(live))])
    await mirror.apply([IndexOp("index", alias, "c0", 10_000, {"text": live, "tokens": len(enc.encode(live)),
                                                                "model": MODEL, "dimensions": 256,
                                                                "embedding": live_vec[0]})])
    await reembedder.run(mig)
    await asyncio.sleep(0.5)
    stop.set()
    await searcher
    stats_after = requests.get(f"{server}/stats", timeout=5).json()

    behind = sorted((await client.indices.get_alias(name=alias)).body)
    assert behind == [mig.target] and mig.target.endswith("-000002")
    assert not await client.indices.exists(index=mig.source)
    assert {d for _, d in searched} == {384, 256}, "searches answered from both generations"
    await client.indices.refresh(index=alias)
    found = await client.search(index=alias, size=CHUNKS + 10, source_includes=["text", "dimensions"])
    docs = {h["_id"]: h["_source"] for h in found["hits"]["hits"]}
    assert len(docs) == CHUNKS
    assert {d["dimensions"] for d in docs.values()} == {256}
    assert docs["c0"]["text"] == live
    mapping = (await client.indices.get_mapping(index=mig.target)).body[mig.target]["mappings"]
    assert mapping["properties"]["embedding"]["dims"] == 256
    assert (await serving_model(client, alias))[1:] == (MODEL, 256)
    # Tokens at the server: the fill's plus the live change's; c0 is not paid twice (already
    # in the new generation when the fill reached it). The plan counted with tiktoken, the
    # server with e5's XLM-R tokenizer and its "passage: " prefix: a stable ratio apart.
    spent = stats_after["tokens"] - stats_before["tokens"]
    assert spent == mig.tokens + live_tokens
    assert mig.reembedded == CHUNKS - 1 and mig.requests == estimate.requests
    assert sum(charged) == mig.tokens and len(charged) == -(-CHUNKS // PAGE)  # the budget's share, per page
    ratio = mig.tokens / estimate.tokens
    print(f"plan {estimate.tokens} tiktoken tokens, {estimate.requests} requests; server counted {mig.tokens} "
          f"for the fill (ratio {ratio:.3f}), {spent} in all")
    assert 0.8 <= ratio <= 1.5


async def test_regression_a_reembed_left_half_done_resumes_as_a_reembed_not_as_a_copy(
        server: str, es: tuple[AsyncElasticsearch, str]) -> None:
    """A worker killed during a re-embed left a generation marked ``reembedding_from``, which the
    next worker's mirror did not recognise: writes went to the old generation and the new one
    stayed half-filled forever. Resumed now as a re-embed (a copy would carry 384-dimension
    vectors into a 256-dimension field)."""
    client, alias = es
    enc = get_encoding("cl100k_base")
    run = uuid.uuid4().hex[:6]
    texts = [f"ticket {run}-{i}: the invoice total is wrong " * (1 + i % 3) for i in range(40)]
    a, b = _embedder(server, 384), _embedder(server, 256)
    await _seed(client, alias, a, texts)

    # A worker whose settings say 256 before any re-embed: it writes with the serving model/size.
    before = Vectors(EsMirror(client), b, enc)
    emb, dims = await before.for_alias(alias)
    assert (emb.model, dims, emb.send_dimensions) == (MODEL, 384, True) and emb is not b

    # The killed worker: the new generation created and registered, a live change written to it.
    killed = EsMirror(client)
    mig = await Reembedder(killed, b, enc).start(alias)
    live_vec = await b.embed(["the invoice was corrected"], [5])
    await killed.apply([IndexOp("index", alias, "c1", 10_000, {"text": "the invoice was corrected", "tokens": 5,
                                                               "model": MODEL, "dimensions": 256,
                                                               "embedding": live_vec[0]})])

    restarted = EsMirror(client)
    vectors = Vectors(restarted, b, enc)
    emb, dims = await vectors.for_alias(alias)
    resumed = restarted.migrations[alias]
    assert isinstance(resumed, Reembedding) and resumed.resumed and resumed.target == mig.target
    assert (emb, dims) == (b, 256), "live changes are embedded for the generation being filled"
    async with asyncio.timeout(120):
        while alias in restarted.migrations:
            await asyncio.sleep(0.2)
    assert sorted((await client.indices.get_alias(name=alias)).body) == [mig.target]
    assert not await client.indices.exists(index=mig.source)
    await client.indices.refresh(index=alias)
    found = await client.search(index=alias, size=100, source_includes=["text", "dimensions"])
    docs = {h["_id"]: h["_source"] for h in found["hits"]["hits"]}
    assert len(docs) == len(texts) and {d["dimensions"] for d in docs.values()} == {256}
    assert docs["c1"]["text"] == "the invoice was corrected"
    assert resumed.reembedded == len(texts) - 1
    assert (await vectors.for_alias(alias)) == (b, 256)
    assert (await serving_model(client, alias))[1:] == (MODEL, 256)
