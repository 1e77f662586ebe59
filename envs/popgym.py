"""POPGym tasks (Morad et al., ICLR 2023) under our own ids, in spaces Stable-Baselines3 takes.

POPGym is an optional extra (`pip install -e .[popgym]`): importing this module never needs it, and
asking for a task without it raises one MissingExtraError (an ImportError) naming the install
command. Where POPGym is installed, importing this module registers every task of `popgym.envs.ALL` (the Easy, Medium and
Hard levels) as `aaren_rl/popgym-<Name>-v0`, `<Name>` being the POPGym class name (e.g.
`RepeatPreviousEasy`). The entry points live here, so the qualified id that `popgym_env_id` returns
(`envs.popgym:aaren_rl/popgym-<Name>-v0`) makes `gym.make` import this module first: fresh processes,
such as SubprocVecEnv workers, can make the tasks by id.

Spaces: POPGym observations are Discrete, MultiDiscrete or Box, except Autoencode's
Tuple(Discrete, Discrete), which SB3 refuses; `TupleToMultiDiscrete` turns it into a MultiDiscrete.
The Labyrinth tasks exist only where the `mazelib` package is installed (POPGym leaves them out
otherwise). Episode returns are scaled by POPGym into [-1, 1].

Flat observations, for the decision agents' linear state embedding: every task is also registered as
`aaren_rl/popgym-<Name>-Flat-v0`, whose observations are one float32 vector (`FlatObservation`: Discrete
and MultiDiscrete one-hot, as SB3 encodes them for its own networks; Box as is). A card index fed as a
number would place the suits on a line, which a linear embedding cannot separate.

Offline data: `PopgymOracle` is a scripted behaviour policy for the tasks of `OFFLINE_TASKS`
(RepeatFirst, RepeatPrevious and CountRecall, Easy and Medium), which `envs.collect` rolls out into
D4RL-format files under the names `popgym-<task>-<level>` of `envs.d4rl` (e.g. "popgym-repeatfirst-easy").
Their flat ids are registered even where POPGym is missing, so that making one raises the
MissingExtraError above rather than gymnasium's "doesn't exist".
"""

from __future__ import annotations

import copy
import importlib.util
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.errors import EnvNameError, MissingExtraError

NAMESPACE = "aaren_rl"
ID_FORMAT = NAMESPACE + "/popgym-{name}-v0"
#: Our ids of the tasks with flat observations (`FlatObservation`).
FLAT_ID_FORMAT = NAMESPACE + "/popgym-{name}-Flat-v0"
LEVELS = ("Easy", "Medium", "Hard")
INSTALL_HINT = "pip install -e .[popgym]"
#: The first token of the D4RL-style names of POPGym tasks ("popgym-repeatfirst-easy", `offline_name`).
POPGYM_TASK = "popgym"


def _popgym_envs() -> ModuleType:
    """`popgym.envs`, or one MissingExtraError naming the install command where POPGym is missing."""
    try:
        import popgym.envs
    except ImportError as error:
        raise MissingExtraError(
            f"POPGym tasks need the optional popgym package. Fix: {INSTALL_HINT}"
        ) from error
    return popgym.envs


def _task_classes(level: str | None = None) -> dict[str, type[gym.Env]]:
    """POPGym's task classes by class name: all levels, or the tasks of one level."""
    envs = _popgym_envs()
    if level is None:
        table = envs.ALL
    elif level in LEVELS:
        table = getattr(envs, f"ALL_{level.upper()}")
    else:
        raise ValueError(f"unknown POPGym level {level!r}; choose from {LEVELS} or None for all")
    return {cls.__name__: cls for cls in table}


def popgym_task_names(level: str | None = None) -> list[str]:
    """The POPGym task names (class names, e.g. `RepeatPreviousEasy`), of one level or of all."""
    return list(_task_classes(level))


def offline_name(name: str) -> str:
    """`RepeatFirstEasy` -> `popgym-repeatfirst-easy`: the D4RL-style name of a POPGym task (class name)."""
    level = next(level for level in LEVELS if name.endswith(level))
    return f"{POPGYM_TASK}-{name.removesuffix(level).lower()}-{level.lower()}"


