"""Every script failure a user can fix is one line `error: <message>` on stderr and exit status 2 (with the
file, key or value and the fix in the message); a bug keeps its traceback. Target returns are finite."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from agents import ConfigError, DecisionAgent, evaluate_run, load_agent, load_config, train
from agents.common.cli import USER_ERROR_STATUS, exits_2_on_user_errors, target_return
from agents.decision.agent import MAX_TARGET_RETURN
from agents.decision.checkpoint import CheckpointError, load_model
from agents.decision.evaluation import EvalResult, EvaluationError
from agents.decision.run_dir import RunDir, RunLockedError
from agents.decision.training import DivergedError
from envs import DatasetError
from envs.experts import PolicyFileError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: 1 thread is fastest


@functools.cache
def script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, so that its main runs in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(capsys: pytest.CaptureFixture[str], name: str, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of scripts/<name>.py run with `argv`."""
    capsys.readouterr()
    try:
        status = script(name).main(list(argv))
    except SystemExit as exc:  # argparse's exit
        status = exc.code
    return status, capsys.readouterr().err


def assert_user_error(status: int, err: str, *fragments: str) -> str:
    """Status 2, and stderr one line `error: ...` holding each fragment, no traceback; returns the line."""
    assert status == USER_ERROR_STATUS, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def tiny_overrides(dataset: Path, out: Path, name: str) -> list[str]:
    return [
        f"data.dataset={dataset}",
        f"output_dir={out}",
        f"name={name}",
        "model.embed_dim=16",
        "model.num_layers=1",
        "train.batch_steps=120",
        "train.steps=2",
        "train.warmup_steps=1",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "eval.episodes=1",
        "eval.num_envs=1",
        "eval.targets=[50]",
    ]


@pytest.fixture(scope="module")
def trained_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run (checkpoints at steps 1 and 2, a final evaluation)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    return train(
        load_config(CONFIGS / "quickstart.yaml", tiny_overrides(tiny_dataset, out, "tiny")), progress=False
    )


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


# ---- the one place: which errors are the user's, and how they are shown ---------------------------


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConfigError("train.lr = 'x': expected float"), "error: train.lr = 'x': expected float"),
        (
            DatasetError("d.hdf5: 'rewards' missing.\n Fix: add it"),
            "error: d.hdf5: 'rewards' missing. Fix: add it",
        ),
        (PolicyFileError("p.zip: not a zip"), "error: p.zip: not a zip"),
        (
            CheckpointError("ck/model.safetensors is truncated", "use step_1"),
            "error: ck/model.safetensors is",
        ),
        (RunLockedError("runs/a is being trained by PID 7"), "error: runs/a is being trained by PID 7"),
        (DivergedError("loss is nan at step 3. Fix: lower train.lr"), "error: loss is nan at step 3. Fix:"),
        (EvaluationError("no target return"), "error: no target return"),
        (
            PermissionError(13, "Permission denied", "/x/out"),
            "error: /x/out: Permission denied. Fix: give yourself access to it (chmod/chown), or use another",
        ),
        (
            OSError(28, "No space left on device", "/x/out"),
            "error: /x/out: No space left on device. Fix: free",
        ),
        (FileNotFoundError("run/dataset_stats.json missing"), "error: run/dataset_stats.json missing"),
    ],
)
def test_a_user_error_is_one_line_and_status_2(capsys, error: Exception, line: str) -> None:
    @exits_2_on_user_errors
    def main() -> int:
        raise error

    assert_user_error(main(), capsys.readouterr().err, line)


@pytest.mark.parametrize(
    "bug",
    [KeyError("step"), ValueError("shapes differ"), RuntimeError("CUDA kernel"), ConnectionResetError()],
)
def test_a_bug_keeps_its_traceback(bug: Exception) -> None:
    @exits_2_on_user_errors
    def main() -> int:
        raise bug

    with pytest.raises(type(bug)):
        main()


def test_usage_mistakes_are_one_line(capsys) -> None:
    assert_user_error(*run(capsys, "evaluate"), "one of the arguments --run --hub is required", "--help")
    assert_user_error(*run(capsys, "train_offline", "--config", "a.yaml", "--resume", "r"), "not allowed")


def test_train_offline_under_python_prints_one_line(tmp_path) -> None:
    """As a user runs it (through torch.distributed's `record`): status 2, one line, no traceback."""
    done = subprocess.run(
        [
            sys.executable,
            "scripts/train_offline.py",
            "--config",
            "configs/quickstart.yaml",
            "--set",
            "train.stepz=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert_user_error(
        done.returncode, done.stderr, "unknown config key 'train.stepz': did you mean train.steps?"
    )


# ---- train_offline.py --------------------------------------------------------------------------------


def test_missing_dataset_file(capsys, tmp_path) -> None:
    missing = tmp_path / "nope.hdf5"
    status, err = run(
        capsys,
        "train_offline",
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--set",
        f"data.dataset={missing}",
    )
    assert_user_error(status, err, f"data.dataset = '{missing}'", "not found", "Fix:")


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.stepz=3", "unknown config key 'train.stepz': did you mean train.steps?"),
        ("nokey", "override 'nokey' is not key=value"),
        ("train.steps=[1, 2]", "train.steps = [1, 2] (list): expected int. Fix: e.g. train.steps=100000"),
        ("foo.bar=1", "unknown config key 'foo'"),
        ("eval.targets=[nan]", "eval.targets[0] = nan is not a finite number"),
    ],
)
def test_bad_config_key_or_value(capsys, override: str, fragment: str) -> None:
    status, err = run(
        capsys, "train_offline", "--config", str(CONFIGS / "quickstart.yaml"), "--set", override
    )
    assert_user_error(status, err, fragment)


