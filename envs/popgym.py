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
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.errors import EnvNameError, MissingExtraError

NAMESPACE = "aaren_rl"
ID_FORMAT = NAMESPACE + "/popgym-{name}-v0"
LEVELS = ("Easy", "Medium", "Hard")
INSTALL_HINT = "pip install -e .[popgym]"


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


def _task_name(name: str) -> str:
    """The class name that `name` means: a class name, POPGym's own id or our id."""
    envs = _popgym_envs()
    by_id = {spec["id"]: cls.__name__ for cls, spec in envs.ALL.items()}
    by_id.update({ID_FORMAT.format(name=cls.__name__): cls.__name__ for cls in envs.ALL})
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


def popgym_task(name: str, **kwargs: Any) -> gym.Env:
    """The entry point of our ids: POPGym's task `name` (class name), Tuple observations flattened."""
    env = _task_classes()[name](**kwargs)
    return TupleToMultiDiscrete(env) if isinstance(env.observation_space, spaces.Tuple) else env


def register_popgym_tasks() -> None:
    """Register every POPGym task under our id (idempotent; done on import where POPGym is installed)."""
    for name in _task_classes():
        env_id = ID_FORMAT.format(name=name)
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"{__name__}:popgym_task", kwargs={"name": name})


if importlib.util.find_spec("popgym") is not None:
    register_popgym_tasks()
