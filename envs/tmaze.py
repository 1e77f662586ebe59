"""The passive T-Maze (Ni et al. 2023, "When do Transformers Shine in RL?"; RATE's offline variant): a
memory task whose cue is seen once and needed at the end. Importing this module registers
`aaren_rl/TMaze-v0`.

```
 o - - - - - ... - - j    one goal above the junction j, one below; the cue at o says which is right
```

The agent starts at o (x = 0) at the left end of a corridor of `corridor_length` cells and reaches the
junction at x = corridor_length. Observation [cue, junction, noise]: the cue (+1: the upper goal, -1: the
lower) only at the first step, 0 after; junction 1 while at the junction; noise drawn uniformly from
{-1, 0, 1} at every step when `noise` is set (as in RATE), else 0. Actions: 0 right, 1 up, 2 left, 3 down
(Ni et al.'s order); moves into a wall leave the agent where it is. Up or down at the junction enters a
goal and ends the episode with reward 1 for the cued goal and 0 for the other; every other step earns 0.
The time limit is corridor_length + 1 (the shortest episode) + `spare_steps`.

Names: "tmaze-<L>[-<L>...][-noisy]" names corridor lengths and the noise channel, and D4RL-style ids add a
recipe and version after them ("tmaze-20-50-oracle-v0": data from corridors of 20 and 50 cells). An
environment has one length; a dataset may mix several (`parse_tmaze_name`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from envs.errors import EnvNameError

TMAZE = "aaren_rl/TMaze-v0"
#: The first token of T-Maze names and dataset ids (the task's name in `envs.d4rl.TASKS`).
TMAZE_TASK = "tmaze"
#: The name token that turns the noise channel on.
NOISY = "noisy"
RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3
#: Steps beyond the shortest episode before the time limit, by default.
SPARE_STEPS = 10


class TMazeEnv(gym.Env):
    """The passive T-Maze (module docstring); `gym.make(TMAZE, ...)` adds its time limit."""

    metadata = {"render_modes": []}

    def __init__(self, corridor_length: int = 10, noise: bool = False, spare_steps: int = SPARE_STEPS):
        if not (isinstance(corridor_length, (int, np.integer)) and corridor_length >= 1):
            raise ValueError(f"T-Maze corridor_length = {corridor_length!r}: give a whole number >= 1")
        if not (isinstance(spare_steps, (int, np.integer)) and spare_steps >= 0):
            raise ValueError(f"T-Maze spare_steps = {spare_steps!r}: give a whole number >= 0")
        self.corridor_length, self.noise, self.spare_steps = (
            int(corridor_length),
            bool(noise),
            int(spare_steps),
        )
        self.time_limit = self.corridor_length + 1 + self.spare_steps
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
        self.action_space = spaces.Discrete(4)
        self._goal, self._x, self._first = 1, 0, True

    def _obs(self) -> np.ndarray:
        noise = self.np_random.integers(-1, 2) if self.noise else 0
        cue = self._goal if self._first else 0
        return np.array([cue, float(self._x == self.corridor_length), noise], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._goal, self._x, self._first = int(self.np_random.choice([-1, 1])), 0, True
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"T-Maze action {action!r}: give an integer 0-3 (right, up, left, down)")
        self._first = False
        action = int(action)
        if self._x == self.corridor_length and action in (UP, DOWN):
            reward = float((action == UP) == (self._goal == 1))
            obs = np.array([0.0, 0.0, 0.0], dtype=np.float32)  # in a goal, out of the junction
            return obs, reward, True, False, {}
        if action == RIGHT:
            self._x = min(self._x + 1, self.corridor_length)
        elif action == LEFT:
            self._x = max(self._x - 1, 0)
        return self._obs(), 0.0, False, False, {}


def make_tmaze(**kwargs: Any) -> gym.Env:
    """The registered entry point: a TMazeEnv under its own time limit (so `env.spec.max_episode_steps`
    holds it for any corridor length)."""
    env = TMazeEnv(**kwargs)
    return TimeLimit(env, env.time_limit)


@dataclass
class _Walk:
    """One oracle episode's plan and progress: the cued goal, the position, the corridor cells still to
    detour at (ascending) and whether it turns the wrong way."""

    goal: int
    x: int
    detours: list[int]
    wrong: bool


class TMazeOracle:
    """A scripted T-Maze behaviour policy with SB3's `predict`: it reads the cue at the first step, walks
    right along the corridor and turns to the cued goal.

    Sampled (`deterministic=False`, how recipes collect) it errs as a behaviour policy should: each episode
    makes 0 to spare_steps // 2 detours (uniformly many), at distinct corridor cells drawn uniformly, each a
    random move up, down or left (one or two steps lost, so it still reaches a goal within the time limit),
    and turns to the wrong goal with probability `wrong_turns`. Its success rate is therefore
    1 - wrong_turns, and the junction is reached at varying times. The state is a tuple of per-env plans.
    """

    def __init__(
        self,
        corridor_length: int,
        *,
        spare_steps: int = SPARE_STEPS,
        wrong_turns: float = 0.0,
        seed: int | list[int] | None = None,
    ):
        if not 0.0 <= wrong_turns <= 1.0:
            raise ValueError(f"TMazeOracle wrong_turns = {wrong_turns!r}: give a share from 0 to 1")
        self.corridor_length, self.wrong_turns = corridor_length, wrong_turns
        self.max_detours = min(spare_steps // 2, corridor_length)
        self.rng = np.random.default_rng(seed)

    def _plan(self, cue: float, deterministic: bool) -> _Walk:
        if deterministic:
            return _Walk(int(np.sign(cue)), 0, [], False)
        count = int(self.rng.integers(self.max_detours + 1))
        detours = sorted(int(x) for x in self.rng.choice(self.corridor_length, count, replace=False))
        return _Walk(int(np.sign(cue)), 0, detours, bool(self.rng.random() < self.wrong_turns))

    def _move(self, walk: _Walk, at_junction: bool) -> tuple[int, _Walk]:
        if at_junction:
            return (UP if (walk.goal == 1) != walk.wrong else DOWN), walk
        if walk.detours and walk.detours[0] == walk.x:
            action = int(self.rng.choice([UP, LEFT, DOWN]))
            return action, replace(walk, x=max(walk.x - (action == LEFT), 0), detours=walk.detours[1:])
        return RIGHT, replace(walk, x=walk.x + 1)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[_Walk, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[_Walk, ...]]:
        obs = np.asarray(observation, dtype=np.float32).reshape(-1, 3)
        starts = np.ones(len(obs), bool) if state is None or episode_start is None else episode_start
        walks = [
            self._plan(obs[i, 0], deterministic) if starts[i] else state[i]  # type: ignore[index]
            for i in range(len(obs))
        ]
        moves = [self._move(walk, obs[i, 1] > 0.5) for i, walk in enumerate(walks)]
        return np.array([a for a, _ in moves], dtype=np.int64), tuple(w for _, w in moves)


# --------------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True)
class TMazeName:
    """What a T-Maze name says: corridor lengths (in the order given), the noise channel, and what follows
    (a recipe and version, "" for an environment name)."""

    lengths: tuple[int, ...]
    noise: bool
    rest: str

    @property
    def env_name(self) -> str:
        """The name of the environments (or of the one environment) named, without recipe and version."""
        return "-".join([TMAZE_TASK, *map(str, self.lengths), *([NOISY] if self.noise else [])])


def parse_tmaze_name(name: str) -> TMazeName:
    """ "tmaze-20-50-noisy-oracle-v0" -> TMazeName((20, 50), True, "oracle-v0"); "_" separates as "-" does
    (file stems). A name whose first token is not "tmaze" is an EnvNameError."""
    tokens = re.split(r"[-_]", name.strip().lower())
    if tokens[0] != TMAZE_TASK:
        raise EnvNameError(f"{name!r} is not a T-Maze name: write 'tmaze-<length>', e.g. 'tmaze-100'")
    rest = tokens[1:]
    lengths = []
    while rest and rest[0].isdigit():
        lengths.append(int(rest.pop(0)))
    noise = bool(rest) and rest[0] == NOISY
    return TMazeName(tuple(lengths), noise, "-".join(rest[noise:]))


def tmaze_kwargs(name: str) -> dict[str, Any]:
    """The `gym.make(TMAZE, ...)` settings a T-Maze name gives: its one corridor length (none named: the
    default) and the noise channel."""
    parsed = parse_tmaze_name(name)
    if len(parsed.lengths) > 1:
        one = replace(parsed, lengths=parsed.lengths[:1], rest="").env_name
        raise EnvNameError(
            f"{name!r} names corridor lengths {', '.join(map(str, parsed.lengths))}, but an environment has "
            f"one. Fix: name one, e.g. {one!r} (data.env={one} to evaluate a run on it)"
        )
    return {
        **({"corridor_length": parsed.lengths[0]} if parsed.lengths else {}),
        **({"noise": True} if parsed.noise else {}),
    }


def register_tmaze() -> None:
    """Register `aaren_rl/TMaze-v0` with gymnasium (idempotent; done on import)."""
    if TMAZE not in gym.registry:
        gym.register(TMAZE, entry_point=make_tmaze)


register_tmaze()
