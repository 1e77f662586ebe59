"""Everything known about D4RL's locomotion tasks (and this project's T-Maze), in one table, plus the one
parser of D4RL names.

D4RL's gym-mujoco datasets were recorded on gym's ``-v2`` MuJoCo tasks (mujoco-py, MuJoCo 2.x), which
no longer run; the maintained equivalents are Gymnasium's ``-v5`` tasks with the same observation
layout for hopper, halfcheetah and walker2d. Ant needs extra settings and padding, recorded in its
table entry and applied by :func:`envs.make.make_env`.

A name refers to a task by its first token before "-" or "_", lower-cased: "hopper-medium-v2",
"Hopper-v5" and "hopper" all name hopper, while "antmaze-umaze-v0" names none. T-Maze names carry
corridor lengths after the task ("tmaze-100", "tmaze-20-50-oracle-v0": see :mod:`envs.tmaze`); its scores
are success rates (reference returns 0 and 1, so the normalised score is 100 x the share of episodes won).
POPGym tasks with offline data are named "popgym-<task>-<level>" ("popgym-repeatfirst-easy", datasets
"popgym-repeatfirst-easy-oracle-v0": see :mod:`envs.popgym`); their names are three tokens long.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from envs.errors import DatasetError, EnvNameError
from envs.popgym import POPGYM_TASK, flat_env_id, offline_name
from envs.tmaze import TMAZE, TMAZE_TASK, tmaze_kwargs


@dataclass(frozen=True)
class D4RLTask:
    """One task of the table and what this project attaches to it."""

    name: str  # D4RL's prefix: "hopper"
    gym_id: str  # the Gymnasium task evaluated on
    ref_min: float  # D4RL's random-policy reference return (d4rl/infos.py)
    ref_max: float  # D4RL's expert-policy reference return (d4rl/infos.py)
    obs_dim: int  # observation size in D4RL's files
    # Evaluation target returns, the main one first (the Decision Transformer code's); () for none.
    targets: tuple[float, ...] = ()
    # Default behaviour policy per role ("weak", "medium", "expert"): RL Zoo agent names, see envs.experts.
    policies: Mapping[str, str] = field(default_factory=dict)
    # gymnasium.make defaults that bring the v5 task closest to D4RL's v2 data.
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    published: bool = True  # D4RL publishes its datasets (PUBLISHED_DATASETS); False: only collected here


def _popgym(name: str, obs_dim: int, actions: int) -> D4RLTask:
    """A POPGym task (class name) with offline data, in flat observations of `obs_dim` entries.

    Its returns lie in [-1, 1]: each rewarded step earns +-1 / (number of rewarded steps), + for the
    right answer. The reference returns are the mean return of uniform random actions, right with
    chance 1 / `actions` whatever the answer, so 2 / actions - 1, and the oracle's, always right, 1.
    Targets: all right, and a return of 0 (as many steps right as wrong), which asks for mediocre play.
    """
    return D4RLTask(
        offline_name(name), flat_env_id(name), 2 / actions - 1, 1.0, obs_dim, (1.0, 0.0), published=False
    )


#: The tasks by D4RL prefix. Behaviour policies rise in return from "weak" to "expert" on the v5
#: tasks; "medium" is the one nearest 1/3 of the expert's return, as D4RL's medium datasets.
#: Ant's settings and its zero-padded observation are explained in :func:`envs.make.make_env`.
TASKS: dict[str, D4RLTask] = {
    task.name: task
    for task in (
        D4RLTask(
            "hopper",
            "Hopper-v5",
            -20.272305,
            3234.3,
            obs_dim=11,
            targets=(3600.0, 1800.0),
            policies={"weak": "a2c-Hopper", "medium": "sac-Hopper", "expert": "tqc-Hopper"},
        ),
        D4RLTask(
            "halfcheetah",
            "HalfCheetah-v5",
            -280.178953,
            12135.0,
            obs_dim=17,
            targets=(12000.0, 6000.0),
            policies={"weak": "a2c-HalfCheetah", "medium": "ars-HalfCheetah", "expert": "tqc-HalfCheetah"},
        ),
        D4RLTask(
            "walker2d",
            "Walker2d-v5",
            1.629008,
            4592.3,
            obs_dim=17,
            targets=(5000.0, 2500.0),
            policies={"weak": "a2c-Walker2d", "medium": "ars-Walker2d", "expert": "tqc-Walker2d"},
        ),
        D4RLTask(
            "ant",
            "Ant-v5",
            -325.6,
            3879.7,
            obs_dim=111,
            env_kwargs={"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0},
        ),
        # Success rates: the main target wins; the second asks to lose, which only an agent that
        # remembers the cue and reads the target can do on purpose.
        D4RLTask(TMAZE_TASK, TMAZE, 0.0, 1.0, obs_dim=3, targets=(1.0, 0.0), published=False),
        # Four suits to answer, one-hot cards.
        _popgym("RepeatFirstEasy", obs_dim=4, actions=4),
        _popgym("RepeatFirstMedium", obs_dim=4, actions=4),
        _popgym("RepeatPreviousEasy", obs_dim=4, actions=4),
        _popgym("RepeatPreviousMedium", obs_dim=4, actions=4),
        # Counts 0-26 to answer; one-hot dealt and queried colours (Easy) or suits (Medium).
        _popgym("CountRecallEasy", obs_dim=4, actions=27),
        _popgym("CountRecallMedium", obs_dim=8, actions=27),
    )
}

#: The datasets D4RL publishes for every task above, at :data:`PUBLISHED_VERSION`.
PUBLISHED_DATASETS = ("random", "medium", "medium-replay", "medium-expert", "expert", "full-replay")
PUBLISHED_VERSION = "v2"
#: Where D4RL publishes its gym-mujoco v2 files (the d4rl package's ``infos.py``).
BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2"

_DATASET_ID = re.compile(r"^(?P<name>[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+?)(?:-(?P<version>[vV]\d+))?$")


def task_of(name: str) -> D4RLTask | None:
    """The task a name refers to ("hopper-medium-v2", "Hopper-v5", "hopper" -> hopper;
    "popgym_repeatfirst_easy_oracle-v0" -> popgym-repeatfirst-easy), or None. A task's Gymnasium id, with
    or without its "module:" prefix, names it too (the ids of POPGym's rows start with no task token)."""
    bare = name.strip().rpartition(":")[2]
    for task in TASKS.values():
        if task.gym_id.rpartition(":")[2] == bare:
            return task
    tokens = re.split(r"[-_]", name.strip().lower())
    return TASKS.get("-".join(tokens[:3]) if tokens[0] == POPGYM_TASK else tokens[0])


def parse_dataset_id(dataset_id: str) -> tuple[str, str, str]:
    """``hopper-medium-replay-v2`` -> ``("hopper", "medium-replay", "v2")``; a missing version means v2.

    Any case is accepted and the parts come back lower-cased. The task is not checked against
    :data:`TASKS`, so ids of other D4RL families parse too. Raises :class:`DatasetError` otherwise.
    """
    match = _DATASET_ID.match(dataset_id.strip())
    if match is None:
        raise DatasetError(
            f"{dataset_id!r} is not a D4RL dataset id (expected '<env>-<dataset>-v<k>', e.g. 'hopper-medium-v2')."
        )
    task, _, dataset = match["name"].lower().partition("-")
    return task, dataset, (match["version"] or PUBLISHED_VERSION).lower()


def is_published(task: str, dataset: str, version: str) -> bool:
    """Whether D4RL publishes ``<task>-<dataset>-<version>`` (gym-mujoco v2 only)."""
    return (
        task in TASKS
        and TASKS[task].published
        and dataset in PUBLISHED_DATASETS
        and version == PUBLISHED_VERSION
    )


def canonical_env_id(name: str) -> str:
    """The Gymnasium id ``envs.make_env(name)`` creates: registered ids as given, D4RL names -> their v5 task.

    Raises :class:`EnvNameError` for a name that is neither, listing the D4RL tasks known here.
    """
    if name in gym.envs.registry or ":" in name:  # "module:EnvId" ids import their module at make time
        return name
    task = task_of(name)
    if task is None:
        raise EnvNameError(
            f"Unknown environment {name!r}: not a registered Gymnasium id and not a D4RL name "
            f"starting with one of {sorted(TASKS)} (e.g. 'hopper-medium-v2')."
        )
    return task.gym_id


def env_kwargs(name: str) -> dict[str, Any]:
    """The gymnasium.make settings a task name implies: its table entry's, plus what a T-Maze name says
    (corridor length, noise channel); {} for a name of no task here."""
    task = task_of(name)
    if task is None:
        return {}
    return {**task.env_kwargs, **(tmaze_kwargs(name) if task.name == TMAZE_TASK else {})}


def reference_scores(name: str) -> tuple[float, float] | None:
    """(ref_min, ref_max) for any name of a D4RL task ("hopper-medium-v2", "Hopper-v5", "hopper"), else None."""
    task = task_of(name)
    return None if task is None else (task.ref_min, task.ref_max)


def eval_targets(name: str) -> tuple[float, ...] | None:
    """The evaluation target returns of the task a name refers to (main one first), or None if it has none."""
    task = task_of(name)
    return task.targets if task is not None and task.targets else None


def fill_reference_scores(metadata: dict[str, Any]) -> None:
    """Add ``ref_min_score``/``ref_max_score`` for a D4RL task's ``env_id``; values already there are kept."""
    refs = reference_scores(metadata["env_id"]) if isinstance(metadata.get("env_id"), str) else None
    if refs is not None:
        metadata.setdefault("ref_min_score", refs[0])
        metadata.setdefault("ref_max_score", refs[1])


def fill_metadata(metadata: dict[str, Any], label: str) -> None:
    """Complete a dataset's metadata in place for D4RL-named data that does not store it.

    A missing ``env_id`` is inferred from ``metadata["dataset_id"]``, else from the stem of ``label``
    (the file the data came from), when either names a D4RL task; then reference scores are added.
    """
    if "env_id" not in metadata:
        for name in (metadata.get("dataset_id"), Path(label).stem):
            if isinstance(name, str) and task_of(name):
                metadata["env_id"] = canonical_env_id(name)
                break
    fill_reference_scores(metadata)
