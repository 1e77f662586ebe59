"""Benchmark of memory over long horizons: acting cost against the step index, T-Maze success against
corridor length, and returns on POPGym's memory tasks, for every decision backbone.

The backbones compared (`VARIANTS`, one table used by every section) share the tokens, heads, training
loop and evaluation; only the backbone, the batching and Aaren's step slopes differ: "aaren" (Aaren-DT
with step slopes on packed whole episodes, acting recurrently on its constant-size state), "transformer" (the reference Transformer-DT on
K = 20 windows, acting on its last K steps), "transformer-episode" (the Transformer whose context is the
whole episode: `model.context_steps` the longest episode, trained on whole episodes from their first step
and acting through its KV cache over the whole episode) and "lstm" (the Decision-LSTM on whole episodes,
acting recurrently). Each acts as its batches trained it (`acting`).

1. Acting: per-step seconds and agent state bytes against the step index (log-spaced `checkpoints`)
   on the T-Maze's shapes (3 observations, Discrete(4) actions), batch 1, one torch thread, for every
   variant; the KV cache (transformer-episode) grows by 3 tokens a step and is driven only up to
   `kv_max_step`. Each agent is driven through one episode of random observations to every checkpoint;
   the step at each checkpoint is then repeated from the state entering it (acting leaves its input state
   unchanged), all agents' and checkpoints' steps timed round-robin so that machine load hits them alike;
   the median is reported. Untrained models: this measures speed only.
2. T-Maze: per variant and seed, train on one oracle dataset mixing corridors of `train_lengths`
   (collected once into the work folder; the `tmaze-100` config otherwise) and evaluate, in corridors of
   each of `eval_lengths` without retraining, the success rate at target return 1 and the share of wins
   at target return 0 (an agent that follows its target loses there on purpose). Training seconds per
   gradient step are compared at equal train.batch_steps, each variant's over transformer-episode's.
3. POPGym: per task of `popgym_tasks` (`configs/popgym-<task>-<level>.yaml`), variant and seed, train on
   the task's oracle dataset (collected once into the work folder) and evaluate the mean return at the
   task's first target (1, every answer right); per task the best variants by IQM (by mean under 3 seeds).

Every T-Maze and POPGym run is recorded in work/done/<task>-<variant>-s<seed>.json and skipped when the
benchmark runs again; an interrupted run resumes from its last checkpoint. Scores over seeds are
summarised by their mean and, from 3 seeds on, their IQM with its 95% interval (`agents.common.stats`).

Not here: the noisy T-Maze, POPGym's Hard level, and live evaluation during training.

Writes memory.json and memory.png into --out: the tracked result for the full preset (memory_cpu.* for
--cpu), into <out>/variants/ for any other run (`benchmarks.common`). The full preset (T-Maze trained at
corridors up to 1,000 and evaluated at 100, 1,000 and 10,000; six POPGym tasks) is GPU-sized; --cpu
(T-Maze trained at corridors up to 100, evaluated at the same lengths, without the whole-episode
Transformer; three POPGym tasks at 1,000 steps) and --cpu-long (the full preset's T-Maze at a fifth of its
steps, Aaren-DT only; memory_cpu_long.*) take hours on two CPU cores,
resumably; --quick finishes on two CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from agents.common.overrides import ConfigError
from agents.common.shipped import find_config
from agents.decision.agent import AgentState, DecisionAgent
from agents.decision.batching import batcher_type
from agents.decision.config import Config, ModelConfig, TrainConfig, changed_keys, flat_keys, load_config
from agents.decision.evaluation import evaluate_agent
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import load_agent, run_targets
from agents.decision.training import train
from envs import collect_recipe, load_dataset
from envs.files import torch_threads
from envs.popgym import OFFLINE_TASKS, offline_name

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from agents.common import stats  # noqa: E402
from agents.common.cli import exits_2_on_user_errors  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Claim,
    add_output_arguments,
    machine_info,
    output_stem,
    ratio,
    time_interleaved,
    write_json,
    write_png,
)

OBS_DIM, NUM_ACTIONS = 3, 4  # the T-Maze's observation [cue, junction, noise] and Discrete(4) actions
FLAT_GOAL = 1.1  # Aaren's step time at the last checkpoint over its time at FLAT_FROM, at most
FLAT_FROM = 100
#: Stands for the dataset's longest episode in `VARIANTS` (the acting section: its last checkpoint).
LONGEST_EPISODE = "longest episode"
#: The backbones compared, by name: the config overrides each trains with (module docstring).
VARIANTS: dict[str, dict[str, object]] = {
    "aaren": {"model.backbone": "aaren", "train.batching": "packed", "model.step_slopes": True},
    "transformer": {
        "model.backbone": "transformer",
        "train.batching": "windows",
        "model.context_steps": 20,
        "model.step_slopes": False,
    },
    "transformer-episode": {
        "model.backbone": "transformer",
        "train.batching": "episodes",
        "model.context_steps": LONGEST_EPISODE,
        "model.step_slopes": False,
    },
    "lstm": {"model.backbone": "lstm", "train.batching": "episodes", "model.step_slopes": False},
}
BASELINE = "transformer-episode"  # the variant training seconds per step are compared with
TARGET = 1.0  # the T-Maze's winning return
LOSE = 0.0  # the T-Maze's target for losing on purpose
EVAL_SEED, EVAL_ENVS = 1000, 10
TIE = 1e-9  # scores this close are the same score (sums of equal rewards in another order)


def acting(variant: str) -> str:
    """How a variant acts: as its batches train it (`Batcher.acting`, which a trained run's checkpoint
    records): on its last K steps after K-windows, otherwise recurrently over the whole episode (Aaren's and
    the LSTM's state, the Transformer's KV cache)."""
    own = VARIANTS[variant]
    cfg = Config(
        model=ModelConfig(backbone=str(own["model.backbone"])),
        train=TrainConfig(batching=str(own["train.batching"])),
    )
    return batcher_type(cfg).acting


def overrides(variant: str, longest: int) -> dict[str, object]:
    """A variant's config overrides, with the longest episode `longest` filled in."""
    return {key: longest if value == LONGEST_EPISODE else value for key, value in VARIANTS[variant].items()}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    checkpoints: tuple[int, ...] = (1, 10, 100, 1000, 3000, 10000)
    kv_max_step: int = 10000  # the KV-cache agent's last checkpoint (reaching it costs O(steps^2))
    min_reps: int = 20
    max_reps: int = 300
    budget_s: float = 0.1  # per checkpoint and agent, within [min_reps, max_reps] repetitions
    embed_dim: int = 128  # the acting models' width and depth
    num_layers: int = 3
    train_embed_dim: int = 128  # the trained models' (T-Maze and POPGym)
    train_layers: int = 3
    train_threads: int = 0  # train.threads: torch's CPU threads while training (0: torch's default)
    train_lengths: tuple[int, ...] = (250, 500, 1000)  # configs/tmaze-1000.yaml's data and batches
    eval_lengths: tuple[int, ...] = (100, 1000, 10000)
    seeds: tuple[int, ...] = (0, 1, 2)
    trained: tuple[str, ...] = tuple(VARIANTS)  # the variants the T-Maze section trains
    transitions: int = 1_000_000
    steps: int = 20000
    batch_steps: int = 4096
    eval_episodes: int = 20
    popgym_tasks: tuple[str, ...] = tuple(offline_name(name) for name in OFFLINE_TASKS)
    popgym_transitions: int = 400_000  # as configs/popgym-repeatfirst-medium.yaml (the longest episodes)
    popgym_steps: int = 10000  # configs/popgym-*.yaml's; their own train.batch_steps
    popgym_trained: tuple[str, ...] = tuple(VARIANTS)  # the variants the POPGym section trains


