"""Benchmark of memory over long horizons: acting cost against the step index, and T-Maze success against
corridor length, for each decision backbone.

1. Acting: per-step seconds and agent state bytes against the step index (log-spaced `checkpoints`)
   on the T-Maze's shapes (3 observations, Discrete(4) actions), batch 1, one torch thread: Aaren-DT
   acting recurrently (folded, fused where it can: a constant-size state) against the Transformer-DT
   re-running its K = 20 window every step, and the Transformer acting on the whole episode through its
   KV cache (the state grows by 3 tokens a step; driven only up to `kv_max_step`). Each agent is driven
   through one episode of random observations to every checkpoint; the step at each checkpoint is then
   repeated from the state entering it (acting leaves its input state unchanged), all agents' and
   checkpoints' steps timed round-robin so that machine load hits them alike; the median is reported.
   Untrained models: this measures speed only.
2. T-Maze: per backbone and seed, train on one oracle dataset mixing corridors of `train_lengths`
   (collected once into the work folder; Aaren on packed whole episodes, the Transformer on K = 20
   windows, the `tmaze-100` config otherwise) and evaluate the success rate at target return 1 in
   corridors of each of `eval_lengths`, without retraining. Each finished run is recorded in
   work/done/<backbone>-s<seed>.json and skipped when the benchmark runs again; an interrupted run
   resumes from its last checkpoint. Success is summarised as the IQM over seeds with its interval
   (`agents.common.stats`) where there are at least 3 seeds. Training seconds per gradient step are
   compared at equal train.batch_steps (the same supervised timesteps per batch, so per episode trained
   the ratio is the same).

Not here: a Decision-LSTM backbone (none exists yet), training the Transformer on whole episodes, and
the POPGym table.

Writes memory.json and memory.png into --out: the tracked result for the full preset, into
<out>/variants/ for any other run (`benchmarks.common`). The full preset (train at corridors up to
1,000, evaluate at 100, 1,000 and 10,000) is GPU-sized; --quick finishes on two CPU cores in minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from agents.common.shipped import find_config
from agents.decision.agent import AgentState, DecisionAgent
from agents.decision.config import load_config
from agents.decision.evaluation import evaluate_agent
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import load_agent
from agents.decision.training import train
from envs import collect_recipe
from envs.files import torch_threads

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
#: label -> (backbone, acting) of each acting agent compared
AGENTS = {
    "aaren": ("aaren", "recurrent"),
    "transformer-window": ("transformer", "window"),
    "transformer-kv": ("transformer", "recurrent"),
}
BACKBONES = ("aaren", "transformer")  # the T-Maze section's (the Transformer trains and acts on K windows)
TARGET = 1.0  # the T-Maze's winning return


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
    train_embed_dim: int = 128  # the T-Maze models'
    train_layers: int = 3
    train_lengths: tuple[int, ...] = (250, 500, 1000)  # configs/tmaze-1000.yaml's data and batches
    eval_lengths: tuple[int, ...] = (100, 1000, 10000)
    seeds: tuple[int, ...] = (0, 1, 2)
    transitions: int = 1_000_000
    steps: int = 20000
    batch_steps: int = 4096
    eval_episodes: int = 20


FULL = Settings()
QUICK = Settings(
    kv_max_step=3000,
    train_lengths=(20, 50),
    eval_lengths=(50, 100, 1000),
    train_embed_dim=64,
    train_layers=2,
    transitions=30_000,
    steps=200,
    batch_steps=320,
    eval_episodes=10,
)
CLAIM = Claim("memory", FULL, "cuda")  # the tracked result: the full preset, training on a GPU


def _model(backbone: str, settings: Settings) -> DecisionModel:
    """An untrained T-Maze-shaped decision model in eval mode (seeded, so every run builds the same)."""
    torch.manual_seed(0)
    config = DecisionModelConfig(
        obs_dim=OBS_DIM,
        act_dim=1,
        action_low=[0.0],
        action_high=[NUM_ACTIONS - 1.0],
        action_space="Discrete",
        backbone=backbone,
        embed_dim=settings.embed_dim,
        num_layers=settings.num_layers,
        return_scale=1.0,
    )
    return DecisionModel(config).eval()


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
    """One row per agent and checkpoint: the median seconds of the step at that index (the same step
    repeated from the state entering it: acting does not change its input state), all agents' checkpoints
    timed round-robin so that machine load hits them alike, and the state bytes after the step."""
    obs = np.random.default_rng(0).standard_normal((max(settings.checkpoints), 1, OBS_DIM)).astype(np.float32)
    rewards = np.zeros(1, dtype=np.float32)
    steps: dict[tuple[str, int], Callable[[], tuple]] = {}
    with torch_threads(1):  # as the evaluation loop acts
        for label, (backbone, acting) in AGENTS.items():
            agent = DecisionAgent(_model(backbone, settings), TARGET, acting=acting)
            reach = settings.kv_max_step if label == "transformer-kv" else max(settings.checkpoints)
            checkpoints = [t for t in settings.checkpoints if t <= reach]
            for t, state in _states_at_checkpoints(agent, obs, checkpoints).items():
                steps[label, t] = functools.partial(
                    agent.act, obs[t - 1], state, None, rewards if state is not None else None
                )
        times = time_interleaved(
            {f"{label}@{t}": fn for (label, t), fn in steps.items()},
            "cpu",
            settings.min_reps,
            settings.max_reps,
            settings.budget_s,
        )
        return [
            {
                "agent": label,
                "step": t,
                "step_seconds": statistics.median(times[f"{label}@{t}"]),
                "state_bytes": fn()[1].nbytes,
            }
            for (label, t), fn in steps.items()
        ]


def acting_summary(rows: list[dict], settings: Settings) -> dict:
    """Per agent: its step time at its last checkpoint over its time at FLAT_FROM (or the first
    checkpoint), and its state bytes there over at step 1; each Transformer's step time over Aaren's at
    every checkpoint both reached; and Aaren's flatness goal."""
    by = {(r["agent"], r["step"]): r for r in rows}
    first = FLAT_FROM if FLAT_FROM in settings.checkpoints else settings.checkpoints[0]
    growth = {}
    for label in AGENTS:
        last = max(r["step"] for r in rows if r["agent"] == label)
        growth[label] = {
            "from_step": first,
            "to_step": last,
            "step_seconds": ratio(by[label, last]["step_seconds"], by[label, first]["step_seconds"]),
            "state_bytes": ratio(
                by[label, last]["state_bytes"], by[label, settings.checkpoints[0]]["state_bytes"]
            ),
        }
    over_aaren = {
        f"{label}_over_aaren": {
            str(t): ratio(by[label, t]["step_seconds"], by["aaren", t]["step_seconds"])
            for t in settings.checkpoints
            if (label, t) in by
        }
        for label in AGENTS
        if label != "aaren"
    }
    value, last = growth["aaren"]["step_seconds"], growth["aaren"]["to_step"]
    goal = {
        "goal": f"<= {FLAT_GOAL} (step {last} over step {first})",
        "value": value,
        "met": value <= FLAT_GOAL,
    }
    return {"growth": growth, **over_aaren, "goal_aaren_flat": goal}


