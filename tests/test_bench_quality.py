"""The quality benchmark's report (benchmarks/bench_quality.py) from made-up runs: IQM with intervals
per pair and over all pairs, the probability of improvement, the verdict and the goal decided by the
gap's interval; and its protocol: at least 5 seeds, 20 evaluation episodes per target, and the same
evaluation episodes for every run."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from agents.common import stats
from benchmarks import bench_quality

PAIRS = (("hopper", "medium"), ("walker2d", "medium"))


@pytest.fixture(autouse=True)
def few_resamples(monkeypatch):
    monkeypatch.setattr(stats, "REPS", 200)


def make_runs(aaren: float, transformer: float, seeds=range(5), pairs=PAIRS) -> list[dict]:
    """Runs with scores about `aaren` and `transformer` (spread 1), and a two-point learning curve."""
    rng = np.random.default_rng(0)
    return [
        {
            "task": task,
            "dataset": dataset,
            "backbone": backbone,
            "seed": seed,
            "score": float(mean + rng.normal()),
            "dataset_score": 30.0,
            "curve": [[250, float(mean / 2 + rng.normal())], [500, float(mean + rng.normal())]],
        }
        for task, dataset in pairs
        for seed in seeds
        for backbone, mean in (("aaren", aaren), ("transformer", transformer))
    ]


def settings(seeds=range(5)) -> bench_quality.Settings:
    return dataclasses.replace(bench_quality.QUICK, tasks=("hopper", "walker2d"), datasets=("medium",),
                               seeds=tuple(seeds))  # fmt: skip


def test_report_of_a_clear_win(tmp_path):
    runs = make_runs(aaren=60, transformer=40)
    results = bench_quality.report(runs, settings(), tmp_path, planned=len(runs))
    assert results["complete"] and results["statistics"]["reps"] == 200
    (hopper, walker) = results["table"]
    assert (hopper["task"], walker["task"]) == ("hopper", "walker2d")
    scores = {
        b: [r["score"] for r in runs if r["task"] == "hopper" and r["backbone"] == b]
        for b in ("aaren", "transformer")
    }
    assert hopper["iqm"]["aaren"]["point"] == stats.iqm(np.array(scores["aaren"])[:, None]).point
    assert hopper["runs"] == {"aaren": 5, "transformer": 5} and hopper["verdict"] == {"aaren": stats.BETTER}
    overall = results["overall"]
    assert overall["pairs"] == 2 and overall["tasks"] == 2 and overall["verdict"] == {"aaren": stats.BETTER}
    assert overall["poi"]["aaren"]["point"] == 1.0
    assert results["goal"]["met"] is True and results["goal"]["gap"] == overall["difference"]["aaren"]
    assert json.loads((tmp_path / "quality.json").read_text())["overall"] == overall
    table = (tmp_path / "quality.md").read_text()
    iqm = stats.Interval(**hopper["iqm"]["aaren"])
    assert f"| hopper | medium | 30.0 | 5 | {iqm} |" in table
    assert "| all (2 pairs) |  |  | 5 |" in table and "| better |" in table
    assert "Goal: IQM(aaren) - IQM(transformer) over all pairs >= -1.0 points, by its interval: met." in table
    assert "20 evaluation episodes per target, the same for every run (eval.seed 1000)" in table
    assert (tmp_path / "quality.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("aaren", "met", "verdict"),
    [(40, None, stats.NO_CALL), (30, False, stats.WORSE)],
)
def test_the_goal_is_decided_by_the_interval(tmp_path, aaren, met, verdict):
    runs = make_runs(aaren=aaren, transformer=40)
    results = bench_quality.report(runs, settings(), tmp_path, planned=len(runs))
    assert results["goal"]["met"] is met and results["overall"]["verdict"] == {"aaren": verdict}
    assert {True: "met", False: "not met", None: "undecided"}[met] + ".\n" in (
        tmp_path / "quality.md"
    ).read_text()


def test_partial_report(tmp_path):
    """Before a pair has every seed with both backbones it has its own row but no part in the all row;
    with fewer than stats.MIN_RUNS seeds nothing is called."""
    runs = make_runs(aaren=60, transformer=40, seeds=range(3))
    runs = [r for r in runs if not (r["task"] == "walker2d" and r["backbone"] == "transformer")]
    results = bench_quality.report(runs, settings(range(3)), tmp_path, planned=12)
    assert not results["complete"] and [row["task"] for row in results["table"]] == ["hopper"]
    assert results["table"][0]["verdict"] == {"aaren": stats.FEW_RUNS}
    assert results["overall"]["pairs"] == 1 and results["goal"]["met"] is None
    empty = bench_quality.report(runs[:1], settings(range(3)), tmp_path / "empty", planned=12)
    assert empty["table"] == [] and empty["overall"] is None and empty["goal"]["gap"] is None


def test_protocol_defaults_and_the_same_evaluation_episodes_for_every_run(tmp_path):
    for preset in (bench_quality.Settings(), bench_quality.QUICK):
        assert len(preset.seeds) >= stats.MIN_RUNS and preset.eval_episodes >= 20
    trials = [
        bench_quality.make_run("hopper", "medium", backbone, seed, tmp_path / "d.hdf5", bench_quality.QUICK, tmp_path)
        for backbone in bench_quality.BACKBONES
        for seed in bench_quality.QUICK.seeds
    ]  # fmt: skip
    assert {t.settings["eval"]["seed"] for t in trials} == {bench_quality.QUICK.eval_seed}
    assert {t.settings["eval"]["episodes"] for t in trials} == {bench_quality.QUICK.eval_episodes}
    assert len({t.settings["train"]["seed"] for t in trials}) == len(bench_quality.QUICK.seeds)