def test_cuda_device_without_cuda(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, err = run(
        capsys, "train_offline", "--config", str(CONFIGS / "quickstart.yaml"), "--set", "train.device=cuda"
    )
    assert_user_error(status, err, "train.device = 'cuda'", "finds no CUDA GPU. Fix: --set train.device=cpu")


def test_output_dir_under_a_file(capsys, tiny_dataset, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--set",
        *tiny_overrides(tiny_dataset, blocker, "x"),
    ]
    status, err = run(capsys, "train_offline", *argv)
    assert_user_error(status, err, f"output_dir = '{blocker}'", "is a file, not a folder", "Fix:")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_dir(capsys, tiny_dataset, tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    argv = ["--config", str(CONFIGS / "quickstart.yaml"), "--set", *tiny_overrides(tiny_dataset, locked, "x")]
    assert_user_error(*run(capsys, "train_offline", *argv), f"{locked} is not writable", "Fix:")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_dir_where_no_folder_can_be_made(capsys, tiny_dataset) -> None:
    """/proc takes no new folders, even from root (whom permissions let write anywhere)."""
    argv = [
        "--config",
        str(CONFIGS / "quickstart.yaml"),
        "--set",
        *tiny_overrides(tiny_dataset, Path("/proc/x"), "x"),
    ]
    status, err = run(capsys, "train_offline", *argv)
    assert_user_error(
        status,
        err,
        "output_dir = '/proc/x': the run directory /proc/x/x cannot be created",
        "Fix: --set output_dir=",
    )


def test_dataset_that_is_a_folder(capsys, tiny_dataset, tmp_path) -> None:
    folder = tiny_dataset.parent
    argv = ["--config", str(CONFIGS / "quickstart.yaml"), "--set", *tiny_overrides(folder, tmp_path, "x")]
    status, err = run(capsys, "train_offline", *argv)
    assert_user_error(
        status,
        err,
        f"data.dataset = '{folder}' cannot be loaded: {folder} is a folder, not a dataset file",
        f"Fix: give the path of a D4RL-format HDF5 file (this folder holds {tiny_dataset.name})",
    )


def test_resume_of_a_locked_run(capsys, run_copy) -> None:
    with RunDir(run_copy).lock():  # as if another process were training it
        status, err = run(capsys, "train_offline", "--resume", str(run_copy), "--no-progress")
    assert_user_error(status, err, f"{run_copy} is being trained by PID {os.getpid()}")


# ---- collect_dataset.py ------------------------------------------------------------------------------

#: A short collection of random actions that would otherwise run (and write x.hdf5).
RANDOM_10 = ["Hopper-v5", "--policy", "random", "--out", "x.hdf5", "--steps", "10", "--no-progress"]


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["hopper-mediun-v2"], "NAME: 'hopper-mediun-v2' is not '<task>-<recipe>[-vK]'"),
        (["Hoppr-v5", "--policy", "random", "--out", "x.hdf5"], "NAME: Unknown environment 'Hoppr-v5'"),
        (["hopper-medium-v2", "--num-envs", "0"], "--num-envs 0 and --steps 1000000: give 1 <= --num-envs"),
        (["hopper-random-v2", "--steps", "2", "--num-envs", "3"], "give 1 <= --num-envs <= --steps"),
        ([*RANDOM_10, "--noise", "-1"], "action_noise (--noise) = -1.0: give a finite std >= 0"),
        ([*RANDOM_10, "--noise", "nan"], "action_noise (--noise) = nan: give a finite std >= 0"),
        ([*RANDOM_10, "--seed", "-1"], "seed (--seed) = -1: give a whole number from 0 to 2147483647"),
        ([*RANDOM_10, "--seed", "2147483648"], "seed (--seed) = 2147483648: give a whole number from 0"),
        (
            ["hopper-mixed-v2", "--steps", "5", "--num-envs", "2"],
            "num_steps (--steps) = 5 gives fewer steps than num_envs (--num-envs) = 2 to each of the recipe's 3",
        ),
    ],
)
def test_collect_dataset_names_and_sizes(
    capsys, tmp_path, monkeypatch, argv: list[str], fragment: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert_user_error(*run(capsys, "collect_dataset", *argv), fragment)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_collect_dataset_into_an_existing_file(capsys, tmp_path) -> None:
    existing = tmp_path / "data.hdf5"
    existing.write_text("")
    argv = ["hopper-random-v2", "--steps", "10", "--out", str(existing), "--no-progress"]
    assert_user_error(*run(capsys, "collect_dataset", *argv), f"{existing} exists", "--overwrite")


# ---- evaluate.py ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("nan", "nan is not a finite number"),
        ("inf", "inf is not a finite number"),
        ("1e30", "1e+30 is beyond ±16,777,216"),
        ("-100000000", "-1e+08 is beyond ±16,777,216"),
        ("fast", "'fast' is not a number"),
    ],
)
def test_target_must_be_finite_and_bounded(capsys, tmp_path, target: str, fragment: str) -> None:
    status, err = run(capsys, "evaluate", "--run", str(tmp_path), "--target", "100", target)
    assert_user_error(status, err, f"argument --target: {fragment}", "Fix: give a finite target return")


