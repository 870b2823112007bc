"""The Faust runtime: app factory, the context agents get, the consumer fix, topics, DLQ, worker.

With ``agents/`` and ``tables/`` the only code that imports faust; only ``runtime.app``
imports the agents and the web views."""
