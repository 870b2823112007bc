"""The worker's HTTP API (``cdcstream.web.views``) as tests and benchmarks call it.

Reads are open unless the worker protects them; writes need ``Authorization: Bearer <token>``.
So a write sends the token unless ``auth=False``, a read only with ``auth=True``, and
``headers=`` given explicitly (a wrong token) is sent as given. The library's own client
(``cdcstream.web.client``) covers only the profile drift check, so tests use this one.
"""

from __future__ import annotations

from typing import Any

import requests


class WorkerApi:
    def __init__(self, port: int, token: str | None = None, *, host: str = "127.0.0.1",
                 timeout: float = 30.0) -> None:
        self.base = f"http://{host}:{port}"
        self.token = token
        self.timeout = timeout

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def request(self, method: str, path: str, *, auth: bool, **kw: Any) -> requests.Response:
        if auth and self.token is not None and "headers" not in kw:
            kw["headers"] = {"Authorization": f"Bearer {self.token}"}
        kw.setdefault("timeout", self.timeout)
        return requests.request(method, self.url(path), **kw)

    def get(self, path: str, *, auth: bool = False, **kw: Any) -> requests.Response:
        return self.request("GET", path, auth=auth, **kw)

    def put(self, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        return self.request("PUT", path, auth=auth, **kw)

    def post(self, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        return self.request("POST", path, auth=auth, **kw)

    def json(self, path: str, *, auth: bool = False) -> Any:
        """GET ``path`` and decode its JSON body, whatever the status."""
        return self.get(path, auth=auth).json()
