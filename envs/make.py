"""Making environments by name: D4RL ids map to Gymnasium MuJoCo v5 tasks, Gymnasium ids pass through.

D4RL's gym-mujoco datasets were recorded on gym's ``-v2`` MuJoCo tasks (mujoco-py, MuJoCo 2.x), which
no longer run; the maintained equivalents are Gymnasium's ``-v5`` tasks with the same observation
layout for hopper (11), halfcheetah (17) and walker2d (17). Ant needs care, see :func:`make_env`.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

#: D4RL task prefix -> Gymnasium MuJoCo task evaluated on.
D4RL_TASKS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}

#: Ant-v5 settings closest to D4RL's Ant-v2 data: no contact forces in the observation, no contact
#: cost in the reward (MuJoCo >= 2.0 reported all-zero contact forces, so D4RL's had neither).
D4RL_ANT_KWARGS: dict[str, Any] = {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}
D4RL_ANT_OBS_DIM = 111  # 13 qpos + 14 qvel + 84 (all-zero) contact forces in D4RL's files


def d4rl_task(name: str) -> str | None:
    """The D4RL task prefix a name refers to ("hopper" for "hopper-medium-v2", "Hopper-v5", "hopper"), or None.

    The prefix is the name's first token before "-" or "_", lower-cased, so "antmaze-..." is not "ant".
    """
    token = re.split(r"[-_]", name.strip(), maxsplit=1)[0].lower()
    return token if token in D4RL_TASKS else None


def canonical_env_id(name: str) -> str:
    """The Gymnasium id that ``make_env(name)`` creates: registered ids as given, D4RL names -> their v5 task.

    Raises ``ValueError`` for a name that is neither, listing the D4RL tasks known here.
    """
    if name in gym.envs.registry or ":" in name:  # "module:EnvId" ids import their module at make time
        return name
    task = d4rl_task(name)
    if task is None:
        raise ValueError(
            f"Unknown environment {name!r}: not a registered Gymnasium id and not a D4RL name "
            f"starting with one of {sorted(D4RL_TASKS)} (e.g. 'hopper-medium-v2')."
        )
    return D4RL_TASKS[task]


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
      then 84 clipped contact forces that are all zero (MuJoCo >= 2.0 reported none; D4RL issue #143).
      So D4RL ant names make ``Ant-v5`` *without* contact forces (``include_cfrc_ext_in_observation=False``
      -> the same 27 informative entries in the same order) and without the contact cost in the
      reward (``contact_cost_weight=0``), then append 84 zeros so D4RL files fit as they are.
      ``d4rl_ant_layout=False`` skips the zero padding (27-dim observations).
    Extra ``kwargs`` go to ``gymnasium.make`` and override the defaults above.
    """
    env_id = canonical_env_id(name)
    if env_id == name or d4rl_task(name) != "ant":
        return gym.make(env_id, **kwargs)
    env = gym.make(env_id, **{**D4RL_ANT_KWARGS, **kwargs})
    obs_dim = env.observation_space.shape[0]
    if d4rl_ant_layout and obs_dim < D4RL_ANT_OBS_DIM:
        env = ZeroPadObservation(env, D4RL_ANT_OBS_DIM - obs_dim)
    return env
