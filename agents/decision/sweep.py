"""Sweeps: grids of train-and-evaluate runs as Ray tasks, on this machine or a cluster, resumable.

A sweep file (configs/sweeps/*.yaml) names a base training config, a grid, fixed overrides and what
one trial needs:

    config: ../base.yaml                # the base training config, relative to the sweep file
    grid:                               # every combination of the axes' values is one trial
      model.backbone: [aaren, transformer]
      train.seed: [0, 1, 2]
      data:                             # a named axis whose values set several keys together
        - {label: hopper, data.dataset: hopper-medium-v2, train.batch_steps: 640}
    set: {train.steps: 500}             # the same for every trial
    resources: {cpus: 1, gpus: 0}       # Ray resources of one trial
    retries: 2                          # a failing or killed trial runs at most 1 + retries times
    compare: {axis: model.backbone, baseline: transformer}   # optional: see the report below

A trial is `agents.train` plus its final evaluation, in the run directory <out>/runs/<name>, the name
spelled from the grid point (`backbone=aaren_seed=0`). The same sweep finds its runs again: a trial
whose training returned, after its final evaluation (eval/eval.json), is finished and skipped; one
with a config.yaml resumes from its last checkpoint, and a failed or interrupted one is tried again.
Every trial's config is validated, and checked against the run it would continue, before Ray starts.
Ctrl-C stops the trials in flight: each is recorded as interrupted, with the time it ran.

The report (sweep.json, sweep.md, sweep.png), rewritten as trials end, decides with statistics
(agents.common.stats, rliable): per group of trials that differ only in train.seed, the interquartile
mean (IQM) of each finished trial's best-target score (its return where a dataset has no reference
scores) with its 95% stratified-bootstrap interval. With `compare:`, for each point of the other axes
(a stratum) and pooled over the strata as tasks (the seeds as runs), each value of `axis` against
`baseline`: both IQMs, the probability of improvement with its interval, and a difference called only
when the intervals separate. A partial sweep reports what has finished; the pooled comparison takes
only the strata where every compared value finished the same seeds (as many as the most), and names
the others and why.

Ray's own output in the driver (its warnings, such as the one about token authentication, and the
raylet's reports of each failed attempt) goes to <out>/ray.log, not between the sweep's lines; a
trial's failure is recorded in sweep.json and printed when the sweep ends.

Ray tasks rather than Ray Tune: a trial is one call with nothing to schedule on between its start and
its end, the run directory already checkpoints and resumes, and a task's own retries (max_retries
with retry_exceptions) cover a raising trial and a dead worker process alike; Tune would keep a
second experiment state and checkpoint store beside the run directories.

Run directories are read and written where they lie, not shipped back: on a cluster, <out> must be a
shared filesystem (NFS or similar) mounted at the same path on the driver and on every node, and
every node needs this package installed with the `ray` extra. Ray is imported only to run trials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import itertools
import json
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from agents.common import stats
from agents.decision.config import (
    RENAMED_KEYS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    changed_keys,
    flat_keys,
    from_dict,
    read_yaml,
)
from agents.decision.run_dir import RunDir, read_metrics
from envs.files import write_atomic
from envs.progress import progress_bar

#: The grid axis of the seeds: sweep.md summarises each group of trials that differ only in it.
SEED_AXIS = "train.seed"
#: The sweep's bookkeeping in each run directory: attempts, seconds spent, the last failure.
TRIAL_STATE = "sweep_trial.json"
#: Where Ray's own output in the driver goes, in the sweep's output folder.
RAY_LOG = "ray.log"
#: The report's files, rewritten as trials end.
REPORT_FILES = ("sweep.json", "sweep.md", "sweep.png", "curves.png")
#: What a finished trial keeps for another machine to count it as done and report it again (its config,
#: bookkeeping, learning curve and final evaluation): not its checkpoints or TensorBoard files.
KEPT_TRIAL_FILES = ("config.yaml", TRIAL_STATE, "metrics.jsonl", "eval/eval.json")
#: What sweep.json calls a trial: see `trial_record`.
STATUSES = ("finished", "failed", "interrupted", "pending")
#: Keys the sweep sets itself (runs go to <out>/runs/<trial name>).
RESERVED_KEYS = ("name", "output_dir")
#: Attempts after the first that a failing or killed trial gets, unless the sweep file says otherwise.
DEFAULT_RETRIES = 2
SWEEP_FILE_KEYS = ("config", "grid", "set", "resources", "retries", "compare")
EVAL_SUMMARY_KEYS = ("target_return", "episodes", "return_mean", "return_std", "score_mean", "score_std")


@dataclasses.dataclass(frozen=True)
class Resources:
    """Ray resources one trial reserves."""

    cpus: float = 1.0
    gpus: float = 0.0


@dataclasses.dataclass(frozen=True)
class Compare:
    """The sweep file's `compare:`: the grid axis whose values the report compares, and the value (its
    label) that each other one is compared with."""

    axis: str
    baseline: str


@dataclasses.dataclass(frozen=True)
class Trial:
    """One grid point: what it sets, the config mapping it trains with and its run directory."""

    name: str
    run_dir: Path
    overrides: dict[str, Any]  # dotted key -> value, over the base config
    point: dict[str, str]  # grid axis -> value label
    settings: dict[str, Any]  # base config + overrides (+ name, output_dir), validated again where it runs


def make_trial(
    name: str,
    runs_dir: str | Path,
    config: str | Path | None,
    overrides: dict[str, Any],
    point: dict[str, str],
) -> Trial:
    """The trial `name` of a base config file (None: the defaults) and overrides, run in runs_dir/name."""
    run_dir = Path(runs_dir).expanduser().resolve() / name
    texts = [
        f"{key}={json.dumps(value)}"  # JSON is YAML: the value comes back as it was
        for key, value in {**overrides, "name": name, "output_dir": str(run_dir.parent)}.items()
    ]
    base = read_yaml(config) if config is not None else {}
    return Trial(name, run_dir, dict(overrides), dict(point), apply_overrides(base, texts))


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep file, read: its settings (for the report) and its trials."""

    path: Path
    config: Path
    grid: dict[str, list[Any]]
    fixed: dict[str, Any]
    resources: Resources
    retries: int
    trials: list[Trial]
    compare: Compare | None = None


