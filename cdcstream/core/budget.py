"""Embedding token budgets: ``2M/day``, ``500k/hour``, ``300/minute`` (and ``300/20s`` for tests).

A budget is a number of tokens per period. Periods are aligned to UTC (the epoch): a day
budget opens at 00:00 UTC, an hour budget at every full hour, a ``/20s`` budget at every
multiple of 20 seconds since the epoch, so every worker agrees on when a period starts
without talking to the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PERIODS = {"minute": 60, "hour": 3600, "day": 86400}
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}
_BUDGET = re.compile(r"^\s*(?P<n>[0-9]+(?:\.[0-9]+)?)\s*(?P<suffix>[kKmM]?)\s*/\s*"
                     r"(?P<period>minute|hour|day|(?P<secs>[0-9]+)\s*s)\s*$")


class BudgetError(ValueError):
    """A budget that cannot be read; the message quotes it and says the form."""


@dataclass(frozen=True, slots=True)
class EmbedBudget:
    tokens: int
    period_s: int
    text: str

    @property
    def period(self) -> str:
        for name, secs in PERIODS.items():
            if secs == self.period_s:
                return name
        return f"{self.period_s}s"


def parse_budget(text: str, where: str = "embed_budget") -> EmbedBudget:
    """``N[k|M]/minute|hour|day`` or ``N[k|M]/<seconds>s``; k = 1,000, M = 1,000,000."""
    m = _BUDGET.match(text) if isinstance(text, str) else None
    if m is None:
        raise BudgetError(f"{where} {text!r}: expected tokens per period, e.g. 2M/day, 500k/hour, 300/minute "
                          f"(k = thousand, M = million; a period in seconds such as /20s is for tests)")
    tokens = float(m["n"]) * _SUFFIX[m["suffix"].lower()]
    if tokens < 1 or tokens != int(tokens):
        raise BudgetError(f"{where} {text!r}: the token count must be a whole number of at least 1")
    period_s = int(m["secs"]) if m["secs"] else PERIODS[m["period"]]
    if not 1 <= period_s <= 86400:
        raise BudgetError(f"{where} {text!r}: a period in seconds must be between 1 and 86400")
    return EmbedBudget(int(tokens), period_s, text.strip())


def period_start(now_s: float, period_s: int) -> int:
    """The start (epoch seconds) of the period holding ``now_s``, aligned to UTC."""
    return int(now_s // period_s) * period_s
