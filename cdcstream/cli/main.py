"""The ``cdcstream`` command line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, NoReturn

import click

from cdcstream.cli import common
from cdcstream.stack.base import StackError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cdcstream: mirror PostgreSQL and MariaDB into search and AI through Debezium, Kafka and Faust."""


# --- stack ---------------------------------------------------------------------
@main.group()
def stack() -> None:
    """The real local stack: servers started natively from package registries."""


def _stack(only: tuple[str, ...]) -> Any:
    from cdcstream.stack.manager import Stack

    return Stack(only=only or None)


def _print_table(states: list[Any]) -> None:
    width = max(len(s.name) for s in states)
    for s in states:
        pid = f"pid {s.pid}" if s.pid else ""
        click.echo(f"{s.name:<{width}}  {s.state:<13} {s.url:<45} {s.version:<16} {pid}")


@stack.command("up")
@click.option("--only", multiple=True, help="Start just these services (and what they depend on).")
def stack_up(only: tuple[str, ...]) -> None:
    """Install (into ~/.cache/cdcstream) and start every server, then wait until healthy."""
    t0 = time.monotonic()
    try:
        st = _stack(only)
        states = st.up(log=lambda m: click.echo(m, err=True))
    except StackError as e:
        click.echo(f"stack up failed:\n{e}", err=True)
        sys.exit(1)
    _print_table(states)
    click.echo(f"stack up: {len(states)} services healthy in {time.monotonic() - t0:.1f}s", err=True)


@stack.command("down")
@click.option("--only", multiple=True, help="Stop just these services (not what they depend on).")
def stack_down(only: tuple[str, ...]) -> None:
    """Stop exactly the processes `up` started (by PID)."""
    from cdcstream.stack.manager import Stack

    try:
        st = Stack(only=only or None, with_dependencies=False)
    except StackError as e:
        _fail(e)
    st.down(log=lambda m: click.echo(m, err=True))


@stack.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--only", multiple=True)
def stack_status(as_json: bool, only: tuple[str, ...]) -> None:
    """List each server with its URL and state; exit 1 unless all are running."""
    states = _stack(only).status()
    if as_json:
        click.echo(json.dumps({s.name: s.as_dict() for s in states}, indent=2))
    else:
        _print_table(states)
    sys.exit(0 if all(s.state == "running" for s in states) else 1)


# --- shared -------------------------------------------------------------------------
_settings = common.settings
_config = common.config


def _client() -> Any:
    from cdcstream.ops.kconnect import ConnectClient

    return ConnectClient(_settings().connect_url)


def _fail(e: Exception) -> NoReturn:
    click.echo(f"error: {e}", err=True)
    sys.exit(1)


config_option = click.option("--config", "config_path", default=None, help="Config file (default cdcstream.yaml).")


# --- connectors ----------------------------------------------------------------------
@main.group()
def connectors() -> None:
    """Declare, apply and operate Debezium connectors through Kafka Connect."""


def _worker_url(s: Any) -> str:
    return str(s.worker_api_url)


def _api_token(s: Any) -> str | None:
    from cdcstream.core.resolver import Resolver

    return Resolver().resolve(s.api_token).get_secret_value() if s.api_token is not None else None


