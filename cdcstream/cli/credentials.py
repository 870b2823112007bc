"""``cdcstream credentials ...``: dynamic Vault credentials of connectors (status, rotate, rotate-loop).

Registered from cli/main.py with one line (``credentials.register(main)``) so this file, not the
shared cli.py, holds the commands. Output names users and lease ids, never a password.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click


def _ctx(config_path: str | None) -> tuple[Any, Any, Any, Any]:
    from cdcstream.core.config import ConfigError, load_config
    from cdcstream.core.resolver import Resolver
    from cdcstream.core.settings import Settings
    from cdcstream.ops.kconnect import ConnectClient

    s = Settings()
    try:
        cfg = load_config(config_path or s.config)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
    return s, cfg, ConnectClient(s.connect_url), Resolver()


def register(main: click.Group) -> None:
    @main.group()
    def credentials() -> None:
        """Connector credentials: injection mode, Vault dynamic credentials, renewal and rotation."""

    config_option = click.option("--config", "config_path", default=None,
                                 help="Config file (default cdcstream.yaml).")

    @credentials.command("status")
    @config_option
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @click.option("--no-login", is_flag=True, help="Skip the test login with each connector's dynamic credentials.")
    def status_cmd(config_path: str | None, as_json: bool, no_login: bool) -> None:
        """Per connector: injection mode, credential source, current user, lease expiry, next rotation and
        whether the dynamic credentials still log in (a lease revoked in Vault has dropped the user)."""
        from cdcstream.ops.rotation import status

        _s, cfg, _c, _r = _ctx(config_path)
        rows = [status(spec, check_login=not no_login) for spec in cfg.connectors]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            lease = (f" user={r['user']} lease={r['lease_id']} expires_in={r['expires_in_s']}s "
                     f"rotates_in={r['rotates_in_s']}s") if "lease_id" in r else ""
            if "lease_id" in r and r["expires_in_s"] <= 0:
                lease += " EXPIRED"
            if "login" in r:
                lease += f" login={r['login']}"
            click.echo(f"{r['connector']}: mode={r['mode']} source={r['source']}{lease}")

    @credentials.command("rotate")
    @click.argument("name")
    @config_option
    @click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the task to stream "
                                                                       "on the new credentials.")
    def rotate_cmd(name: str, config_path: str | None, timeout: float) -> None:
        """Rotate NAME now: new credentials, restart connector and tasks, wait RUNNING, revoke the old lease."""
        from cdcstream.core.secrets import SecretError
        from cdcstream.ops.kconnect import ConnectError
        from cdcstream.ops.rotation import rotate

        s, cfg, client, resolver = _ctx(config_path)
        try:
            spec = cfg.connector(name)
        except KeyError as e:
            click.echo(f"error: {e.args[0]}", err=True)
            sys.exit(1)
        try:
            click.echo(str(rotate(spec, client, resolver, s.kafka_bootstrap, timeout=timeout)))
        except (SecretError, ConnectError, RuntimeError, OSError) as e:
            click.echo(f"error: {spec.name}: rotation failed, previous credentials kept: {e}", err=True)
            sys.exit(1)

    @credentials.command("rotate-loop")
    @config_option
    @click.option("--interval", default=5.0, show_default=True, help="Seconds between checks.")
    @click.option("--once", is_flag=True, help="One pass over the connectors, then exit.")
    @click.option("--timeout", default=180.0, show_default=True, help="Per rotation: seconds to wait for the task.")
    def rotate_loop_cmd(config_path: str | None, interval: float, once: bool, timeout: float) -> None:
        """Keep dynamic credentials alive: renew leases, rotate at 2/3 of the max TTL (until SIGTERM/SIGINT)."""
        from cdcstream.ops.rotation import loop

        s, cfg, client, resolver = _ctx(config_path)
        specs = [c for c in cfg.connectors if c.credentials.vault_role]
        if not specs:
            click.echo("no connector uses Vault dynamic credentials (credentials.vault_role)")
            return
        stopping = [False]

        def _stop(_sig: int, _frame: Any) -> None:
            stopping[0] = True

        signal.signal(signal.SIGTERM, _stop)
        passes = [0]

        def stop() -> bool:
            passes[0] += 1
            return stopping[0] or (once and passes[0] > 1)

        click.echo(f"rotate-loop: {', '.join(c.name for c in specs)} every {interval:g}s")
        try:
            loop(specs, client, resolver, s.kafka_bootstrap, interval_s=0 if once else interval, log_fn=click.echo,
                 stop=stop, timeout=timeout)
        except KeyboardInterrupt:
            pass
