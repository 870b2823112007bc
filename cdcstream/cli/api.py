"""CLI commands that talk to a running worker's HTTP API (settings ``web_host``/``web_port``).

``cdcstream profiles show | set TABLE PROFILE [--backfill] [--yes]`` and
``cdcstream search QUERY [--table ...] [--mode ...]``. The bearer tokens are the worker's:
``api_token`` (admin) for writes, ``api_read_token`` (else ``api_token``) for reads, resolved
here from the same secret references.

Registered by ``api.register(main)`` at the bottom of ``cdcstream/cli/main.py``.
"""

from __future__ import annotations

import html
import json
import sys
from typing import Any

import click


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 120.0, verify: str | bool = True) -> None:
        import requests

        self.base = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = requests.Session()
        # Per request: a Session-level verify loses to REQUESTS_CA_BUNDLE, worker_ca must win.
        self.verify = verify

    def call(self, method: str, path: str, *, params: Any = None, body: Any = None) -> tuple[int, Any]:
        import requests

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = self.http.request(method, self.base + path, params=params, json=body, headers=headers,
                                  timeout=self.timeout, verify=self.verify)
        except requests.exceptions.SSLError as e:
            from cdcstream.web.client import tls_reason

            raise click.ClickException(f"TLS with the worker at {self.base} failed ({tls_reason(e)}): set "
                                       f"CDCSTREAM_WORKER_CA (or REQUESTS_CA_BUNDLE) to the CA that signed its "
                                       f"certificate") from None
        except requests.ConnectionError:
            raise click.ClickException(f"no worker answers at {self.base}: is `cdcstream worker` running "
                                       f"(settings web_host/web_port)?") from None
        try:
            data = r.json()
        except ValueError:
            data = {"error": r.text[:500]}
        return r.status_code, data


def _client(need_token: bool) -> ApiClient:
    """A client with the token the call needs: ``api_token`` (admin) for writes; for reads the
    ``api_read_token`` when set, else ``api_token``, resolved from the same references as the worker's."""
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.secrets import SecretError, SecretRef
    from cdcstream.core.settings import Settings

    s = Settings()
    ref = s.api_token if need_token else (s.api_read_token or s.api_token)
    token = None
    if isinstance(ref, SecretRef):
        try:
            token = Resolver().resolve(ref).get_secret_value()
        except SecretError as e:
            if need_token or s.web_exposed or s.protect_reads:
                raise click.ClickException(f"cannot resolve the API token: {e}") from None
    elif need_token:
        raise click.ClickException("this command needs the admin API token: set CDCSTREAM_API_TOKEN to a secret "
                                   "reference (e.g. env:CDCSTREAM_TOKEN), as for the worker")
    return ApiClient(s.worker_api_url, token, verify=s.worker_verify)


def _fail(status: int, data: Any) -> None:
    msg = data.get("error") if isinstance(data, dict) else str(data)
    raise click.ClickException(f"HTTP {status}: {msg}")


@click.group("profiles")
def profiles() -> None:
    """Processing profiles of the captured tables (through the worker's API)."""


@profiles.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def profiles_show(as_json: bool) -> None:
    """Each table with its live profile and counters."""
    status, data = _client(False).call("GET", "/api/tables")
    if status != 200:
        _fail(status, data)
    if as_json:
        click.echo(json.dumps(data["tables"], indent=2))
        return
    rows = data["tables"]
    width = max((len(t["id"]) for t in rows), default=5)
    click.echo(f"{'table':<{width}}  {'profile':<10} {'events':>8} {'docs':>7} {'chunks':>7} {'tokens':>8} "
               f"{'saved':>8} {'dlq':>4}")
    for t in rows:
        n = sum(t["events"].values())
        click.echo(f"{t['id']:<{width}}  {t['profile']:<10} {n:>8} {_n(t['documents']):>7} {_n(t['chunks']):>7} "
                   f"{t['embed_tokens']:>8} {t['tokens_saved']:>8} {t['dlq']:>4}")


def _n(v: int | None) -> str:
    return "-" if v is None else str(v)