@connectors.command("plan")
@config_option
def connectors_plan(config_path: str | None) -> None:
    """Show desired vs actual connector configs (secrets masked), preflight findings and profile drift."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.secrets import SecretError
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.kconnect import ConnectError
    from cdcstream.ops.lifecycle import plan_connector
    from cdcstream.web.client import WorkerUnreachable, live_profiles, profile_drift

    cfg, client, s = _config(config_path), _client(), _settings()
    errors = 0
    live: dict[str, str] | None = None
    why = ""
    try:
        live = live_profiles(_worker_url(s), _api_token(s), verify=s.worker_verify)
    except WorkerUnreachable as e:
        why = str(e)
    try:
        for spec in cfg.connectors:
            p = plan_connector(spec, client, resolve_credentials(spec, Resolver()), s.kafka_bootstrap,
                               worker_partitions=s.partitions)
            click.echo(f"connector {spec.name}: {p.action}")
            for line in p.diff():
                click.echo(line)
            if p.added_tables:
                click.echo(f"  tables added (their existing rows are snapshotted): {', '.join(p.added_tables)}")
            for f in p.findings:
                click.echo(f"  {f}")
                errors += f.level == "error"
            if live is None:
                click.echo(f"  profiles: could not check live profiles: {why}; is `cdcstream worker` running "
                           f"with this web_host/web_port?")
                continue
            drift = profile_drift(spec, live)
            for d in drift:
                click.echo(f"  profile drift: {d}; the live profile wins until "
                           f"`cdcstream connectors apply --reset-profiles`")
            if not drift:
                click.echo(f"  profiles: as in the YAML (checked with the worker at {_worker_url(s)})")
    except (ConnectError, SecretError) as e:
        _fail(e)
    sys.exit(1 if errors else 0)


@connectors.command("apply")
@config_option
@click.option("--reset-profiles", is_flag=True,
              help="Also set every table's live processing profile back to the YAML's (needs a running worker).")
def connectors_apply(config_path: str | None, reset_profiles: bool) -> None:
    """Create or update connectors; a second apply sends nothing to Connect."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.secrets import SecretError
    from cdcstream.ops import lifecycle as lc
    from cdcstream.ops.kconnect import ConnectError
    from cdcstream.web import client as worker_api

    cfg, client, s = _config(config_path), _client(), _settings()
    try:
        res = lc.apply(cfg, client, Resolver(), s.kafka_bootstrap, log_fn=click.echo, app_id=s.app_id)
        actions = list(res.actions)
        if reset_profiles:
            live = worker_api.live_profiles(_worker_url(s), _api_token(s), verify=s.worker_verify)
            drift = [d for spec in cfg.connectors for d in worker_api.profile_drift(spec, live)]
            for line in worker_api.reset_profiles(drift, app_id=s.app_id, kafka_bootstrap=s.kafka_bootstrap,
                                          web_url=_worker_url(s), token=_api_token(s),
                                          verify=s.worker_verify):
                click.echo(line)
                actions.append(line)
    except worker_api.WorkerUnreachable as e:
        _fail(RuntimeError(f"--reset-profiles: {e}; start `cdcstream worker` (connectors were applied)"))
    except (ConnectError, lc.PreflightError, SecretError, RuntimeError) as e:
        _fail(e)
    if not actions:
        click.echo("nothing to do: every connector is up to date")


@connectors.command("list")
def connectors_list() -> None:
    """Connectors known to Kafka Connect, with their state."""
    for name, st in sorted(_client().list_with_status().items()):
        tasks = ", ".join(f"{t['id']}:{t['state']}" for t in st.tasks)
        click.echo(f"{name:<30} {st.state:<10} tasks [{tasks}]")


