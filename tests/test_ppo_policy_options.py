"""AarenPPO's policy options (recency, sink, previous_action_reward, share_memory, ...): folded acting
equals the parallel re-run, learn() runs, save/load and export keep the options and the actions, and
zips and exports load as they were saved: the options a save lacks are what its policy format implies
(format 0, before formats were recorded: previous_action_reward, input_lags, sink and sink_value were
added or changed later)."""

from __future__ import annotations

import copy
import inspect
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.preprocessing import get_action_dim

from agents.ppo import policy as ppo_policy
from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import UNVERIFIED_FORMAT, export_policy, load_exported_policy
from agents.ppo.policy import (
    FORMAT_IMPLIES,
    FORMAT_KEY,
    POLICY_FORMAT,
    TIME_SCALES,
    AarenActorCriticPolicy,
    RolloutSequences,
    options_as_saved,
    time_features,
)
from envs.pomdp import CARTPOLE_NO_VEL, PENDULUM_NO_VEL, REMEMBER_CUE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(embed_dim=16, num_layers=2, num_heads=2, ffn_mult=2, net_arch=dict(pi=[16], vf=[16]))
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
ENVS, STEPS = 4, 12
PREVIOUS = dict(previous_action_reward=True)  # the default, spelled out
COMBINED = dict(recency=False, previous_action_reward=True, share_memory=True)
LAGS = dict(input_lags=2)
OPTIONS = [
    dict(recency=False),
    dict(previous_action_reward=False),
    dict(share_memory=True),
    COMBINED,
    LAGS,
    dict(input_lags=3, share_memory=True, previous_action_reward=False),
    dict(episode_time=True),
    dict(episode_time=True, share_memory=True, input_lags=0),
    dict(sink=False),
    dict(sink_value=False),
]


class RepeatPreviousEnv(gym.Env):
    """Discrete observations and MultiDiscrete actions (as POPGym's card and board tasks): reward 1
    when the action's first part names the previous observation; episodes of 5 steps."""

    observation_space = spaces.Discrete(3)
    action_space = spaces.MultiDiscrete([3, 2])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self._t, self._obs = 0, int(self.np_random.integers(3))
        return self._obs, {}

    def step(self, action: np.ndarray) -> tuple[int, float, bool, bool, dict]:
        reward = float(self._t > 0 and int(action[0]) == self._previous)
        self._t, self._previous, self._obs = self._t + 1, self._obs, int(self.np_random.integers(3))
        return self._obs, reward, self._t >= 5, False, {}


@torch.no_grad()
def _randomise_sinks(policy: AarenActorCriticPolicy) -> None:
    """Random sink scores and values (where the memories have them), as training leaves them."""
    for memory in (policy.actor_memory, policy.critic_memory):
        for block in [] if memory is None or not memory.sink else memory.backbone.blocks:
            block.mixer.sink.uniform_(-1.0, 4.0)
            if block.mixer.sink_value is not None:
                block.mixer.sink_value.normal_()


def _policy(obs_space: spaces.Space, action_space: spaces.Space, dtype: torch.dtype, **options: Any):
    """A policy in eval mode with non-zero recency slopes on every head and random sinks (when it has
    them)."""
    policy = AarenActorCriticPolicy(obs_space, action_space, lambda _: 3e-4, **SMALL, **options)
    with torch.no_grad():
        for memory in (policy.actor_memory, policy.critic_memory):
            if memory is not None and memory.recency is not None:
                memory.recency.uniform_(0.1, 0.5)
    _randomise_sinks(policy)
    policy.to(dtype).set_training_mode(False)
    return policy


def _starts() -> torch.Tensor:
    """[STEPS, ENVS]: every env starts at step 0; later some start a new episode while the others go on."""
    rows, steps = torch.arange(ENVS), torch.arange(STEPS)[:, None]
    return (steps == 0) | ((rows + steps) % 5 == 0)


