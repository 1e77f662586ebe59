"""The environment side of aaren-rl: environments by name, D4RL-format datasets, dataset
collection from behaviour policies, and vectorised rollout workers. Depends on gymnasium, numpy
and h5py (and Stable-Baselines3 for collecting with its policies); never on the model code."""

from envs.collect import CollectResult, collect_dataset, collect_recipe, rollout_policy
from envs.d4rl import canonical_env_id, reference_scores
from envs.datasets import (
    DatasetError,
    OfflineDataset,
    SequenceBatch,
    d4rl_dataset_dir,
    d4rl_filename,
    load_dataset,
    resolve_d4rl_path,
    save_dataset,
)
from envs.download import DownloadError
from envs.experts import experts_dir
from envs.make import make_env
from envs.scores import normalized_score
from envs.tmaze import TMazeEnv, TMazeOracle
from envs.vector import EnvWorkerError, EpisodeRecord, VecRollout, VecStep, make_vec_env

__all__ = [
    "CollectResult",
    "DatasetError",
    "DownloadError",
    "EnvWorkerError",
    "EpisodeRecord",
    "OfflineDataset",
    "SequenceBatch",
    "TMazeEnv",
    "TMazeOracle",
    "VecRollout",
    "VecStep",
    "canonical_env_id",
    "collect_dataset",
    "collect_recipe",
    "d4rl_dataset_dir",
    "d4rl_filename",
    "experts_dir",
    "load_dataset",
    "make_env",
    "make_vec_env",
    "normalized_score",
    "reference_scores",
    "resolve_d4rl_path",
    "rollout_policy",
    "save_dataset",
]
