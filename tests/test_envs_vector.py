"""envs.vector: vectorised rollouts equal single-env rollouts under every autoreset convention;
failing workers surface as errors, never hangs."""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs import EnvWorkerError, VecRollout, make_env, make_vec_env
from envs.vector import split_evenly

SEED = 10
NUM_ENVS = 3
EPISODES = 3
WEIGHTS = np.random.default_rng(1).normal(size=(11, 3)) * 0.3


def policy(obs: np.ndarray) -> np.ndarray:
    """A deterministic function of the observation, so equal inputs give equal rollouts."""
    return np.tanh(obs @ WEIGHTS)


def single_env_transitions(seed: int, episodes: int) -> list[list[tuple]]:
    """Per episode, the (obs, reward, next_obs, terminated) transitions of one plain env."""
    env = make_env("hopper")
    obs, _ = env.reset(seed=seed)
    out, current = [], []
    while len(out) < episodes:
        next_obs, reward, terminated, truncated, _ = env.step(policy(obs))
        current.append((obs, reward, next_obs, terminated))
        obs = next_obs
        if terminated or truncated:
            out.append(current)
            current = []
            obs, _ = env.reset()
    return out


@pytest.fixture(scope="module")
def reference() -> list[list[list[tuple]]]:
    return [single_env_transitions(SEED + i, EPISODES) for i in range(NUM_ENVS)]


def vector_transitions(rollout: VecRollout, seed: int | None) -> tuple[list, list]:
    """Run until each env finished EPISODES episodes; per env, its valid transitions split by episode."""
    obs, _ = rollout.reset(seed=seed)
    assert rollout.episode_start.all()
    per_env: list[list[list[tuple]]] = [[[]] for _ in range(NUM_ENVS)]
    while min(len(eps) for eps in per_env) <= EPISODES:
        step = rollout.step(np.stack([policy(o) for o in obs]))  # row by row: bit-equal to single env
        for i in range(NUM_ENVS):
            if step.valid[i]:
                per_env[i][-1].append((obs[i], step.rewards[i], step.next_obs[i], step.terminated[i]))
                if step.dones[i]:
                    per_env[i].append([])
            assert rollout.episode_start[i] == (len(per_env[i][-1]) == 0 and not rollout.autoreset_pending[i])
        obs = step.obs
    return [eps[:EPISODES] for eps in per_env], rollout.pop_finished()


def assert_same_transitions(got: list, ref: list, reward_rtol: float = 0.0) -> None:
    for env_got, env_ref in zip(got, ref, strict=True):
        for ep_got, ep_ref in zip(env_got, env_ref, strict=True):
            assert len(ep_got) == len(ep_ref)
            for (o, r, n, t), (o2, r2, n2, t2) in zip(ep_got, ep_ref, strict=True):
                np.testing.assert_array_equal(o, o2)
                np.testing.assert_array_equal(n, n2)
                np.testing.assert_allclose(r, r2, rtol=reward_rtol, atol=0)
                assert t == t2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("vectorization", ["sync", "async"])
@pytest.mark.parametrize("autoreset", [AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP])
def test_vector_rollouts_equal_single_env_rollouts(reference, vectorization, autoreset):
    rollout = VecRollout(make_vec_env("hopper", NUM_ENVS, vectorization, seed=SEED, autoreset_mode=autoreset))
    try:
        got, finished = vector_transitions(rollout, seed=None)  # seed comes from make_vec_env
    finally:
        rollout.close()
    assert_same_transitions(got, reference)
    for i in range(NUM_ENVS):
        records = [r for r in finished if r.env_index == i][:EPISODES]
        assert [r.length for r in records] == [len(ep) for ep in reference[i]]
        np.testing.assert_allclose(
            [r.episode_return for r in records], [sum(t[1] for t in ep) for ep in reference[i]]
        )


def test_sb3_vecenv_same_step_convention(reference):
    from stable_baselines3.common.vec_env import DummyVecEnv

    rollout = VecRollout(DummyVecEnv([lambda: make_env("hopper")] * NUM_ENVS))
    got, finished = vector_transitions(rollout, seed=SEED)
    assert_same_transitions(got, reference, reward_rtol=1e-6)  # DummyVecEnv keeps rewards in float32
    assert all(r.length > 0 for r in finished)


def test_make_vec_env_seed_is_reproducible_and_validated():
    a = make_vec_env("hopper", 2, seed=5)
    b = make_vec_env("hopper", 2, seed=5)
    obs_a, _ = a.reset()
    obs_b, _ = b.reset()
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a[0], obs_a[1])  # env i gets seed + i
    single, _ = make_env("hopper").reset(seed=6)
    np.testing.assert_array_equal(obs_a[1], single)
    assert isinstance(a.unwrapped, SyncVectorEnv)
    with pytest.raises(ValueError, match="vectorization must be"):
        make_vec_env("hopper", 2, vectorization="threads")


def test_split_evenly_gives_the_remainder_to_the_first_parts():
    assert split_evenly(10, 3).tolist() == [4, 3, 3]
    assert split_evenly(2, 4).tolist() == [1, 1, 0, 0]
    assert split_evenly(6, 2).tolist() == [3, 3] and split_evenly(7, 1).tolist() == [7]
    with pytest.raises(ValueError, match="parts must be >= 1"):
        split_evenly(5, 0)


class FailingEnv(gym.Env):
    """Raises (or kills its process) at a given step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, fail_at: int, how: str):
        self.fail_at, self.how, self.t = fail_at, how, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == self.fail_at:
            if self.how == "exit":
                os._exit(3)
            raise RuntimeError(f"simulated failure at step {self.t}")
        return np.zeros(2, np.float32), 0.0, False, False, {}


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore::UserWarning")  # Gymnasium logs the worker's traceback as warnings
@pytest.mark.parametrize("how", ["raise", "exit"])
def test_failing_async_worker_is_a_clear_error_not_a_hang(how):
    fns = [lambda: FailingEnv(10**9, how), lambda: FailingEnv(3, how)]
    env = AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    rollout = VecRollout(env)
    obs, _ = rollout.reset(seed=0)
    pattern = (
        "raised RuntimeError: simulated failure at step 3" if how == "raise" else "died or stopped answering"
    )
    with pytest.raises(EnvWorkerError, match=pattern):
        for _ in range(10):
            rollout.step(np.zeros((2, 1), np.float32))
    assert env.closed


def test_failing_sync_env_raises_its_own_error():
    rollout = VecRollout(
        SyncVectorEnv([lambda: FailingEnv(2, "raise")], autoreset_mode=AutoresetMode.SAME_STEP)
    )
    rollout.reset(seed=0)
    rollout.step(np.zeros((1, 1), np.float32))
    with pytest.raises(RuntimeError, match="simulated failure at step 2"):
        rollout.step(np.zeros((1, 1), np.float32))