def _random_obs(space: spaces.Space, generator: torch.Generator) -> torch.Tensor:
    if isinstance(space, spaces.Discrete):
        return torch.randint(int(space.n), (ENVS,), generator=generator)
    return torch.randn(ENVS, *space.shape, generator=generator)


def _act(policy: AarenActorCriticPolicy) -> dict[str, torch.Tensor]:
    """Act STEPS steps through the folded memories with random observations and rewards: obs, actions,
    rewards, values and log-probs as [ENVS, STEPS, ...]."""
    torch.manual_seed(0)
    generator, starts = torch.Generator().manual_seed(1), _starts()
    state, steps = policy.init_state(ENVS), []
    for t in range(STEPS):
        obs = _random_obs(policy.observation_space, generator)
        with torch.no_grad():
            actions, values, log_prob, state = policy(obs, state, starts[t])
        rewards = torch.randn(ENVS, generator=generator, dtype=torch.float64).to(policy.dtype)
        state = state.with_reward(rewards)
        steps.append(
            dict(obs=obs, actions=actions, rewards=rewards, values=values.flatten(), log_prob=log_prob)
        )
    assert set(policy._folded) == {"actor_memory"} | ({"critic_memory"} if policy.critic_memory else set())
    return {key: torch.stack([step[key] for step in steps], 1) for key in steps[0]}


def _rerun(
    policy: AarenActorCriticPolicy,
    acted: dict[str, torch.Tensor],
    actions: torch.Tensor,
    rewards: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the acted actions and values [ENVS, STEPS], each episode re-run at once by the
    module forward (the parallel scan) from the empty state, with `actions` and `rewards` as the ones
    taken (their shift by one step gives each step's previous action and reward)."""
    log_prob, values = torch.empty_like(acted["log_prob"]), torch.empty_like(acted["values"])
    starts = _starts()
    for env in range(ENVS):
        cuts = [*torch.nonzero(starts[:, env]).flatten().tolist(), STEPS]
        for first, end in zip(cuts[:-1], cuts[1:], strict=False):
            rows = (slice(env, env + 1), slice(first, end))
            taken = (actions[rows], rewards[rows])
            latent_pi, latent_vf, _ = policy._latents(acted["obs"][rows], policy.init_state(1), taken=taken)
            distribution = policy._get_action_dist_from_latent(latent_pi[0])
            log_prob[env, first:end] = distribution.log_prob(acted["actions"][rows][0]).detach()
            values[env, first:end] = policy.value_net(latent_vf[0]).flatten().detach()
    return log_prob, values


SPACES = {
    "discrete": (spaces.Box(-1, 1, (3,)), spaces.Discrete(4)),
    "multidiscrete": (spaces.Discrete(5), spaces.MultiDiscrete([3, 2])),
    "box": (spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (2,))),
}
CASES = [("discrete", options) for options in OPTIONS] + [
    ("multidiscrete", PREVIOUS),
    ("box", PREVIOUS),
    ("box", COMBINED),
    ("multidiscrete", LAGS),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("space", "options"), CASES)
def test_folded_acting_equals_the_parallel_rerun(space: str, options: dict, dtype: torch.dtype) -> None:
    policy = _policy(*SPACES[space], dtype, **options)
    acted = _act(policy)
    log_prob, values = _rerun(policy, acted, acted["actions"], acted["rewards"])
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(log_prob, acted["log_prob"], atol=tol, rtol=tol)
    torch.testing.assert_close(values, acted["values"], atol=tol, rtol=tol)

    # The previous action is read by actor and critic, the previous reward by the critic's own memory only.
    order = torch.arange(STEPS - 1, -1, -1)
    other_actions, _ = _rerun(policy, acted, acted["actions"][:, order], acted["rewards"])
    _, other_rewards = _rerun(policy, acted, acted["actions"], acted["rewards"][:, order])
    previous = policy.previous_action_reward
    assert torch.equal(other_actions, log_prob) != previous
    assert torch.equal(other_rewards, values) != (previous and policy.critic_memory is not None)


def _collect(model: AarenPPO, rollouts: int) -> None:
    """Fill the rollout buffer `rollouts` times in a row (the state carries over between them)."""
    _, callback = model._setup_learn(10**6)
    for _ in range(rollouts):
        assert model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)


