"""envs.collect and scripts/collect_dataset.py: behaviour-policy rollouts into D4RL-format files."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from envs import collect_dataset, collect_recipe, load_dataset
from envs.collect import parse_recipe_id
from envs.errors import SettingError
from envs.experts import detect_algo, experts_dir

REPO = Path(__file__).parents[1]
needs_experts = pytest.mark.usefixtures("expert_policies")  # skips without the behaviour policies


def load_quiet(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(path)


@needs_experts
def test_tqc_hopper_returns_match_experts_readme(tmp_path):
    result = collect_dataset("hopper", "tqc-Hopper", tmp_path / "tqc.hdf5", 2000, progress=False)
    assert len(result.episode_returns) >= 1
    assert np.all(np.abs(result.episode_returns - 3650) < 0.1 * 3650), result.episode_returns
    ds = load_dataset(result.path, env="hopper-expert-v2")
    assert (
        len(ds) == 2000
        and ds.metadata["behavior_policy"] == "tqc-Hopper"
        and ds.metadata["behavior_algo"] == "tqc"
    )
    assert ds.metadata["env_id"] == "Hopper-v5" and ds.metadata["ref_max_score"] == 3234.3
    np.testing.assert_allclose(ds.episode_returns, result.episode_returns, rtol=1e-5)
    assert np.all(ds.normalized_score(ds.episode_returns) > 100)


@needs_experts
def test_time_feature_policy_ppo_walker2d(tmp_path):
    """ppo-Walker2d was trained with TimeFeatureWrapper (18-dim input); the file keeps the raw 17 dims."""
    result = collect_dataset("walker2d", "ppo-Walker2d", tmp_path / "w.hdf5", 1000, progress=False)
    ds = load_quiet(result.path)
    assert ds.obs_dim == 17
    assert len(result.episode_returns) == 1 and abs(result.episode_returns[0] - 3825) < 0.1 * 3825


def test_random_policy_file_layout_and_recorded_states(tmp_path):
    result = collect_dataset(
        "hopper", "random", tmp_path / "r.hdf5", 1500, num_envs=2, seed=3, progress=False
    )
    import h5py

    with h5py.File(result.path) as f:
        obs, next_obs = f["observations"][()], f["next_observations"][()]
        qpos, qvel = f["infos/qpos"][()], f["infos/qvel"][()]
        terminals, timeouts = f["terminals"][()], f["timeouts"][()]
        actions = f["actions"][()]
    assert obs.shape == (1500, 11) and qpos.shape == (1500, 6) and qvel.shape == (1500, 6)
    np.testing.assert_allclose(obs[:, :5], qpos[:, 1:], atol=1e-6)  # Hopper obs = qpos[1:], clip(qvel)
    np.testing.assert_allclose(obs[:, 5:], np.clip(qvel, -10, 10), atol=1e-5)
    assert np.abs(actions).max() <= 1.0 and actions.std() > 0.5  # uniform in [-1, 1]
    inner = ~(terminals | timeouts)[:-1]
    np.testing.assert_array_equal(next_obs[:-1][inner], obs[1:][inner])  # chained within episodes
    # each env's stream ends at an episode boundary: env 0's last row (749) and the file's last row
    assert (terminals | timeouts)[[749, 1499]].all()
    ds = load_quiet(result.path)
    assert ds.num_dropped_steps == 0 and ds.num_episodes == result.metadata["num_episodes"]
    assert len(result.episode_returns) == ds.num_episodes - result.metadata["num_cut_episodes"]


def test_same_seed_gives_identical_files(tmp_path):
    kwargs = dict(num_envs=2, seed=7, action_noise=0.1, progress=False)
    a = collect_dataset("hopper", "random", tmp_path / "a.hdf5", 600, **kwargs)
    b = collect_dataset("hopper", "random", tmp_path / "b.hdf5", 600, **kwargs)
    c = collect_dataset("hopper", "random", tmp_path / "c.hdf5", 600, **{**kwargs, "seed": 8})
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.path.read_bytes() != c.path.read_bytes()


@needs_experts
@pytest.mark.parametrize(
    ("recipe", "policies", "deterministic"),
    [("medium-expert", "sac-Hopper+tqc-Hopper", True), ("mixed", "random+a2c-Hopper+sac-Hopper", False)],
)
def test_recipes_are_deterministic_and_concatenated(tmp_path, recipe, policies, deterministic):
    kwargs = dict(num_envs=2, seed=1, progress=False)
    a = collect_recipe(f"hopper-{recipe}-v2", tmp_path / "a.hdf5", 1200, **kwargs)
    b = collect_recipe(f"hopper-{recipe}-v2", tmp_path / "b.hdf5", 1200, **kwargs)
    assert a.path.read_bytes() == b.path.read_bytes()  # stochastic policies too: torch's RNG is seeded
    ds = load_quiet(a.path)
    assert ds.metadata["behavior_policy"] == policies and ds.metadata["recipe"] == recipe
    assert ds.metadata["deterministic"] is deterministic and len(ds) == 1200
    assert ds.metadata["part_steps"] == "+".join(
        [str(1200 // len(policies.split("+")))] * len(policies.split("+"))
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        collect_recipe(f"hopper-{recipe}-v2", tmp_path / "a.hdf5", 1200, **kwargs)


def test_recipe_default_path_is_the_d4rl_location(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    result = collect_recipe("hopper-random-v2", num_steps=300, progress=False)
    assert result.path == tmp_path / "hopper_random-v2.hdf5"
    ds = load_quiet("hopper-random-v2")
    assert ds.metadata["dataset_id"] == "hopper-random-v2" and ds.metadata["recipe"] == "random"


def test_recipe_names_and_errors():
    assert parse_recipe_id("walker2d-medium-expert-v2") == ("walker2d", "medium-expert")
    assert parse_recipe_id("Hopper-Mixed") == ("hopper", "mixed")
    with pytest.raises(ValueError, match="not '<task>-<recipe>"):
        parse_recipe_id("hopper-superb-v2")
    with pytest.raises(ValueError, match=r"No 'medium' policy for task 'ant'.*--policy medium="):
        collect_recipe("ant-medium-v2", num_steps=10, progress=False)
    with pytest.raises(FileNotFoundError, match="Behaviour policy 'no-such-policy' not found"):
        collect_dataset("hopper", "no-such-policy", "/tmp/never.hdf5", 10, progress=False)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (dict(action_noise=-1.0), "action_noise (--noise) = -1.0: give a finite std >= 0"),
        (dict(action_noise=float("inf")), "action_noise (--noise) = inf"),
        (dict(seed=-1), "seed (--seed) = -1: give a whole number from 0"),
        (dict(num_envs=0), "num_envs (--num-envs) = 0: give at least 1"),
        (dict(num_envs=11), "num_steps (--steps) = 10 gives fewer steps than num_envs (--num-envs) = 11"),
    ],
)
def test_impossible_numbers_are_one_error_before_anything_runs(tmp_path, settings, fragment):
    with pytest.raises(SettingError) as caught:
        collect_dataset("hopper", "random", tmp_path / "r.hdf5", 10, progress=False, **settings)
    assert fragment in str(caught.value)
    with pytest.raises(SettingError, match="to each of the recipe's 2 parts"):  # 5 + 5 steps for 6 envs
        collect_recipe("hopper-medium-expert-v2", tmp_path / "m.hdf5", 10, num_envs=6, progress=False)
    assert not list(tmp_path.iterdir())


@needs_experts
def test_algorithm_detection_from_zip():
    found = {
        d.name: detect_algo(d / "model.zip") for d in experts_dir().iterdir() if (d / "model.zip").is_file()
    }
    assert all(name.split("-")[0] == algo for name, algo in found.items()), found


def test_cli_help_explains_recipes():
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_dataset.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "medium-expert" in out and "--num-envs" in out and "D4RL" in out
