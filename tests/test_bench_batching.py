"""The batch-diversity study (benchmarks/bench_batching.py) end to end on tiny data: every mode trains and
is evaluated, the report holds scores, speeds, staleness and the equal-time comparison, and a second
invocation skips the finished runs; the study's protocol (seeds, evaluation episodes, the same evaluation
episodes for every run)."""

import json

import pytest
from scratch_git import scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

from agents.common import stats
from agents.decision.batching import BATCHINGS
from benchmarks import bench_batching

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_study_reports_every_mode_and_resumes(tiny_dataset, tmp_path, monkeypatch, capsys):
    args = [
        "--quick",
        "--dataset", str(tiny_dataset),
        "--steps", "4",
        "--warmup-steps", "2",
        "--batch-steps", "120",
        "--refresh-every", "2",
        "--eval-every", "2",
        "--eval-episodes", "1",
        "--threads", "1",
        "--out", str(tmp_path / "out"),
        "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    report = tmp_path / "out" / "variants" / "batching_quick.json"  # not the claim's settings: a variant
    assert bench_batching.main(args) == 0
    results = json.loads(report.read_text())
    assert results["complete"] and results["runs_done"] == len(BATCHINGS)  # every mode, one seed (--quick)
    assert set(results["by_mode"]) == set(BATCHINGS)
    assert all(
        row["supervised_steps_per_s"] > 0 and row["train_seconds"] > 0 for row in results["by_mode"].values()
    )
    assert (
        results["by_mode"]["stored"]["readout_gap"] > 0 and "readout_gap" not in results["by_mode"]["packed"]
    )
    stored = next(r for r in results["runs"] if r["mode"] == "stored")
    assert [s["step"] for s in stored["staleness"]] == [2, 4]
    assert [step for step, _, _ in stored["curve"]] == [2, 4]
    (point,) = results["equal_time"]
    assert point["seconds"] == min(r["train_seconds"] for r in results["runs"])
    fastest = min(results["runs"], key=lambda r: r["train_seconds"])
    assert point["score"][fastest["mode"]] == fastest["curve"][-1][2]  # its final evaluation, within T
    assert report.with_suffix(".png").is_file()
    same = results["comparisons"]["equal steps"]
    assert same["baseline"] == "stored" and same["runs"] == dict.fromkeys(BATCHINGS, 1)
    assert same["iqm"]["packed"]["point"] == next(
        r["score"] for r in results["runs"] if r["mode"] == "packed"
    )
    assert same["verdict"] == {mode: stats.FEW_RUNS for mode in BATCHINGS if mode != "stored"}  # one seed
    timed = results["comparisons"].get("equal time")
    assert (timed is not None) == all(s is not None for s in point["score"].values())
    out = capsys.readouterr().out
    assert "equal time T" in out and "score IQM [95% CI]" in out and f"{stats.FEW_RUNS}" in out
    assert ("at equal time, stored: IQM" in out) == (timed is not None)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench_batching, "train", no_training)
    assert bench_batching.main(args) == 0
    assert json.loads(report.read_text())["runs"] == results["runs"]
    assert bench_batching.main([*args, "--steps", "6"]) == 2  # other settings need another --work folder
    assert "holds a study with other settings (steps differ)" in capsys.readouterr().err


def test_the_claims_study_is_refused_from_uncommitted_code(tmp_path, monkeypatch, capsys):
    def no_study(*args):
        raise AssertionError("the study ran")

    monkeypatch.setattr(bench_batching, "run", no_study)
    scratch_checkout(tmp_path / "repo", monkeypatch, dirty=True)
    claim = bench_batching.CLAIM.settings
    args = [
        "--transitions", str(claim.transitions),
        "--modes", *claim.modes,
        "--seeds", *map(str, claim.seeds),
        "--steps", str(claim.steps),
        "--warmup-steps", str(claim.warmup_steps),
        "--eval-every", str(claim.eval_every),
        "--eval-episodes", str(claim.eval_episodes),
        "--threads", str(claim.threads),
        "--out", str(tmp_path / "out"),
        "--work", str(tmp_path / "work"),
    ]  # fmt: skip
    assert bench_batching.main(args) == 2
    err = capsys.readouterr().err
    assert f"{bench_batching.CLAIM.name}.json is the canonical result" in err and "--allow-dirty" in err


def test_unequal_batches_are_warned_with_the_fix(tiny_dataset, tmp_path):
    settings = bench_batching.Settings(dataset=str(tiny_dataset), batch_steps=100)
    configs = {
        mode: bench_batching.run_config(
            settings, mode, 0, tiny_dataset, bench_batching.REPO / "configs" / "base.yaml", tmp_path
        )
        for mode in ("packed", "stored")
    }  # packed: 2 rows of the longest episode (60 steps); stored: 5 windows of K = 20
    with pytest.warns(
        UserWarning, match=r"batches of \{'packed': 120, 'stored': 100\} steps .* --batch-steps 60"
    ):
        bench_batching.check_equal_batches(configs, tiny_dataset)


def test_protocol_defaults_and_the_same_evaluation_episodes_for_every_run(tiny_dataset, tmp_path):
    settings = bench_batching.Settings(dataset=str(tiny_dataset))
    assert len(settings.seeds) >= stats.MIN_RUNS and settings.eval_episodes >= 20
    configs = [
        bench_batching.run_config(
            settings, mode, seed, tiny_dataset, bench_batching.REPO / "configs" / "base.yaml", tmp_path
        )
        for mode in settings.modes
        for seed in settings.seeds
    ]
    assert {cfg.eval.seed for cfg in configs} == {bench_batching.QualitySettings.eval_seed}
    assert len({cfg.train.seed for cfg in configs}) == len(settings.seeds)
