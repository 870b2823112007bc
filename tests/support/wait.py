"""Waiting for a condition on the real stack, without hiding mistakes in the check.

``wait_until`` retries only on "not yet": a falsy result, or an exception of a type the caller
names (by default connection-type errors: the service is not up or not answering yet). Any
other exception, a NameError, AttributeError or AssertionError in the check included, is raised
at once, so a typo in a check fails the test where it is rather than as a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
import requests
from aiokafka.errors import KafkaConnectionError

T = TypeVar("T")

#: "Not up / not answering yet". ``OSError`` covers every ``requests`` exception (a
#: RequestException is an IOError, a body that is not JSON included), refused connections,
#: timeouts and missing files.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, requests.ConnectionError, psycopg.OperationalError, KafkaConnectionError,
)


class WaitTimeout(AssertionError):
    """The condition did not hold within the timeout (an AssertionError: a test fails on it)."""


def wait_until(check: Callable[[], T], timeout: float = 60.0, interval: float = 0.5, *,
               what: str = "the condition", retry_on: tuple[type[BaseException], ...] = CONNECTION_ERRORS,
               detail: Callable[[], str] | None = None,
               abort: Callable[[], str | None] | None = None) -> T:
    """Call ``check`` every ``interval`` seconds until it returns something truthy; return that.

    ``retry_on``: exception types that mean "not yet" (they replace the default; pass
    ``(*CONNECTION_ERRORS, KeyError)`` to add one, ``()`` to retry on none). Any other
    exception propagates immediately. ``detail``: text appended to the timeout message (a
    log tail). ``abort``: called before each attempt; a non-empty answer ends the wait at once
    with an AssertionError saying it (the process under test died).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        if abort is not None:
            why = abort()
            if why:
                raise AssertionError(f"while waiting for {what}: {why}")
        try:
            result = check()
        except retry_on as e:
            last = e
        else:
            if result:
                return result
            last = None
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:g}s waiting for {what}"
            if last is not None:
                msg += f" (last attempt: {type(last).__name__}: {last})"
            extra = detail() if detail is not None else ""
            raise WaitTimeout(f"{msg}\n{extra}".rstrip())
        time.sleep(interval)
