"""The ``cdcstream`` command (``cdcstream.cli.main:main``). Nothing imports this package.

The package does not re-export ``main``: ``cdcstream.cli.main`` must stay the module, so
tests can patch its functions (``monkeypatch.setattr(cdcstream.cli.main, "_client", ...)``).
"""