def _task_name(name: str) -> str:
    """The class name that `name` means: a class name, POPGym's own id, our id (flat or not) or the
    D4RL-style name."""
    envs = _popgym_envs()
    by_id = {spec["id"]: cls.__name__ for cls, spec in envs.ALL.items()}
    for form in (ID_FORMAT.format, FLAT_ID_FORMAT.format, offline_name):
        by_id.update({form(name=cls.__name__): cls.__name__ for cls in envs.ALL})
    short = name.removeprefix(f"{__name__}:")
    if short in by_id.values():
        return short
    if short in by_id:
        return by_id[short]
    raise EnvNameError(
        f"unknown POPGym task {name!r}; use a class name such as 'RepeatPreviousEasy', POPGym's id "
        f"'popgym-RepeatPreviousEasy-v0' or ours '{ID_FORMAT.format(name='RepeatPreviousEasy')}'. "
        f"Known: {sorted(by_id.values())}"
    )


def popgym_env_id(name: str) -> str:
    """Our qualified gymnasium id of a POPGym task (`envs.popgym:aaren_rl/popgym-<Name>-v0`), from its
    class name, POPGym's id or our id; `gym.make` of it works in any process."""
    return f"{__name__}:{ID_FORMAT.format(name=_task_name(name))}"


def make_popgym_env(name: str, **kwargs: Any) -> gym.Env:
    """`gym.make` of a POPGym task by name (see `popgym_env_id`), wrapped for SB3."""
    return gym.make(popgym_env_id(name), **kwargs)


