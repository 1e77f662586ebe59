"""The batch-diversity study (benchmarks/bench_batching.py) end to end on tiny data, its runs the trials of
a sweep on a local Ray: two batching modes and the Transformer train and are evaluated, an interrupted run
resumes from its checkpoint, the report holds scores, speeds, staleness, the equal-time comparison and
every mode against the training default and against the Transformer, and a second invocation trains
nothing; the study's settings check; its protocol (seeds, evaluation episodes, the same evaluation episodes
for every run)."""

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import pytest
from scratch_git import scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

from agents.common import stats
from agents.decision import sweep
from agents.decision.config import TrainConfig, from_dict
from agents.decision.run_dir import RunDir, read_metrics
from benchmarks import bench_batching

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = ("packed", "stored", "transformer")  # two batchings (packed: the training default) and the reference
BASE = bench_batching.REPO / "configs" / "base.yaml"


def study_args(dataset: Path, folder: Path) -> list[str]:
    return [
        "--quick",
        "--dataset", str(dataset),
        "--modes", *MODES,
        "--steps", "4",
        "--warmup-steps", "2",
        "--batch-steps", "120",
        "--refresh-every", "2",
        "--eval-every", "2",
        "--eval-episodes", "1",
        "--threads", "1",
        "--out", str(folder / "out"),
        "--work", str(folder / "work"),
    ]  # fmt: skip


def study_settings(dataset: Path) -> bench_batching.Settings:
    """The settings `study_args` asks for."""
    return dataclasses.replace(
        bench_batching.QUICK,
        dataset=str(dataset),
        modes=MODES,
        steps=4,
        warmup_steps=2,
        batch_steps=120,
        refresh_every=2,
        eval_every=2,
        eval_episodes=1,
        threads=1,
    )


def interrupt_after_first_checkpoint(trial: sweep.Trial) -> None:
    """Run the trial here as the sweep would, stopped by Ctrl-C right after its first checkpoint, and
    record it as the sweep records a trial it stopped."""
    save = RunDir.save_checkpoint

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(RunDir, "save_checkpoint", save_then_stop)
        sweep.run_trial(trial)
    sweep.mark_interrupted(RunDir(trial.run_dir), attempts_before=0)


@pytest.fixture(scope="module")
def study(tiny_dataset, tmp_path_factory, local_ray):
    """The study run once, one of its runs interrupted before: (folder, report, the interrupted run's
    metrics rows before it resumed, the printed table)."""
    folder = tmp_path_factory.mktemp("study")
    interrupted = bench_batching.make_run(
        study_settings(tiny_dataset), "packed", 0, tiny_dataset, BASE, folder / "work"
    )
    interrupt_after_first_checkpoint(interrupted)
    before = read_metrics(interrupted.run_dir / "metrics.jsonl")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert bench_batching.main(study_args(tiny_dataset, folder)) == 0
    report = folder / "out" / "variants" / "batching_quick.json"  # not the claim's settings: a variant
    return folder, json.loads(report.read_text()), before, printed.getvalue()


def test_study_reports_every_mode_against_the_default_and_the_transformer(study):
    folder, results, _, out = study
    assert results["complete"] and results["runs_done"] == len(MODES)  # one seed (--quick)
    assert results["ray"] == {"max_concurrent": 1, "address": None, "resources": {"cpus": 1, "gpus": 0}}
    assert set(results["by_mode"]) == set(MODES)
    for mode in MODES:
        record = json.loads((folder / "work" / "runs" / f"{mode}-s0" / sweep.TRIAL_STATE).read_text())
        assert record["finished"]  # each run was a sweep trial, in <work>/runs/<mode>-s<seed>
    assert all(
        row["supervised_steps_per_s"] > 0 and row["train_seconds"] > 0 for row in results["by_mode"].values()
    )
    assert results["by_mode"]["stored"]["readout_gap"] > 0
    assert "readout_gap" not in results["by_mode"]["packed"] | results["by_mode"]["transformer"]
    stored = next(r for r in results["runs"] if r["mode"] == "stored")
    assert [s["step"] for s in stored["staleness"]] == [2, 4]
    assert [step for step, _, _ in stored["curve"]] == [2, 4]
    (point,) = results["equal_time"]
    assert point["seconds"] == min(r["train_seconds"] for r in results["runs"])
    fastest = min(results["runs"], key=lambda r: r["train_seconds"])
    assert point["score"][fastest["mode"]] == fastest["curve"][-1][2]  # its final evaluation, within T
    assert (folder / "out" / "variants" / "batching_quick.png").is_file()
    score = {r["mode"]: r["score"] for r in results["runs"]}
    for key, baseline in (
        ("comparisons", TrainConfig.batching),
        ("comparisons_vs_transformer", "transformer"),
    ):
        same = results[key]["equal steps"]
        assert same["baseline"] == baseline and same["runs"] == dict.fromkeys(MODES, 1)
        assert {mode: iqm["point"] for mode, iqm in same["iqm"].items()} == score
        assert same["verdict"] == {mode: stats.FEW_RUNS for mode in MODES if mode != baseline}  # one seed
        timed = results[key].get("equal time")
        assert (timed is not None) == all(s is not None for s in point["score"].values())
    assert "equal time T" in out and "score IQM [95% CI]" in out and "P(> transformer)" in out
    assert out.count(stats.FEW_RUNS) >= 4  # each mode against the default, and against the transformer
    equal_time = f"at equal time, {TrainConfig.batching}: IQM"
    assert (equal_time in out) == (results["comparisons"].get("equal time") is not None)


