"""The Decision-LSTM baseline (`model.backbone=lstm`): its backbone stepped token by token equals its
whole-sequence forward; acting (recurrent and window, Box and discrete, folded and eager) takes the parallel
forward's actions; it trains with batching=episodes and batching=windows only (any other batching is one
ConfigError), and its runs resume, load, evaluate and act through SB3's predict as the others' do."""

import json

import numpy as np
import pytest
import test_decision_acting as box  # (tests/ is on sys.path)
import test_decision_discrete as discrete
import torch
from safetensors.numpy import load_file
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from test_decision_training import tiny_config

from aaren_rl import AarenBackbone, LSTMBackbone, LSTMState
from agents import ConfigError, DecisionAgent, evaluate_run, load_agent, train
from agents.common.digests import content_digest
from agents.decision.batching import EpisodesBatcher, WindowBatcher, make_batcher
from agents.decision.checkpoint import load_model
from agents.decision.distributed import DistContext
from agents.decision.evaluation import evaluate_agent
from agents.decision.model import DEFAULT_ACTING, DecisionModel, DecisionModelConfig
from agents.decision.run_dir import latest_checkpoint
from agents.decision.sb3 import DecisionPolicy, RewardToPolicyVecEnv
from envs import load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LSTM_BATCHINGS = ["episodes", "windows"]