@connectors.command("status")
@click.argument("name", required=False)
@config_option
def connectors_status(name: str | None, config_path: str | None) -> None:
    """State, tasks, last error and (PostgreSQL) replication slot lag."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.kconnect import ConnectError
    from cdcstream.ops.lifecycle import pg_slot

    cfg, client = _config(config_path), _client()
    specs = [_spec(cfg, name)] if name else list(cfg.connectors)
    for spec in specs:
        try:
            st = client.status(spec.name)
        except ConnectError as e:
            # Not created: still show the slot below (a deleted connector's slot pins WAL).
            click.echo(f"{spec.name}: {'not created' if e.status == 404 else e}")
        else:
            click.echo(f"{spec.name}: {st.state} on {st.worker}")
            for t in st.tasks:
                click.echo(f"  task {t['id']}: {t['state']}")
                if t.get("trace"):
                    lines = t["trace"].strip().splitlines()
                    click.echo("    " + lines[0])
                    # Connect wraps the reason ("An exception occurred in the change event producer"): the
                    # last "Caused by:" names it.
                    cause = next((x.strip() for x in reversed(lines) if x.startswith("Caused by:")), None)
                    if cause and cause != lines[0]:
                        click.echo("    " + cause)
        if spec.connection.kind == "postgres":
            try:
                slot = pg_slot(spec, resolve_credentials(spec, Resolver()))
            except Exception as e:  # noqa: BLE001 - the check must report, not crash, when the login fails
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                click.echo(f"  slot: could not check: {why}")
                continue
            if slot:
                click.echo(f"  slot {slot['slot']}: active={slot['active']} lag_bytes={slot['lag_bytes']}")


def _simple(action: str) -> Any:
    @connectors.command(action)
    @click.argument("name")
    @click.option("--only-failed", is_flag=True, help="restart: only failed connector/tasks.")
    @click.option("--no-tasks", is_flag=True, help="restart: the connector only, not its tasks.")
    def cmd(name: str, only_failed: bool = False, no_tasks: bool = False) -> None:
        from cdcstream.ops.kconnect import ConnectError

        c = _client()
        try:
            if action == "restart":
                c.restart(name, include_tasks=not no_tasks, only_failed=only_failed)
            else:
                getattr(c, action)(name)
        except ConnectError as e:
            _fail(e)
        click.echo(f"{action}: {name}")

    cmd.__doc__ = f"{action.capitalize()} a connector."
    return cmd


for _a in ("pause", "resume", "stop", "restart"):
    _simple(_a)


def _spec(cfg: Any, name: str) -> Any:
    try:
        return cfg.connector(name)
    except KeyError as e:
        _fail(RuntimeError(e.args[0]))


@connectors.command("delete")
@click.argument("name")
@click.option("--drop-slot", is_flag=True,
              help="Also reset offsets and drop the replication slot and publication (PostgreSQL) or the "
                   "schema-history topic (MariaDB/MySQL), so a re-created connector snapshots afresh; revoke "
                   "its Vault lease and remove its provider-mode credential files.")
@click.option("--topics", "with_topics", is_flag=True,
              help="Also delete the connector's Kafka topics (<prefix>, <prefix>.* and its heartbeat topic), "
                   "e.g. to re-create it with another partition count.")
@config_option
def connectors_delete(name: str, drop_slot: bool, with_topics: bool, config_path: str | None) -> None:
    """Delete a connector; with --drop-slot: stop, reset offsets, delete, drop slot and publication, revoke
    its Vault lease and remove its credential files."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.secrets import SecretError
    from cdcstream.ops.credentials import forget_credentials, resolve_credentials
    from cdcstream.ops.kconnect import ConnectError
    from cdcstream.ops.lifecycle import delete_connector, delete_connector_topics

    c = _client()
    s = _settings()
    try:
        actual = c.get_config(name) if with_topics else None
        # The topic prefix from Connect while the connector exists (the YAML may no longer declare it).
        prefix = actual.get("topic.prefix") if actual else None
        if not drop_slot:
            if actual is not None:
                # Stopped first: a task still running after DELETE would re-create a topic just deleted.
                c.stop(name)
                c.wait_state(name, ("STOPPED",), tasks=False, timeout=60)
            if actual is not None or not with_topics:
                # Plain delete needs no config: it must work for connectors the YAML no longer declares.
                c.delete(name)
                click.echo(f"{name}: deleted (offsets and the replication slot stay; --drop-slot removes them)")
            else:
                click.echo(f"{name}: not in Kafka Connect; deleting its topics only")
        else:
            spec = _spec(_config(config_path), name)
            prefix = prefix or spec.prefix
            resolver = Resolver()
            delete_connector(c, spec, resolve_credentials(spec, resolver), s.kafka_bootstrap,
                             drop_slot=True, log_fn=click.echo)
            # Removed for good: its credentials go too (a plain delete keeps them, with the slot).
            for line in forget_credentials(spec, resolver):
                click.echo(f"{name}: {line}")
        if with_topics:
            if prefix is None:
                prefix = _spec(_config(config_path), name).prefix
            deleted = delete_connector_topics(s.kafka_bootstrap, prefix)
            for topic in deleted:
                click.echo(f"deleted topic {topic}")
            if not deleted:
                click.echo(f"no topics with prefix {prefix}")
    except (ConnectError, SecretError, RuntimeError) as e:
        _fail(e)


