"""Benchmarks of aaren-rl: each script writes its JSON and PNG into benchmarks/results.

Run them as scripts (`python benchmarks/bench_aaren.py`); each puts the repository root on sys.path
so that `benchmarks.common` imports the same way from a script, a test or `python -m`.
"""
