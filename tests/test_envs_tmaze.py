"""envs.tmaze: the passive T-Maze's dynamics, its names and registration, and the scripted oracle."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs import make_env
from envs.d4rl import canonical_env_id, eval_targets, is_published, reference_scores
from envs.errors import EnvNameError
from envs.scores import normalized_score
from envs.tmaze import (
    DOWN,
    LEFT,
    RIGHT,
    SPARE_STEPS,
    TMAZE,
    UP,
    TMazeEnv,
    TMazeName,
    TMazeOracle,
    parse_tmaze_name,
    tmaze_kwargs,
)


def walk(env, actions, seed=0):
    """(observations from reset on, rewards, terminated, truncated) of one episode's `actions`."""
    obs, _ = env.reset(seed=seed)
    observations, rewards, ends = [obs], [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
        ends.append((terminated, truncated))
    return np.array(observations), rewards, ends


def cued_goal(env, seed):
    obs, _ = env.reset(seed=seed)
    return UP if obs[0] == 1 else DOWN


def test_cue_only_at_the_first_step_and_the_junction_flag_only_at_the_junction():
    env = gym.make(TMAZE, corridor_length=4)
    observations, rewards, ends = walk(env, [RIGHT] * 4 + [RIGHT, LEFT, RIGHT])
    assert observations[0, 0] in (-1.0, 1.0) and np.all(observations[1:, 0] == 0)
    # positions after each step: 0 1 2 3 4 4 (wall) 3 4
    np.testing.assert_array_equal(observations[:, 1], [0, 0, 0, 0, 1, 1, 0, 1])
    assert np.all(observations[:, 2] == 0)  # no noise channel unless asked
    assert rewards == [0.0] * 7 and not any(t or u for t, u in ends)


def test_cue_does_not_come_back_at_the_start_cell():
    env = gym.make(TMAZE, corridor_length=3)
    observations, _, _ = walk(env, [LEFT, UP, DOWN, RIGHT, LEFT])  # walls at the start cell, back to it
    assert np.all(observations[1:, 0] == 0) and np.all(observations[:, 1] == 0)


@pytest.mark.parametrize("seed", range(6))
def test_reward_one_only_for_the_cued_goal_at_the_end(seed):
    env = gym.make(TMAZE, corridor_length=3)
    right = cued_goal(env, seed)
    wrong = DOWN if right == UP else UP
    for turn, reward in ((right, 1.0), (wrong, 0.0)):
        _, rewards, ends = walk(
            env, [UP, DOWN, RIGHT, RIGHT, RIGHT, turn], seed=seed
        )  # up/down: corridor walls
        assert rewards == [0.0] * 5 + [reward]
        assert ends[-1] == (True, False) and not any(t or u for t, u in ends[:-1])


def test_both_cues_occur_and_seeding_repeats_episodes():
    env = gym.make(TMAZE, corridor_length=2, noise=True)
    goals = {cued_goal(env, seed) for seed in range(20)}
    assert goals == {UP, DOWN}
    first, _, _ = walk(env, [RIGHT, LEFT, RIGHT, RIGHT], seed=5)
    again, _, _ = walk(env, [RIGHT, LEFT, RIGHT, RIGHT], seed=5)
    other, _, _ = walk(env, [RIGHT, LEFT, RIGHT, RIGHT], seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_noise_channel_is_uniform_over_minus_one_zero_one():
    env = gym.make(TMAZE, corridor_length=1000, noise=True)
    observations, _, _ = walk(env, [RIGHT] * 999)
    values, counts = np.unique(observations[:, 2], return_counts=True)
    np.testing.assert_array_equal(values, [-1, 0, 1])
    assert counts.min() > 280  # about 333 each
    np.testing.assert_array_equal(observations[1:, :2], np.c_[np.zeros(999), np.zeros(999)])


@pytest.mark.parametrize(("length", "spare"), [(1, 0), (5, 3), (30, SPARE_STEPS)])
def test_time_limit_is_length_plus_one_plus_spare(length, spare):
    env = gym.make(TMAZE, corridor_length=length, spare_steps=spare)
    limit = length + 1 + spare
    assert env.spec.max_episode_steps == limit
    _, rewards, ends = walk(env, [LEFT] * limit)
    assert ends[-1] == (False, True) and not any(t or u for t, u in ends[:-1]) and sum(rewards) == 0


def test_the_shortest_episode_fits_without_spare_steps():
    env = gym.make(TMAZE, corridor_length=6, spare_steps=0)
    _, rewards, ends = walk(env, [RIGHT] * 6 + [cued_goal(env, 3)], seed=3)
    assert rewards[-1] == 1.0 and ends[-1] == (
        True,
        True,
    )  # a goal at the time limit: both, as Gymnasium says


def test_spaces():
    env = gym.make(TMAZE)
    assert env.action_space == gym.spaces.Discrete(4)
    assert env.observation_space.shape == (3,) and env.observation_space.dtype == np.float32
    assert env.unwrapped.corridor_length == 10


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"corridor_length": 0}, "corridor_length = 0: give a whole number >= 1"),
        ({"corridor_length": 2.5}, "corridor_length = 2.5"),
        ({"spare_steps": -1}, "spare_steps = -1: give a whole number >= 0"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        TMazeEnv(**kwargs)


def test_bad_action_is_one_clear_error():
    env = TMazeEnv(3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action 4: give an integer 0-3"):
        env.step(4)


# ---- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("tmaze-100", TMazeName((100,), False, "")),
        ("TMaze-20-50-oracle-v0", TMazeName((20, 50), False, "oracle-v0")),
        ("tmaze-30-noisy-expert-v0", TMazeName((30,), True, "expert-v0")),
        ("tmaze_20_50_oracle-v0", TMazeName((20, 50), False, "oracle-v0")),  # a file stem
        ("tmaze", TMazeName((), False, "")),
    ],
)
def test_parse_tmaze_name(name, parsed):
    assert parse_tmaze_name(name) == parsed


