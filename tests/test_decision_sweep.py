"""Sweeps on a local Ray instance (2 CPUs, started once for the module): a tiny 4-trial grid completes,
a killed worker is a retry, a failing trial is recorded, re-running trains nothing, an interrupted
driver records its trials in flight as interrupted and picks up where it stopped, Ray's own output
stays out of the terminal, and a bad grid is refused before Ray runs anything."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from agents.decision import sweep as engine  # noqa: E402
from agents.decision.config import ConfigError  # noqa: E402
from agents.decision.run_dir import RunDir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model.embed_dim": 16,
    "model.num_layers": 1,
    "model.context_steps": 5,
    "train.batch_steps": 60,
    "train.steps": 8,
    "train.warmup_steps": 3,
    "train.log_every": 2,
    "train.checkpoint_every": 4,
    "train.eval_every": 0,
    "train.lr": 1e-3,
    "eval.episodes": 1,
    "eval.num_envs": 1,
    "eval.targets": [100],
}

# The trial functions below run in Ray workers, which cannot import this test module: ship them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


pytestmark = pytest.mark.usefixtures("local_ray")


def write_sweep(folder: Path, dataset: Path | str, grid: dict | None = None, retries: int = 1) -> Path:
    """A sweep over the tiny model: by default backbone x seed, 4 trials."""
    path = folder / "sweep.yaml"
    spec = {
        "config": str(ROOT / "configs" / "base.yaml"),
        "grid": grid or {"model.backbone": ["aaren", "transformer"], "train.seed": [0, 1]},
        "set": {"data.dataset": str(dataset), **TINY} if grid is None else TINY,
        "resources": {"cpus": 1},
        "retries": retries,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def evaluations(records: list[dict]) -> dict[str, list]:
    return {r["name"]: r["evaluation"] for r in records}


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    """The 4-trial grid run once, uninterrupted: (output folder, records)."""
    out = tmp_path_factory.mktemp("sweep")
    sweep = engine.load_sweep(write_sweep(out, tiny_dataset), out)
    return out, engine.run_sweep(sweep, out, progress=False)


def test_grid_completes_with_finite_scores_and_a_report(finished):
    out, records = finished
    report = json.loads((out / "sweep.json").read_text())
    assert report["finished"] == 4 and report["failed"] == report["pending"] == 0
    assert [r["name"] for r in report["trials"]] == [
        "backbone=aaren_seed=0",
        "backbone=aaren_seed=1",
        "backbone=transformer_seed=0",
        "backbone=transformer_seed=1",
    ]
    for record in report["trials"]:
        assert record["status"] == "finished" and record["attempts"] == 1, record
        (result,) = record["evaluation"]
        assert result["target_return"] == 100 and all(
            float("-inf") < result[k] < float("inf") for k in ("return_mean", "score_mean")
        )
        assert Path(record["run_dir"]) == out / "runs" / record["name"]
    assert [row["point"] for row in report["groups"]] == [
        {"model.backbone": "aaren"},
        {"model.backbone": "transformer"},
    ]
    table = (out / "sweep.md").read_text()
    assert "| aaren | 2/2 |" in table and "score IQM [95% CI]" in table and report["comparison"] is None
    assert (out / "sweep.png").stat().st_size > 0


def test_rerunning_a_finished_sweep_trains_nothing(finished, monkeypatch):
    out, records = finished
    checkpoints = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoints/*")}

    def no_ray(*args):
        raise AssertionError("a finished sweep connected to Ray")

    monkeypatch.setattr(engine, "connect", no_ray)
    again = engine.run_sweep(engine.load_sweep(out / "sweep.yaml", out), out, progress=False)
    assert again == records
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoints/*")} == checkpoints


def test_a_changed_sweep_is_refused_where_runs_exist(finished, monkeypatch):
    out, _ = finished
    monkeypatch.setattr(engine, "connect", lambda *args: pytest.fail("Ray was started for a changed sweep"))
    spec = yaml.safe_load((out / "sweep.yaml").read_text())
    spec["set"]["train.lr"] = 3e-4
    (out / "changed.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(
        ConfigError, match=r"was started with train.lr=0.001, but trial backbone=aaren_seed=0 now"
    ):
        engine.run_sweep(engine.load_sweep(out / "changed.yaml", out), out, progress=False)


def die_after_first_checkpoint(trial: engine.Trial) -> None:
    """The first attempt of one trial is SIGKILLed right after its first checkpoint; all else runs as usual."""
    marker = trial.run_dir.parents[1] / "killed-once"
    if trial.name == "dataset=hopper_tiny_seed=0" and not marker.exists():
        marker.touch()
        save = RunDir.save_checkpoint

        def save_then_die(self, *args, **kwargs):
            save(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        RunDir.save_checkpoint = save_then_die
    engine.run_trial(trial)


def test_killed_worker_is_retried_and_a_failing_trial_is_recorded(finished, tiny_dataset, tmp_path):
    _, baseline = finished
    grid = {"data.dataset": [str(tiny_dataset), str(tmp_path / "missing.hdf5")], "train.seed": [0, 1]}
    sweep = engine.load_sweep(write_sweep(tmp_path, tiny_dataset, grid), tmp_path)
    records = {
        r["name"]: r
        for r in engine.run_sweep(sweep, tmp_path, progress=False, trial_fn=die_after_first_checkpoint)
    }
    killed, clean = records["dataset=hopper_tiny_seed=0"], records["dataset=hopper_tiny_seed=1"]
    assert (killed["status"], killed["attempts"], clean["status"], clean["attempts"]) == (
        "finished",
        2,
        "finished",
        1,
    )
    assert killed["evaluation"] == evaluations(baseline)["backbone=aaren_seed=0"]  # resumed, same result
    for seed in (0, 1):
        failed = records[f"dataset=missing_seed={seed}"]
        assert (failed["status"], failed["attempts"], failed["evaluation"]) == ("failed", 2, None)
        assert "missing.hdf5" in failed["error"] and "ConfigError" in failed["error"]
    assert (
        "2/2" in (tmp_path / "sweep.md").read_text() and "(2 failed)" in (tmp_path / "sweep.md").read_text()
    )


def interrupting_driver(driver_pid: int):
    """A trial function whose second trial sends the driver a Ctrl-C (SIGINT) after its first
    checkpoint, then keeps going until the driver stops it."""

    def trial_fn(trial: engine.Trial) -> None:
        if trial.name == "backbone=aaren_seed=1":
            save = RunDir.save_checkpoint

            def save_then_interrupt(self, *args, **kwargs):
                folder = save(self, *args, **kwargs)
                os.kill(driver_pid, signal.SIGINT)
                time.sleep(60)
                return folder

            RunDir.save_checkpoint = save_then_interrupt
        engine.run_trial(trial)

    return trial_fn


@pytest.fixture
def ctrl_c_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test: a shell starts background
    commands with SIGINT ignored, and Python then keeps it ignored (the driver would wait forever)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c_raises")
def test_interrupted_driver_resumes_to_the_same_results(finished, tiny_dataset, tmp_path):
    _, baseline = finished
    sweep = engine.load_sweep(write_sweep(tmp_path, tiny_dataset), tmp_path)
    trial_fn = interrupting_driver(os.getpid())
    with pytest.raises(KeyboardInterrupt):
        engine.run_sweep(sweep, tmp_path, max_concurrent=1, progress=False, trial_fn=trial_fn)
    partial = json.loads((tmp_path / "sweep.json").read_text())
    assert (partial["finished"], partial["interrupted"], partial["pending"]) == (1, 1, 2)
    stopped = next(r for r in partial["trials"] if r["name"] == "backbone=aaren_seed=1")
    assert (stopped["status"], stopped["attempts"]) == ("interrupted", 1) and stopped["wall_s"] > 0
    assert RunDir(stopped["run_dir"]).checkpoint_folders()  # stopped mid-run
    records = engine.run_sweep(engine.load_sweep(tmp_path / "sweep.yaml", tmp_path), tmp_path, progress=False)
    assert [r["status"] for r in records] == ["finished"] * 4
    assert evaluations(records) == evaluations(baseline)


def interrupting_at_the_curve(driver_pid: int):
    """A trial function that sends the driver a Ctrl-C once its run's final evaluation report is written,
    as the learning curve is drawn, then keeps going until the driver stops it."""

    def trial_fn(trial: engine.Trial) -> None:
        import matplotlib.figure

        save = matplotlib.figure.Figure.savefig

        def interrupt_then_save(self, fname, *args, **kwargs):
            if Path(fname) == RunDir(trial.run_dir).curve:
                os.kill(driver_pid, signal.SIGINT)
                time.sleep(60)
            return save(self, fname, *args, **kwargs)

        matplotlib.figure.Figure.savefig = interrupt_then_save
        engine.run_trial(trial)

    return trial_fn


@pytest.mark.usefixtures("ctrl_c_raises")
def test_a_trial_stopped_after_its_report_is_interrupted_not_finished(finished, tiny_dataset, tmp_path):
    _, baseline = finished
    grid = {"data.dataset": [str(tiny_dataset)], "model.backbone": ["aaren"], "train.seed": [0]}
    sweep = engine.load_sweep(write_sweep(tmp_path, tiny_dataset, grid), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        engine.run_sweep(sweep, tmp_path, progress=False, trial_fn=interrupting_at_the_curve(os.getpid()))
    (record,) = json.loads((tmp_path / "sweep.json").read_text())["trials"]
    run = RunDir(record["run_dir"])
    assert (run.eval / "eval.json").is_file() and not run.curve.exists()  # stopped between the two
    assert (record["status"], record["attempts"], record["evaluation"]) == ("interrupted", 1, None)
    assert record["wall_s"] > 0
    (again,) = engine.run_sweep(
        engine.load_sweep(tmp_path / "sweep.yaml", tmp_path), tmp_path, progress=False
    )
    assert (again["status"], again["attempts"]) == ("finished", 2) and run.curve.is_file()
    assert again["evaluation"] == evaluations(baseline)["backbone=aaren_seed=0"]


def test_ray_output_goes_to_a_log_and_failures_to_the_terminal(tmp_path):
    """As a user runs a sweep (its own Ray instance): Ray's warnings and the raylet's tracebacks of failed
    attempts land in ray.log, not between the sweep's lines; the failed trial is named at the end."""
    missing = tmp_path / "missing.hdf5"
    path = write_sweep(tmp_path, missing, {"data.dataset": [str(missing)], "train.seed": [0]})
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "scripts/sweep.py", "--config", str(path), "--out", str(out), "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("| data.dataset | seeds done |"), done.stdout
    assert "(raylet)" not in done.stdout + done.stderr and "WARNING" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"failed: dataset=missing_seed=0 after 2 attempts: ConfigError: data.dataset = '{missing}' cannot be "
        f"loaded: {missing}: dataset file not found. Fix: check the path, or make one with `python "
        "scripts/collect_dataset.py <task>-<recipe>-v2` (see --help).",
        f"Ray's own messages: {out / 'ray.log'}",
    ]
    assert (out / "ray.log").is_file()


