"""Smoke test of benchmarks/bench_agents.py on tiny sizes: it runs, writes the JSON and the PNG, and its
ratios are the medians of the rounds it reports (no timing checks)."""

import json
import statistics

import pytest
from scratch_git import scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

from agents.decision.batching import BATCHINGS
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
        assert len(row["rounds"]) == settings.train_rounds
        assert set(row["over_transformer"]) == {f"aaren-{b}" for b in BATCHINGS}  # every batching, stored too
        for label, reported in row["over_transformer"].items():
            rounds = row["over_transformer_rounds"][label]
            assert len(rounds) == settings.train_rounds and reported == statistics.median_low(rounds)
            cases = row["rounds"][rounds.index(reported)]  # the round of the median ratio
            speed = (
                cases[label]["supervised_steps_per_second"]
                / cases["transformer"]["supervised_steps_per_second"]
            )
            assert speed == pytest.approx(reported)
        stored = row["rounds"][0]["aaren-stored"]
        assert stored["refresh_seconds_per_step"] > 0 and 0 < stored["draw_seconds"] < stored["step_seconds"]
        assert row["rounds"][0]["aaren-packed"]["refresh_seconds_per_step"] == 0
        assert set(row["batches"]) == set(bench.LAYOUTS)
    for name, row in results["training"].items():  # the goal is the default batching's ratio
        assert results["goals"][f"training_{name}"]["value"] == row["over_transformer"][bench.DEFAULT_CASE]


def test_main_routes_the_claim_and_the_variants(tmp_path, monkeypatch, capsys) -> None:
    written = []

    def fake_run(settings, device, out_dir):
        written.append((settings, out_dir))
        raise SystemExit(0)  # stop before measuring or printing

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(bench, "run_training_only", fake_run)
    scratch_checkout(tmp_path / "repo", monkeypatch, dirty=True)
    out = tmp_path / "out"
    assert bench.main(["--quick", "--out", str(out)]) == 2 and not written
    assert "--allow-dirty" in capsys.readouterr().err
    for args, settings, folder in (
        (["--quick", "--allow-dirty"], bench.QUICK, out),
        ([], bench.Settings(), out / "variants"),
        (["--quick", "--device", "cuda"], bench.QUICK, out / "variants"),
        (["--quick", "--training-only"], bench.QUICK, out / "variants"),
    ):
        with pytest.raises(SystemExit):
            bench.main([*args, "--out", str(out)])
        assert written.pop() == (settings, folder)