def test_env_name_drops_recipe_and_version():
    assert parse_tmaze_name("tmaze-20-50-noisy-oracle-v0").env_name == "tmaze-20-50-noisy"
    assert parse_tmaze_name("tmaze-7-expert").env_name == "tmaze-7"


def test_make_env_by_name_sets_length_noise_and_time_limit():
    env = make_env("tmaze-100-noisy")
    assert (env.unwrapped.corridor_length, env.unwrapped.noise) == (100, True)
    assert env.spec.max_episode_steps == 100 + 1 + SPARE_STEPS
    assert make_env("tmaze-7-oracle-v0").unwrapped.corridor_length == 7  # a one-length dataset id
    assert canonical_env_id("tmaze-7") == TMAZE
    assert tmaze_kwargs("tmaze") == {}


def test_a_name_of_several_lengths_makes_no_env_and_says_which_to_name():
    with pytest.raises(EnvNameError, match=r"names corridor lengths 20, 50.*data.env=tmaze-20"):
        make_env("tmaze-20-50-oracle-v0")
    with pytest.raises(EnvNameError, match="is not a T-Maze name"):
        parse_tmaze_name("hopper-20")


def test_scores_are_success_rates_and_nothing_is_downloaded():
    assert reference_scores("tmaze-20-50-oracle-v0") == (0.0, 1.0)
    np.testing.assert_allclose(
        normalized_score("tmaze-100", np.array([1.0, 0.0, 1.0, 1.0])), [100, 0, 100, 100]
    )
    assert eval_targets("tmaze-100") == (1.0, 0.0)
    assert not is_published("tmaze", "medium", "v2")


# ---- the oracle -----------------------------------------------------------------------------------


def run_oracle(length, episodes, *, wrong_turns=0.3, deterministic=False, seed=0):
    """Returns and lengths of `episodes` oracle episodes in one env."""
    env = make_env(f"tmaze-{length}")
    oracle = TMazeOracle(length, wrong_turns=wrong_turns, seed=seed)
    returns, lengths = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        state, start, total, steps, done = None, np.array([True]), 0.0, 0, False
        while not done:
            action, state = oracle.predict(obs[None], state, start, deterministic=deterministic)
            obs, reward, terminated, truncated, _ = env.step(int(action[0]))
            start, total, steps, done = np.array([False]), total + reward, steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return np.array(returns), np.array(lengths)


def test_deterministic_oracle_always_wins_by_the_shortest_path():
    returns, lengths = run_oracle(15, 20, deterministic=True)
    assert np.all(returns == 1.0) and np.all(lengths == 16)


@pytest.mark.parametrize("length", [3, 40])
def test_sampled_oracle_wins_one_minus_wrong_turns_of_episodes_within_the_time_limit(length):
    returns, lengths = run_oracle(length, 400)
    assert set(returns) == {0.0, 1.0}
    assert abs(returns.mean() - 0.7) < 0.07  # 400 episodes: std of the share 0.023
    assert lengths.max() <= length + 1 + SPARE_STEPS  # never cut by the time limit
    assert lengths.min() == length + 1 and len(set(lengths)) > 3  # detours vary when the junction comes


def test_oracle_without_wrong_turns_always_wins_despite_detours():
    returns, lengths = run_oracle(25, 100, wrong_turns=0.0)
    assert np.all(returns == 1.0) and lengths.max() > 26


def test_oracle_keeps_one_plan_per_env():
    oracle = TMazeOracle(2, seed=0)
    first = np.array([[1, 0, 0], [-1, 0, 0]], np.float32)
    _, state = oracle.predict(first, None, np.array([True, True]), deterministic=True)
    junction = np.array([[0, 1, 0], [0, 1, 0]], np.float32)
    actions, _ = oracle.predict(junction, state, np.array([False, False]), deterministic=True)
    np.testing.assert_array_equal(actions, [UP, DOWN])


def test_oracle_wrong_turns_must_be_a_share():
    with pytest.raises(ValueError, match="wrong_turns = 1.5: give a share from 0 to 1"):
        TMazeOracle(10, wrong_turns=1.5)