# ---- the sweep file ----------------------------------------------------------------------------------


def load_sweep(path: str | Path, out: str | Path) -> Sweep:
    """Read a sweep file into its trials, run in <out>/runs; a malformed file is one ConfigError."""
    path = Path(path)
    raw = read_yaml(path)
    for key in raw:
        if key not in SWEEP_FILE_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_FILE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(SWEEP_FILE_KEYS)}"
            raise ConfigError(f"{path}: unknown sweep key {key!r}: {hint}")
    if not isinstance(raw.get("config"), str):
        raise ConfigError(
            f"{path}: no `config:` naming the base training config. Fix: e.g. config: ../base.yaml"
        )
    fixed = _mapping(raw.get("set") or {}, f"{path}: set")
    axes = _axes(raw.get("grid"), path)
    _check_keys_set_once(axes, fixed, path)
    resources = Resources(**_mapping(raw.get("resources") or {}, f"{path}: resources", Resources))
    retries = raw.get("retries", DEFAULT_RETRIES)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigError(f"{path}: retries = {retries!r}: expected a whole number >= 0, e.g. retries: 2")
    config = (path.parent / raw["config"]).resolve()
    if not config.is_file():
        raise ConfigError(
            f"{path}: config = {raw['config']!r} names {config}, which "
            f"{'is a folder' if config.is_dir() else 'does not exist'}. Fix: name the base training config, "
            "relative to the sweep file, e.g. config: ../base.yaml"
        )
    trials = []
    for values in itertools.product(*(values for _, values in axes)):
        point = {axis: label for (axis, _), (label, _) in zip(axes, values, strict=True)}
        overrides = {key: v for _, keys in values for key, v in keys.items()}
        name = "_".join(f"{axis.rsplit('.', 1)[-1]}={label}" for axis, label in point.items())
        trials.append(make_trial(name, Path(out) / "runs", config, {**fixed, **overrides}, point))
    _check_unique_names(trials, path)
    compare = _compare(raw.get("compare"), axes, path)
    return Sweep(path, config, raw["grid"], fixed, resources, retries, trials, compare)


def _mapping(value: Any, where: str, fields_of: type | None = None) -> dict[str, Any]:
    """`value` as a mapping (with only the fields of the dataclass `fields_of`, numbers >= 0, if given)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} = {value!r}: expected a mapping of keys to values")
    if fields_of is not None:
        known = [f.name for f in dataclasses.fields(fields_of)]
        for key, number in value.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown key {key!r}: known keys: {', '.join(known)}")
            if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
                raise ConfigError(f"{where}.{key} = {number!r}: expected a number >= 0")
    return value


def _axes(grid: Any, path: Path) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """Each grid axis as (name, [(value label, the keys that value sets), ...])."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(
            f"{path}: grid = {grid!r}: expected a mapping of config keys to lists of values, "
            "e.g. grid: {model.backbone: [aaren, transformer], train.seed: [0, 1, 2]}"
        )
    axes = []
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{axis} = {values!r}: expected a non-empty list, e.g. [0, 1, 2]")
        axes.append((str(axis), [_axis_value(str(axis), value, path) for value in values]))
    return axes


def _axis_value(axis: str, value: Any, path: Path) -> tuple[str, dict[str, Any]]:
    """A plain value sets the key `axis`; a mapping sets its own keys together (label: its name)."""
    if not isinstance(value, dict):
        return _label(value), {axis: value}
    keys = {key: v for key, v in value.items() if key != "label"}
    if not keys:
        raise ConfigError(
            f"{path}: grid.{axis} value {value!r} sets no config key. Fix: e.g. {{train.lr: 1e-4}}"
        )
    return _label(value.get("label") or "-".join(map(_label, keys.values()))), keys


