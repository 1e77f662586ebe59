"""Decision agents on Discrete and MultiDiscrete actions: the embedding table and categorical head, greedy
and sampled acting (eager, folded and fused alike, equal to the parallel forward), the cross-entropy loss,
integer-action datasets and their errors, checkpoints and policy zips recording the action space, and a
run trained and evaluated on a small discrete env, past its longest training episode."""

import copy
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_decision_training import tiny_config  # (tests/ is on sys.path)

from agents import ConfigError, evaluate_run, train
from agents.common.digests import content_digest
from agents.decision.agent import DecisionAgent
from agents.decision.checkpoint import load_model, model_files
from agents.decision.data import prepare_data
from agents.decision.evaluation import EvaluationError
from agents.decision.model import DecisionModel, DecisionModelConfig, action_loss
from agents.decision.run_dir import latest_checkpoint
from agents.decision.sb3 import DecisionPolicy, RewardToPolicyVecEnv
from envs import DatasetError, load_dataset, save_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS, TARGET, K = 4, 3.5, 4
#: Per env row: the lengths of its consecutive episodes (rows start episodes at different steps); the
#: longest outlasts the models' timestep table (MAX_TIMESTEP), whose last entry the later steps share.
SCHEDULE = [[30], [9, 21], [1, 12, 17], [1, 1, 28]]
STEPS, MAX_TIMESTEP = 30, 20
#: Discrete(3, start=-1), and MultiDiscrete([3, 4], start=[0, 2]) as action_low / action_high.
SPACES = {"Discrete": ([-1.0], [1.0]), "MultiDiscrete": ([0.0, 2.0], [2.0, 5.0])}
ACTINGS = [
    ("aaren", "recurrent"),
    ("aaren", "window"),
    ("transformer", "window"),
    ("transformer", "recurrent"),
]


def make_model(space: str, backbone: str = "aaren", dtype: torch.dtype = torch.float64) -> DecisionModel:
    """A small seeded model in eval mode, its head scaled so that actions depend on the inputs."""
    torch.manual_seed(0)
    low, high = SPACES[space]
    config = DecisionModelConfig(
        obs_dim=OBS,
        act_dim=len(low),
        action_space=space,
        action_low=low,
        action_high=high,
        backbone=backbone,
        embed_dim=32,
        num_layers=2,
        num_heads=2,
        context_steps=K,
        max_timestep=MAX_TIMESTEP,
        return_scale=0.1,
    )
    model = DecisionModel(config).to(dtype).eval()
    model.set_state_stats(torch.randn(OBS), torch.rand(OBS) + 0.5)
    with torch.no_grad():
        model.predict_action.weight.mul_(5)
    return model


def drive(agent: DecisionAgent) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Act step by step on synthetic observations and rewards following SCHEDULE: starts, observations,
    rewards and the actions taken [STEPS, envs, act_dim]."""
    rng = np.random.default_rng(1)
    n = len(SCHEDULE)
    starts = np.zeros((STEPS, n), dtype=bool)
    for row, lengths in enumerate(SCHEDULE):
        starts[np.cumsum([0, *lengths[:-1]]), row] = True
    obs, rewards = rng.normal(size=(STEPS, n, OBS)), rng.normal(size=(STEPS, n))
    actions, state = np.zeros((STEPS, n, agent.model.config.act_dim), dtype=np.int64), None
    for t in range(STEPS):
        taken, state = agent.act(obs[t], state, starts[t], rewards[t - 1] if t else None)
        actions[t] = taken.reshape(n, -1)
    return starts, obs, rewards, actions


def parallel_actions(model: DecisionModel, starts, obs, rewards, actions, window: int | None) -> np.ndarray:
    """The parallel forward's most likely actions at every step of every recorded episode (over the last
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
                    logits, _ = model(r.to(dtype), o.to(dtype), a, ts)
                expected[begin + i, row] = model.to_env_actions(logits)[0, -1].numpy()
    return expected