FULL = Settings()
#: On two CPU cores in hours: the T-Maze trained on corridors up to 100 and evaluated at 100, 1,000 and
#: 10,000, without transformer-episode, whose KV-cache acting over 10,000 steps alone would take longer;
#: and three POPGym tasks whose memory outspans K = 20 (the first card, a lag of 31 cards, a count over the
#: episode) at a tenth of their configs' steps, every variant (their episodes are 51 and 103 steps).
CPU = Settings(
    train_lengths=(25, 50, 100),
    train_threads=1,
    transitions=300_000,
    steps=1500,
    batch_steps=1280,
    trained=("aaren", "transformer", "lstm"),
    popgym_tasks=("popgym-repeatfirst-easy", "popgym-repeatprevious-medium", "popgym-countrecall-easy"),
    popgym_transitions=200_000,  # as the Easy configs' comments collect
    popgym_steps=1000,
)
QUICK = Settings(
    kv_max_step=3000,
    train_lengths=(20, 50),
    eval_lengths=(50, 100, 1000),
    train_embed_dim=64,
    train_layers=2,
    train_threads=1,  # on two shared cores one thread trains fastest
    transitions=30_000,
    steps=200,
    batch_steps=320,
    eval_episodes=10,
    popgym_tasks=("popgym-repeatfirst-easy",),
    popgym_transitions=20_000,
    popgym_steps=200,
)
#: The full preset's T-Maze (corridors of 250, 500 and 1,000 cells) on two CPU cores in hours: 4,000 steps,
#: a fifth of the full preset's (a batch of long corridors holds few junction decisions, so --cpu's 1,500
#: steps leave Aaren-DT at chance here), Aaren-DT only (--cpu shows the baselines at chance where the cue
#: lies 25-100 steps back; here it lies 250-1,000 back), no POPGym.
CPU_LONG = Settings(train_threads=1, steps=4000, trained=("aaren",), popgym_tasks=())
CLAIM = Claim("memory", FULL, "cuda")  # the tracked result: the full preset, training on a GPU
CPU_CLAIM = Claim("memory_cpu", CPU)  # and the --cpu preset's, on a CPU
CPU_LONG_CLAIM = Claim("memory_cpu_long", CPU_LONG)  # and the --cpu-long preset's, on a CPU
PRESETS = {
    "quick": (QUICK, CLAIM),
    "cpu": (CPU, CPU_CLAIM),
    "cpu-long": (CPU_LONG, CPU_LONG_CLAIM),
    "full": (FULL, CLAIM),
}