def _label(value: Any) -> str:
    """A value as it appears in run names: a file's stem for a path, safe characters only."""
    text = "_".join(map(str, value)) if isinstance(value, list) else str(value)
    if "/" in text:
        text = Path(text).name.removesuffix(".hdf5").removesuffix(".h5")
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def _compare(value: Any, axes: list, path: Path) -> Compare | None:
    """The `compare:` mapping checked against the grid: a grid axis other than the seeds', with two
    values or more, and one of its value labels as the baseline."""
    if value is None:
        return None
    example = "e.g. compare: {axis: model.backbone, baseline: transformer}"
    if not isinstance(value, dict) or set(value) != {"axis", "baseline"}:
        raise ConfigError(
            f"{path}: compare = {value!r}: expected a mapping of axis (a grid axis) and baseline (one of its "
            f"values). Fix: {example}"
        )
    labels = {axis: [label for label, _ in values] for axis, values in axes if axis != SEED_AXIS}
    axis, baseline = str(value["axis"]), _label(value["baseline"])
    if axis not in labels:
        close = difflib.get_close_matches(axis, labels, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"name one of: {', '.join(labels) or 'none'}"
        raise ConfigError(
            f"{path}: compare.axis = {axis!r} is not a grid axis whose values can be compared (the seeds' "
            f"axis {SEED_AXIS} is the runs). Fix: {hint}"
        )
    if baseline not in labels[axis]:
        raise ConfigError(
            f"{path}: compare.baseline = {value['baseline']!r} is not a value of grid.{axis}. Fix: name one "
            f"of {', '.join(labels[axis])}"
        )
    if len(labels[axis]) < 2:
        raise ConfigError(
            f"{path}: compare.axis = {axis!r}: grid.{axis} has only the baseline {baseline!r}, nothing to "
            "compare it with. Fix: give that axis another value, or compare another axis"
        )
    return Compare(axis, baseline)


def _check_keys_set_once(axes: list, fixed: dict[str, Any], path: Path) -> None:
    """No key is set by two axes, or by an axis and `set`, and none is one the sweep sets itself."""
    setters: dict[str, str] = {key: "set" for key in fixed}
    for axis, values in axes:
        for key in dict.fromkeys(key for _, keys in values for key in keys):
            if key in setters:
                raise ConfigError(
                    f"{path}: {key} is set both by {setters[key]} and by grid.{axis}. Fix: set it once"
                )
            setters[key] = f"grid.{axis}"
    for key in RESERVED_KEYS:
        if key in setters:
            raise ConfigError(
                f"{path}: {setters[key]} sets {key!r}, which the sweep sets itself (runs go to "
                f"<out>/runs/<trial name>). Fix: remove it; choose the folder with --out"
            )


def _check_unique_names(trials: list[Trial], path: Path) -> None:
    seen: dict[str, Trial] = {}
    for trial in trials:
        if trial.name in seen:
            raise ConfigError(
                f"{path}: grid points {seen[trial.name].overrides} and {trial.overrides} get the same run "
                f"name {trial.name!r}. Fix: give the values distinct labels, e.g. {{label: a, <key>: <value>}}"
            )
        seen[trial.name] = trial


# ---- checks before any trial runs --------------------------------------------------------------------


def check_trials(trials: list[Trial], resources: Resources) -> None:
    """Every trial's config is valid, uses a GPU exactly if it gets one, and agrees with the run it
    would continue; one ConfigError if not. On a driver without a GPU a CUDA device is checked where
    the trial runs."""
    import torch

    for trial in trials:
        train = trial.settings.get("train")
        device = str(
            train.get("device", TrainConfig.device) if isinstance(train, dict) else TrainConfig.device
        )
        on_gpu = device.startswith("cuda")
        elsewhere = ['train.device="cpu"'] if on_gpu and not torch.cuda.is_available() else []
        try:
            settings = from_dict(apply_overrides(trial.settings, elsewhere)).to_dict()
        except ConfigError as exc:
            raise ConfigError(f"trial {trial.name}: {exc}") from exc
        if on_gpu != (resources.gpus > 0):
            raise ConfigError(
                f"trial {trial.name}: train.device = {device!r}, but resources.gpus = {resources.gpus:g}. Fix: "
                "give each trial a GPU (resources: {gpus: 1}) and set train.device: cuda, or neither"
            )
        _check_same_run(trial, settings)


def _check_same_run(trial: Trial, settings: dict[str, Any]) -> None:
    """A run directory that already holds a run must have been started with this trial's config."""
    run = RunDir(trial.run_dir)
    if not run.config.is_file():
        return
    before, now = flat_keys(read_yaml(run.config)), flat_keys(settings)
    retired = sorted(before.keys() - now.keys())  # `now` holds every key this version knows
    if retired:
        names = [f"{key} (now {RENAMED_KEYS[key][0]})" if key in RENAMED_KEYS else key for key in retired]
        raise ConfigError(
            f"{run.config} sets {', '.join(names)}, which this version no longer reads, so that run can "
            f"neither resume nor count as trial {trial.name}. Fix: delete {run.root} to train that trial "
            "again, or choose another --out"
        )
    changed = changed_keys(before, now)
    if changed:
        raise ConfigError(
            f"{run.root} was started with {', '.join(f'{k}={before[k]!r}' for k in changed)}, but trial "
            f"{trial.name} now sets {', '.join(f'{k}={now[k]!r}' for k in changed)}. Fix: restore the sweep's "
            f"earlier values, choose another --out, or delete {run.root} to train that trial again"
        )


# ---- one trial, in a Ray worker ----------------------------------------------------------------------


def read_state(run: RunDir) -> dict[str, Any]:
    """The sweep's bookkeeping of a run: attempts, seconds spent on them, the last failure (or None),
    whether training returned (finished), when the attempt under way began (started, Unix time; None
    between attempts) and whether the sweep stopped the last one part-way (interrupted)."""
    path = run.root / TRIAL_STATE
    state = json.loads(path.read_text()) if path.is_file() else {}
    defaults = {"attempts": 0, "seconds": 0.0, "error": None, "finished": False, "started": None}
    return {**defaults, "interrupted": False, **state}


def write_state(run: RunDir, state: dict[str, Any]) -> None:
    write_atomic(run.root / TRIAL_STATE, json.dumps(state, indent=2))


def is_finished(run: RunDir) -> bool:
    """A run is finished once its training returned, its final evaluation report written: a report alone
    may be that of an attempt stopped before its end (its learning curve not drawn)."""
    return read_state(run)["finished"] and (run.eval / "eval.json").is_file()


def run_trial(trial: Trial) -> None:
    """Train the trial, or resume it from its last checkpoint, up to its final evaluation (a Ray task)."""
    from agents.decision.training import train

    run = RunDir(trial.run_dir)
    if is_finished(run):
        return
    state = read_state(run)
    state.update(attempts=state["attempts"] + 1, error=None, interrupted=False, started=time.time())
    write_state(run, state)
    start = time.perf_counter()
    try:
        if run.config.is_file():
            train(resume=run.root, progress=False)
        else:
            train(from_dict(trial.settings), progress=False)
        state["finished"] = True
    finally:
        state.update(seconds=state["seconds"] + time.perf_counter() - start, started=None)
        write_state(run, state)


def mark_interrupted(run: RunDir, attempts_before: int) -> None:
    """Record that the sweep stopped the run's attempt part-way (unless it had finished, or it had not
    begun since the sweep saw `attempts_before`); a worker killed before its own bookkeeping leaves
    `started` set, and its seconds are counted up to now."""
    state = read_state(run)
    if state["finished"] or (state["started"] is None and state["attempts"] == attempts_before):
        return
    if state["started"] is not None:
        state["seconds"] += max(0.0, time.time() - state["started"])
    state.update(started=None, interrupted=True)
    write_state(run, state)


def trial_record(trial: Trial) -> dict[str, Any]:
    """What sweep.json says of a trial, read from its run directory: status finished (`is_finished`),
    failed (its last attempts raised or died), interrupted (stopped part-way by the sweep) or pending
    (not run yet)."""
    run = RunDir(trial.run_dir)
    state = read_state(run)
    evaluation = None
    if is_finished(run):
        results = json.loads((run.eval / "eval.json").read_text())["results"]
        evaluation = [{key: r[key] for key in EVAL_SUMMARY_KEYS if key in r} for r in results]
    return {
        "name": trial.name,
        "point": trial.point,
        "overrides": trial.overrides,
        "status": _status(state, evaluation is not None),
        "attempts": state["attempts"],
        "wall_s": round(state["seconds"], 3),
        "evaluation": evaluation,
        "curve": learning_curve(run),
        "error": None if evaluation is not None else state["error"],
        "run_dir": str(run.root),
    }


def learning_curve(run: RunDir) -> list[dict[str, float]]:
    """The run's periodic evaluations at its first target (the only one they play): step, return_mean and
    score_mean (None without reference scores) of each."""
    rows = [row for row in read_metrics(run.metrics) if "eval/target" in row]
    return [
        {
            "step": row["step"],
            "return_mean": row["eval/return_mean"],
            "score_mean": row.get("eval/score_mean"),
        }
        for row in rows
        if row["eval/target"] == rows[0]["eval/target"]
    ]


def _status(state: dict[str, Any], finished: bool) -> str:
    if finished:
        return "finished"
    if state["error"]:
        return "failed"
    return "interrupted" if state["interrupted"] else "pending"


# ---- running trials on Ray ---------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "sweeps run on Ray, which is not installed. Fix: pip install -e '.[ray]'", name="ray"
        ) from exc
    return ray


