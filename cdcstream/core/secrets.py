"""Secret references: where a credential lives, never the credential itself.

Accepted forms, wherever a credential goes (database, Elasticsearch, object store,
OpenAI key, API token):

* ``env:NAME`` – an environment variable of the process that resolves it;
* ``file:/path`` – a file's content, trailing newline stripped (Kubernetes/Docker secrets);
* ``vault:secret/cdc/orders#password`` – Vault KV (v1 or v2, detected from the mount),
  or the mapping ``{vault: {mount: secret, path: cdc/orders, key: password}}``;
* a literal – refused unless the config sets ``allow_literal_secrets: true``, then warned about.

A ``SecretRef`` prints as its reference; resolution returns a pydantic ``SecretStr``,
so a value is masked in ``repr``, logs and dumps wherever it travels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import SecretStr

log = logging.getLogger(__name__)

MASK = "***"


class SecretError(LookupError):
    """A reference that cannot be resolved; the message names the reference, never a value."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    scheme: Literal["env", "file", "vault", "literal"]
    path: str = ""
    key: str = ""
    mount: str = ""
    _literal: SecretStr | None = None

    def __str__(self) -> str:
        if self.scheme == "vault":
            return f"vault:{self.mount}/{self.path}#{self.key}"
        if self.scheme == "literal":
            return f"literal:{MASK}"
        return f"{self.scheme}:{self.path}"

    def __repr__(self) -> str:
        return f"SecretRef({self})"

    @classmethod
    def parse(cls, raw: Any, *, allow_literal: bool = False, where: str = "secret") -> SecretRef:
        if isinstance(raw, SecretRef):
            return raw
        if isinstance(raw, dict):
            if set(raw) != {"vault"} or not isinstance(raw["vault"], dict):
                raise ValueError(f"{where}: a secret mapping must be {{vault: {{mount, path, key}}}}")
            v = raw["vault"]
            unknown = set(v) - {"mount", "path", "key"}
            if unknown or not v.get("path") or not v.get("key"):
                raise ValueError(f"{where}: vault reference needs 'path' and 'key' (and optional 'mount'), "
                                 f"got keys {sorted(v)}")
            return cls("vault", str(v["path"]).strip("/"), str(v["key"]), str(v.get("mount", "secret")).strip("/"))
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"{where}: expected a secret reference such as env:NAME, file:/path or "
                             f"vault:mount/path#key")
        scheme, sep, rest = raw.partition(":")
        if sep and scheme == "env":
            if not rest:
                raise ValueError(f"{where}: env: reference needs a variable name")
            return cls("env", rest)
        if sep and scheme == "file":
            if not rest.startswith("/"):
                raise ValueError(f"{where}: file: reference needs an absolute path")
            return cls("file", rest)
        if sep and scheme == "vault":
            path, hsep, key = rest.partition("#")
            mount, slash, sub = path.strip("/").partition("/")
            if not hsep or not key or not slash or not sub:
                raise ValueError(f"{where}: vault reference must look like vault:<mount>/<path>#<key>")
            return cls("vault", sub, key, mount)
        if not allow_literal:
            raise ValueError(f"{where}: literal secrets are refused; use env:NAME, file:/path or "
                             f"vault:mount/path#key (or set allow_literal_secrets: true)")
        log.warning("%s: a literal secret is configured; it is kept in memory and config files in plaintext", where)
        return cls("literal", _literal=SecretStr(raw))


class VaultReader(Protocol):
    def read(self, mount: str, path: str, key: str) -> str: ...