# ---- 1. acting ---------------------------------------------------------------------------------------


def _model(variant: str, settings: Settings) -> DecisionModel:
    """An untrained T-Maze-shaped model of `variant` in eval mode (seeded, so every run builds the same)."""
    torch.manual_seed(0)
    model = {
        key.removeprefix("model."): value
        for key, value in overrides(variant, max(settings.checkpoints)).items()
        if key.startswith("model.")
    }
    config = DecisionModelConfig(
        obs_dim=OBS_DIM,
        act_dim=1,
        action_low=[0.0],
        action_high=[NUM_ACTIONS - 1.0],
        action_space="Discrete",
        embed_dim=settings.embed_dim,
        num_layers=settings.num_layers,
        return_scale=1.0,
        acting=acting(variant),
        **model,
    )
    return DecisionModel(config).eval()


def _kv_cache(variant: str) -> bool:
    """Whether the variant acts on a KV cache (the Transformer acting recurrently), which grows every step."""
    return VARIANTS[variant]["model.backbone"] == "transformer" and acting(variant) == "recurrent"


def _states_at_checkpoints(
    agent: DecisionAgent, obs: np.ndarray, checkpoints: list[int]
) -> dict[int, AgentState | None]:
    """The agent's state entering each checkpoint step (1: the episode's first, None), driving it through
    one episode of `obs`."""
    states: dict[int, AgentState | None] = {}
    state, rewards = None, np.zeros(1, dtype=np.float32)
    for t in range(1, max(checkpoints) + 1):
        if t in checkpoints:
            states[t] = state
        _, state = agent.act(obs[t - 1], state, None, rewards if state is not None else None)
    return states