@profiles.command("set")
@click.argument("table")
@click.argument("profile", type=click.Choice(["full", "index_only", "archive"]))
@click.option("--backfill", is_flag=True, help="Bring existing rows into the new profile (incremental snapshot).")
@click.option("--yes", is_flag=True, help="Accept the cost estimate of a backfill into full without asking.")
@click.option("--drop-index", is_flag=True, help="Into archive: also delete the row index.")
def profiles_set(table: str, profile: str, backfill: bool, yes: bool, drop_index: bool) -> None:
    """Set TABLE (an id from `profiles show`, connector.schema.table) to PROFILE."""
    from urllib.parse import quote

    client = _client(True)
    path = f"/api/tables/{quote(table, safe='')}/profile"
    body = {"profile": profile, "backfill": backfill, "confirm": yes, "drop_index": drop_index}
    status, data = client.call("PUT", path, body=body)
    if status == 409 and isinstance(data, dict) and data.get("confirm_required"):
        e = data.get("estimate") or {}
        cost = float(e.get("cost_usd") or 0.0)
        click.echo(f"backfill of {table} into full: ~{e.get('rows')} rows × ~{e.get('avg_tokens_per_row')} tokens "
                   f"= ~{e.get('tokens')} tokens ≈ ${cost:.6f} at ${e.get('price_per_million_tokens')}/M "
                   f"(estimated from the {e.get('source')}; cached chunks are not paid again)")
        if not sys.stdin.isatty():
            raise click.ClickException("confirmation needed: repeat with --yes")
        click.confirm("proceed?", abort=True)
        status, data = client.call("PUT", path, body={**body, "confirm": True})
    if status != 200:
        _fail(status, data)
    click.echo(f"{data['table']}: {data['from']} -> {data['profile']} (version {data['version']}), applied by "
               f"{len(data['workers'])} worker(s)")
    if data.get("backfill"):
        click.echo(f"backfill: incremental snapshot signal {data['backfill']['signal']} sent")


@click.command("search")
@click.argument("query")
@click.option("--table", "tables", multiple=True, help="Table id (connector.schema.table); repeatable.")
@click.option("--mode", type=click.Choice(["keyword", "semantic", "hybrid"]), default="keyword", show_default=True)
@click.option("--size", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--filter", "filters", multiple=True, metavar="FIELD=VALUE", help="Exact field filter; repeatable.")
@click.option("--range", "ranges", multiple=True, metavar="FIELD=LO..HI", help="Range filter; repeatable.")
@click.option("--where", "wheres", multiple=True, metavar="COLUMN:EXPR",
              help="A filter of the API's filter language (status:paid, amount:>=10, "
                   "ordered_at:2024-01-01..2024-01-31); repeatable.")
@click.option("--json", "as_json", is_flag=True, help="The API's JSON answer.")
def search(query: str, tables: tuple[str, ...], mode: str, size: int, filters: tuple[str, ...],
           ranges: tuple[str, ...], wheres: tuple[str, ...], as_json: bool) -> None:
    """Search the mirror: keyword, semantic or hybrid."""
    params: list[tuple[str, str]] = [("q", query), ("mode", mode), ("size", str(size))]
    params += [("table", t) for t in tables]
    params += [("filter", w) for w in wheres]
    for kind, items in (("filter", filters), ("range", ranges)):
        for f in items:
            name, sep, value = f.partition("=")
            if not sep:
                raise click.BadParameter(f"{f!r}: expected FIELD=VALUE", param_hint=f"--{kind}")
            params.append((f"{kind}.{name}", value))
    status, data = _client(False).call("GET", "/api/search", params=params)
    if status != 200:
        _fail(status, data)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data["hits"]:
        click.echo("no hits")
    total = data.get("total") or {}
    if total:
        click.echo(f"{total['value']}{'+' if total.get('relation') == 'gte' else ''} hits")
    for h in data["hits"]:
        click.echo(f"{h['score']:.4f}  {h['table']}  id={h['id']}")
        if h.get("snippet"):
            # Snippets are HTML (escaped text with <mark>): shown as plain text with [marks].
            click.echo("    " + html.unescape(h["snippet"].replace("<mark>", "[").replace("</mark>", "]")))


@click.group("dlq")
def dlq() -> None:
    """The dead-letter topic and blocked tables (through the worker's API)."""


@dlq.command("skip")
@click.argument("table")
@click.option("--reason", required=True, help="Why the event is at fault; kept in its DLQ record.")
def dlq_skip(table: str, reason: str) -> None:
    """Move the event that blocks TABLE (connector.schema.table) to the DLQ; the table resumes.

    Only for an event that is at fault after all: an outage or a credential problem clears
    by itself once fixed, with nothing in the DLQ. Ask the worker that /status shows as blocked.
    """
    status, data = _client(True).call("POST", "/api/dlq/skip", body={"table": table, "reason": reason})
    if status != 202:
        _fail(status, data)
    p = data["skipping"]
    click.echo(f"skipping {p['topic']}[{p['partition']}]@{p['offset']} of {data['table']} on {data['worker']}: "
               "it goes to the DLQ at the next retry")


def register(main: click.Group) -> None:
    main.add_command(dlq)
    main.add_command(profiles)
    main.add_command(search)