@connectors.command("snapshot")
@click.argument("name")
@click.argument("table")
@click.option("--filter", "filter_sql", default=None, help="SQL condition: only matching rows are re-emitted.")
@config_option
def connectors_snapshot(name: str, table: str, filter_sql: str | None, config_path: str | None) -> None:
    """Incremental snapshot of TABLE (as written in the config) through Debezium's signal table
    (or the Kafka signal topic of a read_only connector)."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.secrets import SecretError
    from cdcstream.ops.credentials import resolve_credentials
    from cdcstream.ops.lifecycle import signal_snapshot

    spec = _spec(_config(config_path), name)
    if table not in {t.name for t in spec.tables}:
        _fail(RuntimeError(f"table {table} is not captured by {name}; captured: "
                           f"{', '.join(t.name for t in spec.tables)}"))
    try:
        sid = signal_snapshot(spec, resolve_credentials(spec, Resolver()), [table],
                              {table: filter_sql} if filter_sql else None, kafka_bootstrap=_settings().kafka_bootstrap)
    except (SecretError, OSError) as e:
        _fail(e)
    click.echo(f"snapshot signal {sid} sent for {table}" + (f" (rows where {filter_sql})" if filter_sql else ""))


def fields_markdown() -> str:
    """The YAML field reference, generated from the config models (docs/connectors.md embeds it)."""
    import typing

    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from cdcstream.core.config import (
        TLS,
        Config,
        ConnectorSpec,
        ConnectorTableConfig,
        CredentialsSpec,
        DatabaseConnection,
        IndexSettings,
    )

    def type_of(ann: Any) -> str:
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Literal:
            return " \\| ".join(f"`{a}`" for a in args)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            return "mapping"
        if isinstance(ann, type) and hasattr(ann, "__members__"):  # an enum
            return " \\| ".join(f"`{m.value}`" for m in ann.__members__.values())
        if origin is tuple:
            return "list"
        if origin is dict:
            return "mapping of strings"
        if args and type(None) in args:
            return " or ".join(type_of(a) for a in args if a is not type(None)) + " (optional)"
        if ann is typing.Any:
            return "secret reference"
        if ann is bool:
            return "bool"
        return getattr(ann, "__name__", str(ann))

    def default_of(f: Any) -> str:
        if f.default is PydanticUndefined and f.default_factory is None:
            return "**required**"
        d = f.default_factory() if f.default_factory is not None else f.default
        if isinstance(d, BaseModel):
            return ", ".join(f"{k}: `{v}`" for k, v in d.model_dump(mode="json").items() if v is not None)
        if hasattr(d, "value"):
            d = d.value
        return "" if d in (None, (), {}) else f"`{d}`"

    # Meanings for fields whose model declares no description (a description in
    # cdcstream/core/config.py, where one exists, always wins over these).
    fallback = {
        "connectors": "The Debezium connectors, one per source database",
        "allow_literal_secrets": "Accept plain-text passwords in this file (warned about); for local tries only",
        "name": "Connector name (lowercase, digits, `.` `_` `-`): Connect's name, slot/publication suffix, "
                "default topic prefix",
        "connection": "How Debezium and the preflight checks reach the source database",
        "tables": "The captured tables (at least one)",
        "snapshot_mode": "Debezium snapshot.mode: `initial` snapshots existing rows once, then streams",
        "heartbeat_interval_ms": "Heartbeat period; each heartbeat writes the heartbeat table so idle sources "
                                 "still advance the slot / binlog position (0 = off)",
        "kind": "`postgres`, `mariadb`, or `mysql` (untested here)",
        "host": "Database host as Kafka Connect (and the CLI's preflight) reach it",
        "database": "The database holding the tables",
        "user": "Database user: a plain name or a secret reference (env:NAME, file:/path, vault:...)",
        "tls": "TLS to the source database",
        "mode": "TLS mode; `prefer` leaves the connector's default",
        "ca_file": "CA bundle for verify-ca / verify-full (preflight connection)",
        "profile": "Processing profile: `full` (chunk+embed+index), `index_only`, `archive`",
        "include_columns": "Only these columns are captured (others never leave the database)",
        "exclude_columns": "These columns are never captured",
    }
    sections: list[tuple[str, type[BaseModel]]] = [
                ("", Config), ("connectors[]", ConnectorSpec), ("connectors[].connection", DatabaseConnection),
                ("connectors[].connection.tls", TLS), ("connectors[].credentials", CredentialsSpec),
                ("connectors[].tables[]", ConnectorTableConfig),
                ("connectors[].tables[].index_settings", IndexSettings)]
    out = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for where, model in sections:
        for name, f in model.model_fields.items():
            desc = (f.description or fallback.get(name, "")).replace("|", "\\|")
            path = f"{where}.{name}" if where else name
            out.append(f"| `{path}` | {type_of(f.annotation)} | {default_of(f)} | {desc} |")
    return "\n".join(out) + "\n"


@connectors.command("fields")
def connectors_fields() -> None:
    """Print the YAML field reference (Markdown), generated from the config models."""
    click.echo(fields_markdown(), nl=False)


# --- topics --------------------------------------------------------------------------
@main.group()
def topics() -> None:
    """The project's own Kafka topics, defined in code."""


