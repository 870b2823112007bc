"""Benchmarks on the real local stack: `python -m bench <scenario> [--size smoke|full] [--events N]`.

Results are ratios against a baseline measured in the same run, never timed assertions;
each run writes bench/results/<scenario>-<size>.json, and a full-size run also its section
in docs/benchmarks.md and its plot docs/img/bench-<scenario>.png.
"""
