"""The sweep report's statistics, on trials whose run directories say they finished (no training, no
Ray): per group the IQM over seeds with its interval, and with `compare:` each value against the
baseline per stratum and pooled, a difference called only when the intervals separate; partial
sweeps; the `compare:` key's checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from agents.commands import sweep as command
from agents.common import stats
from agents.decision import sweep as engine
from agents.decision.config import ConfigError
from agents.decision.run_dir import RunDir
from envs.errors import MissingExtraError

ROOT = Path(__file__).resolve().parents[1]
SEEDS = list(range(stats.MIN_RUNS))
DATA = ["hopper", "walker"]


@pytest.fixture(autouse=True)
def few_resamples(monkeypatch):
    monkeypatch.setattr(stats, "REPS", 200)  # the tests check the wiring, not the intervals' precision


def write_sweep(folder: Path, grid: dict | None = None, **keys) -> Path:
    """A sweep file over data x backbone x seed (by default), with `keys` (e.g. compare) added."""
    path = folder / "sweep.yaml"
    grid = grid or {
        "data": [{"label": name, "data.dataset": f"{name}.hdf5"} for name in DATA],
        "model.backbone": ["aaren", "transformer"],
        "train.seed": SEEDS,
    }
    path.write_text(yaml.safe_dump({"config": str(ROOT / "configs" / "base.yaml"), "grid": grid, **keys}))
    return path


def finish(trial: engine.Trial, score: float | None, ret: float = 1000.0) -> None:
    """What a finished trial leaves in its run directory: the sweep's bookkeeping and eval/eval.json, its
    best target scoring `score` (a second target scores less)."""
    run = RunDir(trial.run_dir)
    run.eval.mkdir(parents=True)
    results = [
        {"target_return": 3600, "episodes": 20, "return_mean": ret, "return_std": 1.0, "score_mean": score},
        {"target_return": 1800, "episodes": 20, "return_mean": ret - 1, "return_std": 1.0,
         "score_mean": None if score is None else score - 1},
    ]  # fmt: skip
    (run.eval / "eval.json").write_text(json.dumps({"results": results}))
    engine.write_state(run, {"attempts": 1, "seconds": 1.0, "finished": True})


def fail(trial: engine.Trial) -> None:
    run = RunDir(trial.run_dir)
    run.root.mkdir(parents=True)
    engine.write_state(run, {"attempts": 3, "seconds": 1.0, "error": "RuntimeError: boom"})


def report(sweep: engine.Sweep, scores: dict[str, float | None], out: Path) -> tuple[dict, str]:
    """Finish the trials named in `scores` with those scores, write the report; its JSON and markdown."""
    for trial in sweep.trials:
        if trial.name in scores:
            finish(trial, scores[trial.name])
    engine.write_report(sweep, [engine.trial_record(t) for t in sweep.trials], out)
    return json.loads((out / "sweep.json").read_text()), (out / "sweep.md").read_text()


def scores_of(aaren: float, transformer: float, spread: float = 2.0, data=DATA, seeds=SEEDS) -> dict:
    """Each trial's score: the backbone's level plus a different offset per seed and dataset."""
    level = {"aaren": aaren, "transformer": transformer}
    return {
        f"data={d}_backbone={b}_seed={s}": level[b] + spread * (s - 2) + 0.3 * i
        for i, d in enumerate(data)
        for b in level
        for s in seeds
    }


def by_hand_iqm(values: list[float]) -> float:
    values = np.sort(values)
    cut = len(values) // 4
    return float(values[cut : len(values) - cut].mean())


COMPARE = {"axis": "model.backbone", "baseline": "transformer"}


def test_separated_backbones_are_called_per_stratum_and_pooled(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    assert sweep.compare == engine.Compare("model.backbone", "transformer")
    scores = scores_of(aaren=60.0, transformer=40.0)
    result, table = report(sweep, scores, tmp_path)
    assert result["metric"] == "score" and result["sweep"]["compare"] == COMPARE
    groups = {tuple(g["point"].values()): g for g in result["groups"]}
    hopper_aaren = [scores[f"data=hopper_backbone=aaren_seed={s}"] for s in SEEDS]
    assert abs(groups["hopper", "aaren"]["iqm"]["point"] - by_hand_iqm(hopper_aaren)) < 1e-10
    assert groups["hopper", "aaren"]["seeds"] == [str(s) for s in SEEDS]
    comparison = result["comparison"]
    assert [s["point"] for s in comparison["strata"]] == [{"data": d} for d in DATA]
    for stratum in comparison["strata"]:
        assert stratum["verdict"] == {"aaren": stats.BETTER} and stratum["poi"]["aaren"]["point"] == 1.0
        assert stratum["runs"] == {"aaren": 5, "transformer": 5} and stratum["tasks"] == 1
    overall = comparison["overall"]
    assert overall["pooled"] == DATA and overall["tasks"] == 2 and comparison["left_out"] == {}
    assert overall["verdict"] == {"aaren": stats.BETTER}
    pooled = [v for k, v in scores.items() if "aaren" in k]
    assert abs(overall["iqm"]["aaren"]["point"] - by_hand_iqm(pooled)) < 1e-10
    assert "| hopper | aaren | 5 |" in table and "| all (2 of 2) | aaren | 5 |" in table
    assert table.count(f"| {stats.BETTER} |") == 3 and "left out" not in table
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worse_is_called_the_other_way(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    result, _ = report(sweep, scores_of(aaren=40.0, transformer=60.0), tmp_path)
    assert result["comparison"]["overall"]["verdict"] == {"aaren": stats.WORSE}


def test_overlapping_backbones_are_not_called(tmp_path):
    """The same scores up to a shift far inside the seeds' spread: the intervals overlap."""
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    result, table = report(sweep, scores_of(aaren=50.5, transformer=50.0, spread=10.0), tmp_path)
    comparison = result["comparison"]
    verdicts = [s["verdict"]["aaren"] for s in comparison["strata"]] + [
        comparison["overall"]["verdict"]["aaren"]
    ]
    assert verdicts == [stats.NO_CALL] * 3
    assert stats.BETTER not in table and stats.WORSE not in table


