"""Issue 20 part 5 (things a new user hit), the parts that need no server: the connector
generation arithmetic, the finished-snapshot cell, the partitions finding, the Vault variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdcstream.core.config import ConnectorSpec
from cdcstream.core.resolver import NO_VAULT_HINT, Resolver, make_resolver, vault_address
from cdcstream.core.secrets import SecretError, SecretRef
from cdcstream.core.settings import Settings
from cdcstream.ops.generations import Generation, current_life, generation_key, totals_by_table
from cdcstream.ops.lifecycle import partitions_finding
from cdcstream.web.pages import _progress


def spec(partitions: int) -> ConnectorSpec:
    return ConnectorSpec.model_validate({
        "name": "shop", "partitions": partitions,
        "connection": {"kind": "postgres", "host": "h", "database": "d", "user": "u", "password": "env:P"},
        "tables": [{"name": "public.t"}]})


def test_a_generation_counts_from_its_baseline() -> None:
    stats = {"shop/d/public/t|0": {"op_r": 30, "op_c": 2, "snapshot_started_ms": 100, "last_event_ms": 500},
             "shop/d/public/t|1": {"op_r": 33, "snapshot_finished_ms": 400},
             "other/d/public/t|0": {"op_r": 5}, generation_key("shop"): {"generation": {"number": 1}}}
    base = totals_by_table(stats, {"shop/d/public/t"})
    assert base == {"shop/d/public/t": {"op_r": 63, "op_c": 2}}
    record = Generation("shop", 2, 1000, base).as_record()
    # The second life snapshotted 9 rows: the table now sums 72, the view says 9.
    now = {"op_r": 72, "op_c": 2, "snapshot_started_ms": 100, "snapshot_finished_ms": 1500, "last_event_ms": 1600}
    life = current_life(now, record, "shop/d/public/t")
    assert life["op_r"] == 9 and life["op_c"] == 0 and life["generation"] == 2
    assert life["snapshot_started_ms"] == 1000 and life["snapshot_finished_ms"] == 1500
    # Before the new life finished its snapshot, the old finish does not count.
    life = current_life({"op_r": 66, "snapshot_finished_ms": 400, "snapshot_started_ms": 100}, record,
                        "shop/d/public/t")
    assert life["op_r"] == 3 and "snapshot_finished_ms" not in life
    assert current_life(now, None, "shop/d/public/t") is now


def test_a_finished_snapshot_says_done_with_rows_and_duration() -> None:
    cell = _progress({"rows_read": 3, "source_rows": 4, "progress": 1.0, "done": True, "duration_s": 2.5})
    assert "done" in cell and "3 rows, 2.5 s" in cell and "%" not in cell
    running = _progress({"rows_read": 3, "source_rows": 4, "progress": 0.75, "done": False})
    assert "75%" in running and "done" not in running


def test_plan_says_when_partitions_differ_from_the_worker() -> None:
    assert partitions_finding(spec(4), 4) is None
    f = partitions_finding(spec(2), 4)
    assert f is not None and f.level == "warning"
    assert "partitions: 2" in f.problem and "expects 4" in f.problem
    assert "set partitions: 4 on shop" in f.fix and "cdcstream connectors delete shop --drop-slot --topics" in f.fix


def test_vault_addr_is_honoured_when_no_setting_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("CDCSTREAM_VAULT_ADDR", "VAULT_ADDR", "VAULT_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert vault_address(Settings()) is None and make_resolver(Settings()).vault is None
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    monkeypatch.setenv("VAULT_TOKEN", "t0ken")
    r = make_resolver(Settings())
    assert r.vault.settings.addr == "http://127.0.0.1:8200"
    assert r.vault.settings.auth.token.get_secret_value() == "t0ken"
    monkeypatch.setenv("CDCSTREAM_VAULT_ADDR", "http://vault.example:8200")  # the explicit setting wins
    assert make_resolver(Settings()).vault.settings.addr == "http://vault.example:8200"


def test_a_vault_reference_without_vault_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("CDCSTREAM_VAULT_ADDR", "VAULT_ADDR"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(SecretError) as e:
        Resolver().resolve(SecretRef.parse("vault:secret/x#y", where="t"))
    assert "VAULT_ADDR" in str(e.value) and "CDCSTREAM_VAULT_ADDR" in str(e.value) and NO_VAULT_HINT in str(e.value)


def test_worker_config_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    import cdcstream.runtime.worker as worker_mod
    from cdcstream.cli.main import main

    # The command sets the variable in this process: recorded here first, so it is restored afterwards.
    monkeypatch.setenv("CDCSTREAM_CONFIG", "unused.yaml")
    monkeypatch.delenv("CDCSTREAM_CONFIG")
    r = CliRunner().invoke(main, ["worker", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "missing.yaml" in r.output
    conf = tmp_path / "mine.yaml"
    conf.write_text("connectors:\n  - name: shop\n    connection: {kind: postgres, host: h, database: d, user: u,\n"
                    "                 password: 'env:P'}\n    tables:\n      - name: public.t\n")
    seen: list[str | None] = []
    def supervise(args: list[str]) -> int:
        seen.append(os.environ.get("CDCSTREAM_CONFIG"))
        return 0

    monkeypatch.setattr(worker_mod, "supervise", supervise)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["worker", "--config", "mine.yaml"])
    assert r.exit_code == 0, r.output
    assert seen == [str(conf)]  # absolute: the worker process may run elsewhere
