"""Schemathesis hooks for tests/e2e/test_api.py (loaded through SCHEMATHESIS_HOOKS).

``no_server_error_of_ours``: any 5xx fails, except a 502 whose body says the *embeddings API*
failed (e.g. timed out while other test runs keep the shared CPU embeddings server busy):
that answer is the API's documented behaviour for a failing dependency, not a bug of the API.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def no_server_error_of_ours(ctx: Any, response: Any, case: Any) -> bool | None:
    if response.status_code < 500:
        return None
    if response.status_code == 502 and '"error":"embeddings:' in response.text.replace(" ", ""):
        return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:500]}")