def connect(address: str | None, resources: Resources) -> bool:
    """Connect to Ray: a new local instance with this machine's CPUs and GPUs (address None) or the
    cluster at `address` ("auto", "ray://HOST:10001"). Returns whether this call connected (and the
    caller should disconnect); an instance the caller already started is used as it is."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(
            f"Ray address {address!r}: no Ray cluster answers there ({exc}). Fix: start one (ray start "
            "--head) or give the address of a running one, e.g. auto or ray://HOST:10001"
        ) from exc
    have = ray.cluster_resources()
    if address is None and (resources.cpus > have.get("CPU", 0) or resources.gpus > have.get("GPU", 0)):
        ray.shutdown()
        raise ConfigError(
            f"resources: a trial asks for {resources.cpus:g} CPUs and {resources.gpus:g} GPUs, but this machine "
            f"has {have.get('CPU', 0):g} and {have.get('GPU', 0):g}. Fix: lower them, or run on a cluster "
            "with --address"
        )
    return True


@contextlib.contextmanager
def ray_output_to(log: Path | None) -> Iterator[None]:
    """For the block, Ray's own output in this process is appended to `log` (when given): its log records
    (such as its token-authentication warning) and what its raylet reports on stdout (each failed
    attempt's traceback), which would land between the sweep's own lines. The sweep's progress bar and
    errors are untouched (stderr), and each trial's failure is kept in its record."""
    if log is None:
        yield
        return
    logger = logging.getLogger("ray")
    saved = logger.handlers[:], logger.propagate
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as stream, contextlib.redirect_stdout(stream):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.handlers[:], logger.propagate = [handler], False
        try:
            yield
        finally:
            logger.handlers[:], logger.propagate = saved


def run_trials(
    trials: list[Trial],
    resources: Resources = Resources(),
    retries: int = DEFAULT_RETRIES,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    progress: bool = True,
    trial_fn: Callable[[Trial], None] = run_trial,
    on_result: Callable[[list[dict[str, Any]]], None] | None = None,
    log: Path | None = None,
) -> list[dict[str, Any]]:
    """Run the unfinished trials as Ray tasks (each attempted at most 1 + retries times) and return
    one record per trial, in order. `on_result` gets all records once the trials are checked and
    again after each trial ends. Ctrl-C stops the trials in flight (recorded as interrupted; they
    resume next time) and disconnects. Ray starts only if some trial is unfinished; its own output
    goes to `log` if given (`ray_output_to`)."""
    check_trials(trials, resources)
    records = {trial.name: trial_record(trial) for trial in trials}
    if on_result is not None:
        on_result(list(records.values()))
    todo = deque(trial for trial in trials if records[trial.name]["status"] != "finished")
    if not todo:
        return list(records.values())
    ray = _import_ray()
    with ray_output_to(log):
        owned = connect(address, resources)
        task = ray.remote(trial_fn).options(
            num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=retries, retry_exceptions=True
        )
        bar = progress_bar(
            total=len(trials),
            initial=len(trials) - len(todo),
            unit="trial",
            desc="sweep",
            disable=not progress,
        )
        in_flight: dict[Any, Trial] = {}
        try:
            while todo or in_flight:
                while todo and len(in_flight) < (max_concurrent or len(trials)):
                    trial = todo.popleft()
                    in_flight[task.remote(trial)] = trial
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)  # wakes up for Ctrl-C
                for ref in done:
                    trial = in_flight.pop(ref)
                    _record_failure(ray, ref, trial)
                    records[trial.name] = trial_record(trial)
                    failed = sum(r["status"] == "failed" for r in records.values())
                    bar.set_postfix(failed=failed, refresh=False)
                    bar.update(1)
                    if on_result is not None:
                        on_result(list(records.values()))
        finally:
            bar.close()
            _stop(ray, list(in_flight), owned)
            for trial in in_flight.values():
                mark_interrupted(RunDir(trial.run_dir), records[trial.name]["attempts"])
            if in_flight and on_result is not None:  # report the stopped trials too
                on_result([trial_record(trial) for trial in trials])
    return list(records.values())


