"""Decision agents behind SB3's predict: evaluate_policy on Dummy/SubprocVecEnv equals per-env single
rollouts and our own evaluation loop; save/load through zips and run directories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from agents.decision.agent import DecisionAgent
from agents.decision.evaluation import evaluate_agent
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import RunDir
from agents.decision.sb3 import DecisionPolicy, RewardToPolicyVecEnv
from envs import make_env
from envs.files import torch_threads

ENV, SEED, N_ENVS, EPISODES = "Hopper-v5", 7, 3, 6
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def agent() -> DecisionAgent:
    """An untrained decision agent with fixed weights: Hopper episodes end at different steps."""
    torch.manual_seed(0)
    config = DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=32, num_layers=2, num_heads=2)
    return DecisionAgent(DecisionModel(config).eval(), target_return=1000.0)


def _single_env_episodes(agent: DecisionAgent, env_index: int, episodes: int) -> list[tuple[float, int]]:
    """(return, length) of `episodes` consecutive episodes of env `env_index` acting alone (batch 1)."""
    env = make_env(ENV)
    obs, _ = env.reset(seed=SEED + env_index)
    out, state, reward, start, ret, length = [], None, 0.0, True, 0.0, 0
    while len(out) < episodes:
        action, state = agent.act(obs[None], state, np.array([start]), np.array([reward]))
        obs, reward, terminated, truncated, _ = env.step(action[0].astype(np.float32))
        ret, length, start = ret + reward, length + 1, terminated or truncated
        if start:
            out.append((ret, length))
            obs, _ = env.reset()
            ret, length = 0.0, 0
    return out


@pytest.fixture(scope="module")
def reference(agent: DecisionAgent) -> list[tuple[float, int]]:
    with torch_threads(1):  # module-scoped: set up before the function-scoped one_torch_thread
        per_env = [_single_env_episodes(agent, i, EPISODES // N_ENVS) for i in range(N_ENVS)]
    episodes = sorted(ep for env_eps in per_env for ep in env_eps)
    assert len({length for _, length in episodes}) > 1, "episodes should end at different steps"
    return episodes


@pytest.mark.parametrize("vec_env_cls", [DummyVecEnv, SubprocVecEnv])
def test_evaluate_policy_equals_single_env_rollouts(agent, reference, vec_env_cls) -> None:
    env = RewardToPolicyVecEnv(make_vec_env(ENV, n_envs=N_ENVS, seed=SEED, vec_env_cls=vec_env_cls))
    try:
        returns, lengths = evaluate_policy(
            DecisionPolicy(agent), env, n_eval_episodes=EPISODES, return_episode_rewards=True, warn=False
        )
    finally:
        env.close()
    got = sorted(zip(returns, lengths, strict=True))
    assert [length for _, length in got] == [length for _, length in reference]
    np.testing.assert_allclose([r for r, _ in got], [r for r, _ in reference], rtol=1e-5)


def test_evaluate_policy_equals_our_evaluation_loop(agent, reference) -> None:
    ours = evaluate_agent(agent, ENV, episodes=EPISODES, num_envs=N_ENVS, seed=SEED, progress=False)
    assert sorted(ours.lengths) == sorted(length for _, length in reference)
    np.testing.assert_allclose(sorted(ours.returns), [r for r, _ in reference], rtol=1e-5)


def test_predict_protocol(agent) -> None:
    policy = DecisionPolicy(agent)
    obs = np.random.default_rng(0).normal(size=(2, 12))
    batch, state = policy.predict(obs, None, np.ones(2, dtype=bool))
    single, _ = policy.predict(obs[1])  # one unbatched observation
    assert batch.shape == (2, 3) and single.shape == (3,)
    np.testing.assert_allclose(single, batch[1], atol=1e-6)
    # A row flagged as an episode start forgets its past: same as a fresh start.
    again, _ = policy.predict(obs, state, np.array([True, False]))
    np.testing.assert_allclose(again[0], batch[0], atol=1e-6)


def test_save_load_zip_and_run_dir(agent, tmp_path) -> None:
    policy = DecisionPolicy(agent)
    obs = np.random.default_rng(1).normal(size=(3, 12))
    expected, _ = policy.predict(obs, None, np.ones(3, dtype=bool))

    from_zip = DecisionPolicy.load(policy.save(tmp_path / "decision_policy.zip"))
    assert from_zip.agent.target_return == agent.target_return and from_zip.agent.acting == agent.acting
    np.testing.assert_array_equal(from_zip.predict(obs, None, np.ones(3, dtype=bool))[0], expected)

    RunDir(tmp_path / "run").save_checkpoint(agent.model, step=1, trainer_state={})
    from_run = DecisionPolicy.load(tmp_path / "run", target_return=agent.target_return)
    np.testing.assert_array_equal(from_run.predict(obs, None, np.ones(3, dtype=bool))[0], expected)


def test_reward_wrapper_appends_previous_reward() -> None:
    env = RewardToPolicyVecEnv(make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    obs = env.reset()
    assert obs.shape == (2, 4) and (obs[:, -1] == 0).all()
    obs, rewards, _, _ = env.step(np.zeros((2, 1), dtype=np.float32))
    np.testing.assert_allclose(obs[:, -1], rewards, rtol=1e-6)
    assert env.observation_space.shape == (4,)


@pytest.mark.parametrize("content", [None, b"not a zip", "zip-without-model"])
def test_loading_a_wrong_file_names_it_and_the_fix(tmp_path, content):
    import zipfile

    path = tmp_path / "policy.zip"
    if content == "zip-without-model":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("other.txt", "x")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"policy\.zip is not a DecisionPolicy file.*DecisionPolicy\.save"):
        DecisionPolicy.load(path)
