"""The sink contracts: what the pipeline may ask of the mirror and of the archive store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True)
class ArchiveObject:
    name: str
    body: bytes
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    records: int


class ArchiveStore(Protocol):
    url: str

    async def put(self, obj: ArchiveObject) -> None: ...

    async def list(self, prefix: str = "") -> list[str]: ...

    async def get(self, name: str) -> bytes: ...