def test_evaluate_a_folder_that_is_not_a_run(capsys, tmp_path) -> None:
    status, err = run(capsys, "evaluate", "--run", str(tmp_path))
    assert_user_error(status, err, str(tmp_path / "dataset_stats.json"))


def test_evaluate_a_file_is_not_a_run(capsys, tmp_path) -> None:
    data = tmp_path / "data.hdf5"
    data.write_bytes(b"")
    status, err = run(capsys, "evaluate", "--run", str(data))
    assert_user_error(
        status, err, f"error: {data} is not a run directory: it is a file. Fix: pass a run directory"
    )
    run_dir = RunDir(tmp_path / "run")
    run_dir.root.mkdir()
    run_dir.dataset_stats.write_text("{}")
    run_dir.config.write_text("")
    status, err = run(capsys, "evaluate", "--run", str(run_dir.config))
    assert_user_error(status, err, f"it is a file. Fix: pass the run directory it lies in, {run_dir.root}")


def test_evaluate_a_run_with_a_damaged_checkpoint(capsys, run_copy) -> None:
    weights = RunDir(run_copy).latest_checkpoint() / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    status, err = run(capsys, "evaluate", "--run", str(run_copy), "--episodes", "1", "--envs", "1")
    assert_user_error(status, err, str(weights), "Fix:")


def test_evaluate_a_run_whose_targets_are_not_finite(capsys, run_copy) -> None:
    stats = RunDir(run_copy).dataset_stats
    info = json.loads(stats.read_text())
    stats.write_text(json.dumps({**info, "eval_targets": [float("nan")]}))
    status, err = run(capsys, "evaluate", "--run", str(run_copy), "--episodes", "1", "--envs", "1")
    assert_user_error(status, err, "target return nan is not a finite number", str(stats), "Fix:")


def test_evaluate_video_without_imageio(capsys, run_copy, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio", None)  # import imageio raises ImportError
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    status, err = run(capsys, "evaluate", "--run", str(run_copy), "--video")
    assert_user_error(status, err, "a video needs imageio", "Fix: pip install 'aaren-rl[video]'")
    assert not RunDir(run_copy).eval.joinpath("episode.mp4").exists()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy and matplotlib on nan
def test_eval_json_holds_null_for_a_number_that_is_not_finite(run_copy, monkeypatch) -> None:
    def nan_episodes(agent, *args, **kwargs) -> EvalResult:
        return EvalResult(agent.target_return, [float("nan"), 10.0], [5, 7], [float("inf"), 1.0])

    monkeypatch.setattr("agents.decision.evaluation.evaluate_agent", nan_episodes)
    report = evaluate_run(run_copy, episodes=2, num_envs=1, progress=False)

    def refuse(constant: str) -> None:
        raise AssertionError(f"eval.json holds {constant}")

    written = json.loads(Path(report["report_path"]).read_text(), parse_constant=refuse)
    result = written["results"][0]
    assert result["returns"] == [None, 10.0] and result["scores"] == [None, 1.0]
    assert result["return_mean"] is None and result["length_mean"] == 6.0
    assert math.isnan(report["results"][0]["return_mean"])  # the returned report keeps the numbers


# ---- target returns at the API boundary -----------------------------------------------------------------


@pytest.mark.parametrize("target", [float("nan"), float("inf"), -float("inf"), -1e30, 2 * MAX_TARGET_RETURN])
def test_an_agent_refuses_a_target_it_cannot_act_towards(trained_run, target: float) -> None:
    model, _ = load_model(RunDir(trained_run).latest_checkpoint())
    with pytest.raises(ValueError, match=r"target_return = .* Fix: give a finite target return"):
        DecisionAgent(model, target)
    with pytest.raises(ValueError, match="target_return = "):
        load_agent(trained_run, target_return=target)
    assert DecisionAgent(model, -MAX_TARGET_RETURN).target_return == -MAX_TARGET_RETURN


def test_target_return_type_accepts_numbers() -> None:
    assert target_return("3600") == 3600.0
    assert target_return("-1e3") == -1000.0
