"""The ``cdcstream`` command line."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

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
@click.option("--only", multiple=True, help="Stop just these services.")
def stack_down(only: tuple[str, ...]) -> None:
    """Stop exactly the processes `up` started (by PID)."""
    from cdcstream.stack.manager import Stack

    Stack(only=only or None).down(log=lambda m: click.echo(m, err=True))


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


# --- demo ----------------------------------------------------------------------
@main.command()
def demo() -> None:
    """The main job on a local machine: the stack is up; show where to look."""
    from cdcstream.stack.manager import Stack

    states = Stack().status()
    _print_table(states)
    down = [s.name for s in states if s.state != "running"]
    if down:
        click.echo(f"not running: {', '.join(down)}; run `cdcstream stack up`", err=True)
        sys.exit(1)
    click.echo("\nWhere to look:")
    for s in states:
        click.echo(f"  {s.name:<14} {s.url}")
    click.echo("  logs           .stack/logs/<service>.log")


if __name__ == "__main__":
    main()
