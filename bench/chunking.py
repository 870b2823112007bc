"""Chunking speed and embedding-request fill.

* ``chunking`` (CPU only, no stack): ``cdcstream.pipeline.chunking.Chunker`` tokens/s vs tiktoken's
  ``encode_ordinary`` alone on the same texts (articles assembled from this repository's
  docs/*.md paragraphs). Both count the same tokens; the ratio is chunker rate / encode rate.
* ``request-fill``: a backlog of ``full``-profile rows (Debezium create events preloaded
  into a fresh topic) processed by the real worker against a **private** embeddings server
  (cdcstream/stack/embedserver.py on a free loopback port, so other test runs sharing the
  stack's server cannot disturb the counts). Fill = inputs per request / ``embed_max_inputs``
  (tokens per request are far below the 300k request limit, so inputs bind). Counted by
  the server itself (/stats) and by the worker (its ``embed_*`` counters); they must agree.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

from bench import common
from bench.common import Es, WorkerProc, median
from tests.support import delete_topics, free_port, topics_starting, wait_until

CHUNK_TARGET = 0.8  # issue 19 (0.5 before)
FILL_TARGET = 0.9


def corpus_paragraphs() -> list[str]:
    """Real technical prose: the paragraphs of this repository's docs/*.md."""
    import re

    paras: list[str] = []
    for p in sorted((common.ROOT / "docs").glob("*.md")):
        paras += [x.strip() for x in re.split(r"\n[ \t]*\n+", p.read_text()) if len(x.strip()) > 40]
    return paras


def articles(n: int, seed: int, min_paras: int = 3, max_paras: int = 12, tag: str = "",
             max_chars: int | None = None) -> list[str]:
    rng = random.Random(seed)  # noqa: S311 - test data
    paras = corpus_paragraphs()
    out = []
    for i in range(n):
        picked = [rng.choice(paras)[:max_chars] for _ in range(rng.randint(min_paras, max_paras))]
        # A tag makes every paragraph (so every chunk) unique to this run and article.
        out.append("\n\n".join(f"{p} [{tag}-{i}]" if tag else p for p in picked))
    return out


