"""The partially observable tasks AarenPPO is measured on, with their PPO settings: the one table that
`benchmarks/bench_ppo.py` compares the memories on and `scripts/train_ppo.py` trains from.

Each task names its env (a Gymnasium id, or a POPGym task name), its number of parallel envs and its PPO
hyperparameters; `POLICY_KWARGS` and `AAREN_KWARGS` are the policy settings the benchmark measured.
A run on them is measured here too: `final_returns` (deterministic, on fresh envs), `max_mean_returns`
(POPGym's MMER) and `RunMonitor` (the returns it needs, and the seconds spent collecting rollouts).
"""

from __future__ import annotations

import difflib
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.common.overrides import ConfigError
from agents.ppo.policy import FUSED_ADAM
from envs.errors import MissingExtraError
from envs.pomdp import CARTPOLE_NO_VEL, PENDULUM_NO_VEL, REMEMBER_CUE
from envs.popgym import INSTALL_HINT, popgym_env_id, popgym_task_names

# Tanh heads (SB3's default) rather than rl-zoo's ReLU, whose units can die into a constant action
# (docs/notes/ppo-memory.md). Every algorithm of the benchmark gets AarenPPO's default optimizer (fused
# Adam), so the speed compares the memories.
POLICY_KWARGS: dict[str, Any] = dict(
    ortho_init=False,
    activation_fn=torch.nn.Tanh,
    net_arch=dict(pi=[64], vf=[64]),
    optimizer_kwargs=dict(FUSED_ADAM),
)
"""Policy settings for every algorithm on these tasks (the MLP heads after the memory, the optimizer)."""

AAREN_KWARGS: dict[str, Any] = dict(
    embed_dim=64, num_layers=1, num_heads=4, ffn_mult=2, previous_action_reward=True, input_lags=4
)
"""AarenPPO's memory on these tasks: width 64, one layer, 4 heads (the LSTM it is measured against has
64 hidden units)."""


@dataclass(frozen=True)
class Task:
    """One memory task: its env, parallel envs and PPO hyperparameters."""

    env_id: str  # a gymnasium id, or a POPGym task name where `popgym` is set
    n_envs: int
    ppo: dict[str, Any]
    normalize_reward: bool = False  # VecNormalize on rewards only (training); evaluation sees raw rewards
    popgym: bool = False  # made through envs.popgym (the optional popgym extra)


ZOO_CARTPOLE = dict(n_steps=32, batch_size=256, gamma=0.98, gae_lambda=0.8, n_epochs=20, learning_rate=1e-3)
# One set for every POPGym task: 512-step rollouts (8 envs x 64) hold one to ten 50-200-step
# episodes; the usual long-horizon gamma and lambda, and half the updates per env step of ZOO_CARTPOLE.
POPGYM_PPO = dict(n_steps=64, batch_size=256, gamma=0.99, gae_lambda=0.95, n_epochs=10, learning_rate=5e-4)
POPGYM_STEPS = 60_000  # env steps of a POPGym run in the benchmark (a 2-core CPU's budget)
POPGYM_TASKS = (
    "RepeatPreviousEasy",
    "RepeatFirstEasy",
    "CountRecallEasy",
    "AutoencodeEasy",
    "PositionOnlyCartPoleEasy",
    "NoisyPositionOnlyPendulumEasy",
    "MineSweeperEasy",
)


def popgym_task(name: str) -> Task:
    """A POPGym task by class name, with the one set of settings every POPGym task gets."""
    return Task(name, 8, POPGYM_PPO, popgym=True)


TASKS = {
    "CartPoleNoVel": Task(CARTPOLE_NO_VEL, 8, ZOO_CARTPOLE),
    "PendulumNoVel": Task(
        PENDULUM_NO_VEL,
        4,
        dict(n_steps=1024, batch_size=256, gamma=0.9, gae_lambda=0.95, n_epochs=10, learning_rate=1e-3),
        normalize_reward=True,
    ),
    "RememberCue": Task(REMEMBER_CUE, 8, ZOO_CARTPOLE),
    **{name: popgym_task(name) for name in POPGYM_TASKS},
}


def task_named(name: str) -> Task:
    """The table's task `name`, or any other POPGym task by its class name (e.g. RepeatPreviousHard) with
    the POPGym settings; one ConfigError naming the choices otherwise."""
    if name in TASKS:
        return TASKS[name]
    try:
        others = popgym_task_names()
    except MissingExtraError:
        others = []
    if name in others:
        return popgym_task(name)
    close = difflib.get_close_matches(name, [*TASKS, *others], n=1)
    hint = f"did you mean {close[0]}?" if close else f"choose from {', '.join(TASKS)}"
    extra = "" if others else f" (any POPGym task too, with the popgym extra: {INSTALL_HINT})"
    raise ConfigError(f"unknown task {name!r}: {hint}{extra}")


def make_env(task: Task, seed: int, training: bool) -> VecEnv:
    """The task's training envs (reward-normalised where the task says so), or 4 raw envs for evaluation."""
    env_id = popgym_env_id(task.env_id) if task.popgym else task.env_id
    env = make_vec_env(env_id, n_envs=task.n_envs if training else 4, seed=seed)
    if training and task.normalize_reward:
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=task.ppo["gamma"])
    return env


#: Seed offset of the evaluation envs, so that they never replay a training env's episodes.
EVAL_SEED_OFFSET = 10_000


def final_returns(model: BaseAlgorithm, task: Task, seed: int, episodes: int) -> list[float]:
    """The returns of `episodes` deterministic episodes of `model` on fresh evaluation envs of `task`."""
    env = make_env(task, EVAL_SEED_OFFSET + seed, training=False)
    returns, _ = evaluate_policy(
        model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True
    )
    env.close()
    return [float(r) for r in returns]


#: Finished episodes in MMER's rolling window (as SB3's ep_info_buffer).
MMER_WINDOW = 100


def max_mean_returns(
    rollouts: Sequence[Sequence[float]], window: int = MMER_WINDOW
) -> dict[str, float | None]:
    """MMER from the returns of the episodes that finished in each rollout, in order: the best, over the
    rollouts in which an episode finished, of the mean return of the last `window` finished episodes
    (`mmer`) and of the episodes of that rollout alone (`mmer_rollout`); None where none finished."""
    recent: deque[float] = deque(maxlen=window)
    windowed, per_rollout = [], []
    for returns in rollouts:
        if len(returns):
            recent.extend(returns)
            windowed.append(float(np.mean(recent)))
            per_rollout.append(float(np.mean(returns)))
    return {
        "mmer": max(windowed, default=None),
        "mmer_rollout": max(per_rollout, default=None),
    }


class RunMonitor(BaseCallback):
    """Wall-clock seconds spent collecting rollouts (the rest of learn() is training), and the returns
    of the episodes that finished in each rollout (for `max_mean_returns`)."""

    def __init__(self) -> None:
        super().__init__()
        self.collect_s = 0.0
        self.rollout_returns: list[list[float]] = []
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self.rollout_returns.append([])
        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        self.rollout_returns[-1].extend(float(info["episode"]["r"]) for info in infos if "episode" in info)
        return True

    def _on_rollout_end(self) -> None:
        self.collect_s += time.perf_counter() - self._start