def bench_acting(settings: Settings) -> list[dict]:
    """One row per variant and checkpoint: the median seconds of the step at that index (the same step
    repeated from the state entering it: acting does not change its input state), all checkpoints timed
    round-robin so that machine load hits them alike, and the state bytes after the step."""
    obs = np.random.default_rng(0).standard_normal((max(settings.checkpoints), 1, OBS_DIM)).astype(np.float32)
    rewards = np.zeros(1, dtype=np.float32)
    steps: dict[tuple[str, int], Callable[[], tuple]] = {}
    with torch_threads(1):  # as the evaluation loop acts
        for variant in VARIANTS:
            agent = DecisionAgent(_model(variant, settings), TARGET)
            reach = settings.kv_max_step if _kv_cache(variant) else max(settings.checkpoints)
            checkpoints = [t for t in settings.checkpoints if t <= reach]
            for t, state in _states_at_checkpoints(agent, obs, checkpoints).items():
                steps[variant, t] = functools.partial(
                    agent.act, obs[t - 1], state, None, rewards if state is not None else None
                )
        times = time_interleaved(
            {f"{variant}@{t}": fn for (variant, t), fn in steps.items()},
            "cpu",
            settings.min_reps,
            settings.max_reps,
            settings.budget_s,
        )
        return [
            {
                "agent": variant,
                "step": t,
                "step_seconds": statistics.median(times[f"{variant}@{t}"]),
                "state_bytes": fn()[1].nbytes,
            }
            for (variant, t), fn in steps.items()
        ]


def acting_summary(rows: list[dict], settings: Settings) -> dict:
    """Per variant: its step time at its last checkpoint over its time at FLAT_FROM (or the first
    checkpoint), and its state bytes there over at step 1; every other variant's step time over Aaren's
    at each checkpoint both reached; and Aaren's flatness goal."""
    by = {(r["agent"], r["step"]): r for r in rows}
    first = FLAT_FROM if FLAT_FROM in settings.checkpoints else settings.checkpoints[0]
    growth = {}
    for variant in VARIANTS:
        last = max(r["step"] for r in rows if r["agent"] == variant)
        growth[variant] = {
            "from_step": first,
            "to_step": last,
            "step_seconds": ratio(by[variant, last]["step_seconds"], by[variant, first]["step_seconds"]),
            "state_bytes": ratio(
                by[variant, last]["state_bytes"], by[variant, settings.checkpoints[0]]["state_bytes"]
            ),
        }
    over_aaren = {
        f"{variant}_over_aaren": {
            str(t): ratio(by[variant, t]["step_seconds"], by["aaren", t]["step_seconds"])
            for t in settings.checkpoints
            if (variant, t) in by
        }
        for variant in VARIANTS
        if variant != "aaren"
    }
    value, last = growth["aaren"]["step_seconds"], growth["aaren"]["to_step"]
    goal = {
        "goal": f"<= {FLAT_GOAL} (step {last} over step {first})",
        "value": value,
        "met": value <= FLAT_GOAL,
    }
    return {"growth": growth, **over_aaren, "goal_aaren_flat": goal}


# ---- runs: training and evaluation shared by the T-Maze and POPGym sections ------------------------


def collect_once(recipe: str, transitions: int, work: Path) -> Path:
    """The dataset of `recipe` with `transitions` steps in work/data, collected on the first call. Processes
    sharing a work folder (--seeds) may collect it at the same time: the same seed makes the same file, so
    the last one to finish replaces it (atomically) instead of failing."""
    path = work / "data" / f"{recipe}-{transitions}.hdf5"
    if not path.is_file():
        collect_recipe(recipe, path, transitions, num_envs=4, seed=0, progress=False, overwrite=True)
    return path


def tmaze_dataset(settings: Settings, work: Path) -> Path:
    """The oracle T-Maze dataset mixing corridors of `train_lengths`."""
    return collect_once(
        f"tmaze-{'-'.join(map(str, settings.train_lengths))}-oracle-v0", settings.transitions, work
    )


def popgym_dataset(task: str, settings: Settings, work: Path) -> Path:
    """The oracle dataset of a POPGym task ("popgym-repeatfirst-easy")."""
    return collect_once(f"{task}-oracle-v0", settings.popgym_transitions, work)


def longest_episode(data: Path) -> int:
    """The longest episode of a dataset file, in steps."""
    return int(load_dataset(str(data)).episode_lengths.max())


@dataclasses.dataclass(frozen=True)
class Task:
    """What a section trains on: a shipped config, the dataset, its longest episode and what the section
    sets beyond the variant and the seed."""

    name: str  # the run directories' and records' prefix; a POPGym task's env
    config: str
    data: Path
    longest: int
    steps: int
    settings: tuple[str, ...] = ()


