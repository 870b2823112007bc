"""The embeddings server is a real model: served dimension, and meaning-aware distances."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import requests
from openai import OpenAI

pytestmark = pytest.mark.integration


def _client(info: dict[str, Any]) -> OpenAI:
    return OpenAI(base_url=info["base_url"], api_key=info["api_key"])


def test_embeddings_have_served_dimension(require: Callable[[str], dict[str, Any]]) -> None:
    info = require("embeddings")
    resp = _client(info).embeddings.create(model=info["model"], input=["passage: a short text", "another"])
    assert len(resp.data) == 2
    assert all(len(d.embedding) == info["dimensions"] for d in resp.data)
    assert resp.usage.prompt_tokens > 0


def test_paraphrases_score_closer_than_unrelated(require: Callable[[str], dict[str, Any]]) -> None:
    info = require("embeddings")
    texts = [
        "The invoice was paid late because the bank transfer failed.",
        "Payment of the bill was delayed since the wire transfer did not go through.",
        "Penguins huddle together to survive the Antarctic winter.",
    ]
    resp = _client(info).embeddings.create(model=info["model"], input=texts)
    a, b, c = (d.embedding for d in resp.data)

    def cos(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True)) / (math.hypot(*x) * math.hypot(*y))

    assert cos(a, b) > cos(a, c)
    assert cos(a, b) > cos(b, c)


def test_server_counts_what_it_received(require: Callable[[str], dict[str, Any]]) -> None:
    """Later tests prove "never pay twice" with these server-side counters."""
    info = require("embeddings")
    before = requests.get(info["stats_url"], timeout=5).json()
    _client(info).embeddings.create(model=info["model"], input=["one", "two", "three"])
    after = requests.get(info["stats_url"], timeout=5).json()
    assert after["requests"] - before["requests"] == 1
    assert after["inputs"] - before["inputs"] == 3
    assert after["tokens"] > before["tokens"]