def test_few_seeds_are_never_called(tmp_path):
    seeds = SEEDS[:-1]
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    result, _ = report(sweep, scores_of(aaren=60.0, transformer=40.0, seeds=seeds), tmp_path)
    assert result["comparison"]["overall"]["verdict"] == {"aaren": stats.FEW_RUNS}
    assert result["comparison"]["overall"]["pooled"] == DATA  # every stratum has the same 4 seeds


def test_a_partial_sweep_reports_what_finished_and_pools_only_like_strata(tmp_path):
    """hopper complete; walker with a seed of aaren only; cheetah with 3 seeds each; ant with no
    transformer run yet, and a failed trial."""
    data = ["hopper", "walker", "cheetah", "ant"]
    grid = {
        "data": [{"label": name, "data.dataset": f"{name}.hdf5"} for name in data],
        "model.backbone": ["aaren", "transformer"],
        "train.seed": SEEDS,
    }
    sweep = engine.load_sweep(write_sweep(tmp_path, grid, compare=COMPARE), tmp_path)
    scores = scores_of(aaren=60.0, transformer=40.0, data=data)
    dropped = {"data=walker_backbone=transformer_seed=4"}
    dropped |= {f"data=cheetah_backbone={b}_seed={s}" for b in ("aaren", "transformer") for s in (3, 4)}
    dropped |= {f"data=ant_backbone=transformer_seed={s}" for s in SEEDS}
    fail(next(t for t in sweep.trials if t.name == "data=ant_backbone=aaren_seed=4"))
    dropped.add("data=ant_backbone=aaren_seed=4")
    result, table = report(sweep, {k: v for k, v in scores.items() if k not in dropped}, tmp_path)
    assert result["finished"] == 40 - len(dropped) and result["failed"] == 1
    done = {tuple(g["point"].values()): (g["finished"], g["failed"]) for g in result["groups"]}
    assert done["walker", "transformer"] == (4, 0) and done["ant", "aaren"] == (4, 1)
    assert done["ant", "transformer"] == (0, 0)
    assert "| ant | transformer | 0/5 | - |" in table and "| ant | aaren | 4/5 (1 failed) |" in table
    comparison = result["comparison"]
    # Each stratum with a finished baseline is compared over what finished there.
    strata = {s["point"]["data"]: s for s in comparison["strata"]}
    assert list(strata) == ["hopper", "walker", "cheetah"]
    assert (
        strata["walker"]["runs"] == {"aaren": 5, "transformer": 4} and "| walker | aaren | 5 / 4 |" in table
    )
    assert strata["cheetah"]["verdict"] == {"aaren": stats.FEW_RUNS}
    # Only hopper has every backbone on the same seeds, as many as the most.
    assert comparison["overall"]["pooled"] == ["hopper"] and comparison["overall"]["tasks"] == 1
    assert comparison["left_out"] == {
        "walker": "different seeds per value (aaren 0 1 2 3 4, transformer 0 1 2 3)",
        "cheetah": "3 seeds, where the pooled strata have 5",
        "ant": "no finished run of transformer",
    }
    assert "| all (1 of 4) | aaren | 5 |" in table
    assert (
        "left out: walker: different seeds per value (aaren 0 1 2 3 4, transformer 0 1 2 3); cheetah" in table
        and "ant: no finished run of transformer." in table
    )
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_before_any_baseline_finished_nothing_is_compared(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    result, table = report(sweep, {"data=hopper_backbone=aaren_seed=0": 50.0}, tmp_path)
    comparison = result["comparison"]
    assert comparison["strata"] == [] and comparison["overall"] is None
    assert comparison["left_out"] == {
        "hopper": "no finished run of transformer",
        "walker": "no finished run of aaren, transformer",
    }
    assert (
        "No strata pooled yet" in table
        and "left out: hopper: no finished run of transformer; walker" in table
    )
    assert "| hopper | aaren | 1/5 | 50.0 [50.0, 50.0] |" in table
    assert (tmp_path / "sweep.png").stat().st_size > 0  # the groups' IQMs


def test_without_reference_scores_returns_are_compared(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    scores = dict.fromkeys(scores_of(aaren=60.0, transformer=40.0), 50.0)
    scores["data=walker_backbone=aaren_seed=0"] = None  # a dataset without reference scores
    result, table = report(sweep, scores, tmp_path)
    assert result["metric"] == "return" and result["groups"][0]["iqm"]["point"] == 1000.0
    assert "return IQM [95% CI]" in table and "some datasets have no reference scores" in table


def test_a_grid_of_one_stratum_has_no_pooled_rows(tmp_path):
    grid = {"model.backbone": ["aaren", "transformer"], "train.seed": SEEDS}
    sweep = engine.load_sweep(write_sweep(tmp_path, grid, compare=COMPARE), tmp_path)
    scores = {
        f"backbone={b}_seed={s}": (60.0 if b == "aaren" else 40.0) + s
        for b in ("aaren", "transformer")
        for s in SEEDS
    }
    result, table = report(sweep, scores, tmp_path)
    (stratum,) = result["comparison"]["strata"]
    assert stratum["point"] == {} and stratum["verdict"] == {"aaren": stats.BETTER}
    assert result["comparison"]["overall"] is None and "| aaren | 5 |" in table and "all (" not in table


def test_without_compare_only_the_groups_are_reported(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path), tmp_path)
    result, table = report(sweep, scores_of(aaren=60.0, transformer=40.0), tmp_path)
    assert sweep.compare is None and result["comparison"] is None and len(result["groups"]) == 4
    assert "P(>" not in table and (tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.parametrize(
    "compare, message",
    [
        ("backbone", "compare = 'backbone': expected a mapping of axis (a grid axis) and baseline"),
        ({"axis": "model.backbone"}, "compare = {'axis': 'model.backbone'}: expected a mapping"),
        ({"axis": "backbone", "baseline": "transformer"}, "compare.axis = 'backbone' is not a grid axis"),
        ({"axis": "model.backbon", "baseline": "x"}, "did you mean 'model.backbone'?"),
        ({"axis": "train.seed", "baseline": 0}, "the seeds' axis train.seed is the runs"),
        ({"axis": "model.backbone", "baseline": "gru"}, "compare.baseline = 'gru' is not a value of grid.model.backbone. Fix: name one of aaren, transformer"),
        ({"axis": "data", "baseline": "hopper"}, "grid.data has only the baseline 'hopper'"),
    ],
)  # fmt: skip
def test_a_bad_compare_key_is_one_clear_error(tmp_path, compare, message):
    grid = {
        "data": [{"label": "hopper", "data.dataset": "hopper.hdf5"}],
        "model.backbone": ["aaren", "transformer"],
        "train.seed": SEEDS,
    }
    path = write_sweep(tmp_path, grid, compare=compare)
    with pytest.raises(ConfigError) as caught:
        engine.load_sweep(path, tmp_path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "Fix:" in str(caught.value)


def test_a_misspelt_compare_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown sweep key 'compar': did you mean 'compare'"):
        engine.load_sweep(write_sweep(tmp_path, compar=COMPARE), tmp_path)


def test_numbers_as_baselines_match_their_labels(tmp_path):
    grid = {"train.lr": [1e-4, 3e-4], "train.seed": SEEDS}
    sweep = engine.load_sweep(
        write_sweep(tmp_path, grid, compare={"axis": "train.lr", "baseline": 1e-4}), tmp_path
    )
    assert sweep.compare == engine.Compare("train.lr", "0.0001")


@pytest.mark.parametrize(
    "name, compare",
    [("batching", engine.Compare("mode", "transformer")), ("quality-quick", engine.Compare("model.backbone", "transformer"))],
)  # fmt: skip
def test_shipped_sweeps_compare_with_the_transformer(tmp_path, name, compare):
    assert engine.load_sweep(ROOT / "configs" / "sweeps" / f"{name}.yaml", tmp_path).compare == compare


def test_without_rliable_a_sweep_stops_before_training_with_one_error(tmp_path, monkeypatch, capsys):
    for module in ("rliable", "rliable.library", "rliable.metrics", "rliable.plot_utils"):
        monkeypatch.setitem(sys.modules, module, None)  # an import of it fails, as when it is missing
    monkeypatch.setattr(engine, "run_trials", lambda *args, **kwargs: pytest.fail("a trial ran"))
    path = write_sweep(tmp_path, compare=COMPARE)
    with pytest.raises(MissingExtraError, match=r"need rliable.*Fix: pip install -e '\.\[ray\]'"):
        engine.run_sweep(engine.load_sweep(path, tmp_path), tmp_path, progress=False)
    assert command.main(["--config", str(path), "--out", str(tmp_path), "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: the report's statistics need rliable") and line.endswith(
        "pip install -e '.[ray]'"
    )


def test_kept_lists_the_report_and_the_finished_trials_small_files_only(tmp_path, capsys):
    """`--kept` runs nothing and lists what carries a sweep's finished work: not an unfinished trial's
    files, nor any trial's checkpoints."""
    trials = [{"name": "a", "status": "finished"}, {"name": "b", "status": "interrupted"}]
    (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}))
    (tmp_path / "sweep.md").write_text("report")
    for name in ("a", "b"):
        for kept in (*engine.KEPT_TRIAL_FILES, "checkpoints/step_1/model.safetensors"):
            path = tmp_path / "runs" / name / kept
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    argv = ["--config", "quality-quick", "--out", str(tmp_path), "--kept"]
    assert command.main(argv) == 0
    listed = capsys.readouterr().out.split()
    assert listed == [
        str(tmp_path / "sweep.json"),
        str(tmp_path / "sweep.md"),
        *(str(tmp_path / "runs" / "a" / kept) for kept in engine.KEPT_TRIAL_FILES),
    ]
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--config", "quality-quick", "--out", str(tmp_path / "none"), "--kept"])
    assert exit_info.value.code == 2
    assert "none/sweep.json does not exist; run the sweep first" in capsys.readouterr().err


def evaluate_during_training(trial: engine.Trial, scores: list[float]) -> None:
    """What periodic evaluations leave in a run's metrics.jsonl: one row per 100 steps at the first target
    (and, at the end, a row at the second that the curve leaves out)."""
    run = RunDir(trial.run_dir)
    rows = [
        {"step": 100 * (i + 1), "eval/target": 3600.0, "eval/return_mean": 10.0 * s, "eval/score_mean": s}
        for i, s in enumerate(scores)
    ]
    rows.append(
        {"step": 100 * len(scores), "eval/target": 1800.0, "eval/return_mean": 0.0, "eval/score_mean": 0.0}
    )
    run.metrics.write_text(
        "".join(json.dumps(row) + "\n" for row in [{"step": 50, "train/loss": 1.0}, *rows])
    )


def test_learning_curves_are_the_iqm_over_seeds_of_each_periodic_evaluation(tmp_path, capsys):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    for trial in sweep.trials:
        finish(trial, 50.0)
        seed = int(trial.point["train.seed"])
        level = 40.0 if trial.point["model.backbone"] == "aaren" else 20.0
        evaluate_during_training(trial, [level + seed, level + 10 + seed, level + 20 + seed])
    records = [engine.trial_record(t) for t in sweep.trials]
    assert records[0]["curve"] == [
        {"step": 100 * (i + 1), "return_mean": 10.0 * s, "score_mean": s}
        for i, s in enumerate([40.0, 50.0, 60.0])
    ]
    curves = engine.learning_curves(records, sweep.compare, "score")
    assert list(curves) == DATA and list(curves["hopper"]) == ["aaren", "transformer"]
    aaren = curves["hopper"]["aaren"]
    assert len(aaren) == len(SEEDS) and aaren[0] == {100: 40.0, 200: 50.0, 300: 60.0}
    assert by_hand_iqm([run[300] for run in aaren]) == 62.0
    by_group = engine.learning_curves(records, None, "return")  # without compare: a panel per group
    assert by_group["hopper / aaren"]["hopper / aaren"][0] == {100: 400.0, 200: 500.0, 300: 600.0}
    assert command.main(["--config", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path), "--report"]) == 0
    assert "| hopper | aaren | 5 |" in capsys.readouterr().out
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "sweep.json").read_text())["finished"] == len(sweep.trials)


def test_trials_evaluated_once_draw_no_curves(tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, compare=COMPARE), tmp_path)
    report(sweep, scores_of(aaren=60.0, transformer=40.0), tmp_path)
    assert not (tmp_path / "curves.png").exists()