def run_config(task: Task, variant: str, seed: int, settings: Settings, work: Path, device: str) -> Config:
    """The config of one run, in work/runs/<task>-<variant>-s<seed>."""
    run_dir = work / "runs" / f"{task.name}-{variant}-s{seed}"
    return load_config(
        find_config(task.config),
        [
            f"data.dataset={task.data}",
            f"output_dir={run_dir.parent}",
            f"name={run_dir.name}",
            *(f"{key}={value}" for key, value in overrides(variant, task.longest).items()),
            f"model.embed_dim={settings.train_embed_dim}",
            f"model.num_layers={settings.train_layers}",
            f"train.seed={seed}",
            f"train.device={device}",
            f"train.steps={task.steps}",
            f"train.threads={settings.train_threads}",
            f"train.warmup_steps={max(1, task.steps // 20)}",
            f"train.checkpoint_every={max(1, task.steps // 4)}",
            "train.eval_every=0",
            "eval.episodes=2",  # the run's own final evaluation; this benchmark evaluates its own way
            "eval.num_envs=2",
            *task.settings,
        ],
    )


def learned_settings(cfg: Config) -> dict:
    """What decides a run's result: its model and train sections (`changed_keys` leaves out where and how
    fast it trains)."""
    sections = cfg.to_dict()
    return {"model": sections["model"], "train": sections["train"]}


def check_same_settings(path: Path, kept: dict | None, now: dict) -> None:
    """A ConfigError naming `path` when a kept run or record was made with other settings than the run
    this benchmark would make now (a changed preset or config): reusing it would mix the two."""
    if kept is None:
        changed = "it records none (an older benchmark's)"
    else:
        old, new = flat_keys(kept), flat_keys(now)
        keys = changed_keys(kept, now)
        if not keys:
            return
        changed = ", ".join(f"{key} was {old[key]!r}, now {new[key]!r}" for key in keys)
    raise ConfigError(
        f"{path} was made with other settings ({changed}). Fix: delete it to run again with today's, or "
        "pass another --work folder"
    )


def train_run(cfg: Config) -> Path:
    """Train (or resume, if its settings are the same) the run of `cfg`; its directory."""
    run_dir = Path(cfg.output_dir) / cfg.name
    if (run_dir / "config.yaml").is_file():
        saved = load_config(run_dir / "config.yaml", [])
        check_same_settings(run_dir / "config.yaml", learned_settings(saved), learned_settings(cfg))
        return train(resume=run_dir, progress=False)
    return train(cfg, progress=False)


def training_seconds(run_dir: Path) -> float:
    """A finished run's training seconds (batches and updates, not checkpoints or evaluations, summed
    over resumed sessions): its last metrics row's train/seconds."""
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["train/seconds"] for row in rows if "train/seconds" in row][-1]


def eval_returns(run_dir: Path, target: float, env: str, settings: Settings, device: str) -> np.ndarray:
    """The returns of `eval_episodes` episodes of `env`, the run acting towards `target` as it trained."""
    agent = load_agent(run_dir, target, device)
    result = evaluate_agent(agent, env, settings.eval_episodes, EVAL_ENVS, seed=EVAL_SEED, progress=False)
    return np.asarray(result.returns)


def recorded_run(
    task: Task,
    variant: str,
    seed: int,
    settings: Settings,
    work: Path,
    device: str,
    measure: Callable[[Task, Path, Settings, str], dict],
) -> dict:
    """One finished run's record (read back if an earlier session finished it with the same settings): its
    task, variant, seed, settings, training seconds and what `measure(task, run_dir, settings, device)` adds."""
    done = work / "done" / f"{task.name}-{variant}-s{seed}.json"
    cfg = run_config(task, variant, seed, settings, work, device)
    if done.is_file():
        record = json.loads(done.read_text())
        check_same_settings(done, record.get("settings"), learned_settings(cfg))
        return record
    run_dir = train_run(cfg)
    seconds = training_seconds(run_dir)
    record = {
        "task": task.name,
        "variant": variant,
        "seed": seed,
        "settings": learned_settings(cfg),
        "train_seconds": seconds,
        "train_seconds_per_step": seconds / task.steps,
        **measure(task, run_dir, settings, device),
    }
    write_json(done, record)
    return record