def _record_failure(ray: Any, ref: Any, trial: Trial) -> None:
    """If the task ended in an error (its last attempt raised, or its worker died), note it in the run."""
    try:
        ray.get(ref)
    except ray.exceptions.RayError as exc:
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
        run = RunDir(trial.run_dir)
        write_state(run, {**read_state(run), "error": f"{type(cause).__name__}: {cause}"})


def _stop(ray: Any, in_flight: list[Any], owned: bool) -> None:
    """Stop the tasks still running (killing their workers: their runs resume from a checkpoint next
    time) and wait until they are gone; disconnect if this sweep connected."""
    for ref in in_flight:
        ray.cancel(ref, force=True)
    if in_flight:
        ray.wait(in_flight, num_returns=len(in_flight), timeout=30.0)
    if owned:
        ray.shutdown()


# ---- the report --------------------------------------------------------------------------------------


def best_result(evaluation: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation target with the best normalised score (or return, without reference scores)."""
    return max(
        evaluation, key=lambda r: r["score_mean"] if r.get("score_mean") is not None else r["return_mean"]
    )


def metric_of(records: list[dict[str, Any]]) -> str:
    """What the report compares: each finished trial's best-target "score" (D4RL-normalised) where every
    one has a score, else its "return"; one quantity for all, so that strata can be pooled."""
    best = [best_result(r["evaluation"]) for r in records if r["status"] == "finished"]
    return "score" if all(b.get("score_mean") is not None for b in best) else "return"


def _value(record: dict[str, Any], metric: str) -> float:
    return float(best_result(record["evaluation"])[f"{metric}_mean"])


def _seed(record: dict[str, Any]) -> str:
    return record["point"].get(SEED_AXIS, "")


def _without(point: dict[str, str], *axes: str) -> tuple[tuple[str, str], ...]:
    """The grid point without `axes`, as a key."""
    return tuple((axis, label) for axis, label in point.items() if axis not in axes)


def _name(key: tuple[tuple[str, str], ...]) -> str:
    return " / ".join(label for _, label in key) or "all"


def summarise(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Per group of trials that differ only in the seed: trials, finished and failed ones, the seeds
    finished, and the IQM over them of each trial's best-target `metric` with its interval (None before
    the first)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(_without(record["point"], SEED_AXIS), []).append(record)
    rows = []
    for key, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        iqm = stats.iqm(np.array([[_value(r, metric)] for r in done])) if done else None
        rows.append(
            {
                "point": dict(key),
                "trials": len(members),
                "finished": len(done),
                "failed": sum(r["status"] == "failed" for r in members),
                "seeds": [_seed(r) for r in done],
                "iqm": iqm and dataclasses.asdict(iqm),
            }
        )
    return rows


@dataclasses.dataclass(frozen=True)
class Stratum:
    """One point of the grid axes other than the compared one and the seeds: the seeds each compared
    value finished there, and their comparison."""

    name: str
    point: dict[str, str]
    seeds: dict[str, list[str]]
    comparison: stats.Comparison

    def to_json(self) -> dict[str, Any]:
        return {"point": self.point, "seeds": self.seeds, **self.comparison.to_json()}


@dataclasses.dataclass(frozen=True)
class AxisComparison:
    """The report's `compare:`: each stratum where the baseline and another value finished; `overall`,
    the comparison pooled over the strata named in `pooled` (None where none can be pooled, or the grid
    has one stratum); and why each other stratum is left out of it."""

    axis: str
    baseline: str
    strata: list[Stratum]
    pooled: list[str]
    overall: stats.Comparison | None
    left_out: dict[str, str]

    @property
    def overall_name(self) -> str:
        return f"all ({len(self.pooled)} of {len(self.pooled) + len(self.left_out)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "axis": self.axis,
            "baseline": self.baseline,
            "strata": [stratum.to_json() for stratum in self.strata],
            "overall": self.overall and {"pooled": self.pooled, **self.overall.to_json()},
            "left_out": self.left_out,
        }


def compare_values(records: list[dict[str, Any]], compare: Compare, metric: str) -> AxisComparison:
    """Each value of the compared axis against the baseline, per stratum over its finished seeds, and
    pooled over the strata (tasks) and seeds (runs) where every value finished the same seeds."""
    values = list(dict.fromkeys(r["point"][compare.axis] for r in records))
    scores: dict[tuple, dict[str, dict[str, float]]] = {}  # stratum -> value -> seed -> score
    for record in records:
        by_value = scores.setdefault(_without(record["point"], SEED_AXIS, compare.axis), {})
        if record["status"] == "finished":
            by_value.setdefault(record["point"][compare.axis], {})[_seed(record)] = _value(record, metric)
    strata = []
    for key, by_value in scores.items():
        finished = {v: by_value[v] for v in values if v in by_value}
        if compare.baseline in finished and len(finished) > 1:
            strata.append(
                Stratum(
                    _name(key),
                    dict(key),
                    {v: list(seeds) for v, seeds in finished.items()},
                    _compared({v: [list(seeds.values())] for v, seeds in finished.items()}, compare.baseline),
                )
            )
    if len(scores) < 2:
        return AxisComparison(compare.axis, compare.baseline, strata, [], None, {})
    pooled, left_out = _poolable({_name(key): by_value for key, by_value in scores.items()}, values)
    overall = None
    if pooled:
        overall = _compared(
            {v: [list(scores_of[v].values()) for scores_of in pooled.values()] for v in values},
            compare.baseline,
        )
    return AxisComparison(compare.axis, compare.baseline, strata, list(pooled), overall, left_out)


def _compared(scores: dict[str, list[list[float]]], baseline: str) -> stats.Comparison:
    """`stats.compare` of {value: [per task, each run's score]}."""
    return stats.compare({v: np.array(tasks).T for v, tasks in scores.items()}, baseline)


def _poolable(
    strata: dict[str, dict[str, dict[str, float]]], values: list[str]
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, str]]:
    """The strata that can be pooled (every value finished the same seeds, as many as the most) and,
    for each other stratum, why not."""
    why_not, same = {}, {}
    for name, by_value in strata.items():
        missing = [v for v in values if v not in by_value]
        if missing:
            why_not[name] = f"no finished run of {', '.join(missing)}"
        elif len({frozenset(by_value[v]) for v in values}) > 1:
            seeds = ", ".join(f"{v} {' '.join(by_value[v])}" for v in values)
            why_not[name] = f"different seeds per value ({seeds})"
        else:
            same[name] = by_value
    most = max((len(by_value[values[0]]) for by_value in same.values()), default=0)
    for name, by_value in same.items():
        if len(by_value[values[0]]) < most:
            why_not[name] = f"{len(by_value[values[0]])} seeds, where the pooled strata have {most}"
    pooled = {name: by_value for name, by_value in same.items() if name not in why_not}
    return pooled, {name: why_not[name] for name in strata if name in why_not}


def _cells(cells: list[Any]) -> list[str]:
    """A markdown table's header (and its rule) or row."""
    return ["| " + " | ".join(map(str, cells)) + " |"]


def _rule(columns: int) -> list[str]:
    return ["|---" * columns + "|"]


def _group_lines(axes: list[str], rows: list[dict[str, Any]], metric: str) -> list[str]:
    """One line per group: its labels, seeds done and IQM."""
    lines = _cells([*axes, "seeds done", f"{metric} IQM [{stats.CONFIDENCE:.0%} CI]"]) + _rule(len(axes) + 2)
    for row in rows:
        done = f"{row['finished']}/{row['trials']}" + (f" ({row['failed']} failed)" if row["failed"] else "")
        iqm = "-" if row["iqm"] is None else stats.Interval(**row["iqm"])
        lines += _cells([*(row["point"][axis] for axis in axes), done, iqm])
    return lines


def _comparison_lines(others: list[str], comparison: AxisComparison) -> list[str]:
    """One line per (stratum, compared value), then one per value pooled."""
    base = comparison.baseline
    against = [f"IQM {base}", f"IQM - {base}", f"P(> {base})", f"vs {base}"]
    lines = _cells([*others, comparison.axis, "seeds", "IQM", *against]) + _rule(len(others) + 7)
    tables = [([stratum.point[axis] for axis in others], stratum.comparison) for stratum in comparison.strata]
    if comparison.overall is not None:
        tables.append(([comparison.overall_name, *[""] * (len(others) - 1)], comparison.overall))
    for cells, c in tables:
        for value in c.poi:
            runs = dict.fromkeys([c.runs[value], c.runs[base]])  # one number where they agree
            lines += _cells(
                [*cells, value, " / ".join(map(str, runs)), c.iqm[value], c.iqm[base]]
                + [f"{c.difference[value]:+.1f}", f"{c.poi[value]:.2f}", c.verdict[value]]
            )
    return lines


def markdown(
    sweep: Sweep,
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    metric: str,
    comparison: AxisComparison | None = None,
) -> str:
    """sweep.md: the groups' IQMs, the comparison if the sweep asks for one, and what they mean."""
    axes = [axis for axis in sweep.grid if axis != SEED_AXIS]
    lines = _group_lines(axes, rows, metric)
    if comparison is not None:
        lines += ["", *_comparison_lines([axis for axis in axes if axis != comparison.axis], comparison)]
    return "\n".join([*lines, "", _caption(sweep, records, metric, comparison)]) + "\n"


def _caption(
    sweep: Sweep, records: list[dict[str, Any]], metric: str, comparison: AxisComparison | None
) -> str:
    """What was run, what the numbers are and, for a pooled comparison, which strata it leaves out."""
    count = {status: sum(r["status"] == status for r in records) for status in STATUSES}
    interrupted = f", {count['interrupted']} interrupted" if count["interrupted"] else ""
    quantity = (
        "D4RL-normalised score" if metric == "score" else "return (some datasets have no reference scores)"
    )
    text = (
        f"Sweep {sweep.path.name}: {count['finished']} of {len(records)} trials finished, {count['failed']} "
        f"failed{interrupted} (see sweep.json). Each trial's {quantity} at its best evaluation target; the "
        f"interquartile mean (IQM) over {SEED_AXIS} with its {stats.CONFIDENCE:.0%} stratified-bootstrap "
        f"interval (rliable, {stats.REPS} resamples)."
    )
    if comparison is None:
        return text
    base = comparison.baseline
    text += (
        f" Each value of {comparison.axis} against {base} (seeds: of the value / of {base}, where they "
        "differ): P is the probability of improvement, with its interval; a difference is called only when "
        f"the IQM intervals are disjoint and P's interval excludes 0.5, from at least {stats.MIN_RUNS} seeds "
        "of each."
    )
    if comparison.overall is None and not comparison.left_out:
        return text  # a grid of one stratum
    left = "; ".join(f"{name}: {why}" for name, why in comparison.left_out.items())
    pooled = (
        f" The {comparison.overall_name} rows pool the strata (points of the other axes, as tasks) where "
        "every value finished the same seeds, as many as the most"
        if comparison.overall is not None
        else " No strata pooled yet: that needs every value finished on the same seeds"
    )
    return text + pooled + (f"; left out: {left}." if left else ".")


def plot(rows: list[dict[str, Any]], comparison: AxisComparison | None, metric: str, path: Path) -> None:
    """sweep.png (rliable's plots): the compared values' IQMs with their intervals, pooled and per
    stratum, and their probabilities of improvement; without a comparison yet, each group's IQM."""
    xlabel = f"{metric} (best target)"
    comparisons = {}
    if comparison is not None:
        if comparison.overall is not None:
            comparisons[comparison.overall_name] = comparison.overall
        comparisons.update({stratum.name: stratum.comparison for stratum in comparison.strata})
    if comparisons:
        iqm = {name: c.iqm for name, c in comparisons.items()}
        stats.plot(iqm, path, xlabel=xlabel, comparisons=comparisons)
    else:
        groups = {_name(tuple(r["point"].items())): stats.Interval(**r["iqm"]) for r in rows if r["iqm"]}
        stats.plot({"each group": groups}, path, xlabel=xlabel)


def print_failures(records: list[dict[str, Any]], log: Path | None = None) -> int:
    """Name each failed trial, its attempts and its error on stderr, and where Ray's own messages are
    (`log`, if given and written); returns how many failed."""
    failed = [r for r in records if r["status"] == "failed"]
    for record in failed:
        print(
            f"failed: {record['name']} after {record['attempts']} attempts: {record['error']}",
            file=sys.stderr,
        )
    if failed and log is not None and log.is_file():
        print(f"Ray's own messages: {log}", file=sys.stderr)
    return len(failed)


def write_report(sweep: Sweep, records: list[dict[str, Any]], out: Path) -> None:
    """sweep.json (the sweep, one record per trial, the groups and the comparison), sweep.md and, once
    a trial finished, sweep.png."""
    metric = metric_of(records)
    rows = summarise(records, metric)
    comparison = sweep.compare and compare_values(records, sweep.compare, metric)
    settings = {
        "file": str(sweep.path),
        "config": str(sweep.config),
        "grid": sweep.grid,
        "set": sweep.fixed,
        "resources": dataclasses.asdict(sweep.resources),
        "retries": sweep.retries,
        "compare": sweep.compare and dataclasses.asdict(sweep.compare),
    }
    statuses = {status: sum(r["status"] == status for r in records) for status in STATUSES}
    report = {
        "sweep": settings,
        **statuses,
        "metric": metric,
        "statistics": stats.describe(),
        "trials": records,
        "groups": rows,
        "comparison": comparison and comparison.to_json(),
    }
    write_atomic(out / "sweep.json", json.dumps(report, indent=2))
    write_atomic(out / "sweep.md", markdown(sweep, records, rows, metric, comparison))
    if statuses["finished"]:
        plot(rows, comparison, metric, out / "sweep.png")
    curves = learning_curves(records, sweep.compare, metric)
    if curves:
        stats.plot_curves(curves, out / "curves.png", ylabel=f"{metric} at the first target")


def learning_curves(
    records: list[dict[str, Any]], compare: Compare | None, metric: str
) -> dict[str, dict[str, list[dict[int, float]]]]:
    """The finished trials' learning curves (those evaluated more than once), for `stats.plot_curves`: a
    panel per stratum (the grid point less the seed and the compared axis), a line per compared value (per
    group without compare:), a run per seed."""
    hidden = (SEED_AXIS, compare.axis) if compare else (SEED_AXIS,)
    curves: dict[str, dict[str, list[dict[int, float]]]] = {}
    for record in records:
        if record["status"] == "finished" and len(record.get("curve") or []) > 1:
            panel = _name(_without(record["point"], *hidden))
            line = record["point"][compare.axis] if compare else panel
            run = {point["step"]: point[f"{metric}_mean"] for point in record["curve"]}
            curves.setdefault(panel, {}).setdefault(line, []).append(run)
    return curves


def kept_files(out: str | Path) -> list[Path]:
    """The files that carry a sweep's finished work to another machine (e.g. with `git add -f` into a
    repository that ignores run directories): the report, and each trial it counts as finished's
    KEPT_TRIAL_FILES. A rerun there counts those trials as done."""
    out = Path(out)
    report = json.loads((out / "sweep.json").read_text())
    finished = [t["name"] for t in report["trials"] if t["status"] == "finished"]
    trial_files = [out / "runs" / name / kept for name in finished for kept in KEPT_TRIAL_FILES]
    return [path for path in (*(out / f for f in REPORT_FILES), *trial_files) if path.is_file()]


def run_sweep(
    sweep: Sweep,
    out: str | Path,
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    progress: bool = True,
    trial_fn: Callable[[Trial], None] = run_trial,
) -> list[dict[str, Any]]:
    """Run a sweep's unfinished trials (see `run_trials`), rewriting the report in `out` as they end;
    rliable, which the report needs, is checked first, before anything trains."""
    stats.rliable("library")
    out = Path(out)
    return run_trials(
        sweep.trials,
        sweep.resources,
        sweep.retries,
        address=address,
        max_concurrent=max_concurrent,
        progress=progress,
        trial_fn=trial_fn,
        on_result=lambda records: write_report(sweep, records, out),
        log=out / RAY_LOG,
    )
