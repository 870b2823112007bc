"""The re-embed switch without a cluster: the gate between batches and the start of a re-embed,
and the embedder a chunks index still served by other vectors is written with."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from cdcstream.pipeline.embeddings import Embedder
from cdcstream.pipeline.reembed import Gate


async def test_a_switch_waits_for_batches_in_flight_and_holds_new_ones_back() -> None:
    # Without the gate a batch embedded for the old generation could write into the new one
    # (registered meanwhile), which refuses vectors of the other size: dead letters.
    gate, order = Gate(), []
    in_batch, release = asyncio.Event(), asyncio.Event()

    async def batch(name: str, hold: bool) -> None:
        async with gate.writing():
            order.append(f"{name} in")
            if hold:
                in_batch.set()
                await release.wait()
            order.append(f"{name} out")

    async def switch() -> None:
        async with gate.switching():
            order.append("switch")

    first = asyncio.create_task(batch("a", True))
    await in_batch.wait()
    switching = asyncio.create_task(switch())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(batch("b", False))
    await asyncio.sleep(0.01)
    assert order == ["a in"], "the switch waits for a; b waits for the switch"
    release.set()
    await asyncio.gather(first, switching, second)
    assert order == ["a in", "a out", "switch", "b in", "b out"]


def test_the_serving_generations_embedder_shares_the_client_and_sends_its_size() -> None:
    configured = Embedder(AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused"), "m", dimensions=256,
                          send_dimensions=True)
    old = configured.variant("m", 384)
    assert (old.model, old.dimensions, old.send_dimensions) == ("m", 384, True)
    assert old.client is configured.client and old.stats is configured.stats and old.sem is configured.sem
    assert (configured.model, configured.dimensions) == ("m", 256)
    native = Embedder(configured.client, "m", dimensions=384).variant("m", 256)
    assert native.send_dimensions, "the server's default size is the configured one, not this"