# --- chunking ------------------------------------------------------------------------------
class Chunking:
    name = "chunking"

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        from cdcstream.core.settings import Settings
        from cdcstream.pipeline.chunking import Chunker
        from cdcstream.pipeline.tokens import get_encoding

        n = events or (2000 if size == "full" else 100)
        runs = 5 if size == "full" else 1
        texts = articles(n, seed=11)
        enc = get_encoding()
        s = Settings()
        chunker = Chunker(enc, s.effective_chunk_tokens, s.effective_chunk_overlap)
        tokens = sum(len(enc.encode_ordinary(t)) for t in texts)  # warm-up and the token count
        enc_times: list[float] = []
        chunk_times: list[float] = []
        chunks = chunk_tokens = 0
        for r in range(runs):
            # Alternate the order: neither side always runs on a warmer cache.
            for which in (("enc", "chunk") if r % 2 == 0 else ("chunk", "enc")):
                t0 = time.perf_counter()
                if which == "enc":
                    for t in texts:
                        enc.encode_ordinary(t)
                    enc_times.append(time.perf_counter() - t0)
                else:
                    out = [chunker.chunk("body", t) for t in texts]
                    chunk_times.append(time.perf_counter() - t0)
                    chunks = sum(len(o) for o in out)
                    chunk_tokens = sum(c.tokens for o in out for c in o)
        enc_rates = [tokens / t for t in enc_times]
        chunk_rates = [tokens / t for t in chunk_times]
        return {
            "scenario": "chunking", "size": size, "runs": runs, "texts": n,
            "chars": sum(len(t) for t in texts), "tokens": tokens, "chunks": chunks,
            "chunk_tokens_total": chunk_tokens, "chunk_max_tokens": s.effective_chunk_tokens,
            "chunk_overlap": s.effective_chunk_overlap, "encoding": "cl100k_base",
            "tiktoken_tokens_per_s": [round(x) for x in enc_rates],
            "chunker_tokens_per_s": [round(x) for x in chunk_rates],
            "median_tiktoken_tokens_per_s": round(median(enc_rates)),
            "median_chunker_tokens_per_s": round(median(chunk_rates)),
            "ratio": round(median(chunk_rates) / median(enc_rates), 3),
            "ratio_median_of_runs": round(median([c / e for c, e in zip(chunk_rates, enc_rates, strict=True)]), 3),
            "target_ratio": CHUNK_TARGET,
        }

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return "\n".join([
            f"### Chunking ({r['size']}: {r['texts']} articles, {r['tokens']} cl100k tokens; median of "
            f"{r['runs']} runs)", "",
            "Texts: articles of 3–12 paragraphs drawn from docs/*.md. Baseline: tiktoken "
            "`encode_ordinary` over each whole article. cdcstream: `Chunker.chunk` with the default settings "
            f"({r['chunk_max_tokens']}-token chunks, {r['chunk_overlap']}-token window overlap), which encodes "
            "paragraph by paragraph, decodes token windows of long paragraphs and hashes every paragraph and chunk.",
            "",
            "| measure (median) | value |", "|---|---|",
            f"| tiktoken encode alone | {r['median_tiktoken_tokens_per_s']:,} tokens/s |",
            f"| cdcstream chunker | {r['median_chunker_tokens_per_s']:,} tokens/s |",
            f"| ratio (target ≥ {r['target_ratio']}) | {r['ratio']:.2f} (median of per-run ratios "
            f"{r['ratio_median_of_runs']:.2f}) |",
            f"| chunks produced | {r['chunks']} ({r['chunk_tokens_total'] / max(r['chunks'], 1):.0f} tokens each "
            f"on average) |",
            "", "![chunking](img/bench-chunking.png)", "",
        ])

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        plt = common.pyplot()
        path = common.plot_path("chunking")
        fig, ax = plt.subplots(figsize=(6, 3.2))
        vals = [r["median_tiktoken_tokens_per_s"], r["median_chunker_tokens_per_s"]]
        ax.bar(["tiktoken encode", "cdcstream chunker"], vals, color=["#8c8c8c", "#4c72b0"])
        for i, key in enumerate(("tiktoken_tokens_per_s", "chunker_tokens_per_s")):
            ax.scatter([i] * len(r[key]), r[key], color="black", s=12, zorder=3)
        ax.set_ylabel("tokens/s")
        ax.set_title(f"chunking, {r['tokens']} tokens, median of {r['runs']} (dots: runs); ratio {r['ratio']:.2f}",
                     fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


# --- request fill --------------------------------------------------------------------------
class PrivateEmbeddings:
    """The stack's embeddings server program, started on a free loopback port for this run only."""

    def __init__(self, tmp: Path, threads: int = 2) -> None:
        from cdcstream.stack.base import StackPaths
        from cdcstream.stack.services.embeddings import EmbeddingsService

        self.port = free_port()
        svc = EmbeddingsService(StackPaths())
        script = common.ROOT / "cdcstream" / "stack" / "embedserver.py"
        self.log = (tmp / "embeddings.log").open("ab")
        self.proc = subprocess.Popen([str(svc.python), str(script), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--threads", str(threads)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200,
                   120, what="the private embeddings server healthy",
                   abort=lambda: "private embeddings server exited at start" if self.proc.poll() is not None else None)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        return dict(requests.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json())

    def stop(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(20)
        self.log.close()


def _title(body: str) -> str:
    first = body.split("\n", 1)[0]
    tag = body[body.rfind(" ["):]  # every paragraph ends with " [<run tag>-<article>]": titles stay unique
    return f"{first[:60]}{tag}"


def _article_events(prefix: str, texts: list[str]) -> list[tuple[bytes, bytes | None]]:
    """Debezium create events of public.articles (id, title, body, category)."""
    name = f"{prefix}.public.articles"

    def f(t: str, n: str, opt: bool) -> dict[str, Any]:
        return {"type": t, "optional": opt, "field": n}

    row = {"type": "struct", "optional": True, "name": f"{name}.Value",
           "fields": [f("int32", "id", False), f("string", "title", False), f("string", "body", False),
                      f("string", "category", False)]}
    src = {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source", "field": "source",
           "fields": [f("string", "version", False), f("string", "connector", False), f("string", "name", False),
                      f("int64", "ts_ms", False), f("string", "snapshot", True), f("string", "db", False),
                      f("string", "sequence", True), f("string", "schema", False), f("string", "table", False),
                      f("int64", "txId", True), f("int64", "lsn", True)]}
    vschema = {"type": "struct", "optional": False, "name": f"{name}.Envelope", "version": 2,
               "fields": [{**row, "field": "before"}, {**row, "field": "after"}, src, f("string", "op", False),
                          f("int64", "ts_ms", True)]}
    kschema = {"type": "struct", "optional": False, "name": f"{name}.Key", "fields": [f("int32", "id", False)]}
    out: list[tuple[bytes, bytes | None]] = []
    lsn = 30_000_000
    for i, body in enumerate(texts, start=1):
        lsn += 512
        now = int(time.time() * 1000)
        after = {"id": i, "title": _title(body), "body": body, "category": "docs"}
        payload = {"before": None, "after": after, "op": "c", "ts_ms": now,
                   "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": prefix, "ts_ms": now,
                              "snapshot": "false", "db": "kb", "sequence": json.dumps([None, str(lsn)]),
                              "schema": "public", "table": "articles", "txId": 900 + i, "lsn": lsn}}
        out.append((json.dumps({"schema": kschema, "payload": {"id": i}}, separators=(",", ":")).encode(),
                    json.dumps({"schema": vschema, "payload": payload}, separators=(",", ":")).encode()))
    return out


def _sample_requests(server: PrivateEmbeddings, sizes: list[float], stop: threading.Event) -> None:
    """Per-request input counts from /stats deltas (a request takes seconds on the CPU model, so
    a 0.2 s poll sees them one by one; when two land between polls, each gets their mean)."""
    last = {"requests": 0, "inputs": 0}
    while not stop.is_set():
        with contextlib.suppress(requests.RequestException, ValueError):
            now = server.stats()
            dr, di = now["requests"] - last["requests"], now["inputs"] - last["inputs"]
            if dr > 0:
                sizes += [round(di / dr, 1)] * dr
                last = now
        stop.wait(0.2)


class RequestFill:
    name = "request-fill"

    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        from cdcstream.core.settings import Settings
        from cdcstream.pipeline.chunking import Chunker
        from cdcstream.pipeline.tokens import get_encoding

        rows = events or (600 if size == "full" else 40)
        st = common.stack()
        es = Es(st["elasticsearch"]["url"])
        tag = common.new_tag()
        prefix = f"bench-{tag}"
        # Texts unique to this run: the shared embedding cache must not answer for them.
        # Short rows (a title and a 1-2 paragraph description, ~60-120 tokens): the CPU model behind
        # the local server embeds ~2-10 inputs/s, and fill depends on the count of inputs, not their length.
        texts = articles(rows, seed=int(tag, 16), min_paras=1, max_paras=2, tag=tag, max_chars=300)
        s = Settings()
        chunker = Chunker(get_encoding(), s.effective_chunk_tokens, s.effective_chunk_overlap)
        hashes: set[str] = set()
        chunk_docs = 0
        for t in texts:
            for col, v in (("title", _title(t)), ("body", t)):
                cs = chunker.chunk(col, v)
                chunk_docs += len(cs)
                hashes.update(c.hash for c in cs)
        app_id = f"{prefix}-w"
        index = f"{prefix}-articles"
        result: dict[str, Any] = {"scenario": "request-fill", "size": size, "runs": 1, "rows": rows,
                                  "distinct_chunks": len(hashes), "chunk_docs": chunk_docs,
                                  "embed_max_inputs": s.embed_max_inputs,
                                  "embed_max_request_tokens": 300_000, "embed_concurrency": s.embed_concurrency,
                                  "batch_size": s.batch_size, "chunk_max_tokens": s.effective_chunk_tokens}
        with tempfile.TemporaryDirectory(prefix="bench-") as d:
            tmp = Path(d)
            server = PrivateEmbeddings(tmp)
            w: WorkerProc | None = None
            try:
                records = _article_events(prefix, texts)
                topic = f"{prefix}.public.articles"
                result["preload_s"] = round(common.preload(topic, 4, records), 1)
                cfg = tmp / "cfg.json"
                common.worker_config(cfg, app_id, prefix, [{"name": "public.articles", "profile": "full",
                                                            "text_columns": ["title", "body"], "index": index}])
                env = common.worker_env(app_id, cfg, 4, elasticsearch_url=st["elasticsearch"]["url"]
                                        .replace("http://", "es://"),
                                        embed_url=server.base_url.replace("http://", "openai://"),
                                        embed_model=st["embeddings"]["model"],
                                        embed_dimensions=str(st["embeddings"]["dimensions"]))
                w = WorkerProc(tmp, app_id, env)
                t0 = time.monotonic()
                w.start()
                sizes: list[float] = []  # inputs of each request, from the server's counters
                stop = threading.Event()
                sampler = threading.Thread(target=_sample_requests, args=(server, sizes, stop), daemon=True)
                sampler.start()

                def progress() -> tuple[int, bool]:
                    n, _ = es.count_and_sum(f"{index}-chunks", "tokens")
                    docs, _ = es.count_and_sum(index, "id")
                    return n, docs == rows and n == chunk_docs  # every row and every chunk stored

                try:
                    vis = common.watch(progress, t0, 3600 if size == "full" else 300, every=1.0, alive=w.alive)
                finally:
                    stop.set()
                    sampler.join(10)
                result["request_sizes"] = sizes
                result["elapsed_s"] = round(vis.done_s or 0, 1)
                time.sleep(1.5)  # the stats table is written right after the batch
                srv = server.stats()
                tables = w.api("/api/tables")["tables"]
                stats = next(t["stats"] for t in tables)
                chunks_stored, _ = es.count_and_sum(f"{index}-chunks", "tokens")
                result.update({
                    "chunks_stored": chunks_stored,
                    "server_requests": srv["requests"], "server_inputs": srv["inputs"],
                    "server_tokens": srv["tokens"],
                    "worker_requests": int(stats.get("embed_requests", 0)),
                    "worker_inputs": int(stats.get("embed_inputs", 0)),
                    "worker_tokens_cl100k": int(stats.get("embed_tokens", 0)),
                })
                req = max(srv["requests"], 1)
                result["inputs_per_request"] = round(srv["inputs"] / req, 2)
                result["tokens_per_request_cl100k"] = round(result["worker_tokens_cl100k"] / max(
                    result["worker_requests"], 1), 1)
                result["fill_inputs"] = round(srv["inputs"] / (req * s.embed_max_inputs), 4)
                result["fill_tokens"] = round(result["tokens_per_request_cl100k"] / 300_000, 4)
                # The floor packing allows: every batch's last request is partial.
                result["min_requests_possible"] = -(-srv["inputs"] // s.embed_max_inputs)
                result["target_fill"] = FILL_TARGET
            except Exception:
                if w is not None:
                    print(w.tail(), file=sys.stderr)
                raise
            finally:
                if w is not None:
                    w.stop()
                server.stop()
                _cleanup_fill(prefix, es, app_id, hashes, st)
        return result

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return "\n".join([
            f"### Embedding request fill ({r['size']}: backlog of {r['rows']} full-profile rows, "
            f"{r['distinct_chunks']} chunks; one run, so a single figure, not a median)",
            "",
            "The rows are preloaded into the topic before the worker starts (a backlog), so each batch (up to "
            f"`batch_size` = {r['batch_size']} rows) is filled from it. Counted by a private embeddings server (its "
            "/stats, polled every 0.2 s for the per-request sizes in the plot) and by the worker.", "",
            "| measure | value |", "|---|---|",
            f"| requests / inputs the server received | {r['server_requests']} / {r['server_inputs']} |",
            f"| requests / inputs the worker counted | {r['worker_requests']} / {r['worker_inputs']} |",
            f"| fewest requests possible at {r['embed_max_inputs']} inputs each | {r['min_requests_possible']} |",
            f"| inputs per request (limit `embed_max_inputs` = {r['embed_max_inputs']}) | {r['inputs_per_request']} |",
            f"| **fill** (inputs / limit, target ≥ 90%) | **{r['fill_inputs']:.1%}** |",
            f"| cl100k tokens per request (limit 300,000 per request) | {r['tokens_per_request_cl100k']:.0f} "
            f"({r['fill_tokens']:.1%}) |",
            f"| wall time (worker start → every chunk stored) | {r['elapsed_s']} s |",
            "", "![request-fill](img/bench-request-fill.png)", "",
        ])

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        plt = common.pyplot()
        path = common.plot_path("request-fill")
        sizes = r.get("request_sizes") or [r["inputs_per_request"]] * r["server_requests"]
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.bar(range(1, len(sizes) + 1), sizes, color="#4c72b0")
        ax.axhline(r["embed_max_inputs"], color="black", linestyle="--", label=f"limit {r['embed_max_inputs']}")
        ax.axhline(r["embed_max_inputs"] * FILL_TARGET, color="#c44e52", linestyle=":", label="90% of the limit")
        ax.set_ylim(0, r["embed_max_inputs"] * 1.2)
        ax.set_xlabel("request (in order of arrival at the server)")
        ax.set_ylabel("inputs")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"request fill {r['fill_inputs']:.1%}: {r['server_inputs']} inputs in {r['server_requests']} "
                     f"requests ({r['rows']} rows, one run)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]


def _cleanup_fill(prefix: str, es: Es, app_id: str, hashes: set[str], st: dict[str, Any]) -> None:
    from cdcstream.pipeline.processor import EMBED_CACHE_INDEX, cache_key

    # This run's vectors in the shared embedding cache, by exact id.
    model, dims = st["embeddings"]["model"], int(st["embeddings"]["dimensions"])
    ids = [cache_key(model, dims, h) for h in hashes]
    with contextlib.suppress(Exception):
        for i in range(0, len(ids), 1000):
            body = "".join(json.dumps({"delete": {"_index": EMBED_CACHE_INDEX, "_id": x}}) + "\n"
                           for x in ids[i:i + 1000])
            es.s.post(f"{es.url}/_bulk", data=body, headers={"Content-Type": "application/x-ndjson"}, timeout=60)
    with contextlib.suppress(Exception):
        es.delete_matching(f"{prefix}-*")
    with contextlib.suppress(Exception):
        delete_topics(topics_starting(prefix))
    common.delete_consumer_groups([app_id])

