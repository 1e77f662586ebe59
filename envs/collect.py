"""Dataset collection: roll out behaviour policies into D4RL-format files.

A behaviour policy is ``"random"`` (uniform actions), a Stable-Baselines3 / sb3-contrib model (a
``model.zip``, or a folder holding one, optionally with the ``vecnormalize.pkl`` it was trained
with), or any object with SB3's ``predict(obs, state, episode_start, deterministic)``.

Recipes follow D4RL's: random, medium (a policy at about 1/3 of expert return), expert,
medium-expert (medium then expert data in one file) and mixed (several policies of rising quality,
sampled stochastically: a stand-in for medium-replay, whose replay buffers are not available). The
default policies are the RL Zoo models in ``$AAREN_RL_EXPERTS`` (else ``<repo>/../shared/experts``);
see :data:`TASK_POLICIES`.

Security note: SB3 zips and ``vecnormalize.pkl`` files are unpickled on load, which can run code.
Load only files you trust, such as the known behaviour policies above.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from envs.datasets import d4rl_dataset_dir, d4rl_filename, episode_return_stats, save_dataset
from envs.make import MujocoStateInfo, canonical_env_id, d4rl_task
from envs.scores import reference_scores
from envs.vector import VecRollout, make_vec_env

#: Roles each recipe draws from, in file order; num_steps is split evenly between them.
RECIPES: dict[str, tuple[str, ...]] = {
    "random": ("random",),
    "medium": ("medium",),
    "expert": ("expert",),
    "medium-expert": ("medium", "expert"),
    "mixed": ("random", "weak", "medium"),
}
#: Recipes whose SB3 policies sample actions (deterministic=False) instead of taking the mean.
STOCHASTIC_RECIPES = frozenset({"mixed"})

#: Default policy folder per task and role. Returns on the v5 tasks (experts README, deterministic):
#: hopper a2c 754 / sac 1083 / tqc 3650; halfcheetah a2c 3037 / ars 4937 / tqc 12087;
#: walker2d a2c 536 / ars 983 / tqc 4501. "medium" is the one nearest 1/3 of the expert's return.
TASK_POLICIES: dict[str, dict[str, str]] = {
    "hopper": {"weak": "a2c-Hopper", "medium": "sac-Hopper", "expert": "tqc-Hopper"},
    "halfcheetah": {"weak": "a2c-HalfCheetah", "medium": "ars-HalfCheetah", "expert": "tqc-HalfCheetah"},
    "walker2d": {"weak": "a2c-Walker2d", "medium": "ars-Walker2d", "expert": "tqc-Walker2d"},
}

#: Seed offset between the parts of a recipe (env i of part j is seeded seed + j * offset + i).
PART_SEED_OFFSET = 10_000


def experts_dir() -> Path:
    """Folder of the behaviour policies: ``$AAREN_RL_EXPERTS``, else ``<repo>/../shared/experts``."""
    env = os.environ.get("AAREN_RL_EXPERTS")
    return (
        Path(env).expanduser() if env else Path(__file__).resolve().parents[1].parent / "shared" / "experts"
    )


# --------------------------------------------------------------------------------------------------
# Behaviour policies


class RandomPolicy:
    """Uniform actions in a Box action space, from its own seeded generator."""

    name = "random"
    algo = "random"

    def __init__(self, action_space: gym.spaces.Box, seed: int | list[int] | None = None):
        self.low, self.high = action_space.low, action_space.high
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, episode_steps: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, size=(len(obs), *self.low.shape)).astype(self.low.dtype)


class PredictPolicy:
    """Any SB3-style ``predict`` policy (SB3 models, agents' policies), with its recurrent state kept.

    ``obs_normalizer`` (a VecNormalize loaded for prediction) and ``time_feature_max_steps`` (append
    sb3-contrib's TimeFeatureWrapper feature ``1 - t / max_steps``) rebuild the observation the model
    was trained on from the raw one; the raw observation is what gets recorded.
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        algo: str,
        deterministic: bool = True,
        obs_normalizer: Any = None,
        time_feature_max_steps: int | None = None,
    ):
        self.model, self.name, self.algo = model, name, algo
        self.deterministic = deterministic
        self.obs_normalizer = obs_normalizer
        self.time_feature_max_steps = time_feature_max_steps
        self.state: Any = None

    def act(self, obs: np.ndarray, episode_steps: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        x = obs
        if self.time_feature_max_steps:
            feature = 1.0 - episode_steps / self.time_feature_max_steps
            x = np.concatenate([x, feature[:, None].astype(x.dtype)], axis=1)
        if self.obs_normalizer is not None:
            x = self.obs_normalizer.normalize_obs(x)
        actions, self.state = self.model.predict(
            x, state=self.state, episode_start=episode_start, deterministic=self.deterministic
        )
        return np.asarray(actions)


@contextlib.contextmanager
def _gym_alias() -> Iterator[None]:
    """Let pickles of the old ``gym`` package resolve to gymnasium, then restore ``sys.modules``."""
    names = {"gym": gym, "gym.spaces": gym.spaces, "gym.spaces.box": gym.spaces.box}
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(names)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def detect_algo(model_zip: str | os.PathLike) -> str:
    """The SB3 algorithm of a saved model, from its ``data`` JSON (policy class module and saved keys)."""
    with zipfile.ZipFile(model_zip) as zf:
        data = json.loads(zf.read("data"))
    module = data.get("policy_class", {}).get("__module__", "")
    for key, algo in (("tqc", "tqc"), ("ars", "ars"), (".sac.", "sac"), (".td3.", "td3"), (".dqn.", "dqn")):
        if key in module:
            return algo
    if "recurrent" in module:
        raise ValueError(f"{model_zip}: recurrent policies are not supported for collection.")
    if "cg_damping" in data:
        return "trpo"
    if "clip_range" in data:
        return "ppo"
    if "gae_lambda" in data:
        return "a2c"
    raise ValueError(f"{model_zip}: cannot tell the algorithm (policy module {module!r}); pass algo=.")


def _algo_class(algo: str) -> type:
    import sb3_contrib
    import stable_baselines3 as sb3

    classes = {
        "a2c": sb3.A2C,
        "ppo": sb3.PPO,
        "sac": sb3.SAC,
        "td3": sb3.TD3,
        "ddpg": sb3.DDPG,
        "dqn": sb3.DQN,
        "tqc": sb3_contrib.TQC,
        "trpo": sb3_contrib.TRPO,
        "ars": sb3_contrib.ARS,
    }
    if algo.lower() not in classes:
        raise ValueError(f"Unknown algorithm {algo!r}; known: {sorted(classes)}")
    return classes[algo.lower()]


def resolve_policy_path(spec: str | os.PathLike, experts: Path | None = None) -> Path:
    """``model.zip`` for a zip path, a folder holding one, or a folder name in the experts folder."""
    path = Path(spec).expanduser()
    if not path.exists() and not path.is_absolute():
        path = (experts or experts_dir()) / path
    if path.is_dir():
        path = path / "model.zip"
    if not path.is_file():
        raise FileNotFoundError(
            f"Behaviour policy {str(spec)!r} not found (looked for {path}). Give an SB3 model zip, a folder "
            f"holding model.zip, or a folder name in {experts or experts_dir()} (set $AAREN_RL_EXPERTS)."
        )
    return path


def load_sb3_policy(
    spec: str | os.PathLike,
    observation_space: gym.spaces.Box,
    action_space: gym.spaces.Space,
    *,
    algo: str | None = None,
    deterministic: bool = True,
    time_feature: bool | None = None,
    experts: Path | None = None,
) -> PredictPolicy:
    """Load an SB3 behaviour policy for the given env spaces (the experts README recipe).

    Old zips pickle ``gym`` spaces and schedules: the env's spaces and dummy schedules replace
    them. A ``vecnormalize.pkl`` beside the zip is unpickled (with ``gym`` aliased to gymnasium)
    and normalises what the model sees. ``time_feature`` (default: detected from the zoo's
    ``config.yml`` or the normaliser's size) appends TimeFeatureWrapper's feature (max_steps 1000).
    Unpickling runs code from the files: use trusted files only.
    """
    zip_path = resolve_policy_path(spec, experts)
    folder = zip_path.parent
    algo = algo or detect_algo(zip_path)
    normalizer = None
    if (folder / "vecnormalize.pkl").is_file():
        with _gym_alias(), open(folder / "vecnormalize.pkl", "rb") as f:
            normalizer = pickle.load(f)  # trusted behaviour-policy file only (see module docstring)
    obs_dim = observation_space.shape[0]
    if time_feature is None:
        config = folder / "config.yml"
        time_feature = (config.is_file() and "TimeFeatureWrapper" in config.read_text()) or (
            normalizer is not None and normalizer.obs_rms.mean.shape == (obs_dim + 1,)
        )
    model_obs_dim = obs_dim + int(time_feature)
    if normalizer is not None and normalizer.obs_rms.mean.shape != (model_obs_dim,):
        raise ValueError(
            f"{folder / 'vecnormalize.pkl'} normalises {normalizer.obs_rms.mean.shape[0]}-dim observations but "
            f"the env gives {obs_dim}{' + 1 time feature' if time_feature else ''}: wrong task for this policy?"
        )
    model_space = gym.spaces.Box(-np.inf, np.inf, (model_obs_dim,), np.float32)
    custom_objects = {
        "observation_space": model_space,
        "action_space": action_space,
        "learning_rate": 0.0,
        "lr_schedule": lambda _: 0.0,
        "clip_range": lambda _: 0.0,
        "delta_std_schedule": lambda _: 0.0,
        "exploration_schedule": lambda _: 0.0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old-version notices from SB3's loader
        try:
            model = _algo_class(algo).load(zip_path, device="cpu", custom_objects=custom_objects)
        except RuntimeError as exc:  # torch size mismatch: the policy was trained on another task
            raise ValueError(f"{zip_path} does not fit observations of size {model_obs_dim}: {exc}") from exc
    name = folder.name if zip_path.name == "model.zip" else zip_path.stem
    return PredictPolicy(
        model,
        name=name,
        algo=algo,
        deterministic=deterministic,
        obs_normalizer=normalizer,
        time_feature_max_steps=1000 if time_feature else None,
    )


# --------------------------------------------------------------------------------------------------
# Rolling out


@dataclass
class Rollouts:
    """Transitions of one collection in D4RL layout (env-major: env 0's steps, then env 1's, ...)."""

    arrays: dict[str, np.ndarray]  # observations, actions, rewards, terminals, timeouts, next_observations
    infos: dict[str, np.ndarray]  # qpos, qvel when the env exposes them
    episode_returns: np.ndarray  # episodes that ended by themselves (terminal or the env's time limit)
    episode_lengths: np.ndarray
    num_cut_episodes: int  # episodes cut by the end of collection (marked as timeouts)
    steps_per_second: float
    policy_name: str
    policy_algo: str


def rollout_policy(
    env_name: str,
    policy: str | os.PathLike | Any,
    num_steps: int,
    *,
    num_envs: int = 1,
    mode: Literal["sync", "async"] = "sync",
    seed: int = 0,
    action_noise: float = 0.0,
    deterministic: bool = True,
    algo: str | None = None,
    experts: Path | None = None,
    progress: bool = True,
) -> Rollouts:
    """Roll ``policy`` out for exactly ``num_steps`` transitions in ``num_envs`` vectorised envs.

    Env i is seeded ``seed + i`` and records ``num_steps // num_envs`` (+1 for the first remainder)
    steps; same arguments give identical data. Gaussian ``action_noise`` is a std in units of half
    the action range; noisy actions are clipped to the bounds and recorded as taken. The raw env
    observation is recorded. Each env's last recorded step, if it does not end an episode, is
    marked a timeout: collection cut the episode, as a time limit would (D4RL semantics kept,
    nothing dropped).
    """
    if num_steps < num_envs:
        raise ValueError(f"num_steps ({num_steps}) must be >= num_envs ({num_envs})")
    vec = make_vec_env(env_name, num_envs, mode, seed, wrappers=(MujocoStateInfo,))
    rollout = VecRollout(vec)
    try:
        space = vec.single_action_space
        if isinstance(policy, (str, os.PathLike)) and str(policy) == "random":
            behaviour: Any = RandomPolicy(space, seed=[seed, 1])
        elif isinstance(policy, (str, os.PathLike)):
            behaviour = load_sb3_policy(
                policy,
                vec.single_observation_space,
                space,
                algo=algo,
                deterministic=deterministic,
                experts=experts,
            )
        else:
            behaviour = PredictPolicy(
                policy, name=type(policy).__name__, algo="predict", deterministic=deterministic
            )
        return _record(rollout, behaviour, num_steps, seed, action_noise, progress, env_name)
    finally:
        rollout.close()


def _record(
    rollout: VecRollout,
    policy: Any,
    num_steps: int,
    seed: int,
    action_noise: float,
    progress: bool,
    label: str,
) -> Rollouts:
    import torch

    n = rollout.num_envs
    quotas = np.full(n, num_steps // n) + (np.arange(n) < num_steps % n)
    obs, info = rollout.reset()
    space = rollout.env.single_action_space
    half_range = (space.high - space.low) / 2.0
    noise_rng = np.random.default_rng([seed, 2])
    bufs: dict[str, np.ndarray] = {
        "observations": np.zeros((n, quotas.max(), *obs.shape[1:]), np.float32),
        "next_observations": np.zeros((n, quotas.max(), *obs.shape[1:]), np.float32),
        "actions": np.zeros((n, quotas.max(), *space.shape), np.float32),
        "rewards": np.zeros((n, quotas.max()), np.float32),
        "terminals": np.zeros((n, quotas.max()), bool),
        "timeouts": np.zeros((n, quotas.max()), bool),
    }
    state_keys = [k for k in ("qpos", "qvel") if k in info]
    for k in state_keys:
        bufs[k] = np.zeros((n, quotas.max(), info[k].shape[1]), np.float64)
    counts = np.zeros(n, dtype=np.int64)
    returns: list[float] = []
    lengths: list[int] = []
    bar = tqdm(
        total=num_steps, unit="step", disable=not progress, desc=f"{label} {policy.name}", smoothing=0.05
    )
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One torch thread: fastest for these small batches, and immune to the spin-wait slowdowns
    # (10x measured) of several threads on a busy CPU. Stochastic SB3 policies sample with torch's
    # global RNG: seed it here and restore it afterwards.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            while (counts < quotas).any():
                actions = policy.act(obs, rollout.episode_lengths, rollout.episode_start)
                if action_noise > 0:
                    actions = actions + noise_rng.normal(size=actions.shape) * action_noise * half_range
                    actions = np.clip(actions, space.low, space.high)
                step = rollout.step(actions)
                rec = np.flatnonzero((counts < quotas) & step.valid)
                at = counts[rec]
                row = {
                    "observations": obs,
                    "next_observations": step.next_obs,
                    "actions": actions,
                    "rewards": step.rewards,
                    "terminals": step.terminated,
                    "timeouts": step.truncated,
                }
                row.update({k: info[k] for k in state_keys})
                for key, value in row.items():
                    bufs[key][rec, at] = value[rec]
                counts[rec] += 1
                for ep in rollout.pop_finished():
                    if ep.env_index in rec:  # its last step was recorded: a complete episode in the file
                        returns.append(ep.episode_return)
                        lengths.append(ep.length)
                        bar.set_postfix(
                            episodes=len(returns),
                            last_return=f"{returns[-1]:.0f}",
                            mean_return=f"{sum(returns) / len(returns):.0f}",
                            refresh=False,
                        )
                obs, info = step.obs, step.infos
                bar.update(len(rec))
    finally:
        torch.set_num_threads(threads)
        bar.close()
    elapsed = time.perf_counter() - start
    last = np.arange(n), quotas - 1
    cut = ~(bufs["terminals"][last] | bufs["timeouts"][last])
    bufs["timeouts"][last] |= cut
    flat = {k: np.concatenate([v[i, : quotas[i]] for i in range(n)]) for k, v in bufs.items()}
    infos = {k: flat.pop(k) for k in state_keys}
    return Rollouts(
        flat,
        infos,
        np.array(returns),
        np.array(lengths, dtype=np.int64),
        int(cut.sum()),
        num_steps / elapsed,
        policy.name,
        policy.algo,
    )


# --------------------------------------------------------------------------------------------------
# Files


@dataclass
class CollectResult:
    """What a collection wrote: the file, its metadata, and the behaviour policies' episode returns."""

    path: Path
    metadata: dict[str, Any]
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    steps_per_second: float


def _write(path: Path, parts: list[Rollouts], metadata: dict[str, Any], overwrite: bool) -> CollectResult:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    arrays = {k: np.concatenate([p.arrays[k] for p in parts]) for k in parts[0].arrays}
    infos = {k: np.concatenate([p.infos[k] for p in parts]) for k in parts[0].infos}
    returns = np.concatenate([p.episode_returns for p in parts])
    lengths = np.concatenate([p.episode_lengths for p in parts])
    metadata = {
        **metadata,
        "behavior_policy": "+".join(p.policy_name for p in parts),
        "behavior_algo": "+".join(p.policy_algo for p in parts),
        "part_steps": "+".join(str(len(p.arrays["rewards"])) for p in parts),  # aligned with behavior_policy
        "num_cut_episodes": sum(p.num_cut_episodes for p in parts),
        "collector": "aaren-rl envs.collect",
        **episode_return_stats(arrays["rewards"], arrays["terminals"], arrays["timeouts"]),
    }
    next_obs = arrays.pop("next_observations")
    save_dataset(path, **arrays, next_observations=next_obs, infos=infos, metadata=metadata)
    sps = float(len(arrays["rewards"]) / sum(len(p.arrays["rewards"]) / p.steps_per_second for p in parts))
    return CollectResult(path, metadata, returns, lengths, sps)


def collect_dataset(
    env_name: str,
    policy: str | os.PathLike | Any,
    path: str | os.PathLike,
    num_steps: int = 1_000_000,
    *,
    num_envs: int = 1,
    mode: Literal["sync", "async"] = "sync",
    seed: int = 0,
    action_noise: float = 0.0,
    deterministic: bool = True,
    algo: str | None = None,
    experts: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> CollectResult:
    """Roll one behaviour policy out in ``env_name`` and write a D4RL-format file at ``path``.

    ``policy``: ``"random"``, an SB3 zip / folder / experts-folder name (e.g. ``"tqc-Hopper"``), or an
    object with SB3's ``predict``. See :func:`rollout_policy` for seeding, noise and the last steps.
    """
    part = rollout_policy(
        env_name,
        policy,
        num_steps,
        num_envs=num_envs,
        mode=mode,
        seed=seed,
        action_noise=action_noise,
        deterministic=deterministic,
        algo=algo,
        experts=experts,
        progress=progress,
    )
    metadata = _base_metadata(env_name, seed, num_envs, action_noise)
    metadata["deterministic"] = deterministic
    return _write(Path(path), [part], metadata, overwrite)


def parse_recipe_id(dataset_id: str) -> tuple[str, str]:
    """``"walker2d-medium-expert-v2"`` -> ``("walker2d", "medium-expert")``."""
    stem = dataset_id.strip().lower()
    parts = stem.split("-")
    if parts and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        parts = parts[:-1]
    task, recipe = parts[0], "-".join(parts[1:])
    if d4rl_task(task) != task or recipe not in RECIPES:
        raise ValueError(
            f"{dataset_id!r} is not '<task>-<recipe>[-vK]' with task in {sorted(TASK_POLICIES) + ['ant']} "
            f"and recipe in {sorted(RECIPES)}."
        )
    return task, recipe


def collect_recipe(
    dataset_id: str,
    path: str | os.PathLike | None = None,
    num_steps: int = 1_000_000,
    *,
    policies: Mapping[str, str | os.PathLike] | None = None,
    num_envs: int = 1,
    mode: Literal["sync", "async"] = "sync",
    seed: int = 0,
    action_noise: float = 0.0,
    experts: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> CollectResult:
    """Build a D4RL-style dataset by recipe, e.g. ``collect_recipe("hopper-medium-v2")``.

    Writes to ``path``, default the D4RL location (``d4rl_dataset_dir()/hopper_medium-v2.hdf5``) so
    ``load_dataset("hopper-medium-v2")`` finds it; an existing file is kept unless ``overwrite``.
    ``num_steps`` is split evenly over the recipe's parts (medium-expert: half medium, half expert).
    ``policies`` maps roles ("weak", "medium", "expert") to other SB3 zips or folders.
    """
    task, recipe = parse_recipe_id(dataset_id)
    table = {**TASK_POLICIES.get(task, {}), **(policies or {})}
    roles = RECIPES[recipe]
    missing = [r for r in roles if r != "random" and r not in table]
    if missing:
        raise ValueError(
            f"No {missing[0]!r} policy for task {task!r}: pass policies={{{missing[0]!r}: 'path/to/model.zip'}} "
            f"(CLI: --policy {missing[0]}=path/to/model.zip)."
        )
    path = Path(path) if path is not None else d4rl_dataset_dir() / d4rl_filename(dataset_id)
    if path.exists() and not overwrite:  # fail before minutes of collection, not after
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    deterministic = recipe not in STOCHASTIC_RECIPES
    shares = [num_steps // len(roles) + (j < num_steps % len(roles)) for j in range(len(roles))]
    parts = [
        rollout_policy(
            task,
            "random" if role == "random" else table[role],
            steps,
            num_envs=num_envs,
            mode=mode,
            seed=seed + j * PART_SEED_OFFSET,
            action_noise=action_noise,
            deterministic=deterministic,
            experts=experts,
            progress=progress,
        )
        for j, (role, steps) in enumerate(zip(roles, shares, strict=True))
    ]
    metadata = _base_metadata(task, seed, num_envs, action_noise)
    metadata.update({"dataset_id": dataset_id, "recipe": recipe, "deterministic": deterministic})
    return _write(path, parts, metadata, overwrite)


def _base_metadata(env_name: str, seed: int, num_envs: int, action_noise: float) -> dict[str, Any]:
    env_id = canonical_env_id(env_name)
    metadata: dict[str, Any] = {
        "env_id": env_id,
        "env_name": env_name,
        "seed": seed,
        "num_envs": num_envs,
        "action_noise": float(action_noise),
    }
    refs = reference_scores(env_id)
    if refs is not None:
        metadata["ref_min_score"], metadata["ref_max_score"] = refs
    return metadata
