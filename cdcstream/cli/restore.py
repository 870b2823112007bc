"""``cdcstream restore`` and ``cdcstream history``: the archive read back (cdcstream/ops/restore.py)."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any, NoReturn

import click

from cdcstream.cli import common


def _fail(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def _store(s: Any) -> Any:
    from cdcstream.core.resolver import make_resolver
    from cdcstream.sinks.archive import open_store

    if not s.archive_url:
        _fail("no archive: set CDCSTREAM_ARCHIVE_URL (and its keys) as for the worker")
    r = make_resolver(s)

    def secret(ref: Any) -> str | None:
        return None if ref is None else str(r.resolve(ref).get_secret_value())

    return open_store(s.archive_url, secret(s.archive_access_key), secret(s.archive_secret_key))


def _connector(store: Any, table: str, connector: str | None, config_path: str | None) -> str:
    """The connector whose archive holds ``table``: --connector, else the config's, else the archive's."""
    import asyncio

    from cdcstream.core.config import ConfigError, load_config

    if connector:
        return connector
    try:
        cfg = load_config(config_path or common.settings().config)
        hits = sorted({c.name for c, t in cfg.tables() if t.name == table})
    except (ConfigError, OSError):
        hits = []
    if not hits:
        # No config at hand (a restore host): the archive names its connectors.
        names = asyncio.run(store.list(""))
        hits = sorted({n.split("/", 1)[0] for n in names if n.count("/") >= 2 and n.split("/")[1] == table})
    if len(hits) == 1:
        return hits[0]
    if not hits:
        _fail(f"table {table} is in neither the config nor the archive; give --connector")
    _fail(f"table {table} is captured by several connectors ({', '.join(hits)}): give --connector")


def _progress_printer() -> Any:
    tty = sys.stderr.isatty()
    last = [0.0]

    def show(p: Any) -> None:
        now = time.monotonic()
        done = p.objects >= p.objects_total
        if not done and now - last[0] < (0.2 if tty else 2.0):
            return
        last[0] = now
        width = 24
        filled = int(width * p.objects / max(p.objects_total, 1))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {p.line()}"
        if tty:
            click.echo("\r" + line + ("\n" if done else ""), err=True, nl=False)
        else:
            click.echo(line, err=True)
    return show


def register(main: click.Group) -> None:
    config_option = click.option("--config", "config_path", default=None,
                                 help="Config file, to find the table's connector (default cdcstream.yaml).")
    connector_option = click.option("--connector", default=None,
                                    help="The connector whose archive holds TABLE (default: the one capturing it).")

    @main.command("restore")
    @click.argument("table")
    @click.argument("target", nargs=-1, required=True)
    @click.option("--as-of", "as_of", required=True,
                  help="The cut: a time (ISO 8601, UTC unless zoned; 'now') or a source position "
                       "(lsn=0/1A2B3C8, mariadb-bin.000003:5065[#row], version=N).")
    @click.option("--to", "to_kind", required=True, type=click.Choice(["index", "jsonl", "postgres"]),
                  help="Where the rows go: index NAME | jsonl PATH | postgres DSN-REF TABLE.")
    @connector_option
    @config_option
    def restore_cmd(table: str, target: tuple[str, ...], as_of: str, to_kind: str, connector: str | None,
                    config_path: str | None) -> None:
        """Rebuild TABLE (schema.table) from the archive as it was at --as-of: the newest change
        per key at or before the cut, deletes and truncates applied.

        \b
        cdcstream restore public.orders --as-of 2026-12-05T10:30:00Z --to jsonl orders.jsonl
        cdcstream restore public.orders --as-of lsn=0/1A2B3C8 --to index orders-restored
        cdcstream restore public.orders --as-of now --to postgres env:RESTORE_DSN public.orders_restored
        """
        from cdcstream.core.resolver import make_resolver
        from cdcstream.core.secrets import SecretError, SecretRef
        from cdcstream.ops import restore as r

        arity = {"index": 1, "jsonl": 1, "postgres": 2}[to_kind]
        if len(target) != arity:
            spelled = {"index": "NAME", "jsonl": "PATH", "postgres": "DSN-REF TABLE"}[to_kind]
            _fail(f"--to {to_kind} takes {spelled} (got {' '.join(target) or 'nothing'})", 2)
        s = common.settings()
        try:
            cut = r.parse_cut(as_of)
        except r.RestoreError as e:
            _fail(str(e), 2)
        tgt: Any
        if to_kind == "jsonl":
            tgt = r.JsonlTarget(target[0])
        elif to_kind == "index":
            from cdcstream.sinks.elasticsearch import client_options

            if not s.es_http_url:
                _fail("--to index: no Elasticsearch (CDCSTREAM_ELASTICSEARCH_URL is empty)", 2)
            res = make_resolver(s)

            def secret(ref: Any) -> str | None:
                return None if ref is None else str(res.resolve(ref).get_secret_value())

            tgt = r.IndexTarget(target[0], s.es_http_url, client_options(
                secret(s.elasticsearch_user), secret(s.elasticsearch_password), secret(s.elasticsearch_api_key),
                s.elasticsearch_ca))
        else:
            try:
                dsn = make_resolver(s).resolve(SecretRef.parse(target[0], where="--to postgres DSN-REF"))
            except (SecretError, ValueError) as e:
                _fail(f"--to postgres: {e}", 2)
            tgt = r.PostgresTarget(dsn.get_secret_value(), target[1], label=target[0])
        store = _store(s)
        conn = _connector(store, table, connector, config_path)
        when = (f" ({dt.datetime.fromtimestamp(cut.ts_ms / 1000, dt.UTC).isoformat(timespec='milliseconds')})"
                if cut.ts_ms is not None else f" (version {cut.version})")
        click.echo(f"restore {conn} {table} as of {cut.text}{when} -> {tgt.describe()}", err=True)
        try:
            result = r.restore(store, conn, table, cut, tgt, on_progress=_progress_printer())
        except r.RestoreError as e:
            _fail(str(e))
        except Exception as e:  # noqa: BLE001 - an unreachable store or target: say which, exit 1
            _fail(f"restore failed: {type(e).__name__}: {e}")
        click.echo(result.summary())
        for note in result.notes():
            click.echo(note, err=True)

    @main.command("history")
    @click.argument("table")
    @click.argument("key")
    @click.option("--json", "as_json", is_flag=True, help="Each version as its archive line (JSON).")
    @connector_option
    @config_option
    def history_cmd(table: str, key: str, as_json: bool, connector: str | None, config_path: str | None) -> None:
        """Every archived version of one row of TABLE, oldest first. KEY: the value of a one-column
        primary key (7) or a JSON object of the key columns ('{"id": 7, "region": "eu"}')."""
        from cdcstream.ops import restore as r

        try:
            k = r.parse_key(key)
        except r.RestoreError as e:
            _fail(str(e), 2)
        s = common.settings()
        store = _store(s)
        conn = _connector(store, table, connector, config_path)
        try:
            versions = r.history(store, conn, table, k)
        except Exception as e:  # noqa: BLE001 - an unreachable store: say so, exit 1
            _fail(f"history failed: {type(e).__name__}: {e}")
        if not versions:
            click.echo(f"no archived version of {table} key {key}", err=True)
            sys.exit(1)
        for rec in versions:
            if as_json:
                click.echo(json.dumps(rec, ensure_ascii=False, separators=(",", ":")))
                continue
            ts = int(rec.get("ts_source_ms") or rec.get("ts_event_ms") or 0)
            when = dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat(timespec="milliseconds")
            kafka = rec.get("kafka") or {}
            # A delete carries the key (its `before` holds only the key columns under the default replica identity).
            row = rec.get("key") if rec["op"] == "d" else rec.get("after")
            what = {"c": "insert", "u": "update", "d": "delete", "r": "snapshot", "t": "truncate"}.get(rec["op"],
                                                                                                     rec["op"])
            click.echo(f"{when}  {rec['position']['text']:<22} {what:<8} "
                       f"p{kafka.get('partition', '?')}@{kafka.get('offset', '?')}  "
                       f"{json.dumps(row, ensure_ascii=False, separators=(',', ':')) if row is not None else ''}")
        click.echo(f"{len(versions)} version(s)", err=True)
