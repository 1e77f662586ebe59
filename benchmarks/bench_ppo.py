"""AarenPPO vs sb3-contrib's RecurrentPPO (LSTM) vs PPO (MLP) on partially observable tasks.

Every algorithm gets the same tasks, env steps, seeds and PPO hyperparameters (per task, from the table
of agents/ppo/tasks.py: after rl-zoo's RecurrentPPO settings for the tasks of envs.pomdp, one set for
all POPGym tasks); the memories are sized alike (Aaren width 64, one layer, 4 heads; LSTM 64 hidden
units; separate actor and critic memories for both). Measured per run: the final deterministic return
(fresh eval envs), the max-mean episodic return (MMER, below), the mean return of the last 100 training
episodes, and the wall-clock of learn() split into acting (rollout collection) and training (the PPO
updates).
Torch runs on one thread for every algorithm. The random-policy return is the floor of each task.

MMER, the POPGym paper's metric (Morad et al., ICLR 2023): after every rollout in which an episode
finished, the mean return of the last 100 finished training episodes (all of them while fewer have
finished; the window of SB3's ep_info_buffer); MMER is the best of these over training. The paper
averages over each train batch instead, which holds many episodes; our rollouts hold a few, so that
mean (also recorded, `mmer_rollout`) is noisy and its maximum biased upwards.

POPGym tasks (`--preset popgym`, needs `pip install -e .[popgym]`): seven Easy tasks from the
diagnostic, control, noisy and game families, and CartPoleNoVel. POPGym returns lie in [-1, 1].
The paper trained every model for millions of env steps with RLlib's PPO; the preset's budget is
tens of thousands of steps per run (sized for a 2-core CPU), so it compares the memories early in
learning, not the paper's final scores. It runs 5 seeds: 3 seeds' std is too rough a spread for the
goal below; `--seeds N` runs seeds 0 to N - 1 instead, e.g. 10 on one task to check a close call.

Goal: AarenPPO's MMER >= RecurrentPPO's on every task, within the seed spread (the larger of the two
seed stds) at least and ahead on average over the tasks (each task's difference over the best
algorithm's gain on random play), at >= 1.5x the LSTM's wall-clock speed on every task.

Runs: every finished (task, algorithm, variant, seed) run is appended to <work>/<name>.jsonl, whose
first line holds the settings; a second start with the same settings skips the finished runs (other
settings: an error). `--jobs N` trains N runs at once in worker processes, one torch thread each.
`--variants` adds AarenPPO ablation rows ("aaren:<variant>", policy kwargs from VARIANTS).

Acting speed (`--acting-only` runs just this section): the time per env step of `predict` (actor only)
and of a rollout-collection step (actor and critic, `policy.forward` without gradients), for AarenPPO
acting through its folded memories and through the modules' forward, against RecurrentPPO's LSTM of
the same width, at batch (envs) 1 and 8, one torch thread, timed interleaved; medians and ratios.
Goal: AarenPPO's folded acting no slower than the LSTM's (aaren / lstm <= 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import FlattenExtractor
from tqdm import tqdm

from aaren_rl.ops.fused import fused_module
from agents.common.cli import ArgumentParser, exits_2_on_user_errors
from agents.common.overrides import ConfigError
from agents.ppo.algorithm import AarenPPO
from agents.ppo.tasks import (
    AAREN_KWARGS,
    EVAL_SEED_OFFSET,
    POLICY_KWARGS,
    POPGYM_STEPS,
    POPGYM_TASKS,
    TASKS,
    RunMonitor,
    Task,
    final_returns,
    make_env,
    max_mean_returns,
)
from envs.files import torch_threads, write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from benchmarks.common import (  # noqa: E402
    Claim,
    add_output_arguments,
    load_average,
    machine_info,
    output_stem,
    time_interleaved,
    write_json,
    write_png,
)

ALGOS = ("aaren", "lstm", "mlp")
SPEEDUP_GOAL = 1.5  # LSTM wall-clock over Aaren's, at least
GOAL_METRIC = "mmer"  # the return the goal compares: POPGym's metric, steadier than a final evaluation
RANDOM_EPISODES = 200  # random play is cheap, and a floor from few episodes is noisy
WORK = Path("~/.cache/aaren-rl/bench_ppo").expanduser()  # default folder of the run records


class IntFlattenExtractor(FlattenExtractor):
    """SB3's FlattenExtractor with a Python-int `features_dim`: for MultiDiscrete observations SB3 computes
    a numpy integer, which torch's nn.LSTM (RecurrentPPO's input size) refuses."""

    def __init__(self, observation_space: spaces.Space) -> None:
        super().__init__(observation_space)
        self._features_dim = int(self._features_dim)


LSTM_KWARGS = dict(lstm_hidden_size=64, enable_critic_lstm=True, features_extractor_class=IntFlattenExtractor)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-recency": {"recency": False},  # content-only heads
    "no-prev-action": {"previous_action_reward": False},  # the memories see the observations only
    "8-heads": {"num_heads": 8},
    "shared": {"share_memory": True},  # one memory for actor and critic
    "no-lags": {"input_lags": 0},  # the memories see each step alone
    "time": {"episode_time": True},  # the episode time in the actor's memory
    "no-sink": {"sink": False},  # heads average: none can count
    "no-sink-value": {"sink_value": False},  # sinks of value 0
}
"""AarenPPO ablation variants (`--variants`): extra policy_kwargs for AarenActorCriticPolicy."""


@dataclass(frozen=True)
class Settings:
    """Budgets, seeds, algorithms and AarenPPO variants of one benchmark run."""

    steps: dict[str, int]  # env steps per task
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_episodes: int = 10
    algos: tuple[str, ...] = ALGOS
    threads: int = 1
    notes: str = ""
    variants: tuple[str, ...] = ("default",)  # VARIANTS entries, each an AarenPPO row

    def __post_init__(self) -> None:
        for kind, given, known in (
            ("task", self.steps, TASKS),
            ("algorithm", self.algos, ALGOS),
            ("AarenPPO variant", self.variants, VARIANTS),
        ):
            unknown = [name for name in given if name not in known]
            if unknown:
                raise ConfigError(f"unknown {kind} {unknown}; choose from {list(known)}")


QUICK = Settings(
    steps={"CartPoleNoVel": 40_000, "RememberCue": 10_000},
    notes="quick: CartPoleNoVel and RememberCue only, short budgets",
)
FULL = Settings(
    steps={"CartPoleNoVel": 100_000, "PendulumNoVel": 100_000, "RememberCue": 30_000},
    eval_episodes=20,
    notes="full: rl-zoo-sized budget for CartPoleNoVel, half of it for PendulumNoVel",
)
POPGYM = Settings(
    steps={**dict.fromkeys(POPGYM_TASKS, POPGYM_STEPS), "CartPoleNoVel": POPGYM_STEPS},
    seeds=tuple(range(5)),
    notes="popgym: seven POPGym Easy tasks and CartPoleNoVel, an equal CPU-sized budget each, 5 seeds",
)
PRESETS = {
    "full": (FULL, "ppo_memory"),
    "quick": (QUICK, "ppo_memory_quick"),
    "popgym": (POPGYM, "ppo_popgym"),
}
POPGYM_CLAIM = Claim("ppo_popgym", POPGYM)  # the tracked comparison: the popgym preset as it stands


@dataclass(frozen=True)
class RunSpec:
    """One run: a task, an algorithm (with its AarenPPO variant) and a seed."""

    task: str
    algo: str
    seed: int
    variant: str | None = None  # a VARIANTS entry, for AarenPPO only

    @property
    def label(self) -> str:
        """The algorithm's row: the algorithm, or "aaren:<variant>" for a variant other than the default."""
        return self.algo if self.variant in (None, "default") else f"{self.algo}:{self.variant}"

    @property
    def key(self) -> tuple[str, str, int]:
        return self.task, self.label, self.seed