def test_an_interrupted_run_resumes_from_its_checkpoint(study):
    _, results, before, _ = study
    packed = next(r for r in results["runs"] if r["mode"] == "packed")
    assert packed["resumed"] and packed["attempts"] == 2
    assert 0 < max(row["step"] for row in before) < 4  # stopped part-way
    after = read_metrics(Path(packed["run_dir"]) / "metrics.jsonl")
    assert after[: len(before)] == before and after[-1]["step"] == 4  # continued those rows, not restarted
    assert packed["curve"][-1][0] == 4
    assert not next(r for r in results["runs"] if r["mode"] == "stored")["resumed"]


def test_a_second_invocation_trains_nothing_and_other_settings_are_refused(
    study, tiny_dataset, monkeypatch, capsys
):
    folder, results, _, _ = study
    metrics = {p: p.read_bytes() for p in (folder / "work" / "runs").glob("*/metrics.jsonl")}
    monkeypatch.setattr(sweep, "connect", lambda *args: pytest.fail("Ray was started for a finished study"))
    args = study_args(tiny_dataset, folder)
    assert bench_batching.main([*args, "--max-concurrent", "2"]) == 0
    again = json.loads((folder / "out" / "variants" / "batching_quick.json").read_text())
    assert again["runs"] == results["runs"] and again["ray"]["max_concurrent"] == 2
    assert {p: p.read_bytes() for p in metrics} == metrics
    capsys.readouterr()
    assert bench_batching.main([*args, "--steps", "6"]) == 2  # other settings need another --work folder
    assert "holds a study with other settings (steps differ)" in capsys.readouterr().err

    # A run finished before the study's runs were sweep trials (listed in finished.json) is not run again.
    state = folder / "work" / "runs" / "stored-s0" / sweep.TRIAL_STATE
    state.unlink()
    (folder / "work" / "finished.json").write_text(json.dumps({"stored-s0": {"wall_s": 12.5}}))
    assert bench_batching.main(args) == 0
    adopted = json.loads((folder / "out" / "variants" / "batching_quick.json").read_text())["runs"]
    assert next(r for r in adopted if r["mode"] == "stored")["wall_s"] == 12.5
    assert {p: p.read_bytes() for p in metrics} == metrics


@pytest.mark.parametrize(("option", "value"), [("--threads", "0"), ("--max-concurrent", "0")])
def test_threads_and_concurrency_below_one_are_refused(tiny_dataset, tmp_path, capsys, option, value):
    assert bench_batching.main([*study_args(tiny_dataset, tmp_path), option, value]) == 2
    assert f"{option} 0" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_ctrl_c_says_how_to_continue(tiny_dataset, tmp_path, monkeypatch, capsys):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_batching, "run", ctrl_c)
    assert bench_batching.main(study_args(tiny_dataset, tmp_path)) == 130
    report = tmp_path / "out" / "variants" / "batching_quick.json"
    assert f"run the same command again to continue (report so far: {report})" in capsys.readouterr().out


def test_the_claims_study_is_refused_from_uncommitted_code(tmp_path, monkeypatch, capsys):
    def no_study(*args, **kwargs):
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
        mode: from_dict(bench_batching.make_run(settings, mode, 0, tiny_dataset, BASE, tmp_path).settings)
        for mode in ("packed", "stored", "transformer")
    }  # packed: 2 rows of the longest episode (60 steps); stored and the Transformer: 5 windows of K = 20
    with pytest.warns(
        UserWarning,
        match=r"batches of \{'packed': 120, 'stored': 100, 'transformer': 100\} steps .* --batch-steps 60",
    ):
        bench_batching.check_equal_batches(configs, tiny_dataset)


def test_protocol_defaults_and_the_same_evaluation_episodes_for_every_run(tiny_dataset, tmp_path):
    settings = bench_batching.Settings(dataset=str(tiny_dataset))
    assert len(settings.seeds) >= stats.MIN_RUNS and settings.eval_episodes >= 20
    assert settings.modes == (*bench_batching.BATCHINGS, "transformer")
    trials = [
        bench_batching.make_run(settings, mode, seed, tiny_dataset, BASE, tmp_path)
        for mode in settings.modes
        for seed in settings.seeds
    ]
    configs = [from_dict(trial.settings) for trial in trials]
    assert {cfg.eval.seed for cfg in configs} == {bench_batching.QualitySettings.eval_seed}
    assert len({cfg.train.seed for cfg in configs}) == len(settings.seeds)
    assert {(cfg.model.backbone, cfg.train.batching) for cfg in configs if cfg.name.startswith("packed")} == {
        ("aaren", "packed")
    }
    assert {cfg.model.backbone for cfg in configs if cfg.name.startswith("transformer")} == {"transformer"}
    assert {trial.run_dir.name for trial in trials} >= {"stored-s0", "transformer-s4"}