# ---- the backbone ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 3])
def test_stepping_token_by_token_equals_the_whole_sequence(layers):
    torch.manual_seed(0)
    backbone = LSTMBackbone(16, layers, num_heads=2, ffn_mult=4, dropout=0.1).double().eval()
    x = torch.randn(3, 11, 16, dtype=torch.float64)
    whole, final = backbone(x)
    state, steps = backbone.init_state(3, dtype=torch.float64), []
    for j in range(x.shape[1]):
        y, state = backbone(x[:, j : j + 1], state)
        steps.append(y)
    torch.testing.assert_close(torch.cat(steps, 1), whole, rtol=0, atol=1e-10)
    for got, want in ((state.h, final.h), (state.c, final.c)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # a state passed back in continues the sequence; the zero state is the empty one
    _, first = backbone(x[:, :4])
    rest, _ = backbone(x[:, 4:], first)
    torch.testing.assert_close(rest, whole[:, 4:], rtol=0, atol=1e-10)
    torch.testing.assert_close(backbone(x, backbone.init_state(3, dtype=torch.float64))[0], whole)


def test_state_resets_rows_and_is_constant_in_size():
    torch.manual_seed(0)
    backbone = LSTMBackbone(8, 2).double().eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    _, state = backbone(x)
    reset = state.reset(torch.tensor([False, True, False]))
    probe = torch.randn(3, 4, 8, dtype=torch.float64)
    fresh, _ = backbone(probe[1:2])
    carried, _ = backbone(probe, reset)
    torch.testing.assert_close(carried[1:2], fresh, rtol=0, atol=1e-12)  # row 1 starts again
    torch.testing.assert_close(carried[[0, 2]], backbone(probe, state)[0][[0, 2]], rtol=0, atol=1e-12)
    _, longer = backbone(torch.randn(3, 50, 8, dtype=torch.float64))
    assert longer.nbytes == state.nbytes == 2 * 2 * 3 * 8 * 8  # (h, c) x layers x rows x width x float64
    assert not state.detach().h.requires_grad and state.batch_size == 3


def test_unused_heads_and_ffn_mult_and_bad_input_are_named():
    def size(heads: int, ffn_mult: int) -> int:
        return sum(p.numel() for p in LSTMBackbone(16, 2, heads, ffn_mult).parameters())

    assert size(1, 4) == size(4, 1)
    backbone = LSTMBackbone(16, 2)
    with pytest.raises(ValueError, match=r"must have shape \[B, N, 16\]"):
        backbone(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="`state` must be a LSTMState"):
        backbone(torch.randn(2, 3, 16), AarenBackbone(16, 2).init_state(2))
    with pytest.raises(ValueError, match="`state` holds 2 sequences but `x` has batch size 3"):
        backbone(torch.randn(3, 1, 16), backbone.init_state(2))


def test_the_model_refuses_resets_for_the_lstm():
    model = DecisionModel(DecisionModelConfig(obs_dim=2, act_dim=1, backbone="lstm", embed_dim=8))
    r, t = torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(
        ValueError, match="need the Aaren backbone; the Transformer and the LSTM take neither"
    ):
        model(r, torch.zeros(1, 3, 2), torch.zeros(1, 3, 1), t, resets=torch.zeros(1, 3, dtype=torch.bool))


def test_right_padding_never_reaches_the_real_steps():
    """What batching=episodes and the K-windows rely on: a row's predictions at its real steps are the same
    whatever follows them."""
    model = box.make_model("lstm", torch.float64)
    g = torch.Generator().manual_seed(0)
    r, o, a = (
        torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((2, 12), (2, 12, 5), (2, 12, 3))
    )
    t = torch.arange(12).expand(2, 12)
    with torch.no_grad():
        padded, _ = model(r, o, a, t)
        real, _ = model(r[:, :7], o[:, :7], a[:, :7], t[:, :7])
    torch.testing.assert_close(padded[:, :7], real, rtol=0, atol=1e-12)


# ---- acting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("acting", ["recurrent", "window"])
def test_box_acting_equals_eager_and_the_parallel_forward(acting, dtype):
    model = box.make_model("lstm", dtype)
    agent = DecisionAgent(model, box.TARGET, acting=acting)
    starts, obs, rewards, folded = box.drive(agent)
    _, _, _, eager = box.drive(DecisionAgent(model, box.TARGET, acting=acting, eager=True))
    assert folded.std() > 0.05  # not a degenerate constant policy
    tol = box.TOLERANCE[dtype]
    np.testing.assert_allclose(folded, eager, rtol=0, atol=tol)
    window = box.K if acting == "window" else None
    expected = box.parallel_actions(model, starts, obs, rewards, folded, window)
    np.testing.assert_allclose(folded, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("space", discrete.SPACES)
@pytest.mark.parametrize("acting", ["recurrent", "window"])
def test_discrete_acting_equals_eager_and_the_parallel_forward(space, acting):
    model = discrete.make_model(space, "lstm")
    with torch.no_grad():  # at torch's initial scale the LSTM's logits barely move: one action throughout
        for name, weight in model.backbone.lstm.named_parameters():
            weight.mul_(5 if name.startswith("weight") else 1)
    starts, obs, rewards, folded = discrete.drive(DecisionAgent(model, discrete.TARGET, acting=acting))
    _, _, _, eager = discrete.drive(DecisionAgent(model, discrete.TARGET, acting=acting, eager=True))
    assert all(len(np.unique(folded[..., j])) > 1 for j in range(folded.shape[-1]))
    np.testing.assert_array_equal(folded, eager)
    window = discrete.K if acting == "window" else None
    np.testing.assert_array_equal(
        folded, discrete.parallel_actions(model, starts, obs, rewards, folded, window)
    )


def test_lstm_acts_recurrent_by_default_on_its_state_without_a_fused_step():
    """The fused step is Aaren's and the Transformer's: an LSTM agent folds the embeddings and the head and
    runs its own nn.LSTM, whether or not the fused module builds here."""
    model = box.make_model("lstm", torch.float32)
    agent = DecisionAgent(model, box.TARGET)
    assert agent.acting == DEFAULT_ACTING["lstm"] == "recurrent"
    for acting in ("recurrent", "window"):
        folded = DecisionAgent(model, box.TARGET, acting=acting)._folded
        assert folded.fused is None and folded.aaren is None and folded.transformer is None
    _, state = agent.act(np.zeros((2, box.OBS), np.float32))
    assert isinstance(state.memory, LSTMState) and state.memory.h.shape == (2, 2, 32)


# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "batching", "allowed"),
    [
        ("lstm", "stored", "['episodes', 'windows']"),
        ("lstm", "packed", "['episodes', 'windows']"),
        ("lstm", "prefix", "['episodes', 'windows']"),
        ("aaren", "windows", "['packed', 'episodes', 'stored', 'prefix']"),
    ],
)
def test_a_batching_the_backbone_does_not_train_with_is_one_config_error(
    tiny_dataset, tmp_path, backbone, batching, allowed
):
    message = (
        f"train.batching = '{batching}' is impossible with model.backbone = '{backbone}', which trains with "
        f"train.batching in {allowed} only"
    )
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        tiny_config(tiny_dataset, tmp_path, f"model.backbone={backbone}", f"train.batching={batching}")
    assert "Fix: --set train.batching=" in str(error.value)


@pytest.mark.parametrize(
    ("backbone", "batching", "kind"),
    [
        ("lstm", "episodes", EpisodesBatcher),
        ("lstm", "windows", WindowBatcher),
        ("transformer", "windows", WindowBatcher),
        ("transformer", "episodes", EpisodesBatcher),
    ],
)
def test_each_allowed_batching_makes_its_batcher(tiny_dataset, tmp_path, backbone, batching, kind):
    cfg = tiny_config(tiny_dataset, tmp_path, f"model.backbone={backbone}", f"train.batching={batching}")
    batcher = make_batcher(cfg, load_dataset(str(tiny_dataset)), DistContext())
    assert type(batcher) is kind and getattr(batcher, "entering", None) is None


@pytest.mark.parametrize(
    ("backbone", "batching", "acting"),
    [
        ("aaren", "stored", "recurrent"),
        ("aaren", "packed", "recurrent"),
        ("lstm", "episodes", "recurrent"),
        ("lstm", "windows", "window"),
        ("transformer", "episodes", "recurrent"),
        ("transformer", "windows", "window"),
    ],
)
def test_a_run_acts_as_its_batches_trained_it(tiny_dataset, tmp_path, backbone, batching, acting):
    """Windows from an empty context act on windows; whole episodes and entered windows act recurrently."""
    cfg = tiny_config(
        tiny_dataset, tmp_path, f"model.backbone={backbone}", f"train.batching={batching}", "train.steps=2"
    )
    run = train(cfg, progress=False)
    assert json.loads((latest_checkpoint(run) / "model.json").read_text())["model"]["acting"] == acting
    assert load_agent(run).acting == acting
    assert load_agent(run, acting="recurrent" if acting == "window" else "window").acting != acting


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_a_checkpoint_saved_before_acting_was_recorded_acts_and_resumes_as_before(
    tiny_dataset, tmp_path, backbone
):
    """Its model.json has no "acting": the backbone's default, and --resume accepts the run's config."""
    run = train(
        tiny_config(tiny_dataset, tmp_path, f"model.backbone={backbone}"), progress=False, stop_after=6
    )
    for meta_path in (run / "checkpoints").glob("*/model.json"):
        meta = json.loads(meta_path.read_text())
        del meta["model"]["acting"], meta["digest"]
        meta_path.write_text(json.dumps({**meta, "digest": content_digest(meta)}))
    assert load_agent(run).acting == DEFAULT_ACTING[backbone]
    train(resume=run, progress=False)
    assert json.loads((latest_checkpoint(run) / "model.json").read_text())["step"] == 8


# ---- runs -----------------------------------------------------------------------------------------


def lstm_config(tiny_dataset, tmp_path, batching: str, *extra: str):
    return tiny_config(tiny_dataset, tmp_path, "model.backbone=lstm", f"train.batching={batching}", *extra)


@pytest.mark.parametrize("batching", LSTM_BATCHINGS)
def test_a_killed_and_resumed_run_ends_as_an_uninterrupted_one(tiny_dataset, tmp_path, batching):
    full = train(lstm_config(tiny_dataset, tmp_path, batching, "name=full"), progress=False)
    killed = train(lstm_config(tiny_dataset, tmp_path, batching, "name=killed"), progress=False, stop_after=6)
    assert json.loads((latest_checkpoint(killed) / "model.json").read_text())["step"] == 4
    train(resume=killed, progress=False)
    a, b = (load_file(str(latest_checkpoint(run) / "model.safetensors")) for run in (full, killed))
    assert a.keys() == b.keys() and any(key.startswith("backbone.lstm.") for key in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    losses = [
        r for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r
    ]
    assert [r["step"] for r in losses] == [2, 4, 6, 8] and all(np.isfinite(r["train/loss"]) for r in losses)


def test_a_run_loads_evaluates_and_acts_through_sb3(tiny_dataset, tmp_path):
    """The checkpoint loads back as the model trained (the same weights and actions), the run evaluates
    through evaluate_run, and DecisionPolicy's predict acts as the agent does."""
    run = train(lstm_config(tiny_dataset, tmp_path, "episodes", "train.steps=4"), progress=False)
    model, step = load_model(latest_checkpoint(run))
    assert step == 4 and model.config.backbone == "lstm" and isinstance(model.backbone, LSTMBackbone)
    agent = load_agent(run, target_return=50.0)
    assert agent.acting == "recurrent"
    obs = np.random.default_rng(0).normal(size=(2, 11)).astype(np.float32)
    actions, _ = agent.act(obs)
    reference, _ = DecisionAgent(model, 50.0, eager=True).act(obs)
    np.testing.assert_allclose(actions, reference, rtol=0, atol=1e-6)
    policy = DecisionPolicy.load(run, target_return=50.0)
    np.testing.assert_array_equal(policy.predict(np.c_[obs, np.zeros(2)], None, np.ones(2, bool))[0], actions)
    from_zip = DecisionPolicy.load(policy.save(tmp_path / "lstm.zip"))
    assert from_zip.agent.acting == "recurrent" and from_zip.agent.model.config.backbone == "lstm"
    np.testing.assert_array_equal(
        from_zip.predict(np.c_[obs, np.zeros(2)], None, np.ones(2, bool))[0], actions
    )

    report = evaluate_run(run, episodes=2, num_envs=2, progress=False)
    assert report["backbone"] == "lstm" and report["acting"] == "recurrent"
    assert report["results"][0]["lengths"] and (run / "eval" / "eval.png").is_file()


def test_sb3_evaluate_policy_equals_our_evaluation_loop():
    """An LSTM agent (untrained, fixed weights) in SB3's evaluate_policy over a VecEnv returns what our
    evaluation loop does: the state is carried and emptied at episode starts alike."""
    torch.manual_seed(0)
    config = DecisionModelConfig(obs_dim=11, act_dim=3, backbone="lstm", embed_dim=32, num_layers=2)
    agent = DecisionAgent(DecisionModel(config).eval(), target_return=1000.0)
    ours = evaluate_agent(agent, "Hopper-v5", episodes=4, num_envs=2, seed=7, progress=False)
    env = RewardToPolicyVecEnv(make_vec_env("Hopper-v5", n_envs=2, seed=7))
    returns, lengths = evaluate_policy(
        DecisionPolicy(agent), env, n_eval_episodes=4, return_episode_rewards=True, warn=False
    )
    env.close()
    assert len(set(lengths)) > 1  # episodes end at different steps
    assert sorted(lengths) == sorted(ours.lengths)
    np.testing.assert_allclose(sorted(returns), sorted(ours.returns), rtol=1e-5)


def test_bf16_autocast_training_runs(tiny_dataset, tmp_path):
    run = train(
        lstm_config(tiny_dataset, tmp_path, "windows", "train.bf16=true", "train.steps=2"), progress=False
    )
    assert (run / "curve.png").is_file()


def test_a_discrete_run_learns_and_acts_through_sb3(tmp_path):
    """MultiDiscrete actions through the same path: 10-step episodes train (batching=episodes) to a lower
    loss and above chance, evaluation runs the env's 40 steps, and SB3's evaluate_policy acts with integer
    actions."""
    env_id = "MultiPointer-v0"
    path = discrete.save_pointer(tmp_path / "d.hdf5", discrete.pointer_data(env_id), env_id)
    run = train(
        lstm_config(path, tmp_path, "episodes", "train.steps=60", "eval.targets=[30]"), progress=False
    )
    losses = [
        r["train/loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    report = evaluate_run(run, episodes=3, num_envs=2, progress=False)
    assert report["results"][0]["lengths"] == [discrete.LIMIT] * 3
    assert report["results"][0]["return_mean"] > 1.25 * discrete.LIMIT / 3  # above chance (LIMIT / 3)
    env = RewardToPolicyVecEnv(make_vec_env(env_id, n_envs=2, seed=0))
    policy = DecisionPolicy.load(run)
    actions, _ = policy.predict(env.reset(), None, np.ones(2, dtype=bool))
    assert actions.dtype == np.int64 and actions.shape == (2, 2)
    _, lengths = evaluate_policy(policy, env, n_eval_episodes=2, return_episode_rewards=True)
    env.close()
    assert lengths == [discrete.LIMIT] * 2