def over_seeds(values: Sequence[float]) -> dict:
    """Scores over seeds: the values, their mean, and from 3 seeds on their IQM with its interval."""
    row: dict = {"values": list(values), "mean": float(np.mean(values))}
    if len(values) >= 3:
        row["iqm"] = dataclasses.asdict(stats.iqm(np.asarray(values, dtype=float)[:, None]))
    return row


def seconds_per_step(runs: list[dict]) -> dict:
    """Per variant run the median over its runs of training seconds per gradient step, and each one's over
    the baseline's: BASELINE's, else (a preset without it) the K = 20 Transformer's, else (Aaren-DT alone)
    none."""
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    median = {
        v: statistics.median([r["train_seconds_per_step"] for r in runs if r["variant"] == v])
        for v in variants
    }
    baseline = next((v for v in (BASELINE, "transformer") if v in median), None)
    return {
        "median": median,
        "baseline": baseline,
        "over_baseline": {v: ratio(median[v], median[baseline]) for v in variants} if baseline else {},
    }


# ---- 2. T-Maze -----------------------------------------------------------------------------------------


def tmaze_task(settings: Settings, work: Path) -> Task:
    """The T-Maze section's training: `tmaze-100`'s config on the mixed-corridor dataset."""
    data = tmaze_dataset(settings, work)
    return Task(
        "tmaze",
        "tmaze-100",
        data,
        longest_episode(data),
        settings.steps,
        (f"data.env=tmaze-{max(settings.train_lengths)}", f"train.batch_steps={settings.batch_steps}"),
    )


def tmaze_measure(task: Task, run_dir: Path, settings: Settings, device: str) -> dict:
    """Per evaluation corridor length: the success rate at target 1 and the share of wins at target 0."""

    def wins(target: float, length: int) -> float:
        return float(np.mean(eval_returns(run_dir, target, f"tmaze-{length}", settings, device) >= TARGET))

    lengths = settings.eval_lengths
    return {
        "success": {str(n): wins(TARGET, n) for n in lengths},
        "wins_at_target_0": {str(n): wins(LOSE, n) for n in lengths},
    }


def tmaze_summary(runs: list[dict], settings: Settings) -> dict:
    """Per variant and evaluation length: success at target 1 and wins at target 0 over seeds."""
    summary = {}
    for variant in settings.trained:
        mine = [r for r in runs if r["variant"] == variant]
        summary[variant] = {
            str(n): {
                key: over_seeds([r[key][str(n)] for r in mine]) for key in ("success", "wins_at_target_0")
            }
            for n in settings.eval_lengths
        }
    return summary


def bench_tmaze(settings: Settings, work: Path, device: str = "cpu") -> dict:
    """Every variant x seed run (seed outermost, so that an interrupted session leaves whole seeds)."""
    task = tmaze_task(settings, work)
    runs = [
        recorded_run(task, v, s, settings, work, device, tmaze_measure)
        for s in settings.seeds
        for v in settings.trained
    ]
    return {
        "dataset": str(task.data),
        "longest_episode": task.longest,
        "runs": runs,
        "summary": tmaze_summary(runs, settings),
        "train_seconds_per_step": seconds_per_step(runs),
    }


# ---- 3. POPGym -----------------------------------------------------------------------------------------


def popgym_measure(task: Task, run_dir: Path, settings: Settings, device: str) -> dict:
    """The mean return at the run's first target (the task's best return), in the task's env."""
    target = run_targets(run_dir)[0]
    return {
        "target": target,
        "return": float(eval_returns(run_dir, target, task.name, settings, device).mean()),
    }


def best_variants(summary: dict) -> dict:
    """The variants of the highest IQM (mean where there is none), several where they tie, and whether
    the one best's interval lies above every other variant's (None without intervals)."""
    point = {v: row["iqm"]["point"] if "iqm" in row else row["mean"] for v, row in summary.items()}
    top = max(point.values())
    best = [v for v, p in point.items() if p >= top - TIE]
    separated = None
    if all("iqm" in row for row in summary.values()):
        low = summary[best[0]]["iqm"]["low"]
        separated = len(best) == 1 and all(
            low > row["iqm"]["high"] for v, row in summary.items() if v != best[0]
        )
    return {"variants": best, "interval_above_the_others": separated}


