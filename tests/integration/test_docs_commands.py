"""Every command the docs show exists: each ``cdcstream`` command in a fenced ``sh`` block (of
docs/*.md and README.md) and each inline ``cdcstream ...`` code span of docs/*.md is parsed by the
real CLI (an unknown subcommand, option or a missing argument fails); every ``sh`` block is valid
bash whose programs are installed; and the read-only commands that no other test runs are run
here against the stack.

Where the others run is declared in ``COVERED`` (subcommand -> the tests that run it), and the
test checks that each of those files really invokes it, so a new documented command must be
placed somewhere. Placeholders in the docs' prose (``NAME``, ``TABLE``, ``FILE``, ``SQL``,
``[optional parts]``) are filled in before parsing, each optional part both left out and given.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from cdcstream.cli.main import main
from tests.support import delete_topics, removal_spec, teardown_connector, topics_named, topics_starting

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
SH_DOCS = [*DOCS, ROOT / "README.md"]
PREFIXES = (("cdcstream",), (".venv/bin/cdcstream",), (".venv/bin/python", "-m", "cdcstream.cli"))
PLACEHOLDERS = {"NAME": "shop-pg", "TABLE": "public.orders", "FILE": "shop.yaml", "SQL": "id > 5"}
VAULT_BIN = Path.home() / ".cache" / "cdcstream" / "vault-1.14.2" / "bin"  # docs/vault.md puts it on PATH

# Subcommand -> the tests that run it (checked below: each file must invoke it). "here" = this file.
COVERED: dict[tuple[str, ...], tuple[str, ...]] = {
    ("stack", "up"): ("Makefile",),  # `make test` runs `cdcstream stack up` before any test
    ("stack", "status"): ("here",),
    ("stack", "down"): (),  # stops the shared stack: parsed only
    ("connectors",): ("tests/integration/test_docs_connectors.py",),  # the group named in prose
    ("connectors", "plan"): ("tests/integration/test_docs_connectors.py",),
    ("connectors", "apply"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "status"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "list"): ("tests/integration/test_docs_connectors.py",),
    ("connectors", "pause"): ("tests/integration/test_docs_connectors.py",),
    ("connectors", "resume"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "restart"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "snapshot"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "delete"): ("tests/integration/test_docs_connectors.py", "tests/e2e/test_runbook.py"),
    ("connectors", "fields"): ("here",),
    ("topics", "plan"): ("here",),
    ("topics", "apply"): ("here",),
    ("worker",): ("tests/e2e/harness.py",),
    ("settings",): ("here",),
    ("verify",): ("tests/e2e/test_verify.py",),
    ("demo",): (),  # `make run`: seeds the shared demo database and runs a worker: parsed only
    ("profiles", "show"): ("tests/e2e/test_api.py",),
    ("profiles", "set"): (),  # its endpoint is tested (tests/e2e/test_api.py), the CLI command parsed only
    ("search",): ("tests/e2e/test_api.py",),
    ("dlq",): ("tests/e2e/test_runbook.py",),  # the group named in prose
    ("dlq", "skip"): ("tests/e2e/test_runbook.py",),
    ("credentials", "status"): ("tests/e2e/test_vault_credentials.py", "tests/e2e/test_runbook.py", "here"),
    ("credentials", "rotate"): ("tests/e2e/test_vault_credentials.py", "tests/e2e/test_runbook.py"),
    ("credentials", "rotate-loop"): ("tests/e2e/test_vault_credentials.py",),
    ("embeddings", "plan"): ("tests/integration/test_reembed.py", "tests/e2e/test_reembed.py"),
    ("embeddings", "reembed"): ("tests/e2e/test_reembed.py",),
    ("restore",): ("tests/e2e/test_restore.py",),
    ("history",): ("tests/e2e/test_restore.py",),
}


# --- what the docs show --------------------------------------------------------------------------
def sh_blocks(path: Path) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", path.read_text(), re.M | re.S)


def logical_lines(block: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, here-document bodies skipped."""
    out: list[str] = []
    buf, heredoc = "", None
    for line in block.splitlines():
        if heredoc is not None:
            if line.strip() == heredoc:
                heredoc = None
            continue
        buf += line
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", buf)
        if m:
            heredoc = m.group(1)
        if buf.strip() and not buf.strip().startswith("#"):
            out.append(buf.strip())
        buf = ""
    return out


def cli_args(words: list[str]) -> list[str] | None:
    for prefix in PREFIXES:
        if tuple(words[:len(prefix)]) == prefix:
            return words[len(prefix):]
    return None


