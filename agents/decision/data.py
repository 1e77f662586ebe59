"""The data a decision agent trains on: the dataset checked against its environment (`prepare_data`), and
the summary a run keeps of it (`dataset_stats`, written to dataset_stats.json and read by evaluation).

Everything that can be wrong with the data or the env is one ConfigError here, before any training work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.common.overrides import ConfigError
from agents.decision.evaluation import default_targets
from envs import DatasetError, OfflineDataset, load_dataset, make_env, normalized_score

if TYPE_CHECKING:
    from agents.decision.config import Config


@dataclass
class TrainingData:
    """The dataset plus what the run needs to know about its environment."""

    dataset: OfflineDataset
    env: str
    action_low: list[float]
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
    if obs_shape != (dataset.obs_dim,) or act_space.shape != (dataset.act_dim,):
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} has observations of {dataset.obs_dim} and actions of "
            f"{dataset.act_dim} entries, but data.env = {env_name!r} has observation shape {obs_shape} and "
            f"action shape {act_space.shape}. Fix: set data.env to the task the data was collected in "
            f"(metadata env_id = {dataset.metadata.get('env_id')!r}) or use a dataset of this env."
        )
    longest = int(dataset.episode_lengths.max())
    max_timestep = cfg.model.max_timestep or max(limit, longest)
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
        [float(x) for x in act_space.low],
        [float(x) for x in act_space.high],
        max_timestep,
        [float(t) for t in targets],
        score_ref,
    )


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