class TupleToMultiDiscrete(gym.ObservationWrapper):
    """A Tuple of Discrete observations as one MultiDiscrete (SB3 takes no Tuple spaces).

    Entry i becomes `observation[i] - start_i`, so every entry counts from 0 like SB3's one-hot
    encoding of MultiDiscrete assumes; the Discrete sizes become the `nvec`.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Tuple) or not all(isinstance(s, spaces.Discrete) for s in space):
            raise ValueError(f"TupleToMultiDiscrete needs a Tuple of Discrete spaces, got {space}")
        self.starts = np.array([s.start for s in space], dtype=np.int64)
        self.observation_space = spaces.MultiDiscrete([s.n for s in space])

    def observation(self, observation: tuple) -> np.ndarray:
        return np.asarray(observation, dtype=np.int64) - self.starts


class FlatObservation(gym.ObservationWrapper):
    """Observations as one float32 vector (gymnasium's `spaces.flatten`): Discrete and MultiDiscrete
    one-hot, as SB3 encodes them for its networks, Tuples concatenated, Box as is."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.source_space = env.observation_space
        flat = spaces.flatten_space(self.source_space)
        self.observation_space = spaces.Box(
            flat.low.astype(np.float32), flat.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation: Any) -> np.ndarray:
        return spaces.flatten(self.source_space, observation).astype(np.float32)


class InfoSnapshots(gym.Wrapper):
    """Each step's and reset's info as a copy: POPGym's CountRecall puts its live count array in every
    info, so a kept info would change with later steps (and gymnasium's checker warns)."""

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs, copy.deepcopy(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, copy.deepcopy(info)


def popgym_task(name: str, flat: bool = False, **kwargs: Any) -> gym.Env:
    """The entry point of our ids: POPGym's task `name` (class name), its infos copied (`InfoSnapshots`),
    its observations flat (`FlatObservation`) or, as SB3 takes them, with Tuples made MultiDiscrete."""
    env = InfoSnapshots(_task_classes()[name](**kwargs))
    if flat:
        return FlatObservation(env)
    return TupleToMultiDiscrete(env) if isinstance(env.observation_space, spaces.Tuple) else env


def flat_env_id(name: str) -> str:
    """Our qualified id of POPGym task `name` (a class name, not checked) with flat observations."""
    return f"{__name__}:{FLAT_ID_FORMAT.format(name=name)}"


# --------------------------------------------------------------------------------------------------
# Scripted oracles for offline data


class _RepeatFirst:
    """RepeatFirst: every step is rewarded for the suit of the episode's first card (its first observation)."""

    def __init__(self, task: gym.Env):
        self.first: int | None = None

    def answer(self, card: np.ndarray) -> int:
        if self.first is None:
            self.first = int(card)
        return self.first


class _RepeatPrevious:
    """RepeatPrevious: a step is rewarded for the suit of the card k - 1 observations before the current
    one (the task's `k`, a setting of its level); the first k - 1 steps are not rewarded (answered 0)."""

    def __init__(self, task: gym.Env):
        self.cards: deque[int] = deque(maxlen=task.unwrapped.k)

    def answer(self, card: np.ndarray) -> int:
        self.cards.append(int(card))
        return self.cards[0] if len(self.cards) == self.cards.maxlen else 0


class _CountRecall:
    """CountRecall: an observation is [dealt value, queried value]; a step is rewarded for how often the
    queried value has been dealt so far, this step's card included."""

    def __init__(self, task: gym.Env):
        self.counts = np.zeros(task.observation_space.nvec[0], dtype=np.int64)

    def answer(self, observation: np.ndarray) -> int:
        value, query = (int(x) for x in observation)
        self.counts[value] += 1
        return int(self.counts[query])


#: The oracles' memories by POPGym task family (class name without its level).
_MEMORIES: dict[str, Callable[[gym.Env], Any]] = {
    "RepeatFirst": _RepeatFirst,
    "RepeatPrevious": _RepeatPrevious,
    "CountRecall": _CountRecall,
}
#: The levels with offline data: their episodes (51 to 415 steps) outlast a 20-step window.
OFFLINE_LEVELS = ("Easy", "Medium")
#: The POPGym tasks (class names) with scripted oracles and offline data (`envs.d4rl` rows).
OFFLINE_TASKS = tuple(f"{family}{level}" for family in _MEMORIES for level in OFFLINE_LEVELS)


class PopgymOracle:
    """A scripted behaviour policy with SB3's `predict` for POPGym's RepeatFirst, RepeatPrevious and
    CountRecall: it reads the flat observations it is given (one env's rows of `FlatObservation`) and
    answers from a memory of what it has seen, which earns the maximum return, 1.

    Sampled (`deterministic=False`, how recipes collect), each episode draws a share of random actions
    from `random_shares` (uniformly), and each step takes a uniform random action with that probability,
    so one file holds expert, mediocre and random episodes; the memory reads every observation either
    way. Only the task's settings are read from the env (RepeatPrevious's lag `k`, the spaces), never
    its state. The state is a tuple of per-env (memory, share).
    """

    def __init__(self, name: str, *, random_shares: Sequence[float] = (0.0,), seed: Any = None):
        self.task = _task_name(name)
        family = next((f for f in _MEMORIES if self.task in (f + level for level in LEVELS)), None)
        if family is None:
            raise EnvNameError(
                f"PopgymOracle has no script for {name!r}: it plays {', '.join(_MEMORIES)} (any level)"
            )
        if not random_shares or not all(0.0 <= p <= 1.0 for p in random_shares):
            raise ValueError(f"PopgymOracle random_shares = {random_shares!r}: give shares from 0 to 1")
        self._settings = popgym_task(self.task)  # read for its settings only; never reset or stepped
        self._memory = _MEMORIES[family]
        self.observation_space = self._settings.observation_space
        self.action_space = self._settings.action_space
        self.random_shares = tuple(float(p) for p in random_shares)
        self.rng = np.random.default_rng(seed)

    def _start(self, deterministic: bool) -> tuple[Any, float]:
        share = 0.0 if deterministic else float(self.rng.choice(self.random_shares))
        return self._memory(self._settings), share

    def _act(self, memory: Any, share: float, flat: np.ndarray) -> int:
        answer = memory.answer(spaces.unflatten(self.observation_space, flat))
        if share > 0 and self.rng.random() < share:
            return int(self.action_space.start + self.rng.integers(self.action_space.n))
        return int(self.action_space.start + answer)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[tuple[Any, float], ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[tuple[Any, float], ...]]:
        obs = np.asarray(observation, dtype=np.float32).reshape(-1, spaces.flatdim(self.observation_space))
        starts = np.ones(len(obs), bool) if state is None or episode_start is None else episode_start
        plans = tuple(
            self._start(deterministic) if starts[i] else state[i]  # type: ignore[index]
            for i in range(len(obs))
        )
        actions = [self._act(memory, share, obs[i]) for i, (memory, share) in enumerate(plans)]
        return np.array(actions, dtype=np.int64), plans


def register_popgym_tasks(names: Iterable[str] | None = None) -> None:
    """Register POPGym tasks (class names; by default every one) under our ids, as POPGym presents them
    and flat (idempotent)."""
    for name in _task_classes() if names is None else names:
        for id_format, flat in ((ID_FORMAT, False), (FLAT_ID_FORMAT, True)):
            env_id = id_format.format(name=name)
            if env_id not in gym.registry:
                gym.register(
                    env_id, entry_point=f"{__name__}:popgym_task", kwargs={"name": name, "flat": flat}
                )


# Without POPGym only the offline tasks: making one then raises the MissingExtraError naming the extra.
register_popgym_tasks(None if importlib.util.find_spec("popgym") is not None else OFFLINE_TASKS)
