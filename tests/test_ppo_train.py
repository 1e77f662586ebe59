"""scripts/train_ppo.py and agents.ppo.train: a run directory that loads both ways, overrides that take
effect, and one clear error (exit 2) for each kind of bad input (an impossible value, a device torch does
not have, a directory another process trains), without touching a finished run."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
import yaml
from test_cli_errors import assert_user_error, run

from agents import AarenPPO, ConfigError
from agents.common.run_lock import run_lock
from agents.ppo.export import load_exported_policy
from agents.ppo.tasks import POPGYM_PPO, TASKS, Task, task_named
from agents.ppo.train import PPORun, train_ppo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--task", "RememberCue", "--steps", "512", "--eval-episodes", "2", "--no-progress"]


def test_a_run_directory_holds_the_model_its_export_logs_and_evaluation(tmp_path, capsys) -> None:
    overrides = ["--set", "ppo.learning_rate=2e-3", "policy.num_heads=2", "policy.sink=false"]
    status, err = run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), *overrides)
    assert status == 0, err
    run_dir = tmp_path / "ppo-RememberCue-s0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["ppo"]["learning_rate"] == 2e-3
    assert config["ppo"]["n_steps"] == TASKS["RememberCue"].ppo["n_steps"]  # the rest from the table
    assert config["policy"]["num_heads"] == 2 and config["policy"]["sink"] is False
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 2 and evaluation["env_steps"] == 512
    assert 0.0 <= evaluation["return_mean"] <= 1.0  # RememberCue scores each episode 0 or 1
    assert 0.0 <= evaluation["mmer"] <= 1.0 and evaluation["collect_s"] + evaluation["train_s"] > 0
    assert list((run_dir / "tb").glob("AarenPPO_1/events.out.tfevents.*"))

    model = AarenPPO.load(run_dir / "model.zip", device="cpu")
    assert model.learning_rate == 2e-3 and model.policy.memory_kwargs["num_heads"] == 2
    exported = load_exported_policy(run_dir / "policy.zip")
    obs = np.stack([model.observation_space.sample() for _ in range(3)])
    starts = np.ones(3, dtype=bool)
    actions, _ = model.predict(obs, episode_start=starts, deterministic=True)
    assert np.array_equal(exported.predict(obs, episode_start=starts, deterministic=True)[0], actions)
    for name, weight in exported.state_dict().items():
        assert torch.equal(weight, model.policy.state_dict()[name]), name


def test_a_killed_run_starts_again_and_a_finished_one_is_refused(tmp_path, capsys) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("left by a run killed before it finished\n")
    assert run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), "--name", "r")[0] == 0
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["task"] == "RememberCue"
    saved = (tmp_path / "r" / "model.zip").read_bytes()
    status, err = run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), "--name", "r", "--seed", "1")
    assert_user_error(status, err, str(tmp_path / "r"), "holds a finished run already", "--name")
    assert (tmp_path / "r" / "model.zip").read_bytes() == saved


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("ppo.learning_rat=1e-3", ["unknown option 'ppo.learning_rat'", "did you mean ppo.learning_rate?"]),
        ("policy.zzz=1", ["unknown option 'policy.zzz'", "num_heads"]),
        ("policy.env=1", ["unknown option 'policy.env'"]),  # not a policy option
        ("ppo.seed=3", ["unknown option 'ppo.seed'"]),  # set by --seed, not an override
        ("lr=1e-3", ["is not ppo.<option>=<value>", "--set ppo.learning_rate=3e-4"]),
        ("ppo.learning_rate=fast", ["ppo.learning_rate = 'fast' (str): expected float"]),
        ("policy.sink=maybe", ["policy.sink = 'maybe' (str): expected bool"]),
        (
            "policy.num_heads=3",
            ["cannot be built", "embed_dim (64) must be a positive multiple", "num_heads=3"],
        ),
        ("ppo.batch_size=1", ["cannot be built", "`batch_size` must be greater than 1", "batch_size=1"]),
        (
            "ppo.n_epochs=0",
            ["ppo.n_epochs = 0 is impossible: it must be a number >= 1", "--set ppo.n_epochs=10"],
        ),
        ("ppo.n_epochs=-1", ["ppo.n_epochs = -1 is impossible: it must be a number >= 1"]),
        ("ppo.n_steps=-5", ["ppo.n_steps = -5 is impossible: it must be a number >= 1"]),
        ("ppo.gamma=1.5", ["ppo.gamma = 1.5 is impossible: it must be a number >= 0 and <= 1"]),
        ("ppo.gae_lambda=-0.1", ["ppo.gae_lambda = -0.1 is impossible: it must be a number >= 0 and <= 1"]),
        ("ppo.clip_range=0", ["ppo.clip_range = 0.0 is impossible: it must be a number > 0"]),
        ("ppo.learning_rate=-3e-4", ["ppo.learning_rate = -0.0003 is impossible: it must be a number > 0"]),
        ("ppo.max_grad_norm=0", ["ppo.max_grad_norm = 0.0 is impossible: it must be a number > 0"]),
        ("ppo.target_kl=-1", ["ppo.target_kl = -1 is impossible", "> 0 (or null: off)", "target_kl=null"]),
        ("ppo.target_kl=fast", ["ppo.target_kl = 'fast' is impossible: it must be a number > 0 (or null"]),
        ("ppo.clip_range_vf=.inf", ["ppo.clip_range_vf = inf is impossible: it must be a number > 0"]),
        ("policy.dropout=1", ["policy.dropout = 1.0 is impossible: it must be a number >= 0 and < 1"]),
        ("policy.input_lags=-1", ["policy.input_lags = -1 is impossible: it must be a number >= 0"]),
        ("policy.embed_dim=0", ["policy.embed_dim = 0 is impossible: it must be a number >= 1"]),
        ("ppo.device=mps", ["ppo.device = 'mps' is impossible: use 'cpu', 'cuda' or 'cuda:<i>'"]),
        ("policy.net_arch=[-4]", ["cannot be built", "net_arch=[-4]"]),
    ],
)
def test_bad_overrides_are_one_error_naming_the_option(tmp_path, capsys, override, fragments) -> None:
    status, err = run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), "--set", override)
    assert_user_error(status, err, *fragments)
    assert not (tmp_path / "ppo-RememberCue-s0" / "model.zip").exists()


def test_cuda_without_cuda_is_the_offline_trainers_error(tmp_path, capsys, monkeypatch) -> None:
    """Not a silent run on the CPU while config.yaml says cuda."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, err = run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), "--set", "ppo.device=cuda")
    assert_user_error(status, err, "ppo.device = 'cuda'", "finds no CUDA GPU. Fix: --set ppo.device=cpu")
    assert not (tmp_path / "ppo-RememberCue-s0" / "config.yaml").exists()


