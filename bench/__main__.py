"""python -m bench <scenario> [--size smoke|full]"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

from bench import embedding_cost

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"embedding-cost": embedding_cost}


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--size", choices=["smoke", "full"], default="smoke")
    ap.add_argument("--no-docs", action="store_true", help="Do not update docs/benchmarks.md")
    a = ap.parse_args()
    mod = SCENARIOS[a.scenario]
    result = mod.run(a.size)
    result.update({"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.scenario}-{a.size}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if a.size == "full" and not a.no_docs:
        doc = ROOT / "docs" / "benchmarks.md"
        text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
        section = f"<!-- {a.scenario} -->\n{mod.markdown(result)}\nMachine: {result['machine']}; {result['date']}.\n" \
                  f"<!-- /{a.scenario} -->\n"
        pat = re.compile(rf"<!-- {a.scenario} -->.*?<!-- /{a.scenario} -->\n", re.S)
        text = pat.sub(section, text) if pat.search(text) else text + "\n" + section
        doc.write_text(text)


if __name__ == "__main__":
    main()
