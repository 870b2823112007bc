"""Benchmarks on the real local stack: `python -m bench <scenario> [--size smoke|full]`.

Results are ratios against a baseline measured in the same run, never timed assertions;
each run writes bench/results/<scenario>.json and its table into docs/benchmarks.md.
"""
