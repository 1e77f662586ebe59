"""Acting is exact: the recurrent (Aaren) and window (Transformer) acting paths equal the parallel forward."""

import numpy as np
import pytest
import torch

from agents.decision.agent import DecisionAgent
from agents.decision.model import DecisionModel, DecisionModelConfig

OBS, ACT, TARGET = 5, 3, 7.5
# Per env row: the lengths of its consecutive episodes (rows end episodes at different steps).
SCHEDULE = [[60], [17, 43], [5, 30, 25], [1, 59], [1, 1, 58]]
STEPS = 60

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: 1 thread is fastest


#: Step slopes of the two heads for `make_model(step_slopes=True)`: one favouring early steps, one recent.
SLOPES = (-0.3, 0.2)


def make_model(
    backbone: str,
    context_steps: int = 20,
    *,
    dtype: torch.dtype = torch.float64,
    max_timestep: int = 40,
    step_slopes: bool = False,
) -> DecisionModel:
    """A small seeded model in eval mode with observation statistics and asymmetric action bounds (and,
    with `step_slopes`, the heads' slopes set to SLOPES)."""
    torch.manual_seed(0)
    config = DecisionModelConfig(
        obs_dim=OBS,
        act_dim=ACT,
        backbone=backbone,
        embed_dim=32,
        num_layers=2,
        num_heads=2,
        context_steps=context_steps,
        max_timestep=max_timestep,  # the default clamps t >= 39 in episodes of 60
        return_scale=0.1,
        action_low=[-2.0, 0.0, -1.0],
        action_high=[1.0, 3.0, 1.0],
        step_slopes=step_slopes,
    )
    model = DecisionModel(config).to(dtype).eval()
    model.set_state_stats(torch.randn(OBS), torch.rand(OBS) + 0.5)
    if step_slopes:
        with torch.no_grad():
            model.step_slope.copy_(torch.tensor(SLOPES))
    return model


def rollout(agent: DecisionAgent) -> dict[str, np.ndarray]:
    """Act step by step on synthetic observations/rewards following SCHEDULE; record everything."""
    rng = np.random.default_rng(1)
    n = len(SCHEDULE)
    starts = np.zeros((STEPS, n), dtype=bool)
    for row, lengths in enumerate(SCHEDULE):
        starts[np.cumsum([0, *lengths[:-1]]), row] = True
    obs = rng.normal(size=(STEPS, n, OBS))
    rewards = rng.normal(size=(STEPS, n))
    actions = np.zeros((STEPS, n, ACT))
    state = None
    for t in range(STEPS):
        prev_r = rewards[t - 1] if t else None
        actions[t], state = agent.act(obs[t], state, episode_start=starts[t], rewards=prev_r)
    return {"starts": starts, "obs": obs, "rewards": rewards, "actions": actions}


def episodes(rec: dict[str, np.ndarray]):
    """Yield (row, slice, returns-to-go, timesteps) for every recorded episode."""
    for row, lengths in enumerate(SCHEDULE):
        begin = 0
        for length in lengths:
            s = slice(begin, begin + length)
            r = rec["rewards"][s, row]
            rtg = TARGET - np.concatenate([[0.0], np.cumsum(r)[:-1]])
            yield row, s, rtg, np.arange(length)
            begin += length


def parallel(model, rtg, obs, act, ts) -> np.ndarray:
    t = lambda a: torch.as_tensor(a)[None]  # noqa: E731
    with torch.no_grad():
        unit, _ = model(t(rtg), t(obs), t(act), t(ts))
    return model.to_env_actions(unit)[0].numpy()


@pytest.mark.parametrize("step_slopes", [False, True])
def test_recurrent_acting_equals_parallel_forward_across_batched_episodes(step_slopes):
    model = make_model("aaren", step_slopes=step_slopes)
    rec = rollout(DecisionAgent(model, TARGET))
    assert rec["actions"].std() > 0.05  # not a degenerate constant policy
    for row, s, rtg, ts in episodes(rec):
        pred = parallel(model, rtg, rec["obs"][s, row], rec["actions"][s, row], ts)
        np.testing.assert_allclose(rec["actions"][s, row], pred, rtol=0, atol=1e-9)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_window_acting_equals_full_forward_on_last_k_steps(k):
    model = make_model("transformer", context_steps=k)
    rec = rollout(DecisionAgent(model, TARGET))
    for row, s, rtg, ts in episodes(rec):
        obs, act = rec["obs"][s, row], rec["actions"][s, row]
        for i in range(len(ts)):
            w = slice(max(0, i - k + 1), i + 1)
            pred = parallel(model, rtg[w], obs[w], act[w], ts[w])[-1]
            np.testing.assert_allclose(act[i], pred, rtol=0, atol=1e-9)


