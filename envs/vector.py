"""Rollout workers: vectorised environments plus the per-step bookkeeping a policy needs.

Two conventions exist for what a vector env returns when a sub-env's episode ends:

- same-step autoreset (SB3 VecEnvs, Gymnasium ``AutoresetMode.SAME_STEP``): the step that ends the
  episode already returns the next episode's first observation; the last observation of the ended
  episode travels in the infos (``infos[i]["terminal_observation"]`` / ``info["final_obs"][i]``);
- next-step autoreset (Gymnasium's default ``NEXT_STEP``): the ending step returns the last
  observation, and the *following* step ignores the action and returns the reset observation with
  reward 0. That step is not a transition.

:class:`VecRollout` hides the difference: every :meth:`VecRollout.step` reports the transition's
true next observation, which envs started a new episode (``episode_start``), which steps were real
transitions (``valid``), running returns and lengths, and finished-episode records.
:func:`make_vec_env` builds same-step vector envs, so every step is a real transition.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper

from envs.make import make_env


class EnvWorkerError(RuntimeError):
    """An environment worker failed (raised in reset/step, died, or stopped answering)."""


class _SeedOnFirstReset(VectorWrapper):
    """Applies ``seed`` (env i gets seed + i, Gymnasium's rule) at the first ``reset()`` that gives none,
    and seeds the action spaces, so ``make_vec_env(..., seed=s)`` alone makes rollouts reproducible."""

    def __init__(self, env: VectorEnv, seed: int):
        super().__init__(env)
        self._pending_seed: int | None = seed
        self.action_space.seed(seed)
        self.single_action_space.seed(seed)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def split_evenly(total: int, parts: int) -> np.ndarray:
    """``total`` split into ``parts`` shares: each gets ``total // parts``, the first ``total % parts`` one more.

    The per-env quota of steps or episodes, so a result does not depend on which env finishes first.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return np.full(parts, total // parts, dtype=np.int64) + (np.arange(parts) < total % parts)


def make_vec_env(
    name: str,
    num_envs: int,
    vectorization: Literal["sync", "async"] = "sync",
    seed: int | None = None,
    *,
    autoreset_mode: AutoresetMode = AutoresetMode.SAME_STEP,
    wrappers: Sequence[Callable[[gym.Env], gym.Env]] = (),
    **env_kwargs: Any,
) -> VectorEnv:
    """``num_envs`` copies of ``make_env(name, **env_kwargs)`` in one Gymnasium vector env.

    ``vectorization="sync"`` steps the copies one after another in this process; ``"async"`` runs
    each in its own process (worth it when a step costs more than the inter-process round trip;
    MuJoCo locomotion steps are cheap, so "sync" is often as fast on few cores). ``seed`` seeds env i
    with ``seed + i`` at the first reset that gives no seed itself. ``wrappers`` are applied to each
    sub-env in order. Same-step autoreset is the default.
    """
    if vectorization not in ("sync", "async"):
        raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")

    def env_fn() -> gym.Env:
        env = make_env(name, **env_kwargs)
        for wrap in wrappers:
            env = wrap(env)
        return env

    cls = AsyncVectorEnv if vectorization == "async" else SyncVectorEnv
    vec = cls([env_fn] * num_envs, autoreset_mode=autoreset_mode)
    return vec if seed is None else _SeedOnFirstReset(vec, seed)


@dataclass(frozen=True)
class EpisodeRecord:
    """A finished episode: its undiscounted return, length in steps and the env it ran in."""

    episode_return: float
    length: int
    env_index: int
    terminated: bool


@dataclass
class VecStep:
    """One step of all envs. ``obs`` is what the policy acts on next; ``next_obs`` is each transition's
    true next observation (the ended episode's last one where ``terminated | truncated``)."""

    obs: np.ndarray
    rewards: np.ndarray  # (n,) float64
    terminated: np.ndarray  # (n,) bool
    truncated: np.ndarray  # (n,) bool
    next_obs: np.ndarray
    valid: np.ndarray  # (n,) bool: False where this was a next-step autoreset, not a transition
    infos: Any

    @property
    def dones(self) -> np.ndarray:
        return self.terminated | self.truncated


class VecRollout:
    """Steps a Gymnasium vector env (either autoreset mode) or an SB3 VecEnv and keeps per-env books.

    After :meth:`reset` or :meth:`step`:
    - ``episode_start[i]`` is True when the observation the policy acts on next is env i's first of
      an episode (pass it as SB3's ``episode_start``; a recurrent policy resets its state there);
    - ``autoreset_pending[i]`` is True when env i's next action will be ignored (Gymnasium
      next-step autoreset after an episode end; always False for same-step envs);
    - ``episode_returns``/``episode_lengths`` are the running sums of the current episodes;
    - ``finished`` collects an :class:`EpisodeRecord` per ended episode (see :meth:`pop_finished`).
    A worker that fails surfaces as :class:`EnvWorkerError` (the env is closed), never a hang.
    """

    def __init__(self, env: VectorEnv | Any):
        self.env = env
        self.is_sb3 = (
            hasattr(env, "step_async") and hasattr(env, "step_wait") and not isinstance(env, VectorEnv)
        )
        if not self.is_sb3:
            mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            self.autoreset_mode = AutoresetMode(mode)
            if self.autoreset_mode == AutoresetMode.DISABLED:
                raise ValueError("VecRollout needs an autoresetting vector env (SAME_STEP or NEXT_STEP).")
        self.num_envs: int = env.num_envs
        self.episode_start = np.ones(self.num_envs, dtype=bool)
        self.autoreset_pending = np.zeros(self.num_envs, dtype=bool)
        self.episode_returns = np.zeros(self.num_envs)
        self.episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.finished: list[EpisodeRecord] = []

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, Any]:
        """Reset all envs (env i gets ``seed + i`` when a seed is given) and the books.

        Returns ``(obs, infos)``: Gymnasium's info dict, or SB3's ``reset_infos`` list.
        """
        self.episode_start[:] = True
        self.autoreset_pending[:] = False
        self.episode_returns[:] = 0.0
        self.episode_lengths[:] = 0
        if self.is_sb3:
            if seed is not None:
                self.env.seed(seed)
            obs = self._guard(self.env.reset)
            return obs, getattr(self.env, "reset_infos", [{} for _ in range(self.num_envs)])
        return self._guard(lambda: self.env.reset(seed=seed))

    def step(self, actions: np.ndarray) -> VecStep:
        """Step every env with ``actions`` (one row per env) and update the books."""
        step = self._guard(lambda: self._step_sb3(actions) if self.is_sb3 else self._step_gym(actions))
        valid = step.valid
        self.episode_returns[valid] += step.rewards[valid]
        self.episode_lengths[valid] += 1
        for i in np.flatnonzero(step.dones & valid):
            self.finished.append(
                EpisodeRecord(
                    float(self.episode_returns[i]),
                    int(self.episode_lengths[i]),
                    int(i),
                    bool(step.terminated[i]),
                )
            )
        ended = step.dones & valid
        self.episode_returns[ended] = 0.0
        self.episode_lengths[ended] = 0
        if self.is_sb3 or self.autoreset_mode == AutoresetMode.SAME_STEP:
            self.episode_start = ended
        else:  # next-step: the reset observation arrives on the step after the end
            self.episode_start = ~valid
            self.autoreset_pending = ended
        return step

    def pop_finished(self) -> list[EpisodeRecord]:
        """The episodes finished since the last call, in the order they ended."""
        done, self.finished = self.finished, []
        return done

    def close(self) -> None:
        self.env.close()

    # ---- conventions ----------------------------------------------------------------------------

    def _step_gym(self, actions: np.ndarray) -> VecStep:
        valid = ~self.autoreset_pending
        obs, rewards, terminated, truncated, infos = self.env.step(actions)
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
        next_obs = obs
        if self.autoreset_mode == AutoresetMode.SAME_STEP and "_final_obs" in infos:
            ended = np.flatnonzero(infos["_final_obs"])
            if len(ended):
                next_obs = np.array(obs, copy=True)
                for i in ended:
                    next_obs[i] = infos["final_obs"][i]
        return VecStep(obs, rewards, terminated & valid, truncated & valid, next_obs, valid, infos)

    def _step_sb3(self, actions: np.ndarray) -> VecStep:
        obs, rewards, dones, infos = self.env.step(actions)
        dones = np.asarray(dones, dtype=bool)
        truncated = dones & np.array([bool(info.get("TimeLimit.truncated", False)) for info in infos])
        next_obs = obs
        if dones.any():
            next_obs = np.array(obs, copy=True)
            for i in np.flatnonzero(dones):
                next_obs[i] = infos[i]["terminal_observation"]
        valid = np.ones(self.num_envs, dtype=bool)
        return VecStep(
            obs, np.asarray(rewards, dtype=np.float64), dones & ~truncated, truncated, next_obs, valid, infos
        )

    def _guard(self, call: Callable[[], Any]) -> Any:
        """Run a reset/step; a worker failure becomes EnvWorkerError and the env is shut down."""
        try:
            return call()
        except (EOFError, BrokenPipeError, ConnectionError, multiprocessing.TimeoutError) as exc:
            self._shutdown()
            raise EnvWorkerError(
                f"An environment worker died or stopped answering ({type(exc).__name__}: {exc})."
            ) from exc
        except Exception as exc:
            if isinstance(self.env, VectorEnv) and isinstance(self.env.unwrapped, AsyncVectorEnv):
                self._shutdown()
                raise EnvWorkerError(
                    f"An environment worker raised {type(exc).__name__}: {exc} "
                    "(its traceback is in the log above); the vector env was closed."
                ) from exc
            raise

    def _shutdown(self) -> None:
        try:
            if isinstance(self.env, VectorEnv) and isinstance(self.env.unwrapped, AsyncVectorEnv):
                self.env.unwrapped.close(terminate=True)
            else:
                self.env.close()
        except Exception:  # closing a broken env must not hide the original error
            pass