# ---- acting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("backbone,acting", ACTINGS)
def test_greedy_acting_equals_eager_and_the_parallel_forward(space, backbone, acting):
    """Folded (fused where it builds) and eager acting take the parallel forward's most likely actions,
    also past the timestep table's end (its last entry shared) and across episode starts."""
    model = make_model(space, backbone)
    starts, obs, rewards, folded = drive(DecisionAgent(model, TARGET, acting=acting))
    _, _, _, eager = drive(DecisionAgent(model, TARGET, acting=acting, eager=True))
    low, high = SPACES[space]
    for j in range(len(low)):  # each component takes several of its actions: the head is not constant
        assert (
            len(np.unique(folded[..., j])) > 1
            and low[j] <= folded[..., j].min() <= folded[..., j].max() <= high[j]
        )
    np.testing.assert_array_equal(folded, eager)
    expected = parallel_actions(model, starts, obs, rewards, folded, K if acting == "window" else None)
    np.testing.assert_array_equal(folded, expected)


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_fused_step_equals_the_python_one(space, dtype, backbone, monkeypatch):
    """Step by step from the same state: the fused C++ step (one-hot a_{t-1}, argmax head) takes the same
    actions and leaves the same state as the folded step run from Python."""
    agent = DecisionAgent(make_model(space, backbone, dtype), TARGET)
    if agent._folded.fused is None:
        pytest.skip("the fused agent extension does not build here")
    starts, obs, rewards, _ = drive(agent)
    state, tol = None, {torch.float32: 1e-5, torch.float64: 1e-9}[dtype]
    for t in range(len(obs)):
        args = (obs[t], state, starts[t] if t % 3 else None, rewards[t - 1] if t % 4 else None)
        fused_actions, fused_state = agent.act(*args)
        with monkeypatch.context() as python_only:
            python_only.setattr(agent._folded, "fused", None)
            python_actions, state = agent.act(*args)
        np.testing.assert_array_equal(fused_actions, python_actions)
        mine = [
            fused_state.returns_to_go,
            fused_state.timesteps,
            fused_state.actions,
            *vars(fused_state.memory).values(),
        ]
        want = [state.returns_to_go, state.timesteps, state.actions, *vars(state.memory).values()]
        for got, expected in zip(mine, want, strict=True):
            torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("space,shape", [("Discrete", (5,)), ("MultiDiscrete", (5, 2))])
def test_actions_are_integers_of_the_spaces_shape(space, shape):
    for eager in (False, True):
        actions, state = DecisionAgent(make_model(space), TARGET, eager=eager).act(np.zeros((5, OBS)))
        assert actions.dtype == np.int64 and actions.shape == shape
        assert state.actions.shape == (5, len(SPACES[space][0]))


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("backbone,acting", ACTINGS)
def test_sampled_acting_is_seeded_and_the_same_eager_and_folded(space, backbone, acting):
    model = make_model(space, backbone)
    folded = drive(DecisionAgent(model, TARGET, acting=acting, sample=True, seed=3))[3]
    eager = drive(DecisionAgent(model, TARGET, acting=acting, eager=True, sample=True, seed=3))[3]
    again = drive(DecisionAgent(model, TARGET, acting=acting, sample=True, seed=3))[3]
    other = drive(DecisionAgent(model, TARGET, acting=acting, sample=True, seed=4))[3]
    greedy = drive(DecisionAgent(model, TARGET, acting=acting))[3]
    np.testing.assert_array_equal(folded, eager)
    np.testing.assert_array_equal(folded, again)
    assert (folded != other).any() and (folded != greedy).any()


def test_sampled_actions_follow_the_heads_softmax():
    """Many envs at one observation: each component's action frequencies are its softmax's probabilities."""
    model, n = make_model("MultiDiscrete"), 20000
    with torch.no_grad():
        model.predict_action.weight.mul_(0.1)  # no action near-certain
    obs = np.tile(np.random.default_rng(0).normal(size=OBS), (n, 1))
    actions, _ = DecisionAgent(model, TARGET, sample=True).act(obs)
    with torch.no_grad():
        logits, _ = model(
            torch.full((1, 1), TARGET, dtype=torch.float64),
            torch.as_tensor(obs[:1, None]),
            torch.zeros(1, 1, 2),
            torch.zeros(1, 1, dtype=torch.long),
        )
    for j, part in enumerate(logits[0, 0].split(model.action_sizes)):
        counts = np.bincount(actions[:, j] - int(SPACES["MultiDiscrete"][0][j]), minlength=len(part))
        np.testing.assert_allclose(counts / n, part.softmax(0).numpy(), atol=0.015)


