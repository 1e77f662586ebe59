"""envs.make and envs.scores: names -> Gymnasium tasks, D4RL ant layout, normalised scores."""

from __future__ import annotations

import numpy as np
import pytest

from envs import canonical_env_id, load_dataset, make_env, normalized_score


@pytest.mark.parametrize(
    ("name", "env_id", "obs_dim"),
    [
        ("hopper-medium-v2", "Hopper-v5", 11),
        ("Hopper-Medium-Replay", "Hopper-v5", 11),
        ("walker2d", "Walker2d-v5", 17),
        ("walker2d-expert-v2", "Walker2d-v5", 17),
        ("Hopper-v5", "Hopper-v5", 11),  # registered Gymnasium ids pass through
        ("Pendulum-v1", "Pendulum-v1", 3),
    ],
)
def test_names_map_to_gymnasium_tasks(name, env_id, obs_dim):
    assert canonical_env_id(name) == env_id
    env = make_env(name)
    assert env.spec.id == env_id and env.observation_space.shape == (obs_dim,)
    env.close()


def test_halfcheetah_name_maps_without_making_it():
    assert canonical_env_id("halfcheetah-medium-expert-v2") == "HalfCheetah-v5"


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match=r"Unknown environment 'antmaze-umaze-v0'.*'hopper'"):
        canonical_env_id("antmaze-umaze-v0")


def test_d4rl_ant_layout():
    env = make_env("ant-medium-v2")
    assert env.observation_space.shape == (111,)
    base = env.unwrapped
    assert base._include_cfrc_ext_in_observation is False and base._contact_cost_weight == 0.0
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
    assert not obs[27:].any()  # D4RL's contact-force block: zeros
    qpos, qvel = base.data.qpos, base.data.qvel
    np.testing.assert_allclose(obs[:27], np.concatenate([qpos[2:], qvel]), rtol=1e-6)
    env.close()
    assert make_env("ant", d4rl_ant_layout=False).observation_space.shape == (27,)
    assert make_env("Ant-v5").observation_space.shape == (105,)  # the plain id is untouched


def test_normalized_score_reference_table_and_vectorised():
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("Hopper-v5", -20.272305) == pytest.approx(0.0)
    assert normalized_score("halfcheetah", 12135.0) == pytest.approx(100.0)
    assert normalized_score("walker2d_medium-v2", 1.629008) == pytest.approx(0.0)
    assert normalized_score("Ant-v5", 3879.7) == pytest.approx(100.0)
    scores = normalized_score("hopper", np.array([3650.0, 754.0]))
    np.testing.assert_allclose(scores, [112.8, 23.8], atol=0.05)  # experts README table
    assert normalized_score("anything", 5.0, ref_min=0.0, ref_max=10.0) == 50.0


def test_normalized_score_from_dataset_metadata():
    n = 4
    data = {
        "observations": np.zeros((n, 2), np.float32),
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.array([0, 1, 0, 1], bool),
        "metadata/ref_min_score": 0.0,
        "metadata/ref_max_score": 4.0,
    }
    assert load_dataset(data).normalized_score(2.0) == 50.0
    meta_only = {k: v for k, v in data.items() if not k.startswith("metadata/")}
    with pytest.raises(ValueError, match=r"No reference scores known.*ref_min="):
        load_dataset(meta_only).normalized_score(2.0)
    with pytest.raises(ValueError, match="No reference scores known for 'Pendulum-v1'"):
        normalized_score("Pendulum-v1", 1.0)
