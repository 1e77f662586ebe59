"""Partially observable tasks (POMDPs): a policy needs memory (importing this module registers them).

- `aaren_rl/CartPoleNoVel-v1`: CartPole-v1 seeing only cart position and pole angle (no velocities).
- `aaren_rl/PendulumNoVel-v1`: Pendulum-v1 seeing only cos/sin of the angle (no angular velocity).
- `aaren_rl/RememberCue-v0`: a cue (one of `num_cues`) is shown at the first step only; after
  `delay` blank steps the agent must name it. Reward 1 for the right answer, so a memoryless policy
  scores 1/num_cues on average and a policy with memory scores 1.

Velocities can be recovered from two consecutive observations, so the first two test short memory;
the third tests holding one fact for the whole episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

CARTPOLE_NO_VEL = "aaren_rl/CartPoleNoVel-v1"
PENDULUM_NO_VEL = "aaren_rl/PendulumNoVel-v1"
REMEMBER_CUE = "aaren_rl/RememberCue-v0"


class KeepObservationEntries(gym.ObservationWrapper):
    """Keep only the observation entries at `keep` (a Box observation): e.g. drop the velocities."""

    def __init__(self, env: gym.Env, keep: Sequence[int]):
        super().__init__(env)
        box = env.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"KeepObservationEntries needs a flat Box observation space, got {box}")
        self.keep = np.asarray(keep, dtype=np.int64)
        self.observation_space = spaces.Box(box.low[self.keep], box.high[self.keep], dtype=box.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


def cartpole_no_velocity(**kwargs: Any) -> gym.Env:
    """CartPole-v1 with observation [cart position, pole angle]."""
    return KeepObservationEntries(gym.make("CartPole-v1", **kwargs), keep=[0, 2])


def pendulum_no_velocity(**kwargs: Any) -> gym.Env:
    """Pendulum-v1 with observation [cos(angle), sin(angle)]."""
    return KeepObservationEntries(gym.make("Pendulum-v1", **kwargs), keep=[0, 1])


class RememberCueEnv(gym.Env):
    """Show a cue at step 0, blanks for `delay` steps, then ask for it (see the module docstring).

    Observation: [one-hot cue (zeros after step 0), query flag (1 at the last step)]. Actions before
    the query are ignored; the episode ends after the answer.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, num_cues: int = 4, delay: int = 10, render_mode: str | None = None):
        if num_cues < 2 or delay < 0:
            raise ValueError(f"RememberCue needs num_cues >= 2 and delay >= 0, got {num_cues}, {delay}")
        self.num_cues, self.delay, self.render_mode = num_cues, delay, render_mode
        self.observation_space = spaces.Box(0.0, 1.0, shape=(num_cues + 1,), dtype=np.float32)
        self.action_space = spaces.Discrete(num_cues)
        self._cue, self._t = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_cues + 1, dtype=np.float32)
        if self._t == 0:
            obs[self._cue] = 1.0
        obs[-1] = float(self._t == self.delay + 1)
        return obs

    def render(self) -> np.ndarray:
        """The observation as a strip of grey squares (16 px each), for video recorders."""
        return np.kron(self._obs()[None, :, None] * 255, np.ones((16, 16, 3))).astype(np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._cue, self._t = int(self.np_random.integers(self.num_cues)), 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        answered = self._t == self.delay + 1
        reward = float(answered and int(action) == self._cue)
        self._t += 1
        return self._obs(), reward, answered, False, {}


def register_pomdp_tasks() -> None:
    """Register the memory tasks with gymnasium (idempotent; done on import)."""
    entry_points = {
        CARTPOLE_NO_VEL: cartpole_no_velocity,
        PENDULUM_NO_VEL: pendulum_no_velocity,
        REMEMBER_CUE: RememberCueEnv,
    }
    for env_id, entry_point in entry_points.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point)


register_pomdp_tasks()
