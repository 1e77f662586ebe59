"""POPGym offline datasets: the scripted oracles (envs.popgym.PopgymOracle), their recipes in envs.collect,
the rows of envs.d4rl (flat observations, reference returns, targets), the configs and a tiny run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip("popgym")

from agents.commands.collect import main as collect_main  # noqa: E402
from agents.common.shipped import find_config  # noqa: E402
from agents.decision.config import load_config  # noqa: E402
from agents.decision.training import train  # noqa: E402
from envs import collect_recipe, load_dataset, make_env, normalized_score  # noqa: E402
from envs.collect import POPGYM_RECIPES, parse_recipe_id  # noqa: E402
from envs.d4rl import TASKS, eval_targets, reference_scores, task_of  # noqa: E402
from envs.errors import EnvNameError, SettingError  # noqa: E402
from envs.experts import PolicyFileError  # noqa: E402
from envs.popgym import OFFLINE_TASKS, PopgymOracle, offline_name  # noqa: E402

# POPGym's CountRecall returns one info dict object at every step (gymnasium's checker warns of it).
pytestmark = pytest.mark.filterwarnings("ignore:.*share an object")


def play(name: str, episodes: int, shares: tuple[float, ...] = (0.0,), deterministic: bool = False):
    """Returns and rewards of `episodes` episodes of PopgymOracle(name) in make_env(offline_name(name))."""
    env = make_env(offline_name(name))
    oracle = PopgymOracle(name, random_shares=shares, seed=7)
    returns, rewards = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        state, start, done, got = None, True, False, []
        while not done:
            action, state = oracle.predict(obs[None], state, np.array([start]), deterministic)
            obs, reward, terminated, truncated, _ = env.step(action[0])
            got.append(reward)
            start, done = False, terminated or truncated
        returns.append(sum(got))
        rewards.append(got)
    env.close()
    return np.array(returns), rewards


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_oracle_without_random_actions_earns_the_maximum_return(name):
    returns, rewards = play(name, 3)
    np.testing.assert_allclose(returns, 1.0, atol=1e-10)
    assert all(min(r) >= 0 for r in rewards)  # no step answered wrong


def test_deterministic_oracle_takes_no_random_actions():
    returns, _ = play("CountRecallEasy", 2, shares=(1.0,), deterministic=True)
    np.testing.assert_allclose(returns, 1.0, atol=1e-10)


@pytest.mark.parametrize("name", ["RepeatFirstEasy", "CountRecallEasy"])
def test_uniform_random_actions_average_the_reference_minimum(name):
    returns, _ = play(name, 60, shares=(1.0,))
    ref_min, ref_max = reference_scores(offline_name(name))
    assert ref_max == 1.0
    # Per-episode std: 0.12 (RepeatFirst), 0.05 (CountRecall); the mean of 60 is within 0.06 (4 stds).
    assert abs(returns.mean() - ref_min) < 0.06, (returns.mean(), ref_min)


def test_random_share_levels_give_varied_returns():
    by_share = {share: play("RepeatPreviousEasy", 12, shares=(share,))[0] for share in (0.0, 0.5, 1.0)}
    assert np.allclose(by_share[0.0], 1.0)
    assert by_share[0.0].mean() > by_share[0.5].mean() > by_share[1.0].mean()
    assert len(set(np.round(by_share[0.5], 6))) > 3  # random steps make returns differ within a level


@pytest.fixture(scope="module")
def repeat_previous(tmp_path_factory):
    """An oracle dataset of RepeatPrevious Easy (3,000 steps, about 58 episodes)."""
    path = tmp_path_factory.mktemp("popgym") / "rp.hdf5"
    return collect_recipe("popgym-repeatprevious-easy-oracle-v0", path, 3000, num_envs=2, progress=False)


def test_the_file_loads_with_flat_observations_and_integer_actions(repeat_previous):
    ds = load_dataset(repeat_previous.path, env="popgym-repeatprevious-easy")  # checks sizes and actions
    assert ds.actions.dtype == np.int64 and ds.act_dim == 1 and ds.obs_dim == 4
    assert set(np.unique(ds.actions)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(ds.observations.sum(1), 1.0)  # one-hot cards
    meta = ds.metadata
    assert meta["dataset_id"] == "popgym-repeatprevious-easy-oracle-v0" and meta["recipe"] == "oracle"
    assert meta["random_shares"] == "0+0.25+0.5+1" and POPGYM_RECIPES["oracle"] == (0.0, 0.25, 0.5, 1.0)
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (-0.5, 1.0)
    env = make_env(meta["env_id"])  # the env id the file records makes the env it was collected in
    assert env.observation_space.shape == (4,) and env.action_space.n == 4
    assert eval_targets(meta["env_id"]) == (1.0, 0.0)
    np.testing.assert_allclose(ds.normalized_score(np.array([1.0, -0.5])), [100.0, 0.0], atol=1e-10)


def test_oracle_recipe_mixes_expert_mediocre_and_random_episodes(repeat_previous):
    returns = repeat_previous.episode_returns
    assert np.isclose(returns, 1.0, atol=1e-6).sum() >= 5  # share 0: every answer right
    assert returns.min() < -0.2 and 0.0 < np.median(returns) < 1.0 and returns.std() > 0.3


def test_count_recall_medium_file_holds_two_one_hot_values_a_row(tmp_path):
    result = collect_recipe("popgym-countrecall-medium-expert-v0", tmp_path / "cr.hdf5", 400, progress=False)
    ds = load_dataset(result.path, env="popgym-countrecall-medium")
    assert ds.obs_dim == 8 and ds.actions.max() <= 26
    np.testing.assert_array_equal(ds.observations[:, :4].sum(1), 1.0)  # the dealt suit
    np.testing.assert_array_equal(ds.observations[:, 4:].sum(1), 1.0)  # the queried suit
    np.testing.assert_allclose(result.episode_returns, 1.0, atol=1e-6)  # expert: no random actions


def test_same_seed_same_file(tmp_path):
    files = [
        collect_recipe(
            "popgym-repeatfirst-easy-oracle-v0", tmp_path / f"{i}.hdf5", 500, seed=s, progress=False
        )
        for i, s in enumerate((2, 2, 3))
    ]
    a, b, c = (f.path.read_bytes() for f in files)
    assert a == b != c


def test_rows_match_the_tasks():
    for name in OFFLINE_TASKS:
        row = TASKS[offline_name(name)]
        env = make_env(row.name)
        assert env.observation_space.shape == (row.obs_dim,)
        assert row.ref_min == pytest.approx(2 / env.action_space.n - 1, abs=1e-12) and row.ref_max == 1.0
        assert task_of(row.gym_id) is task_of(env.spec.id) is task_of(f"{row.name}-oracle-v0") is row
        env.close()
    assert normalized_score("popgym-countrecall-easy", 2 / 27 - 1) == pytest.approx(0.0, abs=1e-10)


def test_default_path_is_the_d4rl_location(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    result = collect_recipe("popgym-countrecall-easy-oracle-v0", num_steps=200, progress=False)
    assert result.path == tmp_path / "popgym_countrecall_easy_oracle-v0.hdf5"
    assert load_dataset("popgym-countrecall-easy-oracle-v0").obs_dim == 4


def test_recipe_ids():
    assert parse_recipe_id("popgym-repeatfirst-easy-oracle-v0") == ("popgym-repeatfirst-easy", "oracle")
    assert parse_recipe_id("POPGym-CountRecall-Medium-expert") == ("popgym-countrecall-medium", "expert")
    for bad in (
        "popgym-repeatfirst-hard-oracle-v0",  # no Hard recipes
        "popgym-repeatfirst-easy-medium-v0",
        "popgym-autoencode-easy-oracle-v0",
        "popgym-oracle-v0",
        "popgym-repeatfirst-easy",
    ):
        with pytest.raises(
            EnvNameError, match=r"is not 'popgym-<task>-<level>-<recipe>\[-vK\]'.*repeatfirst-easy"
        ):
            parse_recipe_id(bad)


@pytest.mark.parametrize(
    ("settings", "error", "fragment"),
    [
        (dict(action_noise=0.1), SettingError, "POPGym actions are discrete"),
        (dict(num_envs=11), SettingError, "fewer steps than num_envs (--num-envs) = 11"),
        (
            dict(policies={"expert": "x.zip"}),
            PolicyFileError,
            "POPGym recipes roll out their scripted oracle",
        ),
    ],
)
def test_bad_settings_are_one_error_before_anything_runs(tmp_path, settings, error, fragment):
    with pytest.raises(error) as caught:
        collect_recipe(
            "popgym-repeatfirst-easy-oracle-v0", tmp_path / "p.hdf5", 10, progress=False, **settings
        )
    assert fragment in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_oracle_refuses_tasks_it_has_no_script_for():
    with pytest.raises(EnvNameError, match="no script for 'AutoencodeEasy'"):
        PopgymOracle("AutoencodeEasy")
    with pytest.raises(ValueError, match="random_shares"):
        PopgymOracle("RepeatFirstEasy", random_shares=(1.5,))


def test_cli_collects_a_recipe_and_refuses_a_bad_id_in_one_line(tmp_path, capsys):
    out = tmp_path / "p.hdf5"
    assert collect_main(["popgym-repeatfirst-easy-oracle-v0", "--steps", "300", "--out", str(out)]) == 0
    assert "policy PopgymOracle" in capsys.readouterr().out
    assert load_dataset(out).metadata["recipe"] == "oracle"
    with pytest.raises(SystemExit) as stopped:
        collect_main(
            ["popgym-repeatfirst-hard-oracle-v0", "--steps", "300", "--out", str(tmp_path / "q.hdf5")]
        )
    error = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and error.count("\n") == 0 and "popgym-<task>-<level>-<recipe>" in error


def test_without_popgym_making_a_task_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym...` now raises ImportError
    monkeypatch.setitem(sys.modules, "popgym.envs", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[popgym\]"):
        make_env("popgym-repeatfirst-easy")


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_configs_train_aaren_on_whole_episodes_of_the_task(name):
    task = offline_name(name)
    path = find_config(task)
    cfg = load_config(path)
    assert parse_recipe_id(cfg.data.dataset) == (task, "oracle")
    assert cfg.model.backbone == "aaren" and cfg.train.batching == "packed" and cfg.model.return_scale == 1.0
    assert cfg.model.max_timestep == make_env(task).unwrapped.max_episode_length  # covers every episode
    assert f"aaren-rl collect {cfg.data.dataset} --steps" in path.read_text()  # the header says how


def test_tiny_run_end_to_end(tmp_path):
    data = collect_recipe("popgym-repeatfirst-easy-oracle-v0", tmp_path / "d.hdf5", 2000, progress=False)
    overrides = [
        f"data.dataset={data.path}",
        f"output_dir={tmp_path}",
        "name=run",
        "model.embed_dim=16",
        "model.num_layers=1",
        "train.steps=5",
        "train.batch_steps=204",
        "train.warmup_steps=1",
        "train.checkpoint_every=5",
        "train.eval_every=0",
        "train.threads=1",
        "eval.episodes=4",
        "eval.num_envs=2",
    ]
    train(load_config(find_config("popgym-repeatfirst-easy"), overrides), progress=False)
    report = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert task_of(report["env"]).name == "popgym-repeatfirst-easy"
    assert [r["target_return"] for r in report["results"]] == [1.0, 0.0]  # the task's targets
    for result in report["results"]:
        returns = np.array(result["returns"])
        assert np.all(np.abs(returns) <= 1.0 + 1e-6) and result["length_mean"] == 51
        assert result["score_mean"] == pytest.approx(100 * (result["return_mean"] + 0.5) / 1.5)
