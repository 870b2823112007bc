"""A HashiCorp Vault dev server, built from source through the Go module proxy.

No package registry ships a Vault server binary, so ``install`` fetches the module's
source with ``go mod download`` and builds it. The module's go.mod replaces its nested
api/sdk modules with ``./api`` and ``./sdk``, which the module zip does not contain, so
those replaces are dropped and the published api/sdk versions it requires are used.

Why 1.14.2: 1.14.x is the last MPL-2.0 line (the proxy's v1.14.10 is already BUSL-1.1).
No published sdk matches any 1.14.x tree exactly; 1.14.2 is the newest that compiles
against its required sdk v0.9.2 (1.14.3+ use sdk symbols first published in sdk v0.10.x,
whose EventSender interface no longer fits 1.14). sdk v0.9.2 rejects, at a backend's
first request, paths that define a CreateOperation without an ExistenceCheck; two 1.14
paths do, so ``SOURCE_PATCHES`` drops those handlers as upstream later did (without an
ExistenceCheck Vault never routes Create to them, so behaviour is unchanged).

Dev mode keeps everything in memory: every start is a fresh Vault, configured again by
``post_start``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

from cdcstream.stack.base import Service, StackError, building, http_get, http_json, run

VAULT_MODULE = "github.com/hashicorp/vault"
VAULT_VERSION = "1.14.2"
ROOT_TOKEN = "root"  # dev server on loopback only
#: Builtin mounts the project relies on: path -> type.
SECRET_ENGINES = {"secret/": "kv", "database/": "database"}
AUTH_METHODS = {"approle/": "approle", "jwt/": "jwt"}
#: (file, pattern, replacement, expected matches) applied to the copied source before building.
SOURCE_PATCHES: tuple[tuple[str, str, str, int], ...] = (
    # Enterprise-only stubs under sys/managed-keys.
    ("vault/logical_system_helpers.go", r"operations: \[\]logical\.Operation\{logical\.CreateOperation, ",
     "operations: []logical.Operation{", 2),
    # transit/cache-config; upstream main has no Create handler there either.
    ("builtin/logical/transit/path_cache_config.go",
     r"\n\n\t\t\tlogical\.CreateOperation: &framework\.PathOperation\{\n.*?\n\t\t\t\},\n", "\n", 1),
)


def go_env(cache: Path, build_cache: Path) -> dict[str, str]:
    go = cache / "go"
    return {
        "GOPATH": str(go),
        "GOMODCACHE": str(go / "mod"),
        # Several GB of compiled packages that only a rebuild of this exact tree would reuse:
        # they live in the build dir and are dropped with it. Module downloads stay in GOMODCACHE.
        "GOCACHE": str(build_cache),
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


def _patch(src: Path) -> None:
    for rel, pattern, repl, expected in SOURCE_PATCHES:
        path = src / rel
        text, n = re.subn(pattern, repl, path.read_text(), flags=re.DOTALL)
        if n != expected:
            raise StackError(f"vault: source patch for {rel} matched {n} times, expected {expected}; "
                             f"revisit SOURCE_PATCHES for Vault {VAULT_VERSION}")
        path.write_text(text)


class VaultService(Service):
    name = "vault"
    version = VAULT_VERSION
    # Dev mode also opens the cluster listener on the next port (loopback too).
    ports = (8200, 8201)
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
        with building(self.artifacts) as tmp:
            env = go_env(self.paths.cache, tmp / "gocache")
            out = run([go, "mod", "download", "-json", f"{VAULT_MODULE}@v{VAULT_VERSION}"], env=env, cwd=tmp,
                      what="vault: go mod download")
            src_dir = Path(json.loads(out)["Dir"])
            src = tmp / "src"
            shutil.copytree(src_dir, src)
            _make_writable(src)
            mod = json.loads(run([go, "mod", "edit", "-json"], cwd=src, env=env, what="vault: go mod edit -json"))
            local = [r["Old"]["Path"] for r in mod.get("Replace") or [] if r["New"]["Path"].startswith(".")]
            if local:
                run([go, "mod", "edit", *(f"-dropreplace={p}" for p in local)], cwd=src, env=env,
                    what="vault: go mod edit -dropreplace")
            _patch(src)
            # As scripts/build.sh does, minus the `ui` tag (no web UI assets in the module zip).
            run([go, "build", "-tags", "vault", "-trimpath", "-ldflags", "-s -w",
                 "-o", str(tmp / "bin" / "vault"), "."],
                cwd=src, env=env, timeout=7200, what="vault: go build")
            # Only the binary is renamed into place.
            shutil.rmtree(src)
            shutil.rmtree(env["GOCACHE"])
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
