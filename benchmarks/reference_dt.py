"""Reference anchor: CORL's single-file Decision Transformer on the batching sweep's datasets and budget,
scored and compared under the same statistics as the sweep's own modes.

CORL (github.com/tinkoff-ai/CORL) is a widely used set of single-file offline-RL reference
implementations. This script runs its `algorithms/offline/dt.py` unchanged from a checkout named by
--corl (nothing of it is copied here). dt.py imports d4rl, gym 0.23, wandb and pyrallis; each run stands
them in (`stand_ins`):
- `gym.make(name)`: the dataset file's environment (`envs.make_env` of its env_id) with gym 0.23's API
  (`reset()` -> observation, `step()` -> 4-tuple, `seed()`), D4RL's `get_dataset()` over the file and
  `get_normalized_score()` with the file's reference scores; `gym.wrappers.TransformObservation` and
  `TransformReward` as gym 0.23 has them;
- `wandb.log` keeps the logged rows (the evaluations are read back from them); `pyrallis.wrap` passes the
  config through; `d4rl` is an empty module.

Data and budget come from the sweep file (configs/sweeps/<sweep>.yaml): the same dataset files, seeds,
gradient steps, warm-up steps, supervised timesteps per batch (dt.py's batch_size x seq_len), evaluation
episodes per target and evaluation seed, and the task's evaluation targets. dt.py's other settings are its
defaults, which configs/base.yaml's reference hyperparameters follow. Left different: dt.py also evaluates
at step 0, plays its evaluation episodes one after another from one seeded reset (the sweep's vectorised
episodes are seeded from the same number, so their starts differ), and draws windows from numpy's and
torch's global generators.

Each run's score is its best target's mean D4RL-normalised score at the last step (the sweep's rule),
kept in <work>/runs/<data>-s<seed>.json: finished runs are skipped when the command runs again, an
interrupted one starts again. The report puts the runs beside the sweep's tracked trials as one more
value of its compared axis, and compares every value with the reference per dataset and pooled
(`agents.decision.sweep.compare_values`: IQM with 95% stratified-bootstrap intervals, probability of
improvement, a difference called only when the intervals separate). Writes reference_dt.json and .png
into --out (the tracked result for the batching sweep, else into <out>/variants/).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from agents.common.cli import exits_2_on_user_errors
from agents.common.overrides import ConfigError
from agents.common.shipped import find_config
from agents.decision.evaluation import default_targets
from agents.decision.sweep import SEED_AXIS, Compare, Sweep, compare_values, load_sweep, plot, summarise
from envs import load_dataset, make_env
from envs.datasets import OfflineDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from agents.common import stats  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Claim,
    add_output_arguments,
    machine_info,
    output_stem,
    write_json,
)

DT_FILE = Path("algorithms") / "offline" / "dt.py"
REFERENCE = "reference"  # the runs' value of the sweep's compared axis
D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Which sweep's data and budget the reference runs on (all its datasets and seeds, or those named),
    and on how many torch threads."""

    sweep: str = "batching"
    threads: int = 1
    data: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """The sweep's name (its report's folder under <out>/sweeps)."""
        return Path(self.sweep).stem


CLAIM = Claim("reference_dt", Settings())


# ---- the stand-ins dt.py imports ----------------------------------------------------------------------


class OldGymEnv:
    """A dataset's environment behind gym 0.23's API, with D4RL's dataset methods over the file."""

    def __init__(self, dataset: OfflineDataset) -> None:
        self.dataset = dataset
        self.env = make_env(dataset.metadata["env_id"])
        self.observation_space, self.action_space = self.env.observation_space, self.env.action_space
        self._seed: int | None = None

    def seed(self, seed: int) -> None:
        """Seed the next reset (later resets continue its generator) and the action space."""
        self._seed = seed
        self.action_space.seed(seed)

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), terminated or truncated, info

    def get_dataset(self) -> dict[str, np.ndarray]:
        return {key: getattr(self.dataset, key) for key in D4RL_KEYS}

    def get_normalized_score(self, returns: np.ndarray) -> np.ndarray:
        return np.asarray(self.dataset.normalized_score(returns)) / 100


class Wrapper:
    """gym 0.23's wrapper: `transform` applied to observations (`field` 0) or rewards (`field` 1), every
    other attribute the wrapped env's."""

    def __init__(self, env: Any, transform: Callable, field: int) -> None:
        self.env, self.transform, self.field = env, transform, field

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def reset(self) -> Any:
        obs = self.env.reset()
        return self.transform(obs) if self.field == 0 else obs

    def step(self, action: np.ndarray) -> tuple:
        out = list(self.env.step(action))
        out[self.field] = self.transform(out[self.field])
        return tuple(out)


