"""python -m bench <scenario> [--size smoke|full] [--events N]"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Protocol

from bench import chunking as chunking_bench
from bench import embedding_cost, latency, migration, pgbench, recovery, search_relevance, throughput

ROOT = Path(__file__).resolve().parent.parent


class Scenario(Protocol):
    def run(self, size: str, events: int | None = None) -> dict[str, Any]: ...

    def markdown(self, r: dict[str, Any]) -> str: ...

    def plot(self, r: dict[str, Any]) -> list[Path]: ...


class EmbeddingCost:
    @staticmethod
    def run(size: str, events: int | None = None) -> dict[str, Any]:
        if events is not None:
            raise SystemExit("embedding-cost has fixed sizes (rows × update rounds); --events does not apply")
        return embedding_cost.run(size)

    @staticmethod
    def markdown(r: dict[str, Any]) -> str:
        return embedding_cost.markdown(r)

    @staticmethod
    def plot(r: dict[str, Any]) -> list[Path]:
        return []


SCENARIOS: dict[str, Scenario] = {
    "embedding-cost": EmbeddingCost(),
    "index-only-throughput": throughput.IndexOnly(),
    "archive-throughput": throughput.Archive(),
    "scale-out": throughput.ScaleOut(),
    "chunking": chunking_bench.Chunking(),
    "request-fill": chunking_bench.RequestFill(),
    "latency": latency.Latency(),
    "snapshot-recovery": recovery.SnapshotRecovery(),
    "search-relevance": search_relevance.SearchRelevance(),
    "migration": migration.Migration(),
    "pgbench": pgbench.PgBench(),
}


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--size", choices=["smoke", "full"], default="smoke")
    ap.add_argument("--events", type=int, default=None, help="Override the scenario's event/row count")
    ap.add_argument("--no-docs", action="store_true", help="Do not update docs/benchmarks.md or docs/img/")
    a = ap.parse_args()
    mod = SCENARIOS[a.scenario]
    result = mod.run(a.size, a.events)
    result.update({"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.scenario}-{a.size}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if a.size == "full" and not a.no_docs:
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        for p in mod.plot(result):
            print(f"plot: {p.relative_to(ROOT)}")
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
        section = f"<!-- {a.scenario} -->\n{mod.markdown(result)}\nMachine: {result['machine']}; {result['date']}.\n" \
                  f"<!-- /{a.scenario} -->\n"
        pat = re.compile(rf"<!-- {a.scenario} -->.*?<!-- /{a.scenario} -->\n", re.S)
        text = pat.sub(lambda _m: section, text) if pat.search(text) else text + "\n" + section
        doc.write_text(text)


if __name__ == "__main__":
    main()