def run_specs(settings: Settings) -> list[RunSpec]:
    """Every run of `settings`, task by task and seed by seed."""
    return [
        RunSpec(task, algo, seed, variant)
        for task in settings.steps
        for seed in settings.seeds
        for algo in settings.algos
        for variant in (settings.variants if algo == "aaren" else (None,))
    ]


def make_model(algo: str, task: Task, seed: int, variant: str | None = "default") -> BaseAlgorithm:
    """A fresh PPO-family model of `algo` (AarenPPO with a VARIANTS entry's kwargs), on the task's
    training envs and hyperparameters."""
    env = make_env(task, seed, training=True)
    common = dict(env=env, seed=seed, device="cpu", **task.ppo)
    if algo == "aaren":
        kwargs = {**POLICY_KWARGS, **AAREN_KWARGS, **VARIANTS[variant or "default"]}
        return AarenPPO("MlpAarenPolicy", policy_kwargs=kwargs, **common)
    if algo == "lstm":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO("MlpLstmPolicy", policy_kwargs={**POLICY_KWARGS, **LSTM_KWARGS}, **common)
    if algo == "mlp":
        return PPO("MlpPolicy", policy_kwargs=POLICY_KWARGS, **common)
    raise ValueError(f"unknown algorithm {algo!r}; choose from {ALGOS}")


