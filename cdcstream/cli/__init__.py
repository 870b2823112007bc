"""The ``cdcstream`` command. Nothing imports this package."""

from cdcstream.cli.main import main

__all__ = ["main"]
