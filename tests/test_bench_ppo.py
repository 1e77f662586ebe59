"""Smoke test of benchmarks/bench_ppo.py on a tiny budget: it runs all three algorithms and writes
the JSON and the PNG (no timing or return checks)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ppo.py"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bench_ppo_tiny_run(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("bench_ppo", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    try:
        spec.loader.exec_module(bench)
        settings = bench.Settings(steps={"RememberCue": 256}, seeds=(0,), eval_episodes=2)
        bench.run(settings, tmp_path, "tiny")
    finally:
        del sys.modules[spec.name]
    results = json.loads((tmp_path / "tiny.json").read_text())
    assert (tmp_path / "tiny.png").stat().st_size > 0
    assert [r["algo"] for r in results["runs"]] == ["aaren", "lstm", "mlp"]
    summary = results["summary"]["RememberCue"]
    assert {"speedup_wall_vs_lstm", "return_fraction_of_lstm", "random_return"} <= set(summary)
    assert results["machine"]["num_threads"] == 1