def stand_ins(dataset: OfflineDataset, logged: list[dict]) -> dict[str, ModuleType]:
    """The modules dt.py imports in place of gym, d4rl, wandb and pyrallis (module docstring)."""
    gym, wrappers, d4rl, wandb, pyrallis = (
        ModuleType(name) for name in ("gym", "gym.wrappers", "d4rl", "wandb", "pyrallis")
    )
    gym.Env = OldGymEnv
    gym.make = lambda name: OldGymEnv(dataset)
    wrappers.TransformObservation = lambda env, f: Wrapper(env, f, 0)
    wrappers.TransformReward = lambda env, f: Wrapper(env, f, 1)
    gym.wrappers = wrappers
    wandb.init = lambda **kwargs: None
    wandb.run = type("Run", (), {"save": staticmethod(lambda *args: None)})
    wandb.log = lambda row, step: logged.append({"step": step, **row})
    pyrallis.wrap = lambda: lambda fn: fn
    return {"gym": gym, "gym.wrappers": wrappers, "d4rl": d4rl, "wandb": wandb, "pyrallis": pyrallis}


# ---- one run -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Run:
    """One reference run: a dataset of the sweep (its label and file), a seed and the sweep's budget."""

    data: str
    path: str
    seed: int
    steps: int
    batch_steps: int
    warmup_steps: int
    eval_episodes: int
    eval_seed: int

    @property
    def name(self) -> str:
        return f"{self.data}-s{self.seed}"


def sweep_runs(sweep: Sweep, settings: Settings) -> list[Run]:
    """Per dataset and seed of the sweep (those `settings` names, where it names some), the run at its
    budget."""
    runs = {}
    for trial in sweep.trials:
        data, seed = trial.point["data"], int(trial.point[SEED_AXIS])
        if (settings.data and data not in settings.data) or (settings.seeds and seed not in settings.seeds):
            continue
        train, evaluation = trial.settings["train"], trial.settings["eval"]
        runs[data, seed] = Run(
            data,
            str(Path(trial.settings["data"]["dataset"]).expanduser()),
            seed,
            train["steps"],
            train["batch_steps"],
            train["warmup_steps"],
            evaluation["episodes"],
            evaluation["seed"],
        )
    return list(runs.values())