def expand(span: str) -> Iterator[str]:
    """A prose command with its ``[optional]`` parts left out and given, placeholders filled in."""
    optional = re.findall(r"\[([^\]]+)\]", span)
    for keep in itertools.product((False, True), repeat=len(optional)):
        text = span
        for part, k in zip(optional, keep, strict=True):
            text = text.replace(f"[{part}]", part if k else "", 1)
        for name, value in PLACEHOLDERS.items():
            text = re.sub(rf"\b{name}\b", shlex.quote(value), text)
        yield " ".join(text.split())


def documented() -> list[tuple[str, list[str]]]:
    """(where, argv after ``cdcstream``) for every command the docs show."""
    out: list[tuple[str, list[str]]] = []
    for path in SH_DOCS:
        for block in sh_blocks(path):
            for line in logical_lines(block):
                args = cli_args(shlex.split(line, comments=True))
                if args is not None:
                    out.append((f"{path.name}: {line}", args))
    for path in DOCS:
        for span in re.findall(r"`(cdcstream [^`]+)`", path.read_text()):
            for text in expand(span):
                args = cli_args(shlex.split(text))
                assert args is not None
                out.append((f"{path.name}: `{span}`", args))
    return out


def parse(args: list[str]) -> tuple[str, ...]:
    """Parse ``args`` as the real CLI would, without running anything; the subcommand path.

    Raises click's usage errors for an unknown subcommand or option, a missing argument or a bad value.
    """
    cmd: click.Command = main
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group) and rest:
        name, rest = rest[0], rest[1:]
        sub = cmd.get_command(click.Context(cmd), name)
        if sub is None:
            raise click.UsageError(f"no such command {' '.join([*path, name])!r}")
        cmd, path = sub, [*path, name]
    if not isinstance(cmd, click.Group):
        with cmd.make_context(" ".join(["cdcstream", *path]), rest) as _ctx:
            pass
    return tuple(path)


# --- tests ---------------------------------------------------------------------------------------
def test_every_documented_cdcstream_command_parses() -> None:
    commands = documented()
    assert len(commands) >= 60, f"found only {len(commands)} documented commands: is the parser broken?"
    failures = []
    for where, args in commands:
        try:
            path = parse(args)
        except click.ClickException as e:
            failures.append(f"{where}\n    cdcstream {shlex.join(args)}: {e.format_message()}")
            continue
        if path not in COVERED:
            failures.append(f"{where}\n    cdcstream {shlex.join(args)}: not in COVERED (which test runs it?)")
    assert not failures, "documented commands the CLI refuses:\n" + "\n".join(failures)


def test_the_parser_catches_what_it_should() -> None:
    for bad in (["connectors", "restart", "x", "--only-faild"], ["connectors", "stat", "x"],
                ["connectors", "snapshot", "x"], ["profiles", "set", "t", "everything"]):
        with pytest.raises(click.UsageError):
            parse(bad)
    assert parse(["connectors", "snapshot", "x", "public.t", "--filter", "id > 5"]) == ("connectors", "snapshot")


def test_covered_commands_are_really_run_there() -> None:
    from tests.integration.test_docs_connectors import blocks

    walkthroughs = "\n".join(blocks("postgres") + blocks("mariadb"))
    for path, where in COVERED.items():
        for name in where:
            if name == "here":
                continue
            # test_docs_connectors runs the `<!-- test: -->` blocks of docs/connectors.md.
            text = walkthroughs if name.endswith("test_docs_connectors.py") else (ROOT / name).read_text()
            # Either form: an argv list ("connectors", "status") or a command line (connectors status).
            spelled = ('", "'.join(path), " ".join(path))
            assert any(s in text for s in spelled), f"{name} does not run `cdcstream {' '.join(path)}`"


def test_every_sh_block_is_valid_bash_with_installed_programs() -> None:
    path_env = f"{VAULT_BIN}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    problems = []
    for doc in SH_DOCS:
        for block in sh_blocks(doc):
            r = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True, check=False)
            if r.returncode != 0:
                problems.append(f"{doc.name}: bash -n: {r.stderr.strip()}\n{block}")
            for line in logical_lines(block):
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if not words or words[0] in ("export", "cd", "set"):
                    continue
                program = words[0]
                found = (ROOT / program).exists() if "/" in program and not program.startswith("/") \
                    else shutil.which(program, path=path_env)
                if not found:
                    problems.append(f"{doc.name}: `{line}`: {program} is not installed here")
    assert not problems, "\n".join(problems)


# --- the read-only commands no other test runs ----------------------------------------------------
def run_doc(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdcstream.cli", *args], env=env, cwd=tmp, capture_output=True,
                          text=True, timeout=240, check=False)


