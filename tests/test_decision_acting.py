"""The folded acting path (the default) equals the eager one and the parallel forward, for both
backbones and both ways of acting, with envs starting new episodes at different steps; bad input to
`act` gets one clear error naming the argument."""

import copy
import pickle

import numpy as np
import pytest
import torch
from test_decision_model import ACT, OBS, TARGET  # (tests/ is on sys.path)
from test_decision_model import make_model as base_model

from aaren_rl import AarenBackbone, TransformerBackbone
from aaren_rl.folded import FoldedAarenBackbone, FoldedTransformerBackbone
from aaren_rl.ops import fused
from agents.decision.agent import DecisionAgent
from agents.decision.model import DecisionModel

K = 4
# Per env row: the lengths of its consecutive episodes (rows start episodes at different steps).
SCHEDULE = [[30], [9, 21], [1, 12, 17], [1, 1, 28]]
STEPS = 30
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(backbone: str, dtype: torch.dtype) -> DecisionModel:
    """backbone "aaren+slopes": Aaren with step slopes (their bias grows past the table's last row)."""
    name, _, slopes = backbone.partition("+")
    return base_model(
        name, K, dtype=dtype, max_timestep=20, step_slopes=bool(slopes)
    )  # episodes of 30 clamp t >= 19


def drive(agent: DecisionAgent) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Act step by step on synthetic observations and rewards following SCHEDULE."""
    rng = np.random.default_rng(1)
    n = len(SCHEDULE)
    starts = np.zeros((STEPS, n), dtype=bool)
    for row, lengths in enumerate(SCHEDULE):
        starts[np.cumsum([0, *lengths[:-1]]), row] = True
    obs, rewards = rng.normal(size=(STEPS, n, OBS)), rng.normal(size=(STEPS, n))
    actions, state = np.zeros((STEPS, n, ACT)), None
    for t in range(STEPS):
        actions[t], state = agent.act(obs[t], state, starts[t], rewards[t - 1] if t else None)
    return starts, obs, rewards, actions


def parallel_actions(model: DecisionModel, starts, obs, rewards, actions, window: int | None) -> np.ndarray:
    """What the parallel forward predicts at every step of every recorded episode (over the last
    `window` steps, or the whole episode so far when None)."""
    expected = np.zeros_like(actions)
    dtype = model.state_mean.dtype
    for row, lengths in enumerate(SCHEDULE):
        for begin, length in zip(np.cumsum([0, *lengths[:-1]]), lengths, strict=True):
            s = slice(begin, begin + length)
            rtg = TARGET - np.concatenate([[0.0], np.cumsum(rewards[s, row])[:-1]])
            seq = [rtg, obs[s, row], actions[s, row], np.arange(length)]
            for i in range(length):
                first = 0 if window is None else max(0, i - window + 1)
                r, o, a, ts = (torch.as_tensor(x[first : i + 1])[None] for x in seq)
                with torch.no_grad():
                    unit, _ = model(r.to(dtype), o.to(dtype), a.to(dtype), ts)
                expected[begin + i, row] = model.to_env_actions(unit)[0, -1].numpy()
    return expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "backbone,acting",
    [
        ("aaren", "recurrent"),
        ("aaren", "window"),
        ("aaren+slopes", "recurrent"),
        ("aaren+slopes", "window"),
        ("transformer", "window"),
        ("transformer", "recurrent"),
    ],
)
def test_folded_acting_equals_eager_and_parallel_forward(backbone, acting, dtype):
    model = make_model(backbone, dtype)
    starts, obs, rewards, folded = drive(DecisionAgent(model, TARGET, acting=acting))
    _, _, _, eager = drive(DecisionAgent(model, TARGET, acting=acting, eager=True))
    assert folded.std() > 0.05  # not a degenerate constant policy
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(folded, eager, rtol=0, atol=tol)
    window = K if acting == "window" else None
    expected = parallel_actions(model, starts, obs, rewards, folded, window)
    np.testing.assert_allclose(folded, expected, rtol=0, atol=tol)


def test_folded_agent_follows_weight_changes():
    """An agent built before the weights change acts with the new weights (it folds them again)."""
    model = make_model("aaren", torch.float64)
    agent = DecisionAgent(model, TARGET)
    obs = np.ones((2, OBS))
    before, _ = agent.act(obs)
    with torch.no_grad():
        model.backbone.blocks[0].ffn.net[0].weight.mul_(3)
        model.state_mean.add_(1)
    after, _ = agent.act(obs)
    reference, _ = DecisionAgent(model, TARGET, eager=True).act(obs)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, reference, rtol=0, atol=1e-9)


@pytest.mark.parametrize("heads", [1, 2])
def test_folded_aaren_equals_backbone_with_resets_inside_the_call(heads):
    torch.manual_seed(0)
    backbone = AarenBackbone(16, 3, heads).double().eval()
    folded = FoldedAarenBackbone(backbone)
    _, state = backbone(torch.randn(3, 5, 16, dtype=torch.float64))
    x = torch.randn(3, 4, 16, dtype=torch.float64)
    resets = torch.tensor([[False] * 4, [False, False, True, False], [True, False, False, True]])
    y, new_state = folded(x, state, folded.score_mask(resets))
    probe = torch.randn(1, 1, 16, dtype=torch.float64)
    for row in range(3):  # the backbone, token by token, emptying the state where a token resets
        mine = type(state)(*(t[:, row : row + 1] for t in (new_state.m, new_state.u, new_state.w)))
        s = type(state)(*(t[:, row : row + 1] for t in (state.m, state.u, state.w)))
        for j in range(4):
            if resets[row, j]:
                s = s.reset(torch.tensor([True]))
            out, s = backbone(x[row : row + 1, j : j + 1], s)
        torch.testing.assert_close(y[row], out[0, -1], rtol=0, atol=1e-12)
        # the states continue alike (they may differ by the stabiliser's scale)
        torch.testing.assert_close(backbone(probe, mine)[0], backbone(probe, s)[0], rtol=0, atol=1e-12)


def test_folded_transformer_reads_each_rows_position():
    torch.manual_seed(0)
    backbone = TransformerBackbone(16, 2, 2).double().eval()
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    read = torch.tensor([6, 2, 0])
    full, _ = backbone(x)
    torch.testing.assert_close(
        FoldedTransformerBackbone(backbone)(x, read), full[torch.arange(3), read], rtol=0, atol=1e-12
    )


@pytest.fixture(scope="module")
def agent() -> DecisionAgent:
    return DecisionAgent(make_model("aaren", torch.float32), TARGET)


def test_wrong_observation_shape_is_named(agent):
    with pytest.raises(ValueError, match=r"`observations` must have shape \[num_envs, 5\], got \[2, 4\]"):
        agent.act(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="`observations` must have shape"):
        agent.act(np.zeros(OBS))


def test_observations_that_are_not_numbers_are_named(agent):
    with pytest.raises(ValueError, match="`observations` must be an array of float32 numbers"):
        agent.act(np.full((2, OBS), "a"))
    with pytest.raises(ValueError, match="`observations` must be an array of float32 numbers"):
        agent.act([[0.0] * OBS, [0.0]])


def test_state_from_another_batch_size_is_named(agent):
    _, state = agent.act(np.zeros((3, OBS)))
    with pytest.raises(ValueError, match="`state` holds 3 envs but `observations` has 2 rows"):
        agent.act(np.zeros((2, OBS)), state)


def test_initial_state_is_the_deprecated_name_of_init_state(agent):
    with pytest.warns(DeprecationWarning, match="use DecisionAgent.init_state"):
        old = agent.initial_state(2)
    new = agent.init_state(2)
    for got, want in ((old.returns_to_go, new.returns_to_go), (old.memory.m, new.memory.m)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_state_from_an_agent_acting_otherwise_is_named(agent):
    _, state = DecisionAgent(agent.model, TARGET, acting="window").act(np.zeros((2, OBS)))
    with pytest.raises(ValueError, match="`state` must be an AgentState returned by this agent"):
        agent.act(np.zeros((2, OBS)), state)


@pytest.mark.parametrize(
    "backbone, eager, fused_off",
    [("aaren", False, False), ("aaren", False, True), ("aaren", True, False), ("transformer", False, False)],
)
def test_non_finite_inputs_are_named(backbone, eager, fused_off, monkeypatch):
    """Named by the fused step's check, the Python one (no fused module) and the eager path alike."""
    if fused_off:
        monkeypatch.setattr(fused, "fused_module", lambda: None)
    agent = DecisionAgent(make_model(backbone, torch.float32), TARGET, eager=eager)
    obs = np.zeros((2, OBS))
    obs[1, 2] = np.nan
    with pytest.raises(
        ValueError, match=r"`observations` holds non-finite values \(NaN or inf\) in rows \[1\]"
    ):
        agent.act(obs)
    _, state = agent.act(np.zeros((2, OBS)))
    with pytest.raises(ValueError, match=r"`rewards` holds non-finite values \(NaN or inf\) in rows \[1\]"):
        agent.act(np.zeros((2, OBS)), state, rewards=np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match=r"`episode_start` must have shape \[2\]"):
        agent.act(np.zeros((2, OBS)), state, episode_start=np.array([True]))


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_an_agent_pickles_and_deep_copies_and_acts_the_same(backbone):
    """The fold's C++ objects do not pickle: the agent leaves them out and folds again on load."""
    agent = DecisionAgent(make_model(backbone, torch.float32), TARGET)
    obs = np.random.default_rng(0).standard_normal((4, 2, OBS))
    for copy_of in (copy.deepcopy, lambda a: pickle.loads(pickle.dumps(a))):
        other, state, other_state = copy_of(agent), None, None
        for step in obs:
            actions, state = agent.act(step, state)
            other_actions, other_state = other.act(step, other_state)
            np.testing.assert_array_equal(actions, other_actions)
