"""Embedding cost of an update-heavy workload vs a re-embed-every-change baseline.

Workload: N articles, then U rounds of updates over all of them; in each round 20% of the
updates edit one paragraph of the body and 80% change a non-text column.
Measured: tokens the embeddings server itself received (its /stats counters).
Baseline: computed independently from the event log — every c/u/r event of the table read
back from Kafka, its text columns chunked with the same chunker, all chunk tokens summed:
what a pipeline that re-embeds every change would have sent.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from cdcstream.core.settings import Settings
from cdcstream.pipeline.chunking import Chunker
from cdcstream.pipeline.decode import decode
from cdcstream.pipeline.tokens import get_encoding

WORDS = ("replication slot publication snapshot offset partition mirror chunk vector index alias "
         "connector worker topic schema column table row update delete insert").split()


def paragraph(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def body(rng: random.Random) -> str:
    return "\n\n".join(paragraph(rng, rng.randint(20, 45)) for _ in range(4))


async def baseline_tokens(topic: str, chunker: Chunker, text_columns: tuple[str, ...]) -> tuple[int, int]:
    c = AIOKafkaConsumer(topic, bootstrap_servers="127.0.0.1:9092", auto_offset_reset="earliest",
                         enable_auto_commit=False)
    await c.start()
    tokens = events = 0
    try:
        idle = 0
        while idle < 4:
            got = await c.getmany(timeout_ms=500)
            if not got:
                idle += 1
                continue
            idle = 0
            for recs in got.values():
                for r in recs:
                    ev = decode(r.key, r.value)
                    if ev is None or ev.after is None:
                        continue
                    events += 1
                    for col in text_columns:
                        tokens += sum(ch.tokens for ch in chunker.chunk(col, ev.after.get(col)))
    finally:
        await c.stop()
    return tokens, events


def run(size: str) -> dict[str, Any]:
    from cdcstream.stack.manager import Stack
    from tests.e2e.harness import pipeline

    rows, rounds = (1000, 10) if size == "full" else (40, 3)
    st = {s.name: s.as_dict() for s in Stack().status()}
    tables = [{"name": "public.articles", "profile": "full", "text_columns": ["title", "body"]}]
    with tempfile.TemporaryDirectory() as d, pipeline(Path(d), st["postgres"], st["elasticsearch"],
                                                        st["embeddings"], tables) as p:
        # Texts unique to this run: the embedding cache would serve an earlier run's vectors.
        rng = random.Random(p.tag)  # noqa: S311 - test data, not crypto
        bodies = {i: body(rng) for i in range(1, rows + 1)}
        categories = dict.fromkeys(bodies, "general")
        for i, b in bodies.items():
            p.sql("INSERT INTO articles VALUES (%s, %s, %s, 'general')", (i, f"Article {i} {p.tag}", b))
        start = p.embed_stats()
        p.apply()
        p.start_worker()
        t0 = time.monotonic()
        p.wait("initial chunks", lambda: len(p.docs("articles")) == rows, timeout=3600)
        for r in range(rounds):
            for i in range(1, rows + 1):
                if rng.random() < 0.2:
                    paras = bodies[i].split("\n\n")
                    k = rng.randrange(len(paras))
                    paras[k] = paragraph(rng, rng.randint(20, 45))
                    bodies[i] = "\n\n".join(paras)
                    p.sql("UPDATE articles SET body = %s WHERE id = %s", (bodies[i], i))
                else:
                    categories[i] = f"c{r}"
                    p.sql("UPDATE articles SET category = %s WHERE id = %s", (categories[i], i))

        def mirrored() -> bool:
            # Every row's final state, not "some change happened": a row may never get a
            # category update (20% text edits per round).
            docs = p.docs("articles")
            return all(docs.get(str(i), {}).get("body") == b and docs[str(i)].get("category") == categories[i]
                       for i, b in bodies.items())

        p.wait("all updates", mirrored, timeout=3600 if size == "full" else 300)
        # Let the last batches finish embedding.
        settle = p.embed_stats()
        while True:
            time.sleep(3)
            now = p.embed_stats()
            if now["tokens"] == settle["tokens"]:
                break
            settle = now
        elapsed = time.monotonic() - t0
        sent = settle["tokens"] - start["tokens"]
        # Chunk the baseline exactly as the worker did (the harness sets CDCSTREAM_CHUNK_TOKENS).
        s = Settings(chunk_tokens=int(p.env["CDCSTREAM_CHUNK_TOKENS"]))
        chunker = Chunker(get_encoding(), s.effective_chunk_tokens, s.effective_chunk_overlap)
        base_cl100k, events = asyncio.run(baseline_tokens(p.topic("articles"), chunker, ("title", "body")))
        # The server counts with its own tokenizer (e5/XLM-R); convert the baseline with the ratio
        # observed on the initial load, where both pipelines send every chunk exactly once.
        try:
            stats = {t["name"].split(".")[-1]: t["stats"] for t in p.api("/api/tables")["tables"]}["articles"]
        except Exception:
            print(p.worker_log())
            raise
        sent_cl100k = stats.get("embed_tokens", 0)
        saved_cl100k = stats.get("tokens_saved", 0)
        result = {
            "scenario": "embedding-cost", "size": size, "rows": rows, "update_rounds": rounds,
            "text_edit_share": 0.2, "change_events": events,
            "baseline_tokens_cl100k": base_cl100k,
            "pipeline_tokens_cl100k": sent_cl100k,
            "pipeline_tokens_saved_cl100k": saved_cl100k,
            "server_tokens_received": sent,
            "server_requests": settle["requests"] - start["requests"],
            "server_inputs": settle["inputs"] - start["inputs"],
            "reduction_vs_baseline": round(1 - sent_cl100k / base_cl100k, 4) if base_cl100k else None,
            "elapsed_s": round(elapsed, 1),
        }
    return result


def markdown(r: dict[str, Any]) -> str:
    return "\n".join([
        f"### Embedding cost ({r['size']}: {r['rows']} rows × {r['update_rounds']} update rounds, "
        f"{int(r['text_edit_share'] * 100)}% text edits; one run)",
        "",
        "| measure | value |", "|---|---|",
        f"| change events in the log | {r['change_events']} |",
        f"| re-embed-every-change baseline (cl100k tokens, from the event log) | {r['baseline_tokens_cl100k']} |",
        f"| tokens cdcstream sent (cl100k, worker counters) | {r['pipeline_tokens_cl100k']} |",
        f"| tokens the embeddings server received (its own tokenizer) | {r['server_tokens_received']} |",
        f"| requests / inputs the server received | {r['server_requests']} / {r['server_inputs']} |",
        f"| reduction vs baseline (target ≥ 90%) | {r['reduction_vs_baseline']:.1%} |",
        f"| wall time | {r['elapsed_s']} s |",
    ]) + "\n"


if __name__ == "__main__":
    print(json.dumps(run("smoke"), indent=2))