def test_sampling_a_box_model_is_refused():
    config = DecisionModelConfig(obs_dim=OBS, act_dim=2, embed_dim=8, num_layers=1, max_timestep=4)
    with pytest.raises(ValueError, match="sample=True draws discrete actions, but this model acts on a Box"):
        DecisionAgent(DecisionModel(config), TARGET, sample=True)


def test_a_sampling_agent_deep_copies_with_its_generator():
    agent = DecisionAgent(make_model("Discrete"), TARGET, sample=True)
    twin = copy.deepcopy(agent)
    obs = np.zeros((50, OBS))
    np.testing.assert_array_equal(agent.act(obs)[0], twin.act(obs)[0])


# ---- model and loss -----------------------------------------------------------------------------


def test_the_action_token_sums_each_components_row_of_one_table():
    model = make_model("MultiDiscrete")
    table = model.embed_action.weight
    actions = torch.tensor([[0.0, 2.0], [2.0, 5.0], [1.0, 3.0]])
    rows = torch.tensor([[0, 3], [2, 6], [1, 4]])  # component 1's rows follow component 0's 3
    torch.testing.assert_close(model.action_indices(actions), rows, rtol=0, atol=0)
    want = model.embed_ln(table[rows].sum(1) + model.embed_timestep.weight[0])
    torch.testing.assert_close(model.embed_actions(actions, torch.zeros(3, dtype=torch.long)), want)