def test_recurrent_state_is_constant_size():
    agent = DecisionAgent(make_model("aaren"), TARGET)
    state = None
    obs = np.zeros((2, OBS))
    sizes = []
    for t in range(50):
        _, state = agent.act(obs, state, episode_start=np.array([t == 0, t == 0]), rewards=np.ones(2))
        sizes.append(state.nbytes)
    assert len(set(sizes)) == 1


def test_transformer_kv_cache_acting_equals_its_full_forward_across_batched_episodes():
    """Recurrent acting with the Transformer backbone carries its KV cache over the whole episode."""
    model = make_model("transformer")
    rec = rollout(DecisionAgent(model, TARGET, acting="recurrent"))
    for row, s, rtg, ts in episodes(rec):
        pred = parallel(model, rtg, rec["obs"][s, row], rec["actions"][s, row], ts)
        np.testing.assert_allclose(rec["actions"][s, row], pred, rtol=0, atol=1e-9)


def test_recurrent_acting_is_exact_on_a_live_vectorised_hopper_rollout():
    """Real Hopper-v5 episodes in 3 vectorised envs, ending at different steps (same-step autoreset)."""
    from envs import VecRollout, make_vec_env

    torch.manual_seed(0)
    config = DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=32, num_layers=2, max_timestep=1000)
    model = DecisionModel(config).double().eval()
    with torch.no_grad():
        model.predict_action.weight.mul_(30)  # saturated, state-dependent actions: the hopper falls soon
    agent = DecisionAgent(model, target_return=500.0)
    rollout = VecRollout(make_vec_env("Hopper-v5", 3, seed=0))
    obs, _ = rollout.reset()
    state, rewards = None, None
    records = [[] for _ in range(3)]  # per env: episodes of (obs, action, reward)
    for _ in range(120):
        starts = rollout.episode_start.copy()
        actions, state = agent.act(obs, state, starts, rewards)
        step = rollout.step(actions)
        for i in range(3):
            if starts[i]:
                records[i].append([])
            records[i][-1].append((obs[i], actions[i], step.rewards[i]))
        obs, rewards = step.obs, step.rewards
    rollout.close()
    ends = [len(ep) for env in records for ep in env[:-1]]
    assert len(set(ends)) > 1  # episodes of different lengths, across and within envs
    for env in records:
        for ep in env:
            o, a, r = (np.array(x) for x in zip(*ep, strict=True))
            rtg = 500.0 - np.concatenate([[0.0], np.cumsum(r)[:-1]])
            pred = parallel(model, rtg, o, a, np.arange(len(ep)))
            np.testing.assert_allclose(a, pred, rtol=0, atol=1e-9)


def test_step_slopes_see_step_differences_only_and_train_under_bf16_autocast():
    """The slopes' bias, hundreds at step 5,000, is added in float32 under bfloat16 autocast: shifting every
    timestep by 5,000 (no timestep table: max_timestep 1) changes no prediction, and the slopes get a gradient."""
    model = make_model("aaren", dtype=torch.float32, max_timestep=1, step_slopes=True)
    generator = torch.Generator().manual_seed(2)
    rtg, obs, act = (torch.randn(2, 30, *shape, generator=generator) for shape in ((), (OBS,), (ACT,)))
    steps = torch.arange(30).expand(2, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        early, _ = model(rtg, obs, act, steps)
        late, _ = model(rtg, obs, act, steps + 5000)
    torch.testing.assert_close(late.float(), early.float(), rtol=0, atol=1e-2)  # a bfloat16 bias: 0.06 off
    late.float().sum().backward()
    assert model.step_slope.grad is not None and bool(model.step_slope.grad.abs().min() > 0)
