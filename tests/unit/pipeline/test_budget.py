"""Token budgets: the parser (YAML and settings), UTC-aligned periods and the spend ledger."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cdcstream.core.budget import BudgetError, parse_budget, period_start
from cdcstream.core.config import ConfigError, load_config
from cdcstream.core.settings import Settings
from cdcstream.pipeline.budget import ALL, INPUT_OVERHEAD, BudgetLedger

DAY = 86400
#: 2026-12-05 10:30:00 UTC.
T0 = 1796466600.0


@pytest.mark.parametrize(("text", "tokens", "period_s"), [
    ("2M/day", 2_000_000, DAY), ("500k/hour", 500_000, 3600), ("300/minute", 300, 60),
    ("1.5M / day", 1_500_000, DAY), ("10K/hour", 10_000, 3600), ("300/20s", 300, 20), (" 7/1s ", 7, 1),
])
def test_budgets_parse_with_suffixes_and_periods(text: str, tokens: int, period_s: int) -> None:
    b = parse_budget(text)
    assert (b.tokens, b.period_s) == (tokens, period_s)


@pytest.mark.parametrize("text", ["2M", "2M/week", "abc/day", "0/day", "2X/day", "1.5/day", "-3/day", "5/0s",
                                  "5/90000s", ""])
def test_bad_budgets_are_refused_naming_the_value(text: str) -> None:
    with pytest.raises(BudgetError, match=f"embed_budget {text!r}"):
        parse_budget(text)


def test_a_bad_table_budget_is_a_config_error_naming_file_line_and_value(tmp_path: Path) -> None:
    p = tmp_path / "cdcstream.yaml"
    p.write_text("connectors:\n- name: c\n  connection: {kind: postgres, host: h, database: d, user: u, "
                 "password: 'env:X'}\n  tables:\n  - name: public.a\n    profile: full\n    text_columns: [body]\n"
                 "    embed_budget: 2M/fortnight\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "cdcstream.yaml:8:" in str(e.value) and "embed_budget '2M/fortnight'" in str(e.value)
    # A number without a period (YAML reads it as an int) says what is missing, too.
    p.write_text(p.read_text().replace("2M/fortnight", "300"))
    with pytest.raises(ConfigError, match="embed_budget '300'"):
        load_config(p)


def test_a_bad_worker_budget_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDCSTREAM_EMBED_BUDGET", "10 million")
    with pytest.raises(ValueError, match="CDCSTREAM_EMBED_BUDGET.*'10 million'"):
        Settings()
    monkeypatch.setenv("CDCSTREAM_EMBED_BUDGET", "10M/day")
    assert Settings().budget == parse_budget("10M/day")


def test_periods_are_aligned_to_utc() -> None:
    assert period_start(T0, DAY) == T0 - 10.5 * 3600  # midnight UTC
    assert period_start(T0, 3600) == T0 - 1800
    assert period_start(T0 + 59.9, 60) == T0 and period_start(T0 + 60, 60) == T0 + 60
    assert period_start(T0 + 7, 20) == T0  # T0 is a multiple of 20 s


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ledger(records: dict[str, Any] | None = None, *, tables: dict[str, str] | None = None,
           overall: str | None = None, owner: str = "w1", clock: Clock | None = None,
           exact: bool = True) -> BudgetLedger:
    recs = records if records is not None else {}
    return BudgetLedger({t: parse_budget(b) for t, b in (tables or {}).items()},
                        parse_budget(overall) if overall else None, owner, lambda: list(recs.items()),
                        exact=exact, margin=2.0, clock=clock or Clock(T0))


def test_spend_stops_at_the_budget_and_opens_again_next_period() -> None:
    clock = Clock(T0 + 5)
    led = ledger(tables={"a": "100/minute"}, clock=clock)
    assert led.reserve("a", 60) and led.reserve("a", 40)
    assert not led.reserve("a", 1)  # exactly at the budget: nothing more
    assert led.spent("a", 60) == 100 and led.view("a")["remaining"] == 0  # type: ignore[index]
    clock.t = T0 + 60  # the next minute opens
    assert led.spent("a", 60) == 0 and led.reserve("a", 100) and not led.reserve("a", 1)
    assert led.view("a")["period_start"] == T0 + 60  # type: ignore[index]


def test_a_table_without_a_budget_is_not_counted_unless_an_overall_one_applies() -> None:
    led = ledger(tables={"a": "10/minute"})
    assert not led.applies("b") and led.reserve("b", 10**9) and led.view("b") is None
    both = ledger(tables={"a": "10/minute"}, overall="25/hour")
    assert both.reserve("a", 10) and not both.reserve("a", 1)  # a's own budget
    assert both.reserve("b", 15) and not both.reserve("b", 1)  # all tables together: 25 an hour
    assert both.spent(ALL, 3600) == 25 and both.view("b")["limit"] is None  # type: ignore[index]


def test_settle_charges_what_the_server_counted() -> None:
    led = ledger(tables={"a": "100/minute"}, exact=False)
    est = led.estimate(20, inputs=2)
    assert est == 40 + 2 * INPUT_OVERHEAD
    assert led.reserve("a", est)
    led.settle("a", est, 31, T0)
    assert led.spent("a", 60) == 31
    assert ledger(tables={"a": "1/day"}).estimate(20, inputs=2) == 20  # OpenAI's models: tiktoken is exact


def test_a_restart_and_other_workers_see_the_spend_through_the_records() -> None:
    table: dict[str, Any] = {}
    first = ledger(table, tables={"a": "100/minute"}, owner="w1")
    assert first.reserve("a", 70)
    table.update(first.pending_records())  # what record_spend writes (and flushes) before sending
    assert first.pending_records() == {}  # nothing new since
    # A restart is a new owner id reading the same table: the 70 tokens stay spent this period.
    again = ledger(table, tables={"a": "100/minute"}, owner="w1-restarted")
    assert again.spent("a", 60) == 70 and again.reserve("a", 30) and not again.reserve("a", 1)
    # A record of an older period does not count.
    old = ledger(table, tables={"a": "100/minute"}, owner="w3", clock=Clock(T0 + 60))
    assert old.spent("a", 60) == 0


def test_the_warning_comes_once_per_period_at_80_percent(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(T0)
    led = ledger(tables={"a": "100/minute"}, clock=clock)
    caplog.set_level(logging.WARNING, logger="cdcstream.pipeline.budget")
    led.reserve("a", 79)
    led.check_warnings("a")
    assert not caplog.records and led.view("a")["warning"] is None  # type: ignore[index]
    led.reserve("a", 1)
    led.check_warnings("a")
    led.check_warnings("a")
    assert len(caplog.records) == 1 and "80 of 100" in caplog.records[0].getMessage()
    assert led.view("a")["warning"] == "80% of the embedding budget spent this minute"  # type: ignore[index]
    clock.t += 60
    led.reserve("a", 90)
    led.check_warnings("a")
    assert len(caplog.records) == 2


def test_new_chunks_queue_behind_a_backlog_until_a_scan_finds_it_empty() -> None:
    led = ledger(tables={"a": "100/minute"})
    assert led.has_backlog("a")  # unknown at start: the queue may hold chunks from before a restart
    gen = led.scan_started("a")
    led.queued_behind("a")  # a batch queued chunks while the scan ran
    led.scan_found_empty("a", gen)
    assert led.has_backlog("a")
    led.scan_found_empty("a", led.scan_started("a"))
    assert not led.has_backlog("a") and not led.has_backlog("unbudgeted")