def test_bad_grid_key_is_refused_before_ray_runs_anything(tiny_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engine, "connect", lambda *args: pytest.fail("Ray was started for a bad grid"))
    path = write_sweep(tmp_path, tiny_dataset, {"model.backbon": ["aaren"], "train.seed": [0]})
    sweep = engine.load_sweep(path, tmp_path)
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.backbon': did you mean model.backbone\?"
    ):
        engine.run_sweep(sweep, tmp_path, progress=False)
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--config", str(path), "--out", str(tmp_path), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: trial backbon=aaren_seed=0")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"model.backbone": "aaren"}}, "grid.model.backbone = 'aaren': expected a non-empty list"),
        ({"set": {"name": "x"}}, "set sets 'name', which the sweep sets itself"),
        (
            {"grid": {"train.seed": [0], "pair": [{"train.seed": 1}]}},
            "train.seed is set both by grid.pair and by grid.train.seed",
        ),
        ({"grid": {"train.lr": [1e-4, "0.0001"]}}, "get the same run name 'lr=0.0001'"),
        ({"retry": 3}, "unknown sweep key 'retry': did you mean 'retries'"),
        ({"resources": {"gpu": 1}}, "resources: unknown key 'gpu'"),
        (
            {"config": "nothere.yaml"},
            "config = 'nothere.yaml' names {folder}/nothere.yaml, which does not exist",
        ),
        ({"config": "."}, "config = '.' names {folder}, which is a folder"),
    ],
)
def test_malformed_sweep_files_are_one_clear_error(tmp_path, change, message):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        yaml.safe_dump({"config": str(ROOT / "configs" / "base.yaml"), "grid": {"train.seed": [0]}, **change})
    )
    message = message.format(folder=tmp_path.resolve())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        engine.load_sweep(path, tmp_path)