def test_a_directory_another_process_trains_is_refused(tmp_path, capsys) -> None:
    with run_lock(tmp_path / "r"):  # as if another process were training it
        status, err = run(capsys, "train_ppo", *TINY, "--out", str(tmp_path), "--name", "r")
    assert_user_error(status, err, f"{tmp_path / 'r'} is being trained by PID {os.getpid()}", "Fix: wait")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock"]  # nothing written


def test_values_in_range_and_null_where_an_option_may_be_off_are_taken() -> None:
    edges = [
        "ppo.gamma=0",
        "ppo.gae_lambda=1",
        "ppo.target_kl=null",
        "ppo.clip_range_vf=0.1",
        "ppo.device=auto",
    ]
    run_ = PPORun.of_task("CountRecallEasy", [*edges, "policy.dropout=0", "policy.input_lags=0"])
    assert run_.ppo["target_kl"] is None and run_.ppo["clip_range_vf"] == 0.1 and run_.ppo["device"] == "auto"
    assert run_.policy["dropout"] == 0.0 and run_.policy["input_lags"] == 0


def test_overrides_convert_numbers_as_written_and_keep_the_table() -> None:
    run_ = PPORun.of_task("CountRecallEasy", ["ppo.n_steps=1e2", "ppo.gamma=1", "policy.net_arch=[32, 32]"])
    assert run_.ppo["n_steps"] == 100 and isinstance(run_.ppo["n_steps"], int)
    assert run_.ppo["gamma"] == 1.0 and isinstance(run_.ppo["gamma"], float)
    assert run_.policy["net_arch"] == [32, 32]
    assert TASKS["CountRecallEasy"].ppo["n_steps"] == 64  # the table itself is untouched
    with pytest.raises(ConfigError, match="did you mean CountRecallEasy"):
        PPORun.of_task("CountRecalEasy")


def test_any_popgym_task_by_name_gets_the_popgym_settings() -> None:
    pytest.importorskip("popgym")
    assert task_named("RepeatPreviousHard") == Task("RepeatPreviousHard", 8, POPGYM_PPO, popgym=True)
    assert task_named("CountRecallEasy") is TASKS["CountRecallEasy"]
    with pytest.raises(ConfigError, match="did you mean RepeatPreviousHard"):
        task_named("RepeatPreviousHrad")


def test_without_popgym_an_unknown_task_names_the_table_and_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym...` now raises ImportError
    monkeypatch.setitem(sys.modules, "popgym.envs", None)
    assert task_named("CartPoleNoVel") is TASKS["CartPoleNoVel"]
    with pytest.raises(ConfigError, match=r"did you mean CartPoleNoVel\?.*pip install -e \.\[popgym\]"):
        task_named("CartPoleNoVle")


def test_a_table_setting_sb3_refuses_is_a_bug_with_its_traceback(tmp_path, monkeypatch) -> None:
    broken = Task(TASKS["RememberCue"].env_id, 8, {**TASKS["RememberCue"].ppo, "n_steps": -5})
    monkeypatch.setitem(TASKS, "RememberCue", broken)
    with pytest.raises(AssertionError, match="n_steps"):  # not a ConfigError: no --set to correct
        train_ppo(PPORun.of_task("RememberCue", steps=512), tmp_path / "r", progress=False)
