"""Embedding token budgets: what each table (and all tables together) spent this period.

Spend is kept per (table, worker) in records ``{"table", "periods": {period_s: [start, tokens]}}``
that the runtime writes to a changelog-backed table and flushes *before* the tokens are sent,
so a restart (kill -9 included) finds what was spent. A table's spend in a period is the sum
over every worker's record for that table and period start; this worker's own record is read
from memory (the table's copy lags behind its changelog writes).

Tokens are reserved before a request and corrected to what the server reports after it
(``usage.prompt_tokens``): the reservation is exact for OpenAI's models (tiktoken counts as the
API bills) and an upper bound for served models with their own tokenizer (``margin``).
With several workers, each sees the others' spend as of their last changelog record, so two
workers reserving at the same instant can overshoot by one request each; one worker never does.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cdcstream.core.budget import EmbedBudget, period_start

log = logging.getLogger(__name__)

#: Share of a budget spent at which the log and /status warn (once per period).
WARN_AT = 0.8
#: Added per input when the model's tokenizer is not tiktoken's: e5 servers prefix
#: ``passage: `` and add start/end tokens.
INPUT_OVERHEAD = 8
#: The scope name of the budget over all tables together.
ALL = "*"


class BudgetLedger:
    def __init__(self, tables: Mapping[str, EmbedBudget], overall: EmbedBudget | None, owner: str,
                 records: Callable[[], Iterable[tuple[str, Any]]], *, exact: bool = True, margin: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.tables = dict(tables)
        self.overall = overall
        self.owner = owner
        self.records = records
        self.exact = exact
        self.margin = margin
        self.clock = clock
        # table -> period_s -> [start, tokens]: this worker's spend.
        self.own: dict[str, dict[int, list[int]]] = {}
        self.dirty: set[str] = set()
        # A table with chunks in the queue queues its new chunks behind them (oldest first).
        # Unknown at start (False only once a scan found the queue empty).
        self.backlog: dict[str, bool] = {}
        self.backlog_gen: dict[str, int] = {}
        self.queued: dict[str, tuple[int, int]] = {}  # table -> (chunks, tokens), as last counted
        self.warned: set[tuple[str, int]] = set()

    # --- what applies ---------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self.tables) or self.overall is not None

    def applies(self, table: str) -> bool:
        return table in self.tables or self.overall is not None

    def _budgets(self, table: str) -> list[tuple[str, EmbedBudget]]:
        out = []
        if table in self.tables:
            out.append((table, self.tables[table]))
        if self.overall is not None:
            out.append((ALL, self.overall))
        return out

    def estimate(self, tokens: int, inputs: int = 1) -> int:
        """Tokens reserved before sending ``inputs`` counted at ``tokens`` by tiktoken."""
        if self.exact:
            return tokens
        return math.ceil(tokens * self.margin) + INPUT_OVERHEAD * inputs

    # --- spend ----------------------------------------------------------------------------
    def key(self, table: str) -> str:
        return f"{table}|{self.owner}"

    def spent(self, scope: str, period_s: int, now: float | None = None) -> int:
        """Tokens spent by ``scope`` (a table key, or ALL) in the period holding ``now``."""
        start = period_start(self.clock() if now is None else now, period_s)
        total = 0
        for table, periods in self.own.items():
            if scope in (ALL, table):
                e = periods.get(period_s)
                if e is not None and e[0] == start:
                    total += e[1]
        mine = {self.key(t) for t in self.own}
        for key, rec in self.records():
            if not rec or key in mine or (scope != ALL and rec.get("table") != scope):
                continue
            e = (rec.get("periods") or {}).get(str(period_s))
            if e and int(e[0]) == start:
                total += int(e[1])
        return total

    def fits(self, table: str, tokens: int, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        return all(self.spent(scope, b.period_s, now) + tokens <= b.tokens for scope, b in self._budgets(table))

    def reserve(self, table: str, tokens: int, now: float | None = None) -> bool:
        """Count ``tokens`` against ``table``'s budgets if they fit; False (nothing counted) if not.
        Synchronous: no other reservation can come between the check and the count."""
        now = self.clock() if now is None else now
        if not self.fits(table, tokens, now):
            return False
        self._add(table, tokens, now)
        return True

    def settle(self, table: str, reserved: int, actual: int, reserved_at: float) -> None:
        """Correct a reservation made at ``reserved_at`` to the tokens the server counted."""
        if actual != reserved:
            self._add(table, actual - reserved, reserved_at)
        self.check_warnings(table)

    def _add(self, table: str, tokens: int, at: float) -> None:
        periods = self.own.setdefault(table, {})
        for _scope, b in self._budgets(table):
            start = period_start(at, b.period_s)
            e = periods.get(b.period_s)
            if e is None or e[0] < start:
                e = periods[b.period_s] = [start, 0]
            if e[0] == start:
                e[1] = max(0, e[1] + tokens)
        self.dirty.add(table)

    def pending_records(self) -> dict[str, dict[str, Any]]:
        """Records changed since the last call (to be written and flushed before sending)."""
        out = {self.key(t): {"table": t, "owner": self.owner,
                             "periods": {str(p): list(e) for p, e in self.own[t].items()}} for t in self.dirty}
        self.dirty.clear()
        return out

    def check_warnings(self, table: str, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for scope, b in self._budgets(table):
            start = period_start(now, b.period_s)
            spent = self.spent(scope, b.period_s, now)
            if spent >= WARN_AT * b.tokens and (scope, start) not in self.warned:
                self.warned.add((scope, start))
                what = "all tables" if scope == ALL else scope
                log.warning("embedding budget of %s: %d of %d tokens (%.0f%%) spent this %s; past it new "
                            "chunks wait for the next period", what, spent, b.tokens, 100 * spent / b.tokens,
                            b.period)

    # --- the queue ------------------------------------------------------------------------
    def has_backlog(self, table: str) -> bool:
        return self.applies(table) and self.backlog.get(table, True)

    def queued_behind(self, table: str) -> None:
        """New chunks of ``table`` went to the queue."""
        self.backlog[table] = True
        self.backlog_gen[table] = self.backlog_gen.get(table, 0) + 1

    def scan_started(self, table: str) -> int:
        return self.backlog_gen.get(table, 0)

    def scan_found_empty(self, table: str, gen: int) -> None:
        """A scan begun at ``gen`` found no chunk of ``table`` waiting: unless chunks were
        queued since, new ones may be sent at once again."""
        if self.backlog_gen.get(table, 0) == gen:
            self.backlog[table] = False

    # --- views ----------------------------------------------------------------------------
    def view(self, scope: str, now: float | None = None) -> dict[str, Any] | None:
        """Spent, remaining and queued for a table (its own budget, else the one over all tables)
        or for ALL; None when no budget applies."""
        own = self.overall if scope == ALL else self.tables.get(scope)
        b = own or (self.overall if self.applies(scope) else None)
        if b is None:
            return None
        now = self.clock() if now is None else now
        start = period_start(now, b.period_s)
        spent = self.spent(scope, b.period_s, now)
        if scope == ALL:
            chunks = sum(c for c, _ in self.queued.values())
            tokens = sum(t for _, t in self.queued.values())
        else:
            chunks, tokens = self.queued.get(scope, (0, 0))
        warn = own is not None and spent >= WARN_AT * own.tokens
        return {"budget": own.text if own else None, "applies": b.text if own is None else own.text,
                "limit": own.tokens if own else None, "period": b.period, "period_s": b.period_s,
                "period_start": start, "period_end": start + b.period_s, "spent": spent,
                "remaining": max(0, own.tokens - spent) if own else None,
                "queued_chunks": chunks, "queued_tokens": tokens,
                "warning": f"{100 * spent / b.tokens:.0f}% of the embedding budget spent this {b.period}"
                           if warn else None}
