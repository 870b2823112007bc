"""The layer rules of docs/architecture.md ("Where things live") hold, and their check can fail.

`lint-imports` (run by `make lint`) enforces the contracts in pyproject.toml; these tests add
what a contract does not say: no import cycle at all, even inside one layer, and proof that a
wrong-way import really breaks the check (a check that cannot fail is no check).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cdcstream", "agents", "tables")


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.find_modules_directly_imported_by(w)))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles() -> None:
    assert _cycles(grimp.build_graph(*PACKAGES)) == []


def test_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("from cyc import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert _cycles(grimp.build_graph("cyc")) == [["cyc.a", "cyc.b"]]
    finally:
        sys.path.remove(str(tmp_path))


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def _copy_tree(dest: Path) -> None:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def test_contracts_hold() -> None:
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wrong_way_import_fails_the_check(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    assert _lint_imports(tmp_path).returncode == 0
    # core may import nothing else from cdcstream: make it import the web views.
    events = tmp_path / "cdcstream" / "core" / "events.py"
    events.write_text(events.read_text() + "\nimport cdcstream.web.views  # noqa\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "cdcstream.core.events -> cdcstream.web.views" in r.stdout, r.stdout


def test_faust_outside_the_runtime_fails_the_check(tmp_path: Path) -> None:
    _copy_tree(tmp_path)
    decode = tmp_path / "cdcstream" / "pipeline" / "decode.py"
    decode.write_text(decode.read_text() + "\nimport faust  # noqa\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "cdcstream.pipeline.decode -> faust" in r.stdout, r.stdout
