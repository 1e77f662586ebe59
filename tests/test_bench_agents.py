"""Smoke test of benchmarks/bench_agents.py on tiny sizes: it runs, writes the JSON and the PNG, and its
ratios are the medians of the rounds it reports (no timing checks)."""

import json
import statistics

import pytest

from benchmarks import bench_agents as bench  # imported by name: its training cases run in spawned processes


def test_bench_agents_runs_and_reports_round_medians(tmp_path) -> None:
    settings = bench.Settings(
        lengths=(2, 4),
        batch_sizes=(1, 2),
        window=2,
        rollout_envs=2,
        rollout_steps=3,
        rollout_reps=3,
        train_batch_steps=40,
        train_reps=1,
        train_rounds=2,
        train_transitions=3000,
        padding_batches=3,
        kv_max_steps=4,
    )
    results = bench.run(settings, "cpu", tmp_path)
    assert (tmp_path / "agents_speed.png").stat().st_size > 0
    assert json.loads((tmp_path / "agents_speed.json").read_text())["goals"] == results["goals"]

    rollout = results["rollout"]
    for name in ("aaren", "aaren-eager"):
        rounds = rollout[f"{name}_over_random_rounds"]
        assert len(rounds) == settings.rollout_reps and all(r > 0 for r in rounds)
        assert rollout[f"{name}_over_random"] == statistics.median(rounds)

    assert set(results["training"]) == set(bench.TRAIN_DATASETS)
    for row in results["training"].values():
        rounds = row["aaren_over_transformer_rounds"]
        assert len(rounds) == settings.train_rounds
        reported = row["aaren_over_transformer_supervised_steps_per_second"]
        assert reported == statistics.median_low(rounds)
        speed = {case["agent"]: case["supervised_steps_per_second"] for case in row["cases"]}
        assert speed["aaren"] / speed["transformer"] == pytest.approx(reported)  # the cases of that round