def random_return(task: Task, episodes: int, seed: int) -> float:
    """Mean return of uniformly random actions (the floor the memory tasks are measured against)."""
    env = make_env(task, seed, training=False)
    env.action_space.seed(seed)
    returns, current = [], np.zeros(env.num_envs)
    env.reset()
    while len(returns) < episodes:
        _, rewards, dones, _ = env.step(np.stack([env.action_space.sample() for _ in range(env.num_envs)]))
        current += rewards
        returns.extend(current[dones])
        current[dones] = 0.0
    env.close()
    return float(np.mean(returns[:episodes]))


def run_one(spec: RunSpec, settings: Settings) -> dict[str, Any]:
    """Train one run, then evaluate it deterministically on fresh envs."""
    task = TASKS[spec.task]
    model = make_model(spec.algo, task, spec.seed, spec.variant)
    model.set_logger(Logger(None, []))  # logs nothing, and makes no empty /tmp/SB3-<time> folder per run
    monitor = RunMonitor()
    start = time.perf_counter()
    model.learn(settings.steps[spec.task], callback=monitor)
    wall = time.perf_counter() - start
    returns = final_returns(model, task, spec.seed, settings.eval_episodes)
    model.env.close()
    train_returns = [info["r"] for info in model.ep_info_buffer]
    return {
        "task": spec.task,
        "algo": spec.label,
        "variant": spec.variant,
        "seed": spec.seed,
        "env_steps": model.num_timesteps,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        **max_mean_returns(monitor.rollout_returns),
        "train_return_last100": float(np.mean(train_returns)) if train_returns else None,
        "wall_s": wall,
        "collect_s": monitor.collect_s,
        "train_s": wall - monitor.collect_s,
    }


def _jsonable(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples as lists; classes and functions by name)."""
    return json.loads(json.dumps(data, default=lambda obj: getattr(obj, "__name__", repr(obj))))


def fingerprint(settings: Settings) -> dict[str, Any]:
    """Everything that makes runs comparable: the settings, the tasks' hyperparameters, the memories."""
    return _jsonable(
        {
            "settings": dataclasses.asdict(settings),
            "hyperparameters": {name: dataclasses.asdict(TASKS[name]) for name in settings.steps},
            "memory": {"aaren": AAREN_KWARGS, "lstm": LSTM_KWARGS, "shared": POLICY_KWARGS},
            "variants": {name: VARIANTS[name] for name in settings.variants},
        }
    )


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line, flushed and fsync'd: a crash loses at most the line being written."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _differences(expected: dict[str, Any], recorded: Any) -> list[str]:
    """The parts of a `fingerprint` (the settings field by field) that `recorded` holds otherwise."""
    recorded = recorded if isinstance(recorded, dict) else {}
    theirs = recorded.get("settings") if isinstance(recorded.get("settings"), dict) else {}
    fields = [f"settings.{key}" for key, value in expected["settings"].items() if theirs.get(key) != value]
    return fields + [part for part in expected if part != "settings" and recorded.get(part) != expected[part]]


