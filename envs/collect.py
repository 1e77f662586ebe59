"""Dataset collection: roll out behaviour policies into D4RL-format files.

A behaviour policy is ``"random"`` (uniform actions), a Stable-Baselines3 / sb3-contrib model (a
``model.zip``, or a folder holding one, optionally with the ``vecnormalize.pkl`` it was trained
with), or any object with SB3's ``predict(obs, state, episode_start, deterministic)``.

Recipes follow D4RL's: random, medium (a policy at about 1/3 of expert return), expert,
medium-expert (medium then expert data in one file) and mixed (several policies of rising quality,
sampled stochastically: a stand-in for medium-replay, whose replay buffers are not available). The
default policies are RL Zoo agents, from ``$AAREN_RL_EXPERTS`` or else downloaded once from the
Hugging Face Hub, and loaded without running code from their files: see :mod:`envs.experts`.

The T-Maze (:mod:`envs.tmaze`) has its own recipes, drawn from a scripted oracle with corridor
detours and a share of wrong turns, over one or several corridor lengths named in the id
("tmaze-20-50-oracle-v0"); its files record each row's corridor length as ``infos/corridor_length``.

POPGym's RepeatFirst, RepeatPrevious and CountRecall (:mod:`envs.popgym`) have recipes too, named like
the T-Maze's with the task and level after "popgym" ("popgym-<task>-<level>-<recipe>[-vK]", e.g.
"popgym-repeatfirst-easy-oracle-v0"; the tasks are ``envs.popgym.OFFLINE_TASKS``): a scripted oracle
that takes, in each episode, random actions at a share drawn from the recipe's levels. Observations
are stored flat (one-hot cards, ``envs.popgym.FlatObservation``), actions as integers.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from envs.d4rl import TASKS, canonical_env_id, fill_metadata, parse_dataset_id
from envs.datasets import d4rl_dataset_dir, d4rl_filename, episode_return_stats, save_dataset
from envs.errors import DatasetError, EnvNameError, SettingError
from envs.experts import PolicyFileError, PredictPolicy, RandomPolicy, load_sb3_policy
from envs.files import torch_threads
from envs.make import MujocoStateInfo
from envs.popgym import POPGYM_TASK, PopgymOracle
from envs.progress import progress_bar
from envs.tmaze import TMAZE_TASK, TMazeName, TMazeOracle, parse_tmaze_name
from envs.vector import VecRollout, VecStep, make_vec_env, split_evenly

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
#: T-Maze recipes: the share of episodes in which the oracle (sampled, with detours) turns to the wrong goal.
#: "oracle" mixes wins and losses, so returns vary and a policy must read its target return.
TMAZE_RECIPES: dict[str, float] = {"oracle": 0.3, "expert": 0.0}
#: POPGym recipes: the shares of random actions an episode of the oracle draws from (uniformly). "oracle"
#: holds expert, mediocre and random episodes, so returns vary and a policy must read its target return.
POPGYM_RECIPES: dict[str, tuple[float, ...]] = {"oracle": (0.0, 0.25, 0.5, 1.0), "expert": (0.0,)}

#: Seed offset between the parts of a recipe (env i of part j is seeded seed + j * offset + i).
PART_SEED_OFFSET = 10_000
#: Seeds a collection takes: what numpy and the envs seed with and the file's metadata holds (int64).
SEEDS = range(2**31)


def check_settings(num_steps: int, num_envs: int, seed: int, action_noise: float, parts: int = 1) -> None:
    """A SettingError naming the first impossible numeric setting of a collection (and its command-line
    flag), before anything runs; `parts`: the recipe's parts, each of which gets every env a step."""
    problems = [
        (num_envs >= 1, f"num_envs (--num-envs) = {num_envs}: give at least 1"),
        (
            num_steps // parts >= num_envs,
            f"num_steps (--steps) = {num_steps} gives fewer steps than num_envs (--num-envs) = {num_envs}"
            + (f" to each of the recipe's {parts} parts" if parts > 1 else "")
            + ": give at least one step per env",
        ),
        (seed in SEEDS, f"seed (--seed) = {seed}: give a whole number from 0 to {SEEDS.stop - 1}"),
        (
            math.isfinite(action_noise) and action_noise >= 0,
            f"action_noise (--noise) = {action_noise}: give a finite std >= 0 (in half action ranges)",
        ),
    ]
    for fine, problem in problems:
        if not fine:
            raise SettingError(problem)


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
    vectorization: Literal["sync", "async"] = "sync",
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
    check_settings(num_steps, num_envs, seed, action_noise)
    vec = make_vec_env(env_name, num_envs, vectorization, seed, wrappers=(MujocoStateInfo,))
    rollout = VecRollout(vec)
    try:
        space = vec.single_action_space
        if action_noise > 0 and not isinstance(space, gym.spaces.Box):
            raise SettingError(
                f"action_noise (--noise) = {action_noise}: Gaussian action noise needs continuous (Box) actions, "
                f"but {env_name} has {space}. Fix: --noise 0"
            )
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


