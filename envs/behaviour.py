"""A behaviour policy made here when no pre-trained one is at hand: SB3 PPO on a wall-clock budget.

`make demo` uses it to go from nothing to a dataset on a fresh machine. The policy's weights are
cached as safetensors (written atomically, loaded into a fresh PPO: no pickles), so a second call
reuses them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from envs.files import atomic_path


class _Budget(BaseCallback):
    """Stops training after `minutes` of wall-clock time, printing one progress line per rollout."""

    def __init__(self, minutes: float):
        super().__init__()
        self.seconds = 60 * minutes
        self.start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        returns = [e["r"] for e in self.model.ep_info_buffer]
        mean = f"{np.mean(returns):.0f}" if returns else "-"
        elapsed = time.perf_counter() - self.start
        print(
            f"      {self.num_timesteps:>7d} steps  {elapsed:5.0f}s  recent episode return {mean}", flush=True
        )

    def _on_step(self) -> bool:
        return time.perf_counter() - self.start < self.seconds


def train_behaviour_policy(
    env_id: str, path: str | os.PathLike, minutes: float, seed: int = 0, num_envs: int = 4
) -> PPO:
    """PPO (SB3 defaults) on `env_id` for `minutes` of wall-clock time, or its cached weights at `path`."""
    path = Path(path)
    model = PPO(
        "MlpPolicy", make_vec_env(env_id, n_envs=num_envs, seed=seed), seed=seed, device="cpu", verbose=0
    )
    if path.is_file():
        model.policy.load_state_dict(load_file(str(path)))
        return model
    model.learn(total_timesteps=2_000_000, callback=_Budget(minutes))
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.policy.state_dict().items()}, str(tmp))
    return model
