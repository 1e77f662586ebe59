"""Making environments by name: D4RL names map to Gymnasium MuJoCo v5 tasks, Gymnasium ids pass through.

Which task a D4RL name means, and the settings that bring its v5 task closest to D4RL's data, come
from the table in :mod:`envs.d4rl`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.d4rl import canonical_env_id, env_kwargs, task_of


class ZeroPadObservation(gym.ObservationWrapper):
    """Appends ``pad`` zeros to a flat Box observation (used to give Ant-v5 D4RL's 111-dim layout)."""

    def __init__(self, env: gym.Env, pad: int):
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
            raise TypeError(f"ZeroPadObservation needs a flat Box observation space, got {space}")
        self._pad = np.zeros(pad, dtype=space.dtype)
        self.observation_space = gym.spaces.Box(
            np.concatenate([space.low, self._pad]), np.concatenate([space.high, self._pad]), dtype=space.dtype
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.concatenate([observation, self._pad])


class MujocoStateInfo(gym.Wrapper):
    """Puts the simulator state (``qpos``, ``qvel``) of each returned observation into ``info``.

    The dataset collector stores them as D4RL's ``infos/qpos`` and ``infos/qvel``. Envs without a
    MuJoCo ``data`` attribute pass through unchanged.
    """

    def _state(self, info: dict[str, Any]) -> dict[str, Any]:
        data = getattr(self.env.unwrapped, "data", None)
        if data is not None and hasattr(data, "qpos"):
            info = {**info, "qpos": np.array(data.qpos), "qvel": np.array(data.qvel)}
        return info

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        return obs, self._state(info)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, self._state(info)


def make_env(name: str, *, d4rl_ant_layout: bool = True, **kwargs: Any) -> gym.Env:
    """Make an environment by D4RL name or Gymnasium id; seeding follows Gymnasium (``reset(seed=...)``).

    - Registered Gymnasium ids (``"Hopper-v5"``, ``"Pendulum-v1"``, ``"module:Id"``) pass through to
      ``gymnasium.make(name, **kwargs)``.
    - D4RL names (``hopper-*``, ``halfcheetah-*``, ``walker2d-*``, ``ant-*``, any case, version suffix
      optional: ``"hopper-medium-v2"``, ``"walker2d"``) make the Gymnasium MuJoCo v5 task.
    - Ant: D4RL's ``ant-*-v2`` files have 111-dim observations laid out as qpos[2:] (13), qvel (14),
      then 84 clipped contact forces that are all zero (MuJoCo >= 2.0 reported none).
      So D4RL ant names make ``Ant-v5`` *without* contact forces (``include_cfrc_ext_in_observation=False``
      -> the same 27 informative entries in the same order) and without the contact cost in the
      reward (``contact_cost_weight=0``), then append 84 zeros so D4RL files fit as they are.
      ``d4rl_ant_layout=False`` skips the zero padding (27-dim observations).
    - T-Maze names (``"tmaze-100"``, ``"tmaze-100-noisy"``) make ``aaren_rl/TMaze-v0`` with that corridor
      length (and noise channel); a name of several lengths, as a mixed dataset's, is an EnvNameError.
    Extra ``kwargs`` go to ``gymnasium.make`` and override the defaults above.
    """
    env_id = canonical_env_id(name)
    task = task_of(name)
    if env_id == name or task is None:
        return gym.make(env_id, **kwargs)
    env = gym.make(env_id, **{**env_kwargs(name), **kwargs})
    obs_dim = env.observation_space.shape[0]
    if d4rl_ant_layout and obs_dim < task.obs_dim:
        env = ZeroPadObservation(env, task.obs_dim - obs_dim)
    return env
