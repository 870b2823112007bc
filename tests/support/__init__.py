"""Helpers shared by the integration, e2e and fault tests and by ``bench/``.

One place each for: waiting (``wait_until``), Kafka topic deletion (``delete_topics``), a free
TCP port (``free_port``), the worker's HTTP API (``WorkerApi``) and connector clean-up
(``teardown_connector``, over ``cdcstream.ops.lifecycle.remove_connector``). ``bench`` imports
them as ``tests.support`` (run it from the repository root: ``python -m bench ...``).
"""

from tests.support.kafka import BOOTSTRAP, delete_topics, topics_named, topics_starting, topics_under
from tests.support.net import free_port
from tests.support.teardown import SUPERUSER_PG, removal_spec, teardown_connector
from tests.support.wait import CONNECTION_ERRORS, WaitTimeout, wait_until
from tests.support.worker_api import WorkerApi

__all__ = [
    "BOOTSTRAP",
    "CONNECTION_ERRORS",
    "SUPERUSER_PG",
    "WaitTimeout",
    "WorkerApi",
    "delete_topics",
    "free_port",
    "removal_spec",
    "teardown_connector",
    "topics_named",
    "topics_starting",
    "topics_under",
    "wait_until",
]