def bench_popgym_task(name: str, settings: Settings, work: Path, device: str) -> dict:
    """One POPGym task: every variant x seed run, the mean return per variant over seeds and the best."""
    data = popgym_dataset(name, settings, work)
    task = Task(name, name, data, longest_episode(data), settings.popgym_steps)
    runs = [
        recorded_run(task, v, s, settings, work, device, popgym_measure)
        for s in settings.seeds
        for v in settings.popgym_trained
    ]
    summary = {
        v: over_seeds([r["return"] for r in runs if r["variant"] == v]) for v in settings.popgym_trained
    }
    return {
        "dataset": str(data),
        "runs": runs,
        "summary": summary,
        "best": best_variants(summary),
        "train_seconds_per_step": seconds_per_step(runs),
    }


def bench_popgym(settings: Settings, work: Path, device: str = "cpu") -> dict:
    """Every task of `popgym_tasks`, by name."""
    return {name: bench_popgym_task(name, settings, work, device) for name in settings.popgym_tasks}


# ---- report --------------------------------------------------------------------------------------------


def _colour(variant: str) -> str:
    """The variant's colour in every panel."""
    return f"C{list(VARIANTS).index(variant)}"


def plot(results: dict, path: Path) -> None:
    """Acting step time and state bytes against the step index; T-Maze success (solid) and wins at
    target 0 (dashed) against corridor length; POPGym returns per task and variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + ("tmaze" in results) + ("popgym" in results)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5))
    for key, ax, ylabel, title in (
        ("step_seconds", axes[0], "seconds per step", "acting time per step (batch 1)"),
        ("state_bytes", axes[1], "state bytes", "acting memory"),
    ):
        for variant in VARIANTS:
            pts = [(r["step"], r[key]) for r in results["acting"] if r["agent"] == variant]
            ax.plot(*zip(*pts, strict=True), marker="o", color=_colour(variant), label=variant)
        ax.set(xscale="log", yscale="log", xlabel="step index", ylabel=ylabel, title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    rest = iter(axes[2:])
    if "tmaze" in results:
        _plot_tmaze(next(rest), results)
    if "popgym" in results:
        _plot_popgym(next(rest), results["popgym"])
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def _plot_tmaze(ax, results: dict) -> None:
    """Per variant the mean over seeds against corridor length, the longest trained corridor marked."""
    for variant, by_length in results["tmaze"]["summary"].items():
        lengths = [int(n) for n in by_length]
        for key, style in (("success", "-"), ("wins_at_target_0", "--")):
            means = [by_length[str(n)][key]["mean"] for n in lengths]
            ax.plot(
                lengths,
                means,
                style,
                marker="o",
                color=_colour(variant),
                label=variant if style == "-" else None,
            )
    trained = max(results["settings"]["train_lengths"])
    ax.axvline(trained, color="grey", ls=":", label=f"longest trained ({trained})")
    ax.set(xscale="log", ylim=(-0.05, 1.05), xlabel="corridor length", ylabel="share of episodes won (mean)")
    ax.set_title("T-Maze: success at target 1 (solid), wins at target 0 (dashed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_popgym(ax, popgym: dict) -> None:
    """Per task a bar per variant: the IQM with its interval (the mean under 3 seeds)."""
    trained = list(next(iter(popgym.values()))["summary"])
    width = 0.8 / len(trained)
    for j, variant in enumerate(trained):
        rows = [popgym[task]["summary"][variant] for task in popgym]
        points = np.array([row["iqm"]["point"] if "iqm" in row else row["mean"] for row in rows])
        spans = np.array(
            [
                [row["iqm"]["low"], row["iqm"]["high"]] if "iqm" in row else [p, p]
                for row, p in zip(rows, points, strict=True)
            ]
        )
        ax.bar(
            np.arange(len(rows)) + (j - (len(trained) - 1) / 2) * width,
            points,
            width,
            yerr=np.abs(spans.T - points),
            color=_colour(variant),
            label=variant,
        )
    ax.set_xticks(
        range(len(popgym)), [task.removeprefix("popgym-") for task in popgym], rotation=20, fontsize=8
    )
    ax.set(ylim=(-1.05, 1.05), ylabel="return at target 1 (IQM over seeds; mean under 3)")
    ax.set_title("POPGym offline")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=8)


def make_datasets(settings: Settings, work: Path) -> None:
    """Collect every section's datasets (once), so that a missing extra stops the run before training."""
    tmaze_dataset(settings, work)
    for task in settings.popgym_tasks:
        popgym_dataset(task, settings, work)


