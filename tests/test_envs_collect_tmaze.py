"""envs.collect's T-Maze recipes: oracle data over mixed corridor lengths, with integer actions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from envs import collect_dataset, collect_recipe, load_dataset
from envs.collect import TMAZE_RECIPES, parse_recipe_id
from envs.errors import EnvNameError, SettingError
from envs.experts import PolicyFileError
from envs.tmaze import SPARE_STEPS, TMazeOracle

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """An oracle dataset over corridors of 6 and 15 cells (4,000 steps each)."""
    path = tmp_path_factory.mktemp("tmaze") / "mixed.hdf5"
    return collect_recipe("tmaze-6-15-oracle-v0", path, 8000, num_envs=2, seed=4, progress=False)


def test_mixed_lengths_are_recorded_per_row_and_in_the_env_id(mixed):
    with h5py.File(mixed.path) as f:
        actions, lengths = f["actions"][()], f["infos/corridor_length"][()]
        timeouts, terminals = f["timeouts"][()], f["terminals"][()]
    assert np.issubdtype(actions.dtype, np.integer) and set(np.unique(actions)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(lengths, np.repeat([6, 15], 4000))  # part by part, steps split evenly
    ends = np.flatnonzero(terminals | timeouts)
    starts = np.r_[0, ends[:-1] + 1]
    assert np.all(lengths[starts] == lengths[ends])  # no episode spans two lengths
    meta = mixed.metadata
    assert meta["env_id"] == "tmaze-6-15" and meta["dataset_id"] == "tmaze-6-15-oracle-v0"
    assert meta["recipe"] == "oracle" and meta["deterministic"] is False and meta["part_steps"] == "4000+4000"
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (0.0, 1.0)


def test_oracle_returns_vary_and_win_as_often_as_the_recipe_says(mixed):
    returns, lengths = mixed.episode_returns, mixed.episode_lengths
    assert set(returns) == {0.0, 1.0}
    share = 1 - TMAZE_RECIPES["oracle"]
    assert abs(returns.mean() - share) < 0.05, returns.mean()  # ~700 episodes: std of the share 0.017
    for length in (6, 15):  # the junction comes at varying steps, never past the time limit
        mine = lengths[(lengths >= length + 1) & (lengths <= length + 1 + SPARE_STEPS)]
        assert len(set(mine)) > 3
    assert lengths.max() <= 15 + 1 + SPARE_STEPS


def test_the_file_loads_and_fits_each_of_its_lengths(mixed):
    ds = load_dataset(mixed.path, env="tmaze-15")
    assert ds.actions.dtype == np.int64 and ds.act_dim == 1 and ds.obs_dim == 3
    np.testing.assert_allclose(ds.normalized_score(1.0), 100.0)
    with pytest.raises(EnvNameError, match="names corridor lengths 6, 15"):
        load_dataset(mixed.path, env=ds.metadata["env_id"])  # evaluation must name one length


def test_same_seed_same_file_and_expert_always_wins(tmp_path):
    a = collect_recipe("tmaze-4-expert-v0", tmp_path / "a.hdf5", 900, seed=2, progress=False)
    b = collect_recipe("tmaze-4-expert-v0", tmp_path / "b.hdf5", 900, seed=2, progress=False)
    c = collect_recipe("tmaze-4-expert-v0", tmp_path / "c.hdf5", 900, seed=3, progress=False)
    assert a.path.read_bytes() == b.path.read_bytes() != c.path.read_bytes()
    assert np.all(a.episode_returns == 1.0) and a.episode_lengths.max() > 5  # detours, no wrong turns


def test_noisy_recipe_fills_the_noise_channel(tmp_path):
    result = collect_recipe("tmaze-8-noisy-oracle-v0", tmp_path / "n.hdf5", 600, progress=False)
    ds = load_dataset(result.path, env="tmaze-8-noisy")
    assert ds.metadata["env_id"] == "tmaze-8-noisy" and set(np.unique(ds.observations[:, 2])) == {-1, 0, 1}


def test_default_path_is_the_d4rl_location(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    result = collect_recipe("tmaze-5-10-oracle-v0", num_steps=400, progress=False)
    assert result.path == tmp_path / "tmaze_5_10_oracle-v0.hdf5"
    assert load_dataset("tmaze-5-10-oracle-v0").metadata["env_id"] == "tmaze-5-10"


def test_recipe_ids():
    assert parse_recipe_id("tmaze-20-50-oracle-v0") == ("tmaze", "oracle")
    assert parse_recipe_id("TMaze-100-noisy-expert") == ("tmaze", "expert")
    for bad in ("tmaze-oracle-v0", "tmaze-20-medium-v0", "tmaze-20"):
        with pytest.raises(EnvNameError, match=r"'tmaze-<length>\[-<length>...\]\[-noisy\]-<recipe>"):
            parse_recipe_id(bad)
    with pytest.raises(EnvNameError, match="not '<task>-<recipe>"):
        parse_recipe_id("hopper-oracle-v2")


@pytest.mark.parametrize(
    ("settings", "error", "fragment"),
    [
        (dict(action_noise=0.1), SettingError, "action_noise (--noise) = 0.1: T-Maze actions are discrete"),
        (
            dict(num_envs=6),
            SettingError,
            "fewer steps than num_envs (--num-envs) = 6 to each of the recipe's 2",
        ),
        (
            dict(policies={"expert": "x.zip"}),
            PolicyFileError,
            "T-Maze recipes roll out their scripted oracle",
        ),
    ],
)
def test_bad_settings_are_one_error_before_anything_runs(tmp_path, settings, error, fragment):
    with pytest.raises(error) as caught:
        collect_recipe("tmaze-5-10-oracle-v0", tmp_path / "t.hdf5", 10, progress=False, **settings)
    assert fragment in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_gaussian_noise_on_discrete_actions_is_refused(tmp_path):
    with pytest.raises(
        SettingError, match=r"needs continuous \(Box\) actions, but tmaze-5 has Discrete\(4\)"
    ):
        collect_dataset("tmaze-5", TMazeOracle(5), tmp_path / "t.hdf5", 100, action_noise=0.2, progress=False)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "collect_dataset.py"), *args], capture_output=True, text=True
    )


def test_cli_collects_a_recipe_and_refuses_noise_in_one_line(tmp_path):
    done = run_cli(
        "tmaze-5-10-oracle-v0", "--steps", "500", "--out", str(tmp_path / "t.hdf5"), "--no-progress"
    )
    assert done.returncode == 0 and "policy TMazeOracle+TMazeOracle" in done.stdout, done.stderr
    refused = run_cli("tmaze-5-oracle-v0", "--noise", "0.1", "--out", str(tmp_path / "u.hdf5"))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "T-Maze actions are discrete" in refused.stderr
    assert "30% (oracle)" in run_cli("--help").stdout


def test_random_policy_takes_discrete_actions(tmp_path):
    result = collect_dataset("tmaze-5", "random", tmp_path / "r.hdf5", 400, seed=1, progress=False)
    ds = load_dataset(result.path, env="tmaze-5")
    assert ds.actions.dtype == np.int64 and set(np.unique(ds.actions)) == {0, 1, 2, 3}