class _Buffers:
    """Per-env row buffers of one collection; env i fills rows up to its quota, then stops recording."""

    def __init__(self, quotas: np.ndarray, obs: np.ndarray, info: Any, action_space: gym.Space):
        n, rows = len(quotas), int(quotas.max())
        discrete = np.issubdtype(action_space.dtype, np.integer)  # Discrete actions stay integers
        self.quotas = quotas
        self.counts = np.zeros(n, dtype=np.int64)
        self.state_keys = [k for k in ("qpos", "qvel") if k in info]
        self.arrays: dict[str, np.ndarray] = {
            "observations": np.zeros((n, rows, *obs.shape[1:]), np.float32),
            "next_observations": np.zeros((n, rows, *obs.shape[1:]), np.float32),
            "actions": np.zeros(
                (n, rows, *action_space.shape), action_space.dtype if discrete else np.float32
            ),
            "rewards": np.zeros((n, rows), np.float32),
            "terminals": np.zeros((n, rows), bool),
            "timeouts": np.zeros((n, rows), bool),
        }
        for k in self.state_keys:
            self.arrays[k] = np.zeros((n, rows, info[k].shape[1]), np.float64)

    def full(self) -> bool:
        return bool((self.counts >= self.quotas).all())

    def add(self, obs: np.ndarray, info: Any, actions: np.ndarray, step: VecStep) -> np.ndarray:
        """Record the step's transitions of envs still under quota; returns those envs' indices."""
        rec = np.flatnonzero((self.counts < self.quotas) & step.valid)
        at = self.counts[rec]
        row = {
            "observations": obs,
            "next_observations": step.next_obs,
            "actions": actions,
            "rewards": step.rewards,
            "terminals": step.terminated,
            "timeouts": step.truncated,
            **{k: info[k] for k in self.state_keys},
        }
        for key, value in row.items():
            self.arrays[key][rec, at] = value[rec]
        self.counts[rec] += 1
        return rec

    def flatten(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
        """(arrays, infos, cut episodes) in env-major order; each env's last step, if it does not end an
        episode, is marked a timeout (collection cut the episode, as a time limit would)."""
        n = len(self.quotas)
        last = np.arange(n), self.quotas - 1
        cut = ~(self.arrays["terminals"][last] | self.arrays["timeouts"][last])
        self.arrays["timeouts"][last] |= cut
        flat = {k: np.concatenate([v[i, : self.quotas[i]] for i in range(n)]) for k, v in self.arrays.items()}
        infos = {k: flat.pop(k) for k in self.state_keys}
        return flat, infos, int(cut.sum())


def _record(
    rollout: VecRollout,
    policy: Any,
    num_steps: int,
    seed: int,
    action_noise: float,
    progress: bool,
    label: str,
) -> Rollouts:
    """Step ``rollout`` with ``policy`` until every env has recorded its share of ``num_steps``."""
    import torch

    obs, info = rollout.reset()
    space = rollout.env.single_action_space
    buffers = _Buffers(split_evenly(num_steps, rollout.num_envs), obs, info, space)
    noise_rng = np.random.default_rng([seed, 2])
    returns: list[float] = []
    lengths: list[int] = []
    bar = progress_bar(
        total=num_steps, unit="step", disable=not progress, desc=f"{label} {policy.name}", smoothing=0.05
    )
    start = time.perf_counter()
    # Stochastic SB3 policies sample with torch's global RNG: seed it here and restore it afterwards.
    try:
        with torch_threads(1), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            while not buffers.full():
                actions = policy.act(obs, rollout.episode_lengths, rollout.episode_start)
                if action_noise > 0:
                    actions = _add_noise(actions, action_noise, space, noise_rng)
                step = rollout.step(actions)
                rec = buffers.add(obs, info, actions, step)
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
        bar.close()
    elapsed = time.perf_counter() - start
    arrays, infos, num_cut = buffers.flatten()
    return Rollouts(
        arrays,
        infos,
        np.array(returns),
        np.array(lengths, dtype=np.int64),
        num_cut,
        num_steps / elapsed,
        policy.name,
        policy.algo,
    )


def _add_noise(actions: np.ndarray, std: float, space: Any, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of ``std`` half action ranges, clipped to the action bounds."""
    half_range = (space.high - space.low) / 2.0
    return np.clip(actions + rng.normal(size=actions.shape) * std * half_range, space.low, space.high)


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


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")


def _write(path: Path, parts: list[Rollouts], metadata: dict[str, Any], overwrite: bool) -> CollectResult:
    _refuse_existing(path, overwrite)
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
    vectorization: Literal["sync", "async"] = "sync",
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
    _refuse_existing(Path(path), overwrite)  # fail before minutes of collection, not after
    part = rollout_policy(
        env_name,
        policy,
        num_steps,
        num_envs=num_envs,
        vectorization=vectorization,
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
    """``"walker2d-medium-expert-v2"`` -> ``("walker2d", "medium-expert")``, ``"tmaze-20-50-oracle-v0"`` ->
    ``("tmaze", "oracle")``, ``"popgym-repeatfirst-easy-oracle-v0"`` -> ``("popgym-repeatfirst-easy",
    "oracle")``: a D4RL id naming a recipe (T-Maze ids name corridor lengths before it, POPGym ids a task
    and level)."""
    try:
        task, recipe, _ = parse_dataset_id(dataset_id)
    except DatasetError:  # not even '<word>-<word>': reported below like any other bad id
        task = recipe = ""
    if task == POPGYM_TASK:
        return _parse_popgym_recipe(dataset_id, recipe)
    if task == TMAZE_TASK:
        name = parse_tmaze_name(f"{task}-{recipe}")  # without the version
        recipe = name.rest
        if not name.lengths or recipe not in TMAZE_RECIPES:
            raise EnvNameError(
                f"{dataset_id!r} is not 'tmaze-<length>[-<length>...][-noisy]-<recipe>[-vK]' with recipe in "
                f"{sorted(TMAZE_RECIPES)}, e.g. 'tmaze-20-50-oracle-v0'."
            )
        return task, recipe
    if task not in TASKS or recipe not in RECIPES:
        raise EnvNameError(
            f"{dataset_id!r} is not '<task>-<recipe>[-vK]' with task in {sorted(_d4rl_tasks())} "
            f"and recipe in {sorted(RECIPES)} (T-Maze: {sorted(TMAZE_RECIPES)}, POPGym: {sorted(POPGYM_RECIPES)})."
        )
    return task, recipe


def _d4rl_tasks() -> list[str]:
    """The tasks of the table whose recipes roll out behaviour policies (not the scripted oracles')."""
    return [name for name in TASKS if name != TMAZE_TASK and not name.startswith(f"{POPGYM_TASK}-")]


def _parse_popgym_recipe(dataset_id: str, rest: str) -> tuple[str, str]:
    """(task, recipe) of a POPGym recipe id, ``rest`` being what follows "popgym-" (without the version)."""
    *named, recipe = rest.rsplit("-", 1)
    task = f"{POPGYM_TASK}-{named[0]}" if named else ""
    if task not in TASKS or recipe not in POPGYM_RECIPES:
        popgym = sorted(name for name in TASKS if name.startswith(f"{POPGYM_TASK}-"))
        raise EnvNameError(
            f"{dataset_id!r} is not 'popgym-<task>-<level>-<recipe>[-vK]' with popgym-<task>-<level> in "
            f"{popgym} and recipe in {sorted(POPGYM_RECIPES)}, e.g. 'popgym-repeatfirst-easy-oracle-v0'."
        )
    return task, recipe


def collect_recipe(
    dataset_id: str,
    path: str | os.PathLike | None = None,
    num_steps: int = 1_000_000,
    *,
    policies: Mapping[str, str | os.PathLike] | None = None,
    num_envs: int = 1,
    vectorization: Literal["sync", "async"] = "sync",
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
    shared = dict(num_envs=num_envs, vectorization=vectorization, seed=seed, progress=progress)
    if task == TMAZE_TASK:
        _refuse_policies(policies, "T-Maze", "envs.tmaze.TMazeOracle", "tmaze-<length>")
        return _collect_tmaze(dataset_id, recipe, path, num_steps, action_noise, overwrite, **shared)
    if task.startswith(f"{POPGYM_TASK}-"):
        _refuse_policies(policies, "POPGym", "envs.popgym.PopgymOracle", task)
        return _collect_popgym(dataset_id, task, recipe, path, num_steps, action_noise, overwrite, **shared)
    table = {**TASKS[task].policies, **(policies or {})}
    roles = RECIPES[recipe]
    check_settings(num_steps, num_envs, seed, action_noise, parts=len(roles))
    missing = [r for r in roles if r != "random" and r not in table]
    if missing:
        raise PolicyFileError(
            f"No {missing[0]!r} policy for task {task!r}: pass policies={{{missing[0]!r}: 'path/to/model.zip'}} "
            f"(CLI: --policy {missing[0]}=path/to/model.zip)."
        )
    path = Path(path) if path is not None else d4rl_dataset_dir() / d4rl_filename(dataset_id)
    _refuse_existing(path, overwrite)  # fail before minutes of collection, not after
    deterministic = recipe not in STOCHASTIC_RECIPES
    shares = split_evenly(num_steps, len(roles)).tolist()
    parts = [
        rollout_policy(
            task,
            "random" if role == "random" else table[role],
            steps,
            num_envs=num_envs,
            vectorization=vectorization,
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


def _collect_tmaze(
    dataset_id: str,
    recipe: str,
    path: str | os.PathLike | None,
    num_steps: int,
    action_noise: float,
    overwrite: bool,
    *,
    num_envs: int,
    vectorization: Literal["sync", "async"],
    seed: int,
    progress: bool,
) -> CollectResult:
    """A T-Maze recipe: one part per corridor length named in the id, ``num_steps`` split evenly between
    them (so short corridors give more episodes), each rolled out by a sampled TMazeOracle. The file's
    ``env_id`` is the T-Maze name of its lengths; ``infos/corridor_length`` holds each row's length."""
    name = parse_tmaze_name(dataset_id)
    check_settings(num_steps, num_envs, seed, action_noise, parts=len(name.lengths))
    _refuse_action_noise(action_noise, "T-Maze", "the oracle's detours and wrong turns")
    path = Path(path) if path is not None else d4rl_dataset_dir() / d4rl_filename(dataset_id)
    _refuse_existing(path, overwrite)
    shares = split_evenly(num_steps, len(name.lengths)).tolist()
    parts = []
    for j, (length, steps) in enumerate(zip(name.lengths, shares, strict=True)):
        one = TMazeName((length,), name.noise, "")
        oracle = TMazeOracle(length, wrong_turns=TMAZE_RECIPES[recipe], seed=[seed + j * PART_SEED_OFFSET, 3])
        part = rollout_policy(
            one.env_name,
            oracle,
            steps,
            num_envs=num_envs,
            vectorization=vectorization,
            seed=seed + j * PART_SEED_OFFSET,
            deterministic=False,
            progress=progress,
        )
        part.infos["corridor_length"] = np.full(len(part.arrays["rewards"]), length, dtype=np.int64)
        parts.append(part)
    metadata = _base_metadata(dataset_id, seed, num_envs, action_noise, env_id=name.env_name)
    metadata.update({"dataset_id": dataset_id, "recipe": recipe, "deterministic": False})
    return _write(path, parts, metadata, overwrite)


def _collect_popgym(
    dataset_id: str,
    task: str,
    recipe: str,
    path: str | os.PathLike | None,
    num_steps: int,
    action_noise: float,
    overwrite: bool,
    *,
    num_envs: int,
    vectorization: Literal["sync", "async"],
    seed: int,
    progress: bool,
) -> CollectResult:
    """A POPGym recipe: ``task`` (``"popgym-repeatfirst-easy"``) rolled out by a sampled PopgymOracle
    whose episodes take random actions at a share drawn from the recipe's levels (``metadata/random_shares``)."""
    check_settings(num_steps, num_envs, seed, action_noise)
    _refuse_action_noise(action_noise, "POPGym", "the oracle's random actions")
    path = Path(path) if path is not None else d4rl_dataset_dir() / d4rl_filename(dataset_id)
    _refuse_existing(path, overwrite)
    shares = POPGYM_RECIPES[recipe]
    oracle = PopgymOracle(task, random_shares=shares, seed=[seed, 3])
    part = rollout_policy(
        task,
        oracle,
        num_steps,
        num_envs=num_envs,
        vectorization=vectorization,
        seed=seed,
        deterministic=False,
        progress=progress,
    )
    metadata = _base_metadata(task, seed, num_envs, action_noise)
    metadata.update(
        {
            "dataset_id": dataset_id,
            "recipe": recipe,
            "deterministic": False,
            "random_shares": "+".join(f"{share:g}" for share in shares),  # "0+0.25+0.5+1"
        }
    )
    return _write(path, [part], metadata, overwrite)


def _refuse_policies(policies: Mapping[str, Any] | None, family: str, oracle: str, env_name: str) -> None:
    """A PolicyFileError where a scripted-oracle recipe is given behaviour policies."""
    if policies:
        raise PolicyFileError(
            f"{family} recipes roll out their scripted oracle ({oracle}), not {dict(policies)}. Fix: drop "
            f"--policy (or collect one policy's data with NAME {env_name} --policy PATH --out FILE)"
        )


def _refuse_action_noise(action_noise: float, family: str, noise: str) -> None:
    """A SettingError for Gaussian action noise on a scripted-oracle recipe, whose actions are discrete."""
    if action_noise > 0:
        raise SettingError(
            f"action_noise (--noise) = {action_noise}: {family} actions are discrete; the recipes' noise is "
            f"{noise}. Fix: --noise 0"
        )


def _base_metadata(
    env_name: str, seed: int, num_envs: int, action_noise: float, env_id: str | None = None
) -> dict[str, Any]:
    """What every collected file records about its environment and settings (plus reference scores);
    ``env_id`` default: the Gymnasium id ``env_name`` makes."""
    metadata: dict[str, Any] = {
        "env_id": env_id or canonical_env_id(env_name),
        "env_name": env_name,
        "seed": seed,
        "num_envs": num_envs,
        "action_noise": float(action_noise),
    }
    fill_metadata(metadata, env_name)
    return metadata