def read_work(path: Path, expected: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs recorded in the work file `path` (first line: the settings `fingerprint`, then one run a
    line). A new file starts with `expected`; a torn last line (an interrupted append) is dropped; a
    file of other settings is a ConfigError."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ConfigError(f"{path}, line {number} is not JSON. Fix: delete that line") from None
            write_atomic(path, "".join(f"{line}\n" for line in lines[:-1]))  # the next append starts clean
    if not records:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"settings": expected}) + "\n")
        return []
    recorded = records[0].get("settings") if isinstance(records[0], dict) else None
    if recorded != expected:
        changed = ", ".join(_differences(expected, recorded)) or "no settings line"
        raise ConfigError(
            f"{path} holds runs of other settings (differing: {changed}). Fix: the same settings to go on "
            "with those runs, another --work folder, or delete the file to start over"
        )
    return records[1:]


def _worker_init(threads: int) -> None:
    """A worker process's torch threads (one by default: runs at once share the cores)."""
    torch.set_num_threads(threads)


def execute(specs: list[RunSpec], settings: Settings, jobs: int) -> Iterator[dict[str, Any]]:
    """The records of `specs` as each run finishes: here one by one, or `jobs` at once in fresh worker
    processes (spawned, so no torch thread pool is forked)."""
    if jobs == 1:
        yield from (run_one(spec, settings) for spec in specs)
        return
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_worker_init, initargs=(settings.threads,)
    )
    try:
        futures = [pool.submit(run_one, spec, settings) for spec in specs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


STATS = ("return_mean", "mmer", "mmer_rollout", "train_return_last100", "wall_s", "collect_s", "train_s")


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and std over seeds of the measured values (None: measured in no seed)."""
    measured = [v for v in values if v is not None]
    return (float(np.mean(measured)), float(np.std(measured))) if measured else (None, None)


def compare(ours: dict, lstm: dict, floor: float, best: float) -> dict[str, Any]:
    """One AarenPPO row against the LSTM's on a task: the GOAL_METRIC difference against the seed spread
    (the larger seed std), normalised by `best - floor` (the best algorithm's gain on random play), and
    the wall-clock ratios."""
    mine, theirs = ours[f"{GOAL_METRIC}_mean"], lstm[f"{GOAL_METRIC}_mean"]
    speedup = lstm["wall_s_mean"] / ours["wall_s_mean"]
    row: dict[str, Any] = {
        "speedup_wall_vs_lstm": speedup,
        "speedup_train_vs_lstm": lstm["train_s_mean"] / ours["train_s_mean"],
        "goal_speedup_1_5x": bool(speedup >= SPEEDUP_GOAL),
        "return_diff": None,
        "return_spread": None,
        "return_diff_normalized": None,
        "return_fraction_of_lstm": None,
        "goal_return_reached": False,
    }
    if mine is None or theirs is None:
        return row  # no episode finished in any seed of one of them
    diff = mine - theirs
    spread = max(ours[f"{GOAL_METRIC}_seed_std"], lstm[f"{GOAL_METRIC}_seed_std"])
    return {
        **row,
        "return_diff": diff,
        "return_spread": spread,
        "return_diff_normalized": diff / (best - floor) if best - floor > 1e-9 else 0.0,
        # Only meaningful where the LSTM beat random play.
        "return_fraction_of_lstm": (mine - floor) / (theirs - floor) if theirs - floor > 1e-9 else None,
        "goal_return_reached": bool(diff >= -spread),
    }


def summarize(runs: list[dict], randoms: dict[str, float]) -> dict[str, Any]:
    """Per task and algorithm row: seed means and stds; then each AarenPPO row against the LSTM's (the
    default's comparison in the task's entry itself, the variants' under `variants_vs_lstm`)."""
    table: dict[str, Any] = {}
    for name in dict.fromkeys(r["task"] for r in runs):
        rows = {}
        for label in dict.fromkeys(r["algo"] for r in runs if r["task"] == name):
            mine = [r for r in runs if r["task"] == name and r["algo"] == label]
            rows[label] = {"seeds": len(mine)}
            for key in STATS:
                rows[label][f"{key}_mean"], rows[label][f"{key}_seed_std"] = _mean_std([r[key] for r in mine])
        entry: dict[str, Any] = {"random_return": randoms[name], "algos": rows}
        if "lstm" in rows:
            scores = [row[f"{GOAL_METRIC}_mean"] for row in rows.values()]
            best = max((s for s in scores if s is not None), default=randoms[name])
            versus = {
                label: compare(row, rows["lstm"], randoms[name], best)
                for label, row in rows.items()
                if label.split(":")[0] == "aaren"
            }
            entry.update(versus.pop("aaren", {}))
            if versus:
                entry["variants_vs_lstm"] = versus
        table[name] = entry
    return table


def versus_lstm(entry: dict[str, Any], label: str) -> dict[str, Any] | None:
    """An AarenPPO row's comparison with the LSTM in a task's summary entry (None: not compared)."""
    if label == "aaren":
        return entry if "goal_return_reached" in entry else None
    return entry.get("variants_vs_lstm", {}).get(label)


def goal_verdict(summary: dict[str, Any], label: str = "aaren") -> dict[str, Any] | None:
    """The goal over the tasks where the AarenPPO row `label` met the LSTM (None: on none of them)."""
    rows = [row for entry in summary.values() if (row := versus_lstm(entry, label)) is not None]
    if not rows:
        return None
    normalized = [r["return_diff_normalized"] for r in rows if r["return_diff_normalized"] is not None]
    verdict = {
        "metric": GOAL_METRIC,
        "tasks": len(rows),
        "return_within_spread_tasks": sum(r["goal_return_reached"] for r in rows),
        "return_diff_normalized_mean": float(np.mean(normalized)) if normalized else None,
        "speedup_wall_min": min(r["speedup_wall_vs_lstm"] for r in rows),
        "speedup_goal_tasks": sum(r["goal_speedup_1_5x"] for r in rows),
    }
    verdict["ahead_on_average"] = bool(normalized) and verdict["return_diff_normalized_mean"] >= 0.0
    verdict["met"] = bool(
        verdict["return_within_spread_tasks"] == len(rows)
        and verdict["ahead_on_average"]
        and verdict["speedup_goal_tasks"] == len(rows)
    )
    return verdict


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot(results: dict, path: Path) -> None:
    """Per task (top panels): final return and MMER per algorithm row as bars from random play's return
    (dashed), seed std as error bars; bottom: learn()'s wall-clock per task and row, split into acting and training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    tasks = list(summary)
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = plt.figure(figsize=(4.2 * cols, 3.3 * (rows + 1)))
    grid = fig.add_gridspec(rows + 1, cols)
    for i, name in enumerate(tasks):
        entry, ax = summary[name], fig.add_subplot(grid[i // cols, i % cols])
        algos = list(entry["algos"])
        x = np.arange(len(algos))
        floor = entry["random_return"]
        for j, (key, label) in enumerate((("return_mean", "final return"), ("mmer", "MMER"))):
            ax.bar(  # from the random floor up (or down) to the seed mean
                x + (j - 0.5) * 0.4,
                [_nan(entry["algos"][a][f"{key}_mean"]) - floor for a in algos],
                0.4,
                bottom=floor,
                yerr=[_nan(entry["algos"][a][f"{key}_seed_std"]) for a in algos],
                capsize=3,
                label=label,
                color=f"C{j}",
            )
        ax.axhline(floor, color="gray", ls="--", label="random")
        ax.set_xticks(x, algos, fontsize=8)
        ax.set_title(f"{name} ({results['settings']['steps'][name]} steps)", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    ax = fig.add_subplot(grid[rows, :])
    labels = list(dict.fromkeys(a for entry in summary.values() for a in entry["algos"]))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        cells = [summary[t]["algos"].get(label, {}) for t in tasks]
        collect = [_nan(r.get("collect_s_mean")) for r in cells]
        pos = np.arange(len(tasks)) + (j - (len(labels) - 1) / 2) * width
        ax.bar(pos, collect, width, color=f"C{j}", alpha=0.45)
        ax.bar(
            pos,
            [_nan(r.get("train_s_mean")) for r in cells],
            width,
            bottom=collect,
            color=f"C{j}",
            label=label,
        )
    ax.set_xticks(range(len(tasks)), tasks, fontsize=8)
    ax.set(ylabel="seconds (mean over seeds)", title="wall-clock of learn(): light acting, dark training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def _num(value: float | None, spread: float | None = None) -> str:
    """3 significant digits (with ± the spread), or "-" where not measured."""
    if value is None:
        return "-"
    return f"{value:.3g}" + ("" if spread is None else f" ± {spread:.2g}")


def format_table(results: dict) -> str:
    """The results as markdown: every row's returns and wall-clock, each AarenPPO row
    against the LSTM, and the goal verdicts."""
    lines = [
        "| task | random | algo | final return | MMER | wall s | acting s | training s |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in results["summary"].items():
        for i, (algo, row) in enumerate(entry["algos"].items()):
            head = f"{name} | {_num(entry['random_return'])}" if i == 0 else " | "
            lines.append(
                f"| {head} | {algo} | {_num(row['return_mean_mean'], row['return_mean_seed_std'])} "
                f"| {_num(row['mmer_mean'], row['mmer_seed_std'])} | {row['wall_s_mean']:.0f} "
                f"| {row['collect_s_mean']:.0f} | {row['train_s_mean']:.0f} |"
            )
    lines += [
        "",
        f"| task | algo | {GOAL_METRIC} − lstm | seed spread | within | normalised | wall speedup | training speedup |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    verdicts = results.get("goal", {})
    for name, entry in results["summary"].items():
        for label in verdicts:
            if (row := versus_lstm(entry, label)) is not None:
                lines.append(
                    f"| {name} | {label} | {_num(row['return_diff'])} | {_num(row['return_spread'])} "
                    f"| {'yes' if row['goal_return_reached'] else 'no'} | {_num(row['return_diff_normalized'])} "
                    f"| {row['speedup_wall_vs_lstm']:.2f}x | {row['speedup_train_vs_lstm']:.2f}x |"
                )
    lines.append("")
    for label, v in verdicts.items():
        lines.append(
            f"{label} vs lstm ({v['metric']}): within the seed spread on {v['return_within_spread_tasks']}/"
            f"{v['tasks']} tasks, normalised difference {_num(v['return_diff_normalized_mean'])} on average, "
            f">= {SPEEDUP_GOAL}x wall-clock on {v['speedup_goal_tasks']}/{v['tasks']} (min "
            f"{v['speedup_wall_min']:.2f}x): goal {'met' if v['met'] else 'NOT met'}"
        )
    return "\n".join(lines)


def run(settings: Settings, out_dir: Path, name: str, work: Path = WORK, jobs: int = 1) -> dict:
    """Every run of `settings` not yet recorded in work/<name>.jsonl, `jobs` at once; the JSON is
    rewritten as each run ends (with the runs recorded before), the PNG at the end."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    record_path, expected = work / f"{name}.jsonl", fingerprint(settings)
    done = {(r["task"], r["algo"], r["seed"]): r for r in read_work(record_path, expected)}
    specs = run_specs(settings)
    todo = [spec for spec in specs if spec.key not in done]
    with torch_threads(settings.threads):
        results: dict[str, Any] = {"machine": machine_info("cpu"), **expected, "jobs": jobs, "runs": []}
        randoms = {t: random_return(TASKS[t], RANDOM_EPISODES, EVAL_SEED_OFFSET) for t in settings.steps}
        if "aaren" in settings.algos:
            fused_module()  # built here, before any run, so that no run's wall-clock holds the one-time build
        start = time.perf_counter()

        def report() -> None:
            results["runs"] = [done[spec.key] for spec in specs if spec.key in done]
            results["runs_done"], results["runs_planned"] = len(results["runs"]), len(specs)
            results["summary"] = summarize(results["runs"], randoms)
            labels = dict.fromkeys(r["algo"] for r in results["runs"] if r["algo"].split(":")[0] == "aaren")
            verdicts = {label: goal_verdict(results["summary"], label) for label in labels}
            results["goal"] = {label: v for label, v in verdicts.items() if v is not None}
            results["total_wall_s"] = time.perf_counter() - start  # this invocation's
            results["machine"]["load_average_at_end"] = load_average()
            write_json(out_dir / f"{name}.json", results)

        for record in tqdm(execute(todo, settings, jobs), total=len(todo), desc="runs"):
            record["jobs"] = jobs
            append_line(record_path, record)
            done[record["task"], record["algo"], record["seed"]] = record
            report()
        report()
    plot(results, out_dir / f"{name}.png")
    return results


@dataclass(frozen=True)
class ActingSettings:
    """Batches, and how each timed call is made up: `calls` env steps from a fresh episode, `rounds`
    interleaved calls per case."""

    batches: tuple[int, ...] = (1, 8)
    calls: int = 100
    rounds: int = 21
    task: str = "CartPoleNoVel"


ACTING = ActingSettings()
ACTING_CLAIM = Claim("ppo_acting", ACTING)
ACTING_CASES = ("aaren_folded", "aaren_eager", "lstm")


def _predict_steps(model: BaseAlgorithm, obs: np.ndarray, calls: int) -> None:
    """`calls` deterministic predict calls carrying the memory, from a fresh episode in every env."""
    state, starts = None, np.ones(len(obs), dtype=bool)
    for _ in range(calls):
        _, state = model.predict(obs, state, starts, deterministic=True)
        starts = np.zeros_like(starts)


def _rollout_steps(model: BaseAlgorithm, obs: np.ndarray, calls: int) -> None:
    """`calls` acting steps of rollout collection (actor and critic, no gradients), as collect_rollouts."""
    policy = model.policy
    policy.set_training_mode(False)
    obs_t = torch.as_tensor(obs, device=policy.device)
    state = model._last_policy_state if isinstance(model, AarenPPO) else model._last_lstm_states
    starts = torch.ones(len(obs), dtype=torch.float32, device=policy.device)
    with torch.no_grad():
        for _ in range(calls):
            _, _, _, state = policy(obs_t, state, starts)
            starts = torch.zeros_like(starts)


def _acting_fns(batch: int, settings: ActingSettings) -> dict[str, Callable[[], None]]:
    """Per case and kind of step, a call of `settings.calls` steps at batch `batch`."""
    task = TASKS[settings.task]
    task = dataclasses.replace(task, n_envs=batch, ppo={**task.ppo, "batch_size": max(2, batch)})
    models = {algo: make_model(algo, task, seed=0) for algo in ("aaren", "lstm")}
    models["aaren"]._setup_learn(1)  # the initial memory state that collect_rollouts starts from
    obs = models["aaren"].env.reset()

    def case(name: str, steps: Callable[[BaseAlgorithm, np.ndarray, int], None]) -> Callable[[], None]:
        model = models["lstm" if name == "lstm" else "aaren"]

        def call() -> None:
            if name != "lstm":
                model.policy.fold_acting = name == "aaren_folded"
            steps(model, obs, settings.calls)

        return call

    return {
        f"{kind}/{name}": case(name, steps)
        for kind, steps in (("predict", _predict_steps), ("rollout", _rollout_steps))
        for name in ACTING_CASES
    }


def bench_acting_speed(settings: ActingSettings) -> dict[str, Any]:
    """Median microseconds per env step of every case at every batch, and the ratios to the LSTM."""
    rows = []
    with torch_threads(1):
        for batch in settings.batches:
            times = time_interleaved(
                _acting_fns(batch, settings), "cpu", settings.rounds, settings.rounds, 0.0
            )
            for key, seconds in times.items():
                kind, name = key.split("/")
                us = float(np.median(seconds)) / settings.calls * 1e6
                rows.append({"kind": kind, "batch": batch, "case": name, "us_per_step": us})
    by_key = {(r["kind"], r["batch"], r["case"]): r["us_per_step"] for r in rows}
    for r in rows:
        r["over_lstm"] = r["us_per_step"] / by_key[(r["kind"], r["batch"], "lstm")]
    folded = [r for r in rows if r["case"] == "aaren_folded"]
    return {
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "goal_no_slower_than_lstm": all(r["over_lstm"] <= 1.0 for r in folded),
    }


def format_acting(acting: dict[str, Any]) -> str:
    """The acting-speed table."""
    lines = [f"{'step':<8} {'batch':>5} {'case':<13} {'us/step':>9} {'/ lstm':>7}"]
    for r in acting["rows"]:
        lines.append(
            f"{r['kind']:<8} {r['batch']:>5} {r['case']:<13} {r['us_per_step']:>9.1f} {r['over_lstm']:>7.2f}"
        )
    verdict = "met" if acting["goal_no_slower_than_lstm"] else "NOT met"
    lines.append(f"AarenPPO folded acting no slower than the LSTM: {verdict}")
    return "\n".join(lines)


def plot_acting(acting: dict[str, Any], path: Path) -> None:
    """Bars: time per env step over the LSTM's, per step kind and batch, for each case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["kind"], r["batch"]) for r in acting["rows"]})
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, case in enumerate(ACTING_CASES):
        ratios = {(r["kind"], r["batch"]): r["over_lstm"] for r in acting["rows"] if r["case"] == case}
        ax.bar(np.arange(len(groups)) + (i - 1) * 0.27, [ratios[g] for g in groups], 0.27, label=case)
    ax.axhline(1.0, color="tab:gray", ls="--")
    ax.set_xticks(range(len(groups)), [f"{kind}, batch {batch}" for kind, batch in groups])
    ax.set(ylabel="time per env step / LSTM's", title="AarenPPO acting vs RecurrentPPO (one thread)")
    ax.set_ylim(0, 1.3 * max(r["over_lstm"] for r in acting["rows"]))
    ax.legend(loc="upper center", ncol=len(ACTING_CASES))
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def run_acting(settings: ActingSettings, out_dir: Path) -> dict[str, Any]:
    """The acting-speed section alone, written to ppo_acting.json and ppo_acting.png."""
    results = {"machine": machine_info("cpu"), **bench_acting_speed(settings)}
    results["machine"]["load_average_at_end"] = load_average()
    write_json(out_dir / "ppo_acting.json", results)
    plot_acting(results, out_dir / "ppo_acting.png")
    return results


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="full",
        help="; ".join(settings.notes for settings, _ in PRESETS.values()),
    )
    parser.add_argument("--quick", action="store_true", help="the same as --preset quick")
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=list(TASKS),
        metavar="TASK",
        help=f"only these tasks of the preset, with its budgets: {', '.join(TASKS)}",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        help="seeds 0 to SEEDS - 1 instead of the preset's (fewer, or more to check a spread)",
    )
    parser.add_argument("--algos", nargs="+", choices=ALGOS, help="only these algorithms (e.g. an ablation)")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), help="AarenPPO variants, each its own row"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, in worker processes")
    add_output_arguments(parser)
    parser.add_argument(
        "--work", type=Path, default=WORK, help=f"folder of the run records, <name>.jsonl (default {WORK})"
    )
    parser.add_argument(
        "--acting-only", action="store_true", help="only the acting-speed section (ppo_acting.json, .png)"
    )
    parser.add_argument("--no-acting", action="store_true", help="skip the acting-speed section")
    args = parser.parse_args(argv)
    settings, name = PRESETS["quick" if args.quick else args.preset]
    if args.tasks:
        missing = [t for t in args.tasks if t not in settings.steps]
        if missing:
            parser.error(f"{missing} not in this preset's tasks {list(settings.steps)}")
        settings = dataclasses.replace(settings, steps={t: settings.steps[t] for t in args.tasks})
        name += "_" + "_".join(args.tasks)
    if args.seeds is not None:
        if args.seeds < 1:
            parser.error(f"--seeds must be at least 1, got {args.seeds}")
        settings = dataclasses.replace(settings, seeds=tuple(range(args.seeds)))
        name += f"_{args.seeds}seed"
    if args.algos:
        settings = dataclasses.replace(settings, algos=tuple(a for a in ALGOS if a in args.algos))
        name += "_" + "_".join(settings.algos)
    if args.variants:
        settings = dataclasses.replace(settings, variants=tuple(args.variants))
        name += "_" + "_".join(args.variants)
    # Both destinations first, so that a refused canonical result stops the command before any run.
    stem = acting_stem = None
    if not args.acting_only:
        stem = output_stem(POPGYM_CLAIM, settings, "cpu", name, args.out, args.allow_dirty)
    if not args.no_acting:
        acting_stem = output_stem(ACTING_CLAIM, ACTING, "cpu", "ppo_acting", args.out, args.allow_dirty)
    if acting_stem is not None:
        acting = run_acting(ACTING, acting_stem.parent)
        print(format_acting(acting) + f"\nwrote {acting_stem}.json\n")
    if stem is None:
        return 0
    results = run(settings, stem.parent, stem.name, args.work, args.jobs)
    print(format_table(results))
    print(f"\nwrote {stem}.json and {stem}.png in {results['total_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
