"""Faust agents. The data path reads top to bottom in ``changes.py``:

    Debezium topics -> decode -> route by profile -> branch -> sinks -> row state, stats, acks
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust

if TYPE_CHECKING:
    from cdcstream.runtime.context import Pipeline


def register(app: faust.App, pipe: Pipeline) -> None:
    from agents import budget, changes, control

    changes.register(app, pipe)
    control.register(app, pipe)
    budget.register(app, pipe)