def make_dataset(settings: Settings, work: Path) -> Path:
    """Collect (once) the oracle T-Maze dataset mixing corridors of `train_lengths`."""
    recipe = f"tmaze-{'-'.join(map(str, settings.train_lengths))}-oracle-v0"
    path = work / "data" / f"{recipe}-{settings.transitions}.hdf5"
    if not path.is_file():
        collect_recipe(recipe, path, settings.transitions, num_envs=4, seed=0, progress=False)
    return path


def _train_run(backbone: str, seed: int, data: Path, settings: Settings, work: Path, device: str) -> Path:
    """Train (or resume) one run on `device` in work/runs/<backbone>-s<seed>; its directory."""
    run_dir = work / "runs" / f"{backbone}-s{seed}"
    overrides = [
        f"data.dataset={data}",
        f"data.env=tmaze-{max(settings.train_lengths)}",
        f"output_dir={run_dir.parent}",
        f"name={run_dir.name}",
        f"model.backbone={backbone}",
        f"model.embed_dim={settings.train_embed_dim}",
        f"model.num_layers={settings.train_layers}",
        f"train.seed={seed}",
        f"train.device={device}",
        f"train.steps={settings.steps}",
        f"train.batch_steps={settings.batch_steps}",
        f"train.warmup_steps={max(1, settings.steps // 20)}",
        f"train.checkpoint_every={max(1, settings.steps // 4)}",
        "train.eval_every=0",
        "eval.episodes=2",  # the run's own final evaluation; this benchmark evaluates below
        "eval.num_envs=2",
    ]
    if (run_dir / "config.yaml").is_file():
        train(resume=run_dir, progress=False)
    else:
        train(load_config(find_config("tmaze-100"), overrides), progress=False)
    return run_dir


def training_seconds(run_dir: Path) -> float:
    """A finished run's training seconds (batches and updates, not checkpoints or evaluations, summed
    over resumed sessions): its last metrics row's train/seconds."""
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [row["train/seconds"] for row in rows if "train/seconds" in row][-1]


def tmaze_run(backbone: str, seed: int, data: Path, settings: Settings, work: Path, device: str) -> dict:
    """One finished run's record (read back if an earlier session finished it): training seconds and the
    success rate at target 1 in each evaluation corridor."""
    done = work / "done" / f"{backbone}-s{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    run_dir = _train_run(backbone, seed, data, settings, work, device)
    seconds = training_seconds(run_dir)
    agent = load_agent(run_dir, target_return=TARGET)
    success = {}
    for length in settings.eval_lengths:
        result = evaluate_agent(
            agent, f"tmaze-{length}", settings.eval_episodes, num_envs=10, seed=1000, progress=False
        )
        success[str(length)] = float(np.mean(np.asarray(result.returns) >= TARGET))
    record = {
        "backbone": backbone,
        "seed": seed,
        "train_seconds": seconds,
        "train_seconds_per_step": seconds / settings.steps,
        "success": success,
    }
    write_json(done, record)
    return record


