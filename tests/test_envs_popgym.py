"""POPGym tasks under our ids (envs/popgym.py): SB3-ready spaces for every Easy task, seeded
determinism, names in every accepted form, SubprocVecEnv workers making them by id, and the error
where POPGym is not installed."""

import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

pytest.importorskip("popgym")

from stable_baselines3.common.env_checker import check_env  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import SubprocVecEnv  # noqa: E402

from envs.errors import EnvNameError  # noqa: E402
from envs.popgym import (  # noqa: E402
    TupleToMultiDiscrete,
    make_popgym_env,
    popgym_env_id,
    popgym_task_names,
)

EASY = popgym_task_names("Easy")
SB3_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized Box action space")
@pytest.mark.parametrize("name", EASY)
def test_every_easy_task_passes_sb3_env_checker(name: str) -> None:
    env = make_popgym_env(name)
    assert isinstance(env.observation_space, SB3_SPACES) and isinstance(env.action_space, SB3_SPACES)
    check_env(env, skip_render_check=True)  # raises on spaces or observations SB3 cannot take
    assert env.spec.id == f"aaren_rl/popgym-{name}-v0"


def test_easy_level_covers_the_families() -> None:
    for name in ("RepeatPreviousEasy", "AutoencodeEasy", "PositionOnlyCartPoleEasy", "MineSweeperEasy"):
        assert name in EASY
    assert all(name.endswith("Easy") for name in EASY)


def test_autoencode_tuple_becomes_multidiscrete() -> None:
    raw = gym.make("popgym-AutoencodeEasy-v0")
    env = make_popgym_env("AutoencodeEasy")
    assert isinstance(raw.observation_space, spaces.Tuple)
    assert env.observation_space == spaces.MultiDiscrete([s.n for s in raw.observation_space])
    raw_obs, _ = raw.reset(seed=5)
    obs, _ = env.reset(seed=5)
    np.testing.assert_array_equal(obs, np.asarray(raw_obs))
    assert env.observation_space.contains(obs)


def test_tuple_wrapper_counts_from_zero_and_refuses_other_spaces() -> None:
    class Shifted(gym.Env):
        observation_space = spaces.Tuple((spaces.Discrete(3, start=-1), spaces.Discrete(2, start=5)))
        action_space = spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return (1, 5), {}

    env = TupleToMultiDiscrete(Shifted())
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [2, 0])
    assert env.observation_space.contains(obs)
    with pytest.raises(ValueError, match="Tuple of Discrete"):
        TupleToMultiDiscrete(gym.make("CartPole-v1"))


def _trajectory(name: str, seed: int, steps: int = 60) -> list:
    """Observations, rewards and ends of `steps` seeded random actions (resetting at episode ends)."""
    env = make_popgym_env(name)
    env.action_space.seed(seed)
    out = [np.asarray(env.reset(seed=seed)[0]).tolist()]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        out.append((np.asarray(obs).tolist(), reward, terminated, truncated))
        if terminated or truncated:
            out.append(np.asarray(env.reset()[0]).tolist())
    return out


@pytest.mark.parametrize(
    "name", ["AutoencodeEasy", "CountRecallEasy", "MineSweeperEasy", "NoisyPositionOnlyPendulumEasy"]
)
def test_reset_and_step_are_deterministic_under_a_seed(name: str) -> None:
    assert _trajectory(name, 3) == _trajectory(name, 3)
    assert _trajectory(name, 3) != _trajectory(name, 4)


def test_infos_are_snapshots_that_later_steps_leave_alone() -> None:
    """CountRecall's info holds POPGym's live count array: a kept info must not change with later steps."""
    env = make_popgym_env("CountRecallEasy")
    env.reset(seed=0)
    *_, info = env.step(env.action_space.sample())
    kept = info["counts"].copy()
    for _ in range(5):
        env.step(env.action_space.sample())
    np.testing.assert_array_equal(info["counts"], kept)


def test_names_in_every_form_resolve_to_our_id() -> None:
    ours = "envs.popgym:aaren_rl/popgym-VelocityOnlyCartPoleEasy-v0"
    for name in (
        "VelocityOnlyCartPoleEasy",
        "popgym-VelocityOnlyCartpoleEasy-v0",  # POPGym's own id spells it "Cartpole"
        "aaren_rl/popgym-VelocityOnlyCartPoleEasy-v0",
        ours,
    ):
        assert popgym_env_id(name) == ours
    with pytest.raises(EnvNameError, match="RepeatPreviousEasy"):
        popgym_env_id("RepeatPrevius")
    with pytest.raises(ValueError, match="level"):
        popgym_task_names("Trivial")


def test_subproc_workers_make_tasks_by_id() -> None:
    env = make_vec_env(popgym_env_id("AutoencodeEasy"), n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        obs = env.reset()
        assert obs.shape == (2, 2)
        _, rewards, dones, _ = env.step(np.zeros(2, dtype=np.int64))
        assert rewards.shape == dones.shape == (2,)
    finally:
        env.close()


def test_missing_popgym_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym...` now raises ImportError
    monkeypatch.setitem(sys.modules, "popgym.envs", None)
    with pytest.raises(ImportError, match=r"pip install -e \.\[popgym\]"):
        make_popgym_env("RepeatPreviousEasy")
    with pytest.raises(ImportError, match=r"pip install -e \.\[popgym\]"):
        popgym_task_names()
