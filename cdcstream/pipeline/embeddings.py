"""Embeddings through the ``openai`` client (any OpenAI-compatible ``base_url``).

Requests are packed up to the API's limits (inputs, tokens per request, tokens per
input, or the served model's lower ones), run with a concurrency cap under a
tokens-per-minute budget, and retried with backoff that honours ``Retry-After``.
Everything is async: nothing here blocks Faust's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from openai import AsyncOpenAI

from cdcstream.sinks.base import OnWait

log = logging.getLogger(__name__)

# OpenAI's documented limits for /v1/embeddings.
OPENAI_MAX_INPUTS = 2048
OPENAI_MAX_REQUEST_TOKENS = 300_000
OPENAI_MAX_INPUT_TOKENS = 8192


@dataclass
class EmbedStats:
    requests: int = 0
    inputs: int = 0
    tokens: int = 0  # as counted by our tokenizer before sending
    usage_tokens: int = 0  # as reported by the server
    retries: int = 0
    rate_limited: int = 0
    request_fill: list[float] = field(default_factory=list)  # inputs/limit per request, for the benchmark


class EmbeddingError(RuntimeError):
    pass


class TokenBudget:
    """A tokens-per-minute bucket shared by all requests of one worker."""

    def __init__(self, tokens_per_minute: int | None) -> None:
        self.rate = tokens_per_minute
        self.available = float(tokens_per_minute or 0)
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, tokens: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.available = min(float(self.rate), self.available + (now - self.updated) * self.rate / 60)
                self.updated = now
                # A request bigger than the whole budget waits for a full bucket, then goes.
                need = min(tokens, self.rate)
                if self.available >= need:
                    self.available -= tokens
                    return
                await asyncio.sleep((need - self.available) * 60 / self.rate)


class Embedder:
    def __init__(self, client: AsyncOpenAI, model: str, *, dimensions: int | None = None,
                 max_inputs: int = OPENAI_MAX_INPUTS, max_request_tokens: int = OPENAI_MAX_REQUEST_TOKENS,
                 max_input_tokens: int = OPENAI_MAX_INPUT_TOKENS, concurrency: int = 4,
                 tokens_per_minute: int | None = None, max_attempts: int | None = None,
                 send_dimensions: bool = False, on_wait: OnWait | None = None) -> None:
        self.client = client
        self.on_wait = on_wait
        self.model = model
        self.dimensions = dimensions
        self.max_inputs = min(max_inputs, OPENAI_MAX_INPUTS)
        self.max_request_tokens = min(max_request_tokens, OPENAI_MAX_REQUEST_TOKENS)
        self.max_input_tokens = min(max_input_tokens, OPENAI_MAX_INPUT_TOKENS)
        self.sem = asyncio.Semaphore(concurrency)
        self.budget = TokenBudget(tokens_per_minute)
        self.max_attempts = max_attempts
        # Only text-embedding-3-* accept `dimensions`; other servers may reject it.
        self.send_dimensions = send_dimensions
        self.stats = EmbedStats()

    def variant(self, model: str, dimensions: int | None) -> Embedder:
        """This embedder (client, limits, concurrency and stats shared) for another model or
        size: a chunks index still served by vectors of the previous settings
        (``pipeline/reembed.py``). ``dimensions`` is sent when it is not the configured size:
        the server's default is then the wrong one."""
        other = copy.copy(self)
        other.model, other.dimensions = model, dimensions
        other.send_dimensions = self.send_dimensions or dimensions != self.dimensions
        return other

    def batches(self, token_counts: Sequence[int]) -> list[list[int]]:
        """Index groups filling requests up to the input and token limits, in order."""
        out: list[list[int]] = []
        cur: list[int] = []
        cur_tokens = 0
        for i, n in enumerate(token_counts):
            if n > self.max_input_tokens:
                raise EmbeddingError(f"input {i} has {n} tokens; the model takes at most {self.max_input_tokens}")
            if cur and (len(cur) >= self.max_inputs or cur_tokens + n > self.max_request_tokens):
                out.append(cur)
                cur, cur_tokens = [], 0
            cur.append(i)
            cur_tokens += n
        if cur:
            out.append(cur)
        return out

    async def embed(self, texts: Sequence[str], token_counts: Sequence[int]) -> list[list[float]]:
        return (await self.embed_counted(texts, token_counts))[0]

    async def embed_counted(self, texts: Sequence[str], token_counts: Sequence[int]) -> tuple[list[list[float]], int]:
        """The vectors and the tokens the server says it counted (``usage.prompt_tokens``; our
        own count for a server that reports none)."""
        groups = self.batches(token_counts)
        results: list[list[float]] = [[] for _ in texts]
        used = 0

        async def run(group: list[int]) -> None:
            nonlocal used
            vecs, usage = await self._request([texts[i] for i in group], sum(token_counts[i] for i in group))
            used += usage
            for i, v in zip(group, vecs, strict=True):
                results[i] = v

        await asyncio.gather(*(run(g) for g in groups))
        return results, used

    async def _request(self, inputs: list[str], tokens: int) -> tuple[list[list[float]], int]:
        await self.budget.take(tokens)
        backoff = 1.0
        # None: retry until the API answers. An outage or a 429 storm pauses the stream (the
        # events wait in Kafka); giving up would send good rows to the DLQ for a server's fault.
        attempts = itertools.count(1) if self.max_attempts is None else range(1, self.max_attempts + 1)
        for attempt in attempts:
            async with self.sem:
                try:
                    kwargs: dict[str, object] = {}
                    if self.send_dimensions and self.dimensions:
                        kwargs["dimensions"] = self.dimensions
                    resp = await self.client.embeddings.create(model=self.model, input=inputs, **kwargs)  # type: ignore[arg-type]
                except openai.RateLimitError as e:
                    self.stats.rate_limited += 1
                    wait = _retry_after(e) or backoff
                    # What the runbook's "Embedding 429s" check looks for in the worker log.
                    log.warning("embeddings: rate limited (HTTP 429, %d so far); retrying in %.0fs",
                                self.stats.rate_limited, wait)
                    if self.on_wait is not None:
                        self.on_wait("embeddings", e, "rate limited")
                except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError) as e:
                    wait = backoff
                    log.warning("embeddings: %s; retrying", type(e).__name__)
                    if self.on_wait is not None:
                        self.on_wait("embeddings", e, type(e).__name__)
                else:
                    self.stats.requests += 1
                    self.stats.inputs += len(inputs)
                    self.stats.tokens += tokens
                    usage = resp.usage.prompt_tokens if resp.usage and resp.usage.prompt_tokens else tokens
                    self.stats.usage_tokens += usage
                    self.stats.request_fill.append(max(len(inputs) / self.max_inputs, tokens / self.max_request_tokens))
                    vecs = [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
                    if self.dimensions and vecs and len(vecs[0]) != self.dimensions:
                        raise EmbeddingError(f"model {self.model} returned {len(vecs[0])} dimensions, "
                                             f"configured {self.dimensions}")
                    return vecs, usage
            if attempt == self.max_attempts:
                break
            self.stats.retries += 1
            # Jitter upwards only: retrying before the server's Retry-After just earns another 429.
            await asyncio.sleep(wait * (1.0 + 0.25 * random.random()))  # noqa: S311 - jitter
            backoff = min(backoff * 2, 60)
        raise EmbeddingError(f"embeddings: gave up after {self.max_attempts} attempts")


def _retry_after(e: openai.APIStatusError) -> float | None:
    h = e.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        v = h.get(name)
        if v:
            try:
                return float(v) * scale
            except ValueError:
                return None
    return None
