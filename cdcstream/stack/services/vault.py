"""A HashiCorp Vault dev server, built from source through the Go module proxy.

No package registry ships a Vault server binary, so ``install`` fetches the module's
source with ``go mod download`` and builds it. v1.14.8 is the newest MPL-2.0 release the
proxy serves (v1.14.10 is served too but is already BUSL-1.1). The module's go.mod
replaces its nested api/sdk modules with ``./api`` and ``./sdk``, which the module zip
does not contain, so those replaces are dropped and the published api/sdk versions it
requires are used instead.

Dev mode keeps everything in memory: every start is a fresh Vault, configured again by
``post_start``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, http_get, http_json, run

VAULT_MODULE = "github.com/hashicorp/vault"
VAULT_VERSION = "1.14.8"
ROOT_TOKEN = "root"  # dev server on loopback only
#: Builtin mounts the project relies on: path -> type.
SECRET_ENGINES = {"secret/": "kv", "database/": "database"}
AUTH_METHODS = {"approle/": "approle", "jwt/": "jwt"}


def go_env(cache: Path) -> dict[str, str]:
    go = cache / "go"
    return {
        "GOPATH": str(go),
        "GOMODCACHE": str(go / "mod"),
        "GOCACHE": str(go / "build"),
        # The machine's Go (1.21+) builds this go-1.20 module; never fetch another toolchain.
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
        # -mod=mod: dropping the replaces leaves go.sum without the published api/sdk hashes.
        "GOFLAGS": "-mod=mod -buildvcs=false",
    }


def _make_writable(root: Path) -> None:
    # The module cache is read-only; go mod edit must rewrite go.mod in the copy.
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | stat.S_IWUSR)
        for n in files:
            p = os.path.join(dirpath, n)
            os.chmod(p, os.stat(p).st_mode | stat.S_IWUSR)


class VaultService(Service):
    name = "vault"
    version = VAULT_VERSION
    ports = (8200,)
    start_timeout = 90.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def info(self) -> dict[str, Any]:
        return {"addr": self.url, "token": ROOT_TOKEN}

    @property
    def binary(self) -> Path:
        return self.artifacts / "bin" / "vault"

    def installed(self) -> bool:
        return super().installed() and self.binary.is_file()

    def install(self) -> None:
        go = shutil.which("go")
        if go is None:
            raise StackError("vault: the `go` command is needed to build Vault (Go 1.21 or newer)")
        env = go_env(self.paths.cache)
        self.paths.cache.mkdir(parents=True, exist_ok=True)
        out = run([go, "mod", "download", "-json", f"{VAULT_MODULE}@v{VAULT_VERSION}"], env=env, cwd=self.paths.cache,
                  what="vault: go mod download")
        src_dir = Path(json.loads(out)["Dir"])
        with building(self.artifacts) as tmp:
            src = tmp / "src"
            shutil.copytree(src_dir, src)
            _make_writable(src)
            mod = json.loads(run([go, "mod", "edit", "-json"], cwd=src, env=env, what="vault: go mod edit -json"))
            local = [r["Old"]["Path"] for r in mod.get("Replace") or [] if r["New"]["Path"].startswith(".")]
            if local:
                run([go, "mod", "edit", *(f"-dropreplace={p}" for p in local)], cwd=src, env=env,
                    what="vault: go mod edit -dropreplace")
            # As scripts/build.sh does, minus the `ui` tag (no web UI assets in the module zip).
            run([go, "build", "-tags", "vault", "-trimpath",
                 "-ldflags", f"-s -w -X {VAULT_MODULE}/version.GitCommit=v{VAULT_VERSION}",
                 "-o", str(tmp / "bin" / "vault"), "."],
                cwd=src, env=env, timeout=7200, what="vault: go build")
            shutil.rmtree(src)
            self.mark_complete(tmp)

    def command(self) -> list[str]:
        return [
            str(self.binary), "server", "-dev",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address=127.0.0.1:{self.ports[0]}",
            # Otherwise dev mode overwrites the user's ~/.vault-token.
            "-dev-no-store-token",
        ]

    def env(self) -> dict[str, str]:
        # The server honours these even in dev mode; a developer's real settings must not leak in
        # (empty means unset to Vault).
        return {"VAULT_SEAL_TYPE": "", "VAULT_CLUSTER_ADDR": ""}

    def healthy(self) -> bool:
        status, _ = http_get(f"{self.url}/v1/sys/health")
        return status == 200

    def _api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return http_json(f"{self.url}/v1/{path}", method=method, body=body, headers={"X-Vault-Token": ROOT_TOKEN})

    def _listing(self, path: str) -> dict[str, Any]:
        status, body = self._api("GET", path)
        if status != 200 or not isinstance(body, dict):
            raise StackError(f"vault: GET /v1/{path} answered {status}: {body}")
        # Newer servers wrap the listing in "data"; 1.14 also repeats it at the top level.
        data = body.get("data")
        return data if isinstance(data, dict) else body

    def _enable(self, kind: str, path: str, mtype: str) -> None:
        body: dict[str, Any] = {"type": mtype}
        if mtype == "kv":
            body["options"] = {"version": "2"}
        status, resp = self._api("POST", f"sys/{kind}/{path.rstrip('/')}", body)
        if status not in (200, 204):
            raise StackError(f"vault: enabling {mtype} at {path} answered {status}: {resp}")

    def post_start(self) -> None:
        mounts = self._listing("sys/mounts")
        for path, mtype in SECRET_ENGINES.items():
            have = mounts.get(path)
            if have is None:
                self._enable("mounts", path, mtype)
            elif have.get("type") != mtype:
                raise StackError(f"vault: {path} is a {have.get('type')} mount, expected {mtype}")
            elif mtype == "kv" and (have.get("options") or {}).get("version") != "2":
                raise StackError(f"vault: {path} is KV version 1, expected KV v2")
        auths = self._listing("sys/auth")
        for path, mtype in AUTH_METHODS.items():
            have = auths.get(path)
            if have is None:
                self._enable("auth", path, mtype)
            elif have.get("type") != mtype:
                raise StackError(f"vault: auth {path} is {have.get('type')}, expected {mtype}")