def doc_lines(doc: str, first: str) -> list[list[str]]:
    """The argv of each ``cdcstream <first> ...`` line in ``doc``'s sh blocks."""
    out = []
    for block in sh_blocks(ROOT / doc):
        for line in logical_lines(block):
            args = cli_args(shlex.split(line, comments=True))
            if args and args[0] == first:
                out.append(args)
    return out


def test_stack_status_commands_run(require: Callable[[str], dict[str, Any]]) -> None:
    require("postgres")
    runs = [a for a in doc_lines("docs/operations.md", "stack") if a[1] == "status"]
    assert [["stack", "status"], ["stack", "status", "--json"]] == runs
    import json

    for args in runs:
        r = run_doc(args, dict(os.environ), ROOT)  # from the clone: its .stack/ holds the PIDs
        # Exit 1 unless every server runs (as documented): the test suite needs them all anyway.
        assert r.returncode == 0, r.stdout + r.stderr
        if "--json" in args:
            facts = json.loads(r.stdout)
            assert {"postgres", "kafka", "connect"} <= set(facts), facts
            assert all(f["state"] == "running" for f in facts.values()), facts
        else:
            assert re.search(r"^postgres\s+running\s+postgresql://", r.stdout, re.M), r.stdout


def test_topics_and_settings_commands_run(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    require("kafka")
    app_id = f"docs-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "cdcstream.yaml"
    config.write_text(
        "connectors:\n  - name: " + app_id + "\n"
        "    connection: {kind: postgres, host: 127.0.0.1, port: 5432, database: shop, user: cdc_shop,\n"
        "                 password: 'env:SHOP_PG_PASSWORD', tls: {mode: disable}}\n"
        "    tables:\n      - name: public.orders\n")
    env = {**os.environ, "CDCSTREAM_APP_ID": app_id, "CDCSTREAM_CONFIG": str(config)}
    try:
        topics = doc_lines("docs/operations.md", "topics")
        assert [a[:2] for a in topics] == [["topics", "plan"], ["topics", "apply"]]
        plan, apply = topics
        # Before apply the internal topics are missing: plan says so and exits 1.
        r = run_doc(plan, env, tmp_path)
        assert r.returncode == 1 and f"absent                       {app_id}-control" in r.stdout, r.stdout
        r = run_doc(apply, env, tmp_path)
        assert r.returncode == 0 and f"{app_id}-control" in r.stdout and f"{app_id}-dlq" in r.stdout, r.stdout
        r = run_doc(plan, env, tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"ok                           {app_id}-dlq" in r.stdout
        assert f"not yet created by Debezium  {app_id}.public.orders" in r.stdout
        r = run_doc(apply, env, tmp_path)
        assert r.stdout.strip() == "nothing to create", r.stdout

        settings = [a for _, a in documented() if a[:1] == ["settings"]]
        assert ["settings", "--markdown"] in settings
        # Its output equal to docs/settings.md is tests/unit/core/test_settings_doc.py's business.
        r = run_doc(["settings", "--markdown"], env, tmp_path)
        assert r.returncode == 0 and r.stdout.startswith("# Settings reference") and "`CDCSTREAM_APP_ID`" in r.stdout

        # docs/connectors.md: "Generated from the config models by `cdcstream connectors fields`".
        r = run_doc(["connectors", "fields"], env, tmp_path)
        embedded = (ROOT / "docs" / "connectors.md").read_text().split("<!-- fields:start -->\n", 1)[1]
        assert r.returncode == 0 and embedded.split("<!-- fields:end -->", 1)[0] == r.stdout

        status = [a for a in doc_lines("docs/vault.md", "credentials") if a[1] == "status"]
        assert status == [["credentials", "status", "--config", "cdcstream.yaml"]]
        r = run_doc(status[0], env, tmp_path)  # cwd is tmp_path: ./cdcstream.yaml is the file above
        # An env: password and no credentials.mode: provider mode (issue 18: inline was the default).
        assert r.returncode == 0 and r.stdout.strip() == f"{app_id}: mode=provider source=reference", r.stdout
    finally:
        delete_topics(topics_named(f"{app_id}-control", f"{app_id}-dlq"))


# --- docs/vault.md, run as written -----------------------------------------------------------------
VAULT_BLOCK = re.compile(r"^<!-- test: vault -->\n```sh\n(.*?)^```", re.M | re.S)


def vault_walkthrough(tag: str, tmp: Path) -> str:
    """The marked blocks of docs/vault.md as one script, every shared name made unique to this run."""
    script = "\n".join(VAULT_BLOCK.findall((ROOT / "docs" / "vault.md").read_text()))
    renames = [
        (r"/var/lib/cdcstream/credentials/orders-pg", f"{tmp}/credentials/orders-pg"),
        (r"/tmp/cdcstream-secret-id", f"{tmp}/cdcstream-secret-id"),
        (r"\bsecret/cdc/orders\b", f"secret/cdc-{tag}/orders"),
        (r"\bauth/approle/role/cdcstream\b", f"auth/approle/role/cdcstream-{tag}"),
        (r"\bcdcstream-(orders|kv)\b", rf"cdcstream-\1-{tag}"),  # policies
        (r"\bcdc-orders\b", f"cdc-orders-{tag}"),  # the Vault database role
        (r"\borders-pg\b", f"orders-pg-{tag}"),  # the connector
        (r"\bcdc_owner\b", f"cdc_owner_{tag}"),
        (r"\bshop\b", f"shop_{tag}"),  # the database and Vault's connection to it
    ]
    for pattern, replacement in renames:
        script = re.sub(pattern, replacement, script)
    return script


def test_vault_walkthrough_runs(require: Callable[[str], dict[str, Any]], tmp_path: Path) -> None:
    for svc in ("postgres", "vault", "kafka", "connect"):
        require(svc)
    tag = uuid.uuid4().hex[:8]
    script = vault_walkthrough(tag, tmp_path)
    assert script.count("\n") > 40 and "shop\n" not in script and " shop " not in script
    # The rotate-loop runs until stopped: everything before it as one script, then the loop on its own.
    loop_line = next(line for line in script.splitlines() if "credentials rotate-loop" in line)
    head, _, _ = script.partition(loop_line)
    exports = "\n".join(line for line in logical_lines(script) if line.startswith("export "))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CDCSTREAM_", "VAULT_"))},
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    connector = f"orders-pg-{tag}"
    try:
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", head], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=240, check=False)
        assert r.returncode == 0, f"docs/vault.md failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        out = r.stdout
        assert "change-me" in out  # vault kv get -field=password
        assert f"created connector {connector}" in out and "created publication" in out, out
        status = re.search(rf"^{re.escape(connector)}: mode=provider source=vault-dynamic user=(\S+) .*login=ok$",
                           out, re.M)
        assert status, out
        # exec: the loop replaces bash, so the PID is the loop's own (SIGTERM ends it after its pass).
        loop = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"{exports}\nexec {loop_line}"], cwd=tmp_path,
                                env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            assert loop.stdout is not None
            first = loop.stdout.readline()
            assert first.startswith(f"rotate-loop: {connector} every 5s"), first
        finally:
            loop.terminate()
            loop.wait(60)
        assert loop.returncode == 0, loop.returncode
    finally:
        _vault_cleanup(tag, connector)


def _vault_cleanup(tag: str, connector: str) -> None:
    import contextlib

    import hvac
    import psycopg

    # Connector, slot, publication and topics; the superuser outlives the dynamic users.
    teardown_connector(removal_spec(connector, "postgres", f"shop_{tag}"), also_topics=topics_starting(connector))
    v = hvac.Client(url="http://127.0.0.1:8200", token="root")
    removals: list[Callable[[], object]] = [
        lambda: v.sys.revoke_prefix(f"database/creds/cdc-orders-{tag}"),
        lambda: v.secrets.database.delete_role(f"cdc-orders-{tag}"),
        lambda: v.secrets.database.delete_connection(f"shop_{tag}"),
        lambda: v.auth.approle.delete_role(role_name=f"cdcstream-{tag}"),
        lambda: v.sys.delete_policy(name=f"cdcstream-orders-{tag}"),
        lambda: v.sys.delete_policy(name=f"cdcstream-kv-{tag}"),
        lambda: v.secrets.kv.v2.delete_metadata_and_all_versions(f"cdc-{tag}/orders", mount_point="secret")]
    for call in removals:
        with contextlib.suppress(Exception):
            call()
    with contextlib.suppress(Exception), psycopg.connect(host="127.0.0.1", port=5432, user="postgres",
                                                         password="postgres", dbname="postgres",
                                                         autocommit=True) as c:
        # DROP DATABASE also drops any (inactive) logical slot left in it.
        c.execute(f'DROP DATABASE IF EXISTS "shop_{tag}" WITH (FORCE)')
        for (name,) in c.execute("SELECT r.rolname FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid "
                                 "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = %s",
                                 (f"cdc_owner_{tag}",)).fetchall():
            c.execute(f'DROP ROLE IF EXISTS "{name}"')
        c.execute(f'DROP ROLE IF EXISTS "cdc_owner_{tag}"')