ENVS_BY_KIND = {"discrete": CARTPOLE_NO_VEL, "multidiscrete": RepeatPreviousEnv, "box": PENDULUM_NO_VEL}


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("discrete", PREVIOUS),
        ("multidiscrete", PREVIOUS),
        ("box", COMBINED),
        ("multidiscrete", LAGS),
        ("discrete", LAGS),
        ("discrete", dict(sink=False)),
    ],
)
def test_rerun_of_stored_sequences_equals_acting(kind: str, options: dict) -> None:
    """The buffer's sequences give training the previous actions and rewards (and lagged features)
    acting saw, also across rollouts (the second one starts mid-episode), at episode starts (zeros)
    and in packed rows (episodes after another in a row)."""
    env = make_vec_env(ENVS_BY_KIND[kind], n_envs=3, seed=1)
    policy_kwargs = {**SMALL, **options}
    model = AarenPPO("MlpAarenPolicy", env, n_steps=22, batch_size=66, seed=0, policy_kwargs=policy_kwargs)
    model.policy.to(torch.float64)  # so the comparison is limited only by the buffer's float32 storage
    _randomise_sinks(model.policy)
    _collect(model, rollouts=2)
    buffer = model.rollout_buffer
    assert not buffer.episode_starts[0].all() and buffer.entering_state.last_action.abs().sum() > 0
    seen = packed = 0
    for batch in [*buffer.get(25), *buffer.get()]:  # the whole rollout at once packs the most
        actions = batch.actions.long().flatten() if kind == "discrete" else batch.actions
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(batch.observations, actions)
        torch.testing.assert_close(values.flatten(), batch.old_values.double(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(log_prob, batch.old_log_prob.double(), atol=1e-6, rtol=1e-6)
        seen += int(batch.observations.mask.sum())
        resets = batch.observations.resets  # None: one sequence per row
        packed += 0 if resets is None else int(resets.sum())  # episodes that follow another in their row
    assert seen == 2 * 22 * 3 and (packed > 0 or kind != "discrete")  # CartPole's episodes vary in length


@pytest.mark.parametrize(
    "action_space", [spaces.Discrete(4), spaces.MultiDiscrete([3, 2]), spaces.Box(-2, 2, (2,))]
)
def test_a_minibatch_of_one_step_sequences_trains(action_space: spaces.Space) -> None:
    """Sequences of one step have no earlier actions to encode (an empty [S, 0, A]): evaluate_actions
    still gives their values and log-probs, as acting did."""
    policy = _policy(spaces.Box(-1, 1, (3,)), action_space, torch.float64)
    obs = torch.randn(2, 1, 3).double()
    state = policy.init_state(2)
    with torch.no_grad():
        actions, values, log_prob, _ = policy(obs[:, 0], state, torch.ones(2))
        stored = actions.reshape(2, 1, get_action_dim(action_space)).double()
        sequences = RolloutSequences(
            obs, state, torch.ones(2, 1, dtype=torch.bool), stored, torch.zeros(2, 1)
        )
        rerun_values, rerun_log_prob, _ = policy.evaluate_actions(sequences, actions)
    torch.testing.assert_close(rerun_values, values, rtol=0, atol=1e-12)
    torch.testing.assert_close(rerun_log_prob, log_prob, rtol=0, atol=1e-12)


def _assert_same_predictions(a: Any, b: Any, env_id: Any) -> None:
    """`a` and `b` (models or policies) predict the same actions and states over 20 steps of 2 envs."""
    env = make_vec_env(env_id, n_envs=2, seed=3)
    obs, state_a, state_b, starts = env.reset(), None, None, np.ones(2, dtype=bool)
    for _ in range(20):
        act_a, state_a = a.predict(obs, state_a, starts, deterministic=True)
        act_b, state_b = b.predict(obs, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(act_a, act_b)
        for x, y in zip(state_a, state_b, strict=True):
            np.testing.assert_array_equal(x, y)
        obs, _, starts, _ = env.step(act_a)


@pytest.mark.parametrize(
    ("env_id", "options"),
    [
        (REMEMBER_CUE, COMBINED),
        (CARTPOLE_NO_VEL, PREVIOUS),
        (PENDULUM_NO_VEL, PREVIOUS),
        (RepeatPreviousEnv, PREVIOUS),
        (CARTPOLE_NO_VEL, LAGS),
    ],
)
def test_learn_save_load_export_keep_the_options(tmp_path, env_id: Any, options: dict) -> None:
    env = make_vec_env(env_id, n_envs=2, seed=0)
    model = AarenPPO(
        "MlpAarenPolicy",
        env,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        policy_kwargs={**SMALL, **options},
    )
    model.learn(64)
    assert model.num_timesteps == 64
    model.save(tmp_path / "model.zip")
    loaded = AarenPPO.load(tmp_path / "model.zip", device="cpu")
    params = loaded.policy._get_constructor_parameters()
    assert {key: params[key] for key in options} == options
    assert ("actor_memory.recency" in loaded.policy.state_dict()) == options.get("recency", True)
    _assert_same_predictions(model, loaded, env_id)
    if not isinstance(env.action_space, spaces.MultiDiscrete):  # exports write Box and Discrete spaces only
        _assert_same_predictions(
            model, load_exported_policy(export_policy(model, tmp_path / "p.zip")), env_id
        )


def test_predict_keeps_the_last_action_and_needs_no_reward() -> None:
    """predict's state carries the encoded last action (zero after an episode start), and its actions
    equal the parallel re-run's, with no reward given."""
    policy = _policy(spaces.Box(-1, 1, (3,)), spaces.Discrete(4), torch.float64, **PREVIOUS)
    obs = torch.randn(1, 8, 3, dtype=torch.float64)
    state, actions = None, []
    for t in range(8):
        action, state = policy.predict(obs[:, t].numpy(), state, np.array([t == 0]), deterministic=True)
        assert len(state) == 6 and state[4][0].tolist() == np.eye(4)[action[0]].tolist()
        actions.append(int(action[0]))
    taken = (torch.tensor([actions]), torch.zeros(1, 8))
    latent_pi, _, _ = policy._latents(obs, policy.init_state(1), critic=False, taken=taken)
    parallel = policy._get_action_dist_from_latent(latent_pi[0]).get_actions(deterministic=True)
    assert parallel.tolist() == actions
    # An episode start empties the memory and the last action: the same as starting without a state.
    restarted = policy.predict(obs[:, 3].numpy(), state, np.array([True]), deterministic=True)
    fresh = policy.predict(obs[:, 3].numpy(), None, None, deterministic=True)
    for x, y in zip((restarted[0], *restarted[1]), (fresh[0], *fresh[1]), strict=True):
        np.testing.assert_array_equal(x, y)


def test_bad_option_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        _policy(spaces.Box(-1, 1, (3,)), spaces.Box(-np.inf, np.inf, (2,)), torch.float32, **PREVIOUS)
    policy = _policy(spaces.Box(-1, 1, (3,)), spaces.Discrete(4), torch.float32, **PREVIOUS)
    _, state = policy.predict(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="last_action"):
        policy.predict(np.zeros((2, 3), dtype=np.float32), state[:4])


def _format_0_kwargs(**options: Any) -> dict[str, Any]:
    """SMALL and `options` as AarenPPO recorded policy kwargs before formats: format 0's options spelled out."""
    defaults = inspect.signature(AarenActorCriticPolicy).parameters
    return {**SMALL, **{key: defaults[key].default for key in FORMAT_IMPLIES[0]}, **options}


def _as_format_0(zip_path: Path, member: str, key: str) -> None:
    """Rewrite `member` of the zip as saved before policy formats were recorded, without `key` in its
    constructor options: a model.zip without FORMAT_KEY, an export of format /1 (no digests either)."""
    with zipfile.ZipFile(zip_path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(files[member])
    if "policy_kwargs" in data:
        options = data["policy_kwargs"]
        del options[FORMAT_KEY]
    else:
        options = data["parameters"]
        data = {"format": UNVERIFIED_FORMAT, "dtype": data["dtype"], "parameters": options}
    del options[key]
    files[member] = json.dumps(data).encode()
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)


@pytest.mark.filterwarnings("ignore:.*exported before exports carried sha256 digests")
@pytest.mark.parametrize(("key", "saved_value"), list(FORMAT_IMPLIES[0].items()))
def test_saves_from_before_a_default_changed_load_as_they_were_saved(tmp_path, key: str, saved_value) -> None:
    """A zip or an export of format 0 without `key` was saved when that option was `saved_value`."""
    env = make_vec_env(CARTPOLE_NO_VEL, n_envs=2, seed=0)
    kwargs = _format_0_kwargs(**{key: saved_value})
    model = AarenPPO("MlpAarenPolicy", env, n_steps=16, batch_size=32, seed=0, policy_kwargs=kwargs)
    fresh = AarenPPO("MlpAarenPolicy", env, policy_kwargs=SMALL).policy
    assert fresh._get_constructor_parameters()[key] != saved_value
    model.save(tmp_path / "model.zip")
    _as_format_0(tmp_path / "model.zip", "data", key)
    loaded = AarenPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy._get_constructor_parameters()[key] == saved_value
    _assert_same_predictions(model, loaded, CARTPOLE_NO_VEL)
    exported = export_policy(model, tmp_path / "p.zip")
    _as_format_0(exported, "policy.json", key)
    _assert_same_predictions(model, load_exported_policy(exported), CARTPOLE_NO_VEL)


def test_saves_record_their_policy_format_and_a_resave_keeps_it(tmp_path) -> None:
    """A new zip records POLICY_FORMAT and builds with the current defaults; a format-0 zip saved again
    stays format 0, so it keeps building as it was trained."""
    env = make_vec_env(CARTPOLE_NO_VEL, n_envs=2, seed=0)
    AarenPPO("MlpAarenPolicy", env, n_steps=16, batch_size=32, policy_kwargs=SMALL).save(tmp_path / "new.zip")
    new = AarenPPO.load(tmp_path / "new.zip", device="cpu")
    assert new.policy_kwargs[FORMAT_KEY] == POLICY_FORMAT and new.policy.memory_kwargs["sink"] is True
    old = AarenPPO(
        "MlpAarenPolicy", env, n_steps=16, batch_size=32, policy_kwargs=_format_0_kwargs(sink=False)
    )
    old.save(tmp_path / "old.zip")
    _as_format_0(tmp_path / "old.zip", "data", "sink")
    AarenPPO.load(tmp_path / "old.zip", device="cpu").save(tmp_path / "again.zip")
    again = AarenPPO.load(tmp_path / "again.zip", device="cpu")
    assert FORMAT_KEY not in again.policy_kwargs and again.policy.memory_kwargs["sink"] is False


def test_an_older_format_implies_what_each_later_one_does_unless_it_says_otherwise(monkeypatch) -> None:
    """With a format 2 whose saves of format 1 lack `recency` (built True): a format-1 save builds with
    recency True; a format-0 save too, and with format 0's own values for the rest; a format-2 save
    with the current defaults; a format from a newer aaren-rl is refused."""
    monkeypatch.setattr(ppo_policy, "POLICY_FORMAT", 2)
    monkeypatch.setitem(FORMAT_IMPLIES, 1, {"recency": True, "sink": True})
    assert options_as_saved({"num_heads": 2}, 2) == {"num_heads": 2}
    assert options_as_saved({"num_heads": 2}, 1) == {"recency": True, "sink": True, "num_heads": 2}
    assert options_as_saved({}, 0) == {**FORMAT_IMPLIES[0], "recency": True}
    assert options_as_saved({"sink": True}, 0)["sink"] is True  # what a save records wins
    with pytest.raises(ValueError, match="policy format 3 is not one this aaren-rl reads"):
        options_as_saved({}, 3)


def test_input_lags_feed_each_step_the_features_of_the_steps_before_it() -> None:
    """Step j's memory input is [f_{j-k}, ..., f_{j-1}, f_j] (zeros before the episode's first step),
    in one call over a sequence and carried across calls by the state's lags alike."""
    policy = _policy(spaces.Box(-1, 1, (3,)), spaces.Discrete(4), torch.float64, input_lags=2)
    obs = torch.randn(1, 5, 3).double()  # float32 values: SB3's preprocessing passes them through float32
    lags = policy.init_state(1).actor_lags
    features = policy._features(obs.reshape(5, 3), policy.pi_features_extractor).view(1, 5, 3)
    inputs, after = policy._memory_input(features, None, lags, None)
    padded = torch.cat([torch.zeros(1, 2, 3, dtype=torch.float64), obs], 1)
    for j in range(5):
        torch.testing.assert_close(inputs[0, j], padded[0, j : j + 3].flatten(), rtol=0, atol=0)
    torch.testing.assert_close(after, obs[:, -2:], rtol=0, atol=0)
    state = None
    for j in range(5):  # step by step through predict: its state carries the lags
        _, state = policy.predict(obs[:, j].numpy(), state, np.array([j == 0]), deterministic=True)
        torch.testing.assert_close(torch.as_tensor(state[-1]), padded[:, j + 1 : j + 3], rtol=0, atol=0)


def test_time_features_are_linear_ramps_per_scale() -> None:
    """min(t / scale, 1) for each of TIME_SCALES: 0 at an episode's first step, 1 from `scale` on."""
    timesteps = torch.tensor([[0, 8, 32, 2048]])
    expected = torch.tensor([[min(t / scale, 1.0) for scale in TIME_SCALES] for t in (0, 8, 32, 2048)])
    torch.testing.assert_close(time_features(timesteps, torch.float64)[0], expected.double(), rtol=0, atol=0)


def test_episode_time_joins_the_actors_step_features_and_lags_only() -> None:
    """With episode_time, the actor's lags carry [f_j, time_j] of the last steps; the critic's memory
    reads no time (its input is the features, their lags, the previous action and reward)."""
    policy = _policy(
        spaces.Box(-1, 1, (3,)), spaces.Discrete(4), torch.float64, input_lags=1, episode_time=True
    )
    assert policy.critic_memory.embed.in_features == 3 * 2 + 4 + 1
    obs = torch.randn(1, 5, 3).double()
    state = None
    for j in range(5):
        _, state = policy.predict(obs[:, j].numpy(), state, np.array([j == 0]), deterministic=True)
        step = torch.cat([obs[0, j], time_features(torch.tensor([j]), torch.float64)[0]])
        torch.testing.assert_close(torch.as_tensor(state[-1])[0, 0], step, rtol=0, atol=0)


def test_a_policy_that_acted_pickles_and_deep_copies() -> None:
    """Its folded memories (C++ objects inside) are left out and folded again at the next act."""
    policy = _policy(spaces.Box(-1, 1, (3,)), spaces.Discrete(4), torch.float32, **LAGS)
    obs = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    policy.predict(obs[0], None, np.ones(2, dtype=bool))
    assert policy._folded
    for other in (copy.deepcopy(policy), pickle.loads(pickle.dumps(policy))):
        state = other_state = None
        for t, step in enumerate(obs):
            starts = np.full(2, t == 0)
            actions, state = policy.predict(step, state, starts, deterministic=True)
            other_actions, other_state = other.predict(step, other_state, starts, deterministic=True)
            np.testing.assert_array_equal(actions, other_actions)
