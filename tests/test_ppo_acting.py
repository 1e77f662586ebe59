"""AarenPPO's folded acting path equals the module forward, and is refolded when the weights change."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env

from agents.ppo.algorithm import AarenPPO
from agents.ppo.policy import AarenActorCriticPolicy, ActorCriticState
from envs.pomdp import CARTPOLE_NO_VEL, PENDULUM_NO_VEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(embed_dim=16, num_layers=2, num_heads=4, ffn_mult=2, net_arch=dict(pi=[16], vf=[16]))
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-9}
ENVS, STEPS = 4, 12


def _model(env_id: str, dtype: torch.dtype, share_memory: bool = False) -> AarenPPO:
    env = make_vec_env(env_id, n_envs=ENVS, seed=0)
    kwargs = dict(SMALL, share_memory=share_memory)
    model = AarenPPO(
        "MlpAarenPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, policy_kwargs=kwargs
    )
    with torch.no_grad():  # non-zero recency slopes on every head, so the score bias is exercised
        for memory in (model.policy.actor_memory, model.policy.critic_memory):
            if memory is not None:
                memory.recency.uniform_(0.1, 0.5)
    model.policy.to(dtype)
    model.policy.set_training_mode(False)
    return model


def _starts(step: int) -> torch.Tensor:
    """Every env starts at step 0; later some envs start a new episode while the others go on."""
    rows = torch.arange(ENVS)
    return torch.ones(ENVS, dtype=torch.bool) if step == 0 else (rows + step) % 5 == 0


def _act(
    policy: AarenActorCriticPolicy, obs: torch.Tensor, state: ActorCriticState, step: int, folded: bool
) -> tuple[tuple[torch.Tensor, ...], ActorCriticState]:
    """One deterministic step through `forward`, folded (no gradients) or the module forward (gradients)."""
    with torch.set_grad_enabled(not folded):
        actions, values, log_prob, state = policy(obs, state, _starts(step), deterministic=True)
    return tuple(t.detach() for t in (actions, values, log_prob)), state


def _state_pairs(a: ActorCriticState, b: ActorCriticState) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pairs to compare: what each memory's states stand for, (u e^m, w e^m), both scaled by e^-max(m)
    (the stabiliser m itself may differ: the forward joins the sinks to a first token, the folded step
    starts from a state holding them), and the steps."""
    pairs = [(a.steps, b.steps)]
    for x, y in [(a.actor, b.actor)] + ([] if a.critic is None else [(a.critic, b.critic)]):
        top = torch.maximum(x.m, y.m)
        sx, sy = (x.m - top).exp(), (y.m - top).exp()
        pairs += [(x.u * sx, y.u * sy), (x.w * sx[..., None], y.w * sy[..., None])]
    return [(p.detach(), q.detach()) for p, q in pairs]


def _assert_folded_equals_forward(policy: AarenActorCriticPolicy, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    generator = torch.Generator().manual_seed(0)
    obs_dim = policy.observation_space.shape[0]
    folded_state = eager_state = policy.init_state(ENVS)
    for step in range(STEPS):
        obs = torch.randn(ENVS, obs_dim, generator=generator)
        out_folded, folded_state = _act(policy, obs, folded_state, step, folded=True)
        out_eager, eager_state = _act(policy, obs, eager_state, step, folded=False)
        for a, b in zip(out_folded, out_eager, strict=True):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)
        for a, b in _state_pairs(folded_state, eager_state):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("env_id", "share_memory"), [(CARTPOLE_NO_VEL, False), (PENDULUM_NO_VEL, True)])
def test_folded_acting_equals_forward(env_id: str, share_memory: bool, dtype: torch.dtype) -> None:
    policy = _model(env_id, dtype, share_memory).policy
    _assert_folded_equals_forward(policy, dtype)
    assert set(policy._folded) == {"actor_memory"} | (set() if share_memory else {"critic_memory"})


def test_predict_and_predict_values_use_the_folded_memory() -> None:
    model = _model(CARTPOLE_NO_VEL, torch.float64)
    policy = model.policy
    obs = np.random.default_rng(0).normal(size=(ENVS, 2)).astype(np.float32)
    actions, state = model.predict(obs, None, np.ones(ENVS, dtype=bool), deterministic=True)
    assert set(policy._folded) == {"actor_memory"}  # predict runs the actor only
    (expected_actions, _, _), expected = _act(
        policy, torch.as_tensor(obs), policy.init_state(ENVS), 0, folded=False
    )
    np.testing.assert_array_equal(actions, expected_actions.numpy())
    got = policy._predict_memory(state, ENVS, torch.device("cpu"))
    pairs = _state_pairs(got, replace(expected, critic=None))
    pairs += [(got.last_action, expected.last_action), (got.actor_lags, expected.actor_lags.detach())]
    for a, b in pairs:
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    with torch.no_grad():
        policy.predict_values(
            torch.as_tensor(obs), policy.init_state(ENVS), torch.ones(ENVS, dtype=torch.bool)
        )
    assert set(policy._folded) == {"actor_memory", "critic_memory"}


def test_refolded_after_training_changes_the_weights() -> None:
    model = _model(CARTPOLE_NO_VEL, torch.float32)
    model.learn(ENVS * 16 * 2)  # rollouts act folded, and each train() changes the weights in between
    # learn() ends with an update after the last rollout; its (fused) optimizer steps drop the folded
    # memories, since a fused step leaves the weights' versions as they were
    assert model.policy.optimizer.defaults["fused"] and model.policy._folded == {}
    model.policy.set_training_mode(False)
    _assert_folded_equals_forward(model.policy, torch.float32)
    folded = dict(model.policy._folded)
    assert set(folded) == {"actor_memory", "critic_memory"} and not any(f.stale for f in folded.values())
    with torch.no_grad():
        model.policy.actor_memory.backbone.ln_f.bias.add_(0.5)
    assert folded["actor_memory"].stale and not folded["critic_memory"].stale
    _assert_folded_equals_forward(model.policy, torch.float32)
    assert model.policy._folded["actor_memory"] is not folded["actor_memory"]
    assert model.policy._folded["critic_memory"] is folded["critic_memory"]


def test_training_mode_and_sequences_run_the_module_forward() -> None:
    policy = _model(CARTPOLE_NO_VEL, torch.float32).policy
    state = policy.init_state(2)
    with torch.no_grad():
        taken = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)  # the actions and rewards of 3 steps
        policy._latents(torch.zeros(2, 3, 2), state, taken=taken)  # several tokens: the parallel forward
        policy.set_training_mode(True)
        policy(torch.zeros(2, 2), state, torch.ones(2, dtype=torch.bool))  # training mode (dropout)
    assert policy._folded == {}


def test_episodes_restart_from_the_current_sinks() -> None:
    """The start state is kept between episode starts, but follows the sinks when they change: by a
    (fused) optimizer step, which bumps no version counter, or in place by hand."""
    model = _model(CARTPOLE_NO_VEL, torch.float32)
    policy, rows = model.policy, torch.ones(ENVS, dtype=torch.bool)

    def restarted_sinks() -> torch.Tensor:
        return policy._restart(policy.init_state(ENVS), rows).actor.m[0, 0]

    sinks = policy.actor_memory.backbone.blocks[0].mixer.sink
    torch.testing.assert_close(restarted_sinks(), sinks.detach())
    model.learn(ENVS * 16)
    torch.testing.assert_close(restarted_sinks(), sinks.detach())
    with torch.no_grad():
        sinks.add_(1.0)
    torch.testing.assert_close(restarted_sinks(), sinks.detach())