def run(settings: Settings, device: str, stem: Path, work: Path | None) -> dict:
    """The acting section, then (with a work folder) the T-Maze and POPGym sections; writes <stem>.json
    and .png."""
    results: dict = {"machine": machine_info(device), "settings": dataclasses.asdict(settings)}
    results["acting"] = bench_acting(settings)
    results["acting_summary"] = acting_summary(results["acting"], settings)
    if work is not None:
        results["statistics"] = stats.describe()  # rliable imports, before any training
        make_datasets(settings, work)
        results["tmaze"] = bench_tmaze(settings, work, device)
        if settings.popgym_tasks:
            results["popgym"] = bench_popgym(settings, work, device)
    write_json(stem.with_suffix(".json"), results)
    plot(results, stem.with_suffix(".png"))
    return results


def _score(row: dict) -> str:
    """A summary over seeds as text: the IQM with its interval, or the mean under 3 seeds."""
    if "iqm" in row:
        return format(stats.Interval(**row["iqm"]), ".2f")
    return f"{row['mean']:.2f} (mean)"


def report(results: dict) -> None:
    """Print each section's summary."""
    for variant, growth in results["acting_summary"]["growth"].items():
        print(
            f"{variant:20s} step {growth['to_step']} / step {growth['from_step']}: "
            f"time x{growth['step_seconds']:.2f}, state bytes x{growth['state_bytes']:.2f}"
        )
    if "tmaze" in results:
        tmaze = results["tmaze"]
        seconds = tmaze["train_seconds_per_step"]
        over, baseline = seconds["over_baseline"], seconds["baseline"]
        for variant, by_length in tmaze["summary"].items():
            cells = ", ".join(
                f"L={n}: {_score(row['success'])} (target 0 wins {row['wins_at_target_0']['mean']:.2f})"
                for n, row in by_length.items()
            )
            speed = f"; seconds per step x{over[variant]:.2f} of {baseline}" if baseline else ""
            print(f"T-Maze {variant:20s} success {cells}{speed}")
    for task, section in results.get("popgym", {}).items():
        cells = ", ".join(f"{v}: {_score(row)}" for v, row in section["summary"].items())
        print(f"{task}: return {cells}; best {', '.join(section['best']['variants'])}")


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Times are ratios measured side by side in one run; absolute times depend on the machine "
        "and its load. Interrupted? Run the same command again: finished runs are kept.",
    )
    preset = parser.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="short corridors, one POPGym task, short training, for a CPU"
    )
    preset.add_argument(
        "--cpu",
        action="store_true",
        help="T-Maze corridors to 100 evaluated at 100-10,000 (no whole-episode Transformer), three POPGym "
        "tasks at 1,000 steps (hours on a CPU)",
    )
    preset.add_argument(
        "--cpu-long",
        action="store_true",
        help="T-Maze corridors to 1,000 evaluated at 100-10,000, Aaren-DT only, no POPGym (hours on a CPU)",
    )
    parser.add_argument("--acting-only", action="store_true", help="only the acting section")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("~/.cache/aaren-rl/memory").expanduser(),
        help="folder of the datasets, run directories and finished-run records, one subfolder per preset "
        "(reused: finished runs are skipped)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the training device")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="train and report these seeds only (default: the preset's); several processes on one --work "
        "folder can each take some, then one run without --seeds reads them all back",
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "cpu" if args.cpu else "cpu-long" if args.cpu_long else "full"
    settings, claim = PRESETS[name]
    claim = CLAIM if args.acting_only else claim  # an acting-only run claims nothing
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    variant = "memory_acting" if args.acting_only else f"memory_{name}"
    device = "cpu" if args.acting_only else args.device
    stem = output_stem(claim, settings, device, variant, args.out, args.allow_dirty)
    work = None if args.acting_only else args.work / name
    report(run(settings, device, stem, work))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
