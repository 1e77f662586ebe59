"""bench_memory.py at tiny sizes: the acting section's rows, ratios and files, and the T-Maze section's
resuming (finished runs are read back, not trained again)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from benchmarks import bench_memory
from benchmarks.bench_memory import AGENTS, BACKBONES, Settings

TINY = Settings(
    checkpoints=(1, 4, 9),
    kv_max_step=4,
    min_reps=2,
    max_reps=3,
    budget_s=0.001,
    embed_dim=16,
    num_layers=1,
    train_embed_dim=16,
    train_layers=1,
    train_lengths=(3, 5),
    eval_lengths=(5, 9),
    seeds=(0,),
    transitions=400,
    steps=2,
    batch_steps=64,
    eval_episodes=2,
)


def test_acting_section_writes_json_and_png_with_every_agent_and_checkpoint(tmp_path):
    results = bench_memory.run(TINY, "cpu", tmp_path / "memory", work=None)
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert {"machine", "settings", "acting", "acting_summary"} <= set(saved) and "tmaze" not in saved
    steps = {label: [r["step"] for r in saved["acting"] if r["agent"] == label] for label in AGENTS}
    assert steps == {"aaren": [1, 4, 9], "transformer-window": [1, 4, 9], "transformer-kv": [1, 4]}
    assert all(r["step_seconds"] > 0 for r in saved["acting"])
    summary = results["acting_summary"]
    assert summary["growth"]["aaren"]["state_bytes"] == 1.0  # constant-size state
    assert summary["growth"]["transformer-kv"]["state_bytes"] > 1.0  # the KV cache grows every step
    assert summary["growth"]["transformer-kv"]["to_step"] == 4
    assert set(summary["transformer-kv_over_aaren"]) == {"1", "4"}
    assert set(summary["goal_aaren_flat"]) == {"goal", "value", "met"}


def test_tmaze_section_records_runs_and_skips_them_when_run_again(tmp_path, monkeypatch):
    first = bench_memory.bench_tmaze(TINY, tmp_path)
    assert [(r["backbone"], r["seed"]) for r in first["runs"]] == [(b, 0) for b in BACKBONES]
    for record in first["runs"]:
        assert set(record["success"]) == {"5", "9"}
        assert all(0.0 <= v <= 1.0 for v in record["success"].values())
        assert record["train_seconds"] > 0 and record["train_seconds_per_step"] == record["train_seconds"] / 2
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == [
        f"{b}-s0.json" for b in sorted(BACKBONES)
    ]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench_memory, "train", no_training)
    monkeypatch.setattr(bench_memory, "collect_recipe", no_training)
    again = bench_memory.bench_tmaze(TINY, tmp_path)
    assert again["runs"] == first["runs"]
    assert again["aaren_over_transformer_train_seconds_per_step"] > 0
    with pytest.raises(AssertionError, match="trained again"):  # a new seed does train
        bench_memory.bench_tmaze(dataclasses.replace(TINY, seeds=(0, 1)), tmp_path)


def test_tmaze_summary_gives_an_iqm_interval_from_three_seeds_on():
    runs = [
        {"backbone": b, "seed": s, "train_seconds_per_step": 0.1, "success": {"5": 0.5 + 0.1 * s, "9": 0.5}}
        for b in BACKBONES
        for s in range(3)
    ]
    summary = bench_memory.tmaze_summary(runs, TINY)["aaren"]["by_length"]
    assert summary["5"]["success"] == [0.5, 0.6, 0.7] and summary["5"]["mean"] == pytest.approx(0.6)
    assert summary["5"]["iqm"]["low"] <= summary["5"]["iqm"]["point"] <= summary["5"]["iqm"]["high"]
    two_seeds = bench_memory.tmaze_summary(runs[:2], TINY)["aaren"]["by_length"]
    assert "iqm" not in two_seeds["5"] and two_seeds["5"]["success"] == [0.5, 0.6]
