"""What every command group needs: the settings and the config, loaded the same way (the group
modules import this, not ``cli.main``, which imports them: no cycle)."""

from __future__ import annotations

import sys
from typing import Any

import click


def settings(**overrides: Any) -> Any:
    from cdcstream.core.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def config(path: str | None) -> Any:
    """The config at ``path`` (default: the ``config`` setting); a bad one exits 2 with its error."""
    from cdcstream.core.config import ConfigError, load_config

    try:
        return load_config(path or settings().config)
    except ConfigError as e:
        click.echo(str(e), err=True)
        sys.exit(2)