@topics.command("plan")
@config_option
def topics_plan(config_path: str | None) -> None:
    """Check internal and captured topics against their definition."""
    import asyncio

    from cdcstream.runtime import topics as t

    res = asyncio.run(t.check(_settings(), _config(config_path)))
    bad = 0
    for c in res:
        state = "ok" if c.exists and not c.problems else ("absent" if not c.exists else "MISMATCH")
        if not c.exists and c.spec.external:
            state = "not yet created by Debezium"
        click.echo(f"{state:<28} {c.spec.describe()}")
        for p in c.problems:
            click.echo(f"    {p}")
        bad += bool(c.problems)
    sys.exit(1 if bad else 0)


@topics.command("apply")
def topics_apply() -> None:
    """Create missing internal topics."""
    import asyncio

    from cdcstream.runtime import topics as t

    made = asyncio.run(t.apply(_settings()))
    click.echo("created: " + ", ".join(made) if made else "nothing to create")


# --- worker --------------------------------------------------------------------------
@main.command()
@click.option("--loglevel", default="warn", type=click.Choice(["debug", "info", "warn", "error"]))
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Config file (default: $CDCSTREAM_CONFIG, else cdcstream.yaml).")
def worker(loglevel: str, config_path: str | None) -> None:
    """Run the Faust worker (restarted by this supervisor when the captured topics change)."""
    import os
    from pathlib import Path

    from cdcstream.runtime.worker import supervise

    if config_path is not None:
        # The supervisor and the worker it starts read Settings().config: the option is the
        # environment variable, given on the command line (and absolute: the child's cwd may differ).
        os.environ["CDCSTREAM_CONFIG"] = str(Path(config_path).resolve())
    _config(None)  # a missing or invalid file: exit 2 with the loader's message, before any process starts
    sys.exit(supervise([loglevel]))