@pytest.mark.parametrize("space", SPACES)
def test_the_loss_is_the_masked_mean_cross_entropy(space):
    model = make_model(space).train()
    rng = np.random.default_rng(0)
    low, high = SPACES[space]
    b, t = 3, 7
    mask = torch.as_tensor(rng.random((b, t)) < 0.7)
    actions = torch.as_tensor(
        np.stack([rng.integers(lo, hi + 1, (b, t)) for lo, hi in zip(low, high, strict=True)], -1)
    )
    batch = {
        "returns_to_go": torch.as_tensor(rng.normal(size=(b, t))),
        "observations": torch.as_tensor(rng.normal(size=(b, t, OBS))),
        "actions": torch.where(mask[..., None], actions, 0),  # padding holds 0, even outside a component
        "timesteps": torch.arange(t).expand(b, t),
        "mask": mask,
        "num_real": int(mask.sum()),
    }
    torch.manual_seed(1)
    loss = action_loss(model, batch)
    torch.manual_seed(1)  # the same dropout masks
    logits, _ = model(batch["returns_to_go"], batch["observations"], batch["actions"], batch["timesteps"])
    parts = logits.split(model.action_sizes, -1)
    per_step = sum(
        torch.nn.functional.cross_entropy(
            p[mask].float(), actions[..., j][mask] - int(low[j]), reduction="none"
        )
        for j, p in enumerate(parts)
    ) / len(parts)
    torch.testing.assert_close(loss, per_step.mean(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "fields,match",
    [
        (
            {"action_space": "Discrete", "act_dim": 2, "action_low": [0, 0], "action_high": [1, 1]},
            "act_dim 1",
        ),
        (
            {"action_space": "Discrete", "act_dim": 1, "action_low": [0.5], "action_high": [2]},
            "whole numbers",
        ),
        (
            {"action_space": "MultiDiscrete", "act_dim": 2, "action_low": [0, 3], "action_high": [1, 2]},
            "last >= first",
        ),
        (
            {"action_space": "MultiDiscrete", "act_dim": 2, "action_low": [0], "action_high": [1]},
            "act_dim = 2 entries",
        ),
        ({"action_space": "MultiBinary", "act_dim": 2}, "action_space must be one of"),
    ],
)
def test_a_config_of_no_action_space_is_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        DecisionModel(DecisionModelConfig(obs_dim=OBS, embed_dim=8, num_layers=1, max_timestep=4, **fields))


# ---- checkpoints and policy zips ----------------------------------------------------------------


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_checkpoints_and_policy_zips_record_the_action_space(tmp_path):
    model = make_model("MultiDiscrete").float()
    folder = _write(tmp_path / "checkpoint", model_files(model, 3))
    assert json.loads((folder / "model.json").read_text())["model"]["action_space"] == "MultiDiscrete"
    loaded, _ = load_model(folder)
    assert loaded.config == model.config
    obs = np.random.default_rng(0).normal(size=(6, OBS))
    want, _ = DecisionAgent(model, TARGET).act(obs)
    policy = DecisionPolicy(DecisionAgent(loaded, TARGET))
    zipped = DecisionPolicy.load(policy.save(tmp_path / "policy.zip"))
    assert zipped.agent.model.config.action_space == "MultiDiscrete"
    np.testing.assert_array_equal(zipped.agent.act(obs)[0], want)


def test_a_checkpoint_written_before_the_action_space_field_loads_as_box(tmp_path):
    """A model.json without "action_space", its digest intact, as checkpoints were written before."""
    config = DecisionModelConfig(obs_dim=OBS, act_dim=2, embed_dim=8, num_layers=1, max_timestep=4)
    files = model_files(DecisionModel(config), 5)
    meta = json.loads(files["model.json"])
    del meta["model"]["action_space"], meta["digest"]
    meta["digest"] = content_digest(meta)
    folder = _write(tmp_path / "old", {**files, "model.json": json.dumps(meta).encode()})
    model, step = load_model(folder)
    assert step == 5 and model.config.action_space == "Box" and not model.discrete
    assert DecisionAgent(model, TARGET).act(np.zeros((2, OBS)))[0].dtype == np.float32


# ---- datasets -----------------------------------------------------------------------------------


class Pointer(gym.Env):
    """A small discrete task: the observation names a target action, the reward is 1 where the action (of
    every component) hits it. Episodes end only by the time limit, or with `ends_at` at that step."""

    def __init__(self, multi: bool = False, ends_at: int | None = None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([3, 2]) if multi else gym.spaces.Discrete(3)
        self.multi, self.ends_at, self.t, self.target = multi, ends_at, 0, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.target - 1, self.t / 100], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.target = 0, int(self.np_random.integers(3))
        return self._obs(), {}

    def step(self, action):
        hit = np.all(np.asarray(action).reshape(-1)[:1] == self.target)
        self.t, self.target = self.t + 1, int(self.np_random.integers(3))
        return self._obs(), float(hit), self.ends_at is not None and self.t >= self.ends_at, False, {}


LIMIT = 40
gym.register("Pointer-v0", entry_point=Pointer, max_episode_steps=LIMIT)
gym.register("MultiPointer-v0", entry_point=Pointer, kwargs={"multi": True}, max_episode_steps=LIMIT)
gym.register("PointerNoLimit-v0", entry_point=Pointer, kwargs={"ends_at": 30})


def pointer_data(env_id: str, episodes: int = 24, length: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes of `length` steps (cut short: timeouts) in `env_id`, acting right with probability 0.6."""
    env, rng = gym.make(env_id), np.random.default_rng(seed)
    env.action_space.seed(seed)  # its off-target actions: the same data in every process
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        for t in range(length):
            target = int(round(obs[0])) + 1
            action = env.action_space.sample()
            if rng.random() < 0.6:
                action = np.array([target, action[1]]) if env_id == "MultiPointer-v0" else target
            rows["observations"].append(obs)
            rows["actions"].append(action)
            obs, reward, terminated, _, _ = env.step(action)
            rows["rewards"].append(reward)
            rows["terminals"].append(terminated)
            rows["timeouts"].append(t == length - 1 and not terminated)
    return {key: np.asarray(value) for key, value in rows.items()}


def save_pointer(path: Path, data: dict[str, np.ndarray], env_id: str) -> Path:
    return save_dataset(path, **data, metadata={"env_id": env_id})


@pytest.mark.parametrize("env_id,shape", [("Pointer-v0", (240,)), ("MultiPointer-v0", (240, 2))])
def test_integer_actions_are_stored_as_given_and_loaded_as_rows(tmp_path, env_id, shape):
    import h5py

    data = pointer_data(env_id)
    path = save_pointer(tmp_path / "d.hdf5", data, env_id)
    with h5py.File(path) as f:
        assert f["actions"].shape == shape and np.issubdtype(f["actions"].dtype, np.integer)
    dataset = load_dataset(path, env=env_id)
    assert dataset.actions.dtype == np.int64 and dataset.actions.shape == (240, dataset.act_dim)
    np.testing.assert_array_equal(dataset.actions.reshape(shape), data["actions"])
    batch = dataset.sample_windows(np.random.default_rng(0), 4, 6)
    assert batch.actions.dtype == np.int64


def _bad(data: dict[str, np.ndarray], **changes) -> dict[str, np.ndarray]:
    return {**data, **changes}


@pytest.mark.parametrize(
    "env_id,change,match",
    [
        (
            "Pointer-v0",
            lambda a: a[:, None].astype(np.float32),
            r"'actions' are float32 numbers \(all whole numbers\)",
        ),
        ("Pointer-v0", lambda a: a[:, None] + 0.5, r"the first not a whole number at row 0: \[.*\.5\]"),
        ("Pointer-v0", lambda a: np.where(np.arange(len(a)) == 17, 3, a), r"row 17 holds the action \[3\]"),
        ("Pointer-v0", lambda a: np.stack([a, a], 1), "actions have 2 entries per row but env 'Pointer-v0'"),
        ("MultiPointer-v0", lambda a: a[:, :1], "actions have 1 entries per row .* of 2"),
        (
            "MultiPointer-v0",
            lambda a: np.where(np.arange(len(a))[:, None] == 5, -1, a),
            r"row 5 holds the action \[-1, -1\]",
        ),
        (
            "Hopper-v5",
            lambda a: np.zeros((len(a), 3), np.int64),
            "'actions' are integers but env 'Hopper-v5' has the continuous",
        ),
    ],
)
def test_actions_not_of_the_env_are_one_error_naming_the_file_and_row(tmp_path, env_id, change, match):
    data = pointer_data("MultiPointer-v0" if env_id == "MultiPointer-v0" else "Pointer-v0")
    if env_id == "Hopper-v5":
        data["observations"] = np.zeros((len(data["rewards"]), 11), np.float32)
    path = save_pointer(tmp_path / "bad.hdf5", _bad(data, actions=change(data["actions"])), env_id)
    with pytest.raises(DatasetError, match=match) as error:
        load_dataset(path, env=env_id)
    assert str(path) in str(error.value) and "Fix:" in str(error.value)
    cfg = tiny_config(path, tmp_path, f"data.env={env_id}")
    with pytest.raises(
        ConfigError, match=f"data.dataset = .*bad.hdf5.* does not fit data.env = '{env_id}': .*{match}"
    ):
        prepare_data(cfg)


def test_float_actions_one_per_row_are_named_with_the_integer_layout(tmp_path):
    """A file of another writer, with float actions of shape (N,)."""
    import h5py

    data = pointer_data("Pointer-v0")
    with h5py.File(tmp_path / "f.hdf5", "w") as f:
        for key, value in _bad(data, actions=data["actions"].astype(np.float32)).items():
            f[key] = value
    with pytest.raises(
        DatasetError, match=r"f.hdf5: 'actions' must be 2-D .* got shape \(240,\); integer \(discrete\)"
    ):
        load_dataset(tmp_path / "f.hdf5")


def test_an_env_of_another_action_space_is_named(tmp_path):
    path = save_pointer(tmp_path / "d.hdf5", pointer_data("Pointer-v0"), "Pointer-v0")
    env = Pointer()
    env.action_space = gym.spaces.MultiBinary(3)
    with pytest.raises(
        DatasetError,
        match="datasets hold actions of Box, Discrete and one-dimensional MultiDiscrete spaces only",
    ):
        load_dataset(path, env=env)


# ---- training, evaluation, SB3, the timestep table ----------------------------------------------


@pytest.mark.parametrize("env_id,backbone", [("Pointer-v0", "aaren"), ("MultiPointer-v0", "transformer")])
def test_a_run_trains_and_evaluates_past_its_longest_training_episode(tmp_path, env_id, backbone):
    """Episodes of 10 steps train; evaluation runs the env's 40 (inside the timestep table, which covers
    the time limit); the run's policy acts in SB3's evaluate_policy with integer actions."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    path = save_pointer(tmp_path / "d.hdf5", pointer_data(env_id), env_id)
    cfg = tiny_config(path, tmp_path, f"model.backbone={backbone}", "train.steps=60", "eval.targets=[30]")
    assert prepare_data(cfg).max_timestep == LIMIT
    run = train(cfg, progress=False)
    model, _ = load_model(latest_checkpoint(run))
    assert model.config.action_space == ("Discrete" if env_id == "Pointer-v0" else "MultiDiscrete")
    report = evaluate_run(run, episodes=3, num_envs=2, progress=False)
    assert report["results"][0]["lengths"] == [LIMIT] * 3
    assert report["results"][0]["return_mean"] > LIMIT / 2  # chance is LIMIT / 3: it learned the pointer

    policy = DecisionPolicy.load(run)
    env = RewardToPolicyVecEnv(DummyVecEnv([lambda: Monitor(gym.make(env_id))] * 2))
    env.seed(0)
    obs = env.reset()
    actions, state = policy.predict(obs, None, np.ones(2, dtype=bool))
    assert actions.dtype == np.int64 and actions.shape == (2, *env.action_space.shape)
    single, _ = policy.predict(obs[0])
    assert single.shape == env.action_space.shape and np.issubdtype(single.dtype, np.integer)
    mean, _ = evaluate_policy(policy, env, n_eval_episodes=2)
    assert mean > LIMIT / 2


def test_without_a_time_limit_acting_past_the_table_shares_its_last_entry(tmp_path):
    """An env with no time limit: the table holds the longest dataset episode (10); evaluation's episodes
    of 30 act past it, their later steps sharing its last entry, as the parallel forward does."""
    path = save_pointer(tmp_path / "d.hdf5", pointer_data("PointerNoLimit-v0"), "PointerNoLimit-v0")
    cfg = tiny_config(path, tmp_path, "train.steps=4", "eval.targets=[30]")
    assert prepare_data(cfg).max_timestep == 10
    report = evaluate_run(train(cfg, progress=False), episodes=2, num_envs=2, progress=False)
    assert report["results"][0]["lengths"] == [30, 30]


def test_a_run_evaluates_in_another_env_of_the_same_spaces(tmp_path):
    """env=: a run trained on Pointer-v0 (episodes of 10, limit 40) acts in PointerNoLimit-v0 (30 steps),
    its report in RUN_DIR/eval-<env>, the run's own eval report untouched; an env of other spaces is
    refused before any episode, naming both spaces."""
    path = save_pointer(tmp_path / "d.hdf5", pointer_data("Pointer-v0"), "Pointer-v0")
    run = train(tiny_config(path, tmp_path, "train.steps=4", "eval.targets=[30]"), progress=False)
    own = (run / "eval" / "eval.json").read_bytes()
    report = evaluate_run(run, episodes=2, num_envs=2, env="PointerNoLimit-v0", progress=False)
    assert report["env"] == "PointerNoLimit-v0" and report["results"][0]["lengths"] == [30, 30]
    assert Path(report["report_path"]) == run / "eval-PointerNoLimit-v0" / "eval.json"
    assert (run / "eval" / "eval.json").read_bytes() == own
    with pytest.raises(
        EvaluationError, match=r"cannot evaluate in MultiPointer-v0: its action_space MultiDiscrete"
    ):
        evaluate_run(run, episodes=2, num_envs=2, env="MultiPointer-v0", progress=False)


def test_a_timestep_table_shorter_than_the_runs_episodes_is_refused(tmp_path):
    path = save_pointer(tmp_path / "d.hdf5", pointer_data("Pointer-v0"), "Pointer-v0")
    with pytest.raises(
        ConfigError,
        match=r"model.max_timestep = 12 is below the longest episode this run can see: 10 steps in the "
        r"dataset, "
        r"40 time limit .* Fix: model.max_timestep=0 \(automatic: 40\), >= 40, or 1 \(no timestep information\)",
    ):
        prepare_data(tiny_config(path, tmp_path, "model.max_timestep=12"))
    assert prepare_data(tiny_config(path, tmp_path, "model.max_timestep=64")).max_timestep == 64
    assert prepare_data(tiny_config(path, tmp_path, "model.max_timestep=1")).max_timestep == 1


@pytest.mark.parametrize("max_timestep,same", [(1, True), (4, False)])
def test_a_one_entry_timestep_table_gives_no_timestep_information(max_timestep, same):
    """max_timestep=1: the same steps at timesteps 0-5 or 100-105 give the same predictions (acting in
    longer episodes than the data changes nothing); a larger table tells them apart."""
    torch.manual_seed(0)
    config = DecisionModelConfig(obs_dim=OBS, act_dim=2, embed_dim=8, num_layers=1, max_timestep=max_timestep)
    model = DecisionModel(config).eval()
    returns, obs, actions = torch.randn(1, 6), torch.randn(1, 6, OBS), torch.rand(1, 6, 2) * 2 - 1
    early = torch.arange(6)[None]
    outputs = [model(returns, obs, actions, times)[0] for times in (early, early + 100)]
    assert torch.equal(*outputs) == same