def tmaze_summary(runs: list[dict], settings: Settings) -> dict:
    """Per backbone and evaluation length: the seeds' success rates, their mean, and their IQM with its
    interval where there are at least 3 seeds."""
    summary: dict = {}
    for backbone in BACKBONES:
        mine = [r for r in runs if r["backbone"] == backbone]
        rows = {}
        for length in settings.eval_lengths:
            rates = [r["success"][str(length)] for r in mine]
            row = {"success": rates, "mean": float(np.mean(rates)) if rates else None}
            if len(rates) >= 3:
                row["iqm"] = dataclasses.asdict(stats.iqm(np.asarray(rates)[:, None]))
            rows[str(length)] = row
        seconds = [r["train_seconds_per_step"] for r in mine]
        summary[backbone] = {
            "by_length": rows,
            "train_seconds_per_step": statistics.median(seconds) if seconds else None,
        }
    return summary


def bench_tmaze(settings: Settings, work: Path, device: str = "cpu") -> dict:
    """Every backbone x seed run (seed outermost, so that an interrupted session leaves whole seeds)."""
    data = make_dataset(settings, work)
    runs = [tmaze_run(b, s, data, settings, work, device) for s in settings.seeds for b in BACKBONES]
    summary = tmaze_summary(runs, settings)
    seconds = {b: summary[b]["train_seconds_per_step"] for b in BACKBONES}
    return {
        "dataset": str(data),
        "runs": runs,
        "summary": summary,
        "aaren_over_transformer_train_seconds_per_step": ratio(seconds["aaren"], seconds["transformer"]),
    }


def plot(results: dict, path: Path) -> None:
    """Acting step time and state bytes against the step index; T-Maze success against corridor length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if "tmaze" in results else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.5))
    for key, ax, ylabel in (
        ("step_seconds", axes[0], "seconds per step"),
        ("state_bytes", axes[1], "state bytes"),
    ):
        for i, label in enumerate(AGENTS):
            pts = [(r["step"], r[key]) for r in results["acting"] if r["agent"] == label]
            ax.plot(*zip(*pts, strict=True), marker="o", color=f"C{i}", label=label)
        ax.set(xscale="log", yscale="log", xlabel="step index", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("acting time per step (batch 1)")
    axes[1].set_title("acting memory")
    axes[0].legend(fontsize=8)
    if "tmaze" in results:
        ax = axes[2]
        for i, (backbone, row) in enumerate(results["tmaze"]["summary"].items()):
            lengths = [int(length) for length in row["by_length"]]
            means = [row["by_length"][str(length)]["mean"] for length in lengths]
            ax.plot(lengths, means, marker="o", color=f"C{i}", label=backbone)
        trained = max(results["settings"]["train_lengths"])
        ax.axvline(trained, color="grey", ls=":", label=f"longest trained ({trained})")
        ax.set(
            xscale="log",
            ylim=(-0.05, 1.05),
            xlabel="corridor length",
            ylabel="success rate (mean over seeds)",
        )
        ax.set_title("T-Maze success, target 1")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def run(settings: Settings, device: str, stem: Path, work: Path | None) -> dict:
    """The acting section, then (with a work folder) the T-Maze section; writes <stem>.json and .png."""
    results: dict = {"machine": machine_info(device), "settings": dataclasses.asdict(settings)}
    results["acting"] = bench_acting(settings)
    results["acting_summary"] = acting_summary(results["acting"], settings)
    if work is not None:
        results["tmaze"] = bench_tmaze(settings, work, device)
    write_json(stem.with_suffix(".json"), results)
    plot(results, stem.with_suffix(".png"))
    return results


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Times are ratios measured side by side in one run; absolute times depend on the machine "
        "and its load. Interrupted? Run the same command again: finished T-Maze runs are kept.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short corridors and a short training, for a CPU"
    )
    parser.add_argument("--acting-only", action="store_true", help="only the acting section")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("~/.cache/aaren-rl/memory").expanduser(),
        help="folder of the T-Maze datasets, run directories and finished-run records, one subfolder per "
        "preset (reused: finished runs are skipped)",
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the T-Maze training device")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    variant = "memory_acting" if args.acting_only else f"memory_{'quick' if args.quick else 'full'}"
    device = "cpu" if args.acting_only else args.device
    stem = output_stem(CLAIM, settings, device, variant, args.out, args.allow_dirty)
    work = None if args.acting_only else args.work / ("quick" if args.quick else "full")
    results = run(settings, device, stem, work)
    for label, growth in results["acting_summary"]["growth"].items():
        print(
            f"{label:20s} step {growth['to_step']} / step {growth['from_step']}: time x{growth['step_seconds']:.2f}, "
            f"state bytes x{growth['state_bytes']:.2f}"
        )
    for backbone, row in results.get("tmaze", {}).get("summary", {}).items():
        rates = ", ".join(f"L={length}: {r['mean']:.2f}" for length, r in row["by_length"].items())
        print(f"{backbone:12s} T-Maze success (mean over seeds) {rates}")
    if "tmaze" in results:
        value = results["tmaze"]["aaren_over_transformer_train_seconds_per_step"]
        print(f"training seconds per step, aaren over transformer (median over seeds): {value:.2f}")
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