# --- settings ------------------------------------------------------------------------
@main.command("verify")
@click.argument("table")
@click.option("--connector", default=None, help="The connector, when several capture a table of this name.")
@click.option("--full", "mode", flag_value="full", default=True, help="Compare every row (the default).")
@click.option("--sample", type=click.IntRange(1), default=None, help="Compare N random rows plus the row counts.")
@click.option("--settle", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Re-check drifting rows for up to this many seconds (changes still in flight).")
@click.option("--profile", type=click.Choice(["full", "index_only", "archive"]), default=None,
              help="Override the profile (default: the running worker's, else the config's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@config_option
def verify_cmd(table: str, connector: str | None, mode: str, sample: int | None, settle: float,
               profile: str | None, as_json: bool, config_path: str | None) -> None:
    """Compare TABLE (schema.table) in the source with its mirror; exit 1 on drift, 2 if it cannot check."""
    from cdcstream.core.config import ProcessingProfile
    from cdcstream.ops.verify import VerifyError, open_verifier

    s = _settings()
    cfg = _config(config_path)
    try:
        v = open_verifier(s, cfg, table, connector=connector,
                          profile=ProcessingProfile(profile) if profile else None)
        try:
            rep = v.run("sample" if sample else mode, sample=sample or 0, settle_s=settle)
        finally:
            v.src.close()
    except VerifyError as e:
        click.echo(f"verify: {e}", err=True)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 - unreachable source or mirror: say which, exit 2
        click.echo(f"verify: cannot compare {table}: {type(e).__name__}: {e}", err=True)
        sys.exit(2)
    click.echo(json.dumps(rep.as_dict(), indent=2) if as_json else rep.text())
    sys.exit(0 if rep.ok else 1)


@main.command("settings")
@click.option("--markdown", is_flag=True, help="The settings reference as Markdown.")
def settings_cmd(markdown: bool) -> None:
    """Show the worker settings (secrets as references)."""
    from cdcstream.core.settings import settings_markdown

    if markdown:
        click.echo(settings_markdown(), nl=False)
        return
    for k, v in _settings().model_dump().items():
        click.echo(f"{k} = {v}")


# --- demo ----------------------------------------------------------------------------
@main.command()
@click.option("--no-worker", is_flag=True, help="Seed and apply only; do not run the worker.")
def demo(no_worker: bool) -> None:
    """The main job on a local machine: seed the demo database, apply its connector, run the worker."""
    import os

    from cdcstream.ops import demo as d
    from cdcstream.stack.manager import Stack

    states = {s.name: s for s in Stack().status()}
    down = [n for n, s in states.items() if s.state != "running"]
    if down:
        click.echo(f"not running: {', '.join(down)}; run `cdcstream stack up`", err=True)
        sys.exit(1)
    d.seed(states["postgres"].info)
    obj = states["objectstore"].info
    env = {
        "DEMO_PG_PASSWORD": d.DEMO_PASSWORD,
        "CDCSTREAM_CONFIG": str(d.CONFIG),
        "CDCSTREAM_ARCHIVE_URL": f"s3://{obj['bucket']}/demo?endpoint={obj['endpoint']}",
        "CDCSTREAM_ARCHIVE_ACCESS_KEY": "env:DEMO_S3_ACCESS_KEY",
        "CDCSTREAM_ARCHIVE_SECRET_KEY": "env:DEMO_S3_SECRET_KEY",
        "DEMO_S3_ACCESS_KEY": obj["access_key"],
        "DEMO_S3_SECRET_KEY": obj["secret_key"],
    }
    os.environ.update(env)
    from cdcstream.core.resolver import Resolver
    from cdcstream.ops.lifecycle import apply

    s = _settings()
    apply(_config(None), _client(), Resolver(), s.kafka_bootstrap, log_fn=click.echo, app_id=s.app_id)
    click.echo("\nWhere to look:")
    click.echo(f"  status page     {s.worker_api_url}/status")
    click.echo(f"  tables (JSON)   {s.worker_api_url}/api/tables")
    click.echo(f"  Elasticsearch   {s.es_http_url}/demo-pg-public-*/_search")
    click.echo(f"  archive         {env['CDCSTREAM_ARCHIVE_URL']}")
    click.echo("  logs            .stack/logs/<service>.log")
    if no_worker:
        return
    from cdcstream.runtime.worker import supervise

    sys.exit(supervise(["warn"]))


from cdcstream.cli import api as cli_api; cli_api.register(main)  # noqa: E402, E702, I001 - API commands (cli/api.py)
from cdcstream.cli import credentials as cli_credentials; cli_credentials.register(main)  # noqa: E402, E702, I001 - credentials commands (cli/credentials.py)
from cdcstream.cli import restore as cli_restore; cli_restore.register(main)  # noqa: E402, E702, I001 - restore and history (cli/restore.py)
from cdcstream.cli import embeddings as cli_embeddings; cli_embeddings.register(main)  # noqa: E402, E702, I001 - embeddings plan (cli/embeddings.py)

if __name__ == "__main__":
    main()
