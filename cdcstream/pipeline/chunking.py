"""Paragraph-aware chunking with tiktoken.

Chunks are built from whole paragraphs (blank-line separated) up to ``max_tokens``; a
paragraph longer than that is cut into token windows that overlap by ``overlap`` tokens.
Packing closes a chunk early after a paragraph whose content hash is a "cut point", so
after an edit the chunk boundaries fall back into step right behind the edited paragraph
(content-defined chunking): an edit of one paragraph changes one or two chunks, not every
chunk after it. Chunks of paragraphs carry no overlap with each other for the same reason.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import tiktoken

_PARA = re.compile(r"\n[ \t]*\n+")


@dataclass(frozen=True, slots=True)
class Chunk:
    column: str
    n: int
    text: str
    tokens: int

    @property
    def hash(self) -> str:
        return chunk_hash(self.text)


def chunk_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cut_point(paragraph: str) -> bool:
    return hashlib.blake2b(paragraph.encode(), digest_size=2).digest()[0] % 4 == 0


class Chunker:
    def __init__(self, encoding: tiktoken.Encoding, max_tokens: int = 256, overlap: int = 32) -> None:
        if max_tokens < 16:
            raise ValueError(f"chunk max_tokens {max_tokens} is too small (min 16)")
        if not 0 <= overlap < max_tokens // 2:
            raise ValueError(f"chunk overlap {overlap} must be between 0 and half of max_tokens ({max_tokens})")
        self.enc = encoding
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.min_tokens = max_tokens // 4
        self.tokens_seen = 0  # tokens counted, for throughput stats

    def chunk(self, column: str, text: str | None) -> list[Chunk]:
        if not text or not text.strip():
            return []
        pieces: list[tuple[str, int]] = []  # (text, tokens) of units no longer than max_tokens
        for para in (p.strip() for p in _PARA.split(text)):
            if not para:
                continue
            ids = self.enc.encode_ordinary(para)
            self.tokens_seen += len(ids)
            if len(ids) <= self.max_tokens:
                pieces.append((para, len(ids)))
                continue
            step = self.max_tokens - self.overlap
            for start in range(0, len(ids), step):
                window = ids[start:start + self.max_tokens]
                pieces.append((self.enc.decode(window), len(window)))
                if start + self.max_tokens >= len(ids):
                    break
        chunks: list[Chunk] = []
        cur: list[str] = []
        cur_tokens = 0

        def close() -> None:
            nonlocal cur, cur_tokens
            if cur:
                chunks.append(Chunk(column, len(chunks), "\n\n".join(cur), cur_tokens))
            cur, cur_tokens = [], 0

        for piece, n in pieces:
            # +2 tokens: the blank line joining paragraphs.
            if cur and cur_tokens + n + 2 > self.max_tokens:
                close()
            cur.append(piece)
            cur_tokens += n + (2 if len(cur) > 1 else 0)
            if cur_tokens >= self.min_tokens and _cut_point(piece):
                close()
        close()
        return chunks
