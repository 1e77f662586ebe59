"""The data a decision agent trains on: the dataset checked against its environment (`prepare_data`), and
the summary a run keeps of it (`dataset_stats`, written to dataset_stats.json and read by evaluation).

Everything that can be wrong with the data or the env is one ConfigError here, before any training work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.common.overrides import ConfigError
from agents.decision.evaluation import default_targets
from envs import DatasetError, OfflineDataset, load_dataset, make_env, normalized_score
from envs.datasets import check_actions

if TYPE_CHECKING:
    from agents.decision.config import Config


@dataclass
class TrainingData:
    """The dataset plus what the run needs to know about its environment."""

    dataset: OfflineDataset
    env: str
    action_space: str  # "Box", "Discrete" or "MultiDiscrete": the env's (`DecisionModelConfig.action_space`)
    action_low: list[float]  # Box bounds; discrete: each component's first and last action
    action_high: list[float]
    max_timestep: int
    targets: list[float]
    score_ref: dict[str, Any]


def prepare_data(cfg: Config) -> TrainingData:
    """Load the dataset and check it against its env; any mismatch is one ConfigError, before any work."""
    try:
        dataset = load_dataset(cfg.data.dataset)
    except (DatasetError, FileNotFoundError) as exc:
        raise ConfigError(f"data.dataset = {cfg.data.dataset!r} cannot be loaded: {exc}") from exc
    env_name = cfg.data.env or str(dataset.metadata.get("env_id") or cfg.data.dataset)
    try:
        env = make_env(env_name)
    except Exception as exc:
        raise ConfigError(
            f"data.env = {env_name!r} cannot be made ({exc}). Fix: set data.env to the Gymnasium id or D4RL "
            "name of the task the data comes from, e.g. data.env=Hopper-v5"
        ) from exc
    try:
        obs_shape, act_space = env.observation_space.shape, env.action_space
        limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 0
    finally:
        env.close()
    fix = (
        f"set data.env to the task the data was collected in (metadata env_id = "
        f"{dataset.metadata.get('env_id')!r}) or use a dataset of this env"
    )
    if obs_shape != (dataset.obs_dim,):
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} has observations of {dataset.obs_dim} entries, but "
            f"data.env = {env_name!r} has observation shape {obs_shape}. Fix: {fix}."
        )
    try:
        check_actions(dataset, act_space, env_name)
    except DatasetError as exc:
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} does not fit data.env = {env_name!r}: {exc}"
        ) from exc
    max_timestep = _timestep_table(
        cfg.model.max_timestep, limit, int(dataset.episode_lengths.max()), env_name
    )
    targets = cfg.eval.targets or default_targets(env_name, float(dataset.episode_returns.max()))
    meta = dataset.metadata
    score_ref = {"env_id": env_name}
    if "ref_min_score" in meta and "ref_max_score" in meta:
        score_ref.update(
            ref_min_score=float(meta["ref_min_score"]), ref_max_score=float(meta["ref_max_score"])
        )
    return TrainingData(
        dataset,
        env_name,
        *action_space_data(act_space),
        max_timestep,
        [float(t) for t in targets],
        score_ref,
    )


def action_space_data(space: gym.Space) -> tuple[str, list[float], list[float]]:
    """An action space (one `check_actions` accepts) as `DecisionModelConfig` records it: its kind and a
    Box's bounds, or a Discrete / MultiDiscrete space's first and last action of each component."""
    if isinstance(space, gym.spaces.Discrete):
        return "Discrete", [float(space.start)], [float(space.start + space.n - 1)]
    if isinstance(space, gym.spaces.MultiDiscrete):
        return (
            "MultiDiscrete",
            [float(x) for x in space.start],
            [float(x) for x in space.start + space.nvec - 1],
        )
    return "Box", [float(x) for x in space.low], [float(x) for x in space.high]


def _timestep_table(configured: int, limit: int, longest: int, env_name: str) -> int:
    """The timestep embedding's size: model.max_timestep, by default (0) the longest episode training or
    evaluation in the env can have, max(env time limit, longest dataset episode). A later timestep would
    share the table's last entry, so a configured size below that is a ConfigError, except 1: one entry
    for every step (no timestep information), which acts alike at any episode length."""
    horizon = max(limit, longest)
    if configured > 1 and configured < horizon:
        raise ConfigError(
            f"model.max_timestep = {configured} is below the longest episode this run can see: {longest} "
            f"steps in the dataset, {limit or 'no'} time limit in data.env = {env_name!r}; timesteps from "
            f"{configured} on would all share the embedding's last entry. Fix: model.max_timestep=0 "
            f"(automatic: {horizon}), >= {horizon}, or 1 (no timestep information)"
        )
    return configured or horizon


def dataset_stats(data: TrainingData) -> dict[str, Any]:
    """The JSON-able summary written to dataset_stats.json (also what evaluation reads back)."""
    ds = data.dataset
    try:
        score = float(np.mean(normalized_score(data.score_ref, ds.episode_returns)))
    except ValueError:
        score = None
    return {
        "source": ds.source,
        "env": data.env,
        "score_ref": data.score_ref,
        "eval_targets": data.targets,
        "num_transitions": int(ds.episode_lengths.sum()),
        "num_episodes": int(ds.num_episodes),
        "return_mean": float(ds.episode_returns.mean()),
        "return_std": float(ds.episode_returns.std()),
        "return_max": float(ds.episode_returns.max()),
        "length_mean": float(ds.episode_lengths.mean()),
        "length_max": int(ds.episode_lengths.max()),
        "score_mean": score,
        "state_mean": ds.state_mean.tolist(),
        "state_std": ds.state_std.tolist(),
        "metadata": {
            k: v.item() if isinstance(v, np.generic) else v
            for k, v in ds.metadata.items()
            if isinstance(v, (str, int, float, bool, np.generic))
        },
    }