@contextlib.contextmanager
def imported_as(modules: dict[str, ModuleType]) -> Iterator[None]:
    """`modules` in sys.modules for the block, and what those names held before after it (a later import
    of the real gym, as Stable-Baselines3 checks for, must not find the stand-in)."""
    before = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in before.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_dt(corl: Path) -> ModuleType:
    """dt.py of the CORL checkout (imported inside `imported_as` the stand-ins)."""
    spec = importlib.util.spec_from_file_location("corl_dt", corl / DT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_reference(run: Run, corl: Path, threads: int) -> dict:
    """Train and evaluate dt.py on the run's dataset; its record (scores per target at the last step)."""
    dataset = load_dataset(run.path)
    logged: list[dict] = []
    with imported_as(stand_ins(dataset, logged)):
        return _train(load_dt(corl), run, dataset, logged, threads)


def _train(dt: ModuleType, run: Run, dataset: OfflineDataset, logged: list[dict], threads: int) -> dict:
    """dt.train at the run's budget; the run's record from what it logged."""
    targets = default_targets(dataset.metadata["env_id"], float(dataset.episode_returns.max()))
    seq_len = dt.TrainConfig.seq_len
    if run.batch_steps % seq_len:
        raise ConfigError(
            f"train.batch_steps = {run.batch_steps} is not a whole number of dt.py's windows of {seq_len} "
            f"steps. Fix: a sweep whose train.batch_steps is a multiple of {seq_len}"
        )
    config = dt.TrainConfig(
        env_name=run.data,
        train_seed=run.seed,
        update_steps=run.steps,
        warmup_steps=run.warmup_steps,
        batch_size=run.batch_steps // seq_len,
        target_returns=tuple(targets),
        eval_episodes=run.eval_episodes,
        eval_every=run.steps,
        eval_seed=run.eval_seed,
        num_workers=0,
        device="cpu",
    )
    torch.set_num_threads(threads)
    start = time.perf_counter()
    dt.train(config)
    last = max(row["step"] for row in logged)
    evaluation = [
        {
            "target_return": target,
            "episodes": run.eval_episodes,
            "return_mean": row[f"eval/{target}_return_mean"],
            "score_mean": row[f"eval/{target}_normalized_score_mean"],
        }
        for row in logged
        if row["step"] == last
        for target in targets
        if f"eval/{target}_return_mean" in row
    ]
    return {
        **dataclasses.asdict(run),
        "dt_config": dataclasses.asdict(config),
        "wall_s": time.perf_counter() - start,
        "evaluation": evaluation,
    }


def recorded(run: Run, corl: Path, work: Path, threads: int) -> dict:
    """The run's record, read back if an earlier session finished the same run, else trained now."""
    path = work / "runs" / f"{run.name}.json"
    if path.is_file():
        record = json.loads(path.read_text())
        kept = {key: record.get(key) for key in dataclasses.asdict(run)}
        if kept != dataclasses.asdict(run):
            raise ConfigError(
                f"{path} was made for another run ({kept}, now {dataclasses.asdict(run)}). Fix: delete it, or "
                "pass another --work folder"
            )
        return record
    record = train_reference(run, corl, threads)
    write_json(path, record)
    return record


# ---- the report --------------------------------------------------------------------------------------


def as_trial(record: dict, axis: str) -> dict:
    """A reference record as a sweep trial record: the reference a value of the compared axis."""
    point = {"data": record["data"], SEED_AXIS: str(record["seed"]), axis: REFERENCE}
    return {"name": record["data"], "point": point, "status": "finished", "evaluation": record["evaluation"]}


def corl_version(corl: Path) -> dict:
    """The checkout's commit (where git knows it) and dt.py's SHA-256."""
    git = subprocess.run(["git", "-C", str(corl), "rev-parse", "HEAD"], capture_output=True, text=True)
    digest = hashlib.sha256((corl / DT_FILE).read_bytes()).hexdigest()
    return {"commit": git.stdout.strip() or None, "dt_sha256": digest}


def report(
    sweep: Sweep, settings: Settings, references: list[dict], corl: Path, out: Path, stem: Path
) -> dict:
    """The reference records beside the trials of the sweep's report in <out>/sweeps (where there is one),
    each value compared with the reference; writes <stem>.json and .png."""
    axis = sweep.compare.axis
    tracked = out / "sweeps" / settings.name / "sweep.json"
    trials = json.loads(tracked.read_text())["trials"] if tracked.is_file() else []
    records = [as_trial(r, axis) for r in references] + trials
    comparison = compare_values(records, Compare(axis, REFERENCE), "score")
    rows = summarise(records, "score")
    results = {
        "machine": machine_info("cpu"),
        "settings": dataclasses.asdict(settings),
        "corl": corl_version(corl),
        "statistics": stats.describe(),
        "runs": references,
        "groups": rows,
        "comparison": comparison.to_json(),
    }
    write_json(stem.with_suffix(".json"), results)
    plot(rows, comparison, "score", stem.with_suffix(".png"))
    return results


def print_report(results: dict) -> None:
    """Per dataset and pooled (over more than one): each value's IQM and its verdict against the
    reference."""
    comparison = results["comparison"]
    rows = [(s["point"].get("data", "?"), s) for s in comparison["strata"]]
    if comparison["overall"] and len(comparison["overall"]["pooled"]) > 1:
        rows.append((f"all ({', '.join(comparison['overall']['pooled'])})", comparison["overall"]))
    for name, row in rows:
        cells = ", ".join(
            f"{value} {stats.Interval(**iqm):.1f}"
            + (f" ({row['verdict'][value]})" if value in row["verdict"] else "")
            for value, iqm in row["iqm"].items()
        )
        print(f"{name}: {cells}")


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Interrupted? Run the same command again: finished runs are kept.",
    )
    parser.add_argument("--corl", type=Path, required=True, help=f"a CORL checkout (holding {DT_FILE})")
    parser.add_argument(
        "--sweep",
        default=Settings.sweep,
        help="the sweep (configs/sweeps/<name>.yaml) whose data and budget to use",
    )
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads per run")
    parser.add_argument("--data", nargs="+", help="only these datasets of the sweep (its data labels)")
    parser.add_argument("--seeds", type=int, nargs="+", help="only these seeds of the sweep")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("~/.cache/aaren-rl/reference_dt").expanduser(),
        help="folder of the finished runs' records (reused: finished runs are skipped)",
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if not (args.corl / DT_FILE).is_file():
        raise ConfigError(f"{args.corl / DT_FILE} does not exist. Fix: pass --corl a CORL checkout")
    settings = Settings(args.sweep, args.threads, tuple(args.data or ()), tuple(args.seeds or ()))
    sweep = load_sweep(find_config(settings.sweep, "sweeps"), args.out / "sweeps" / settings.name)
    if sweep.compare is None:
        raise ConfigError(
            f"{sweep.path} has no compare: axis to put the reference on. Fix: name a sweep that has one"
        )
    runs = sweep_runs(sweep, settings)
    references = [recorded(run, args.corl, args.work / settings.name, settings.threads) for run in runs]
    variant = f"reference_dt_{settings.name}"
    stem = output_stem(CLAIM, settings, "cpu", variant, args.out, args.allow_dirty)
    print_report(report(sweep, settings, references, args.corl, args.out, stem))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