def test_trials_that_would_hold_a_gpu_they_do_not_use_are_refused(tiny_dataset, tmp_path):
    sweep = engine.load_sweep(write_sweep(tmp_path, tiny_dataset), tmp_path)
    with pytest.raises(ConfigError, match=r"train.device = 'cpu', but resources.gpus = 1"):
        engine.check_trials(sweep.trials, engine.Resources(cpus=1, gpus=1))


@pytest.mark.parametrize("finished_before", [False, True])
def test_a_run_with_a_retired_config_key_is_refused_up_front(
    tiny_dataset, tmp_path, monkeypatch, finished_before
):
    """An old run (finished or not) whose config.yaml sets a key this version dropped is one ConfigError
    before Ray starts, not a finished trial or a failure inside a worker."""
    monkeypatch.setattr(engine, "connect", lambda *args: pytest.fail("Ray was started for a retired key"))
    sweep = engine.load_sweep(write_sweep(tmp_path, tiny_dataset), tmp_path)
    trial = sweep.trials[0]
    old = {**trial.settings, "train": {**trial.settings["train"], "batch_size": 8}}
    del old["train"]["batch_steps"]
    run = RunDir(trial.run_dir)
    run.root.mkdir(parents=True)
    run.config.write_text(yaml.safe_dump(old))
    if finished_before:
        run.eval.mkdir()
        (run.eval / "eval.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ConfigError) as caught:
        engine.run_sweep(sweep, tmp_path, progress=False)
    assert str(caught.value) == (
        f"{run.config} sets train.batch_size (now train.batch_steps), which this version no longer reads, "
        f"so that run can neither resume nor count as trial {trial.name}. Fix: delete {run.root} to train "
        "that trial again, or choose another --out"
    )


def test_example_sweep_is_the_quick_quality_grid(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import bench_quality
    finally:
        sys.path.remove(str(ROOT))
    sweep = engine.load_sweep(ROOT / "configs" / "sweeps" / "quality-quick.yaml", tmp_path)
    engine.check_trials(sweep.trials, sweep.resources)
    quick = bench_quality.QUICK
    planned = {
        f"data={task}-{dataset}_backbone={backbone}_seed={seed}"
        for task in quick.tasks
        for dataset in quick.datasets
        for backbone in bench_quality.BACKBONES
        for seed in quick.seeds
    }
    assert {trial.name for trial in sweep.trials} == planned
    for trial in sweep.trials:
        assert bench_quality._budget_overrides(quick).items() <= trial.overrides.items()
        assert trial.overrides["data.dataset"].endswith(f"-{quick.transitions}.hdf5")
