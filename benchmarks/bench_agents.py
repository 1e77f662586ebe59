"""Benchmark of whole decision agents: acting, rollouts and training, side by side.

1. Acting: per-step latency and memory of the Aaren agent (recurrent: one backbone step per env step
   with a constant-size state) against the Transformer agent acting the reference DT way (re-run
   the last K = 20 timesteps every step) and with its KV cache (the state grows by 3 tokens a step).
   Both the Aaren and the K-window agent are measured twice: as they act by default (folded for
   acting, `aaren_rl.folded`, and fused where it can) and eager (through the model's modules), so that
   the folded ratio compares the algorithms with the same optimisations on both sides. Acting runs on
   one torch thread, as the evaluation loop does. The agents are driven in lockstep (each acts once per
   step, in rotating order, so machine load hits them alike) for `max_steps` steps of one long episode
   on random observations (speed does not depend on the weights or the data), batch 1 and 16; the
   latency at episode length t is the median over the `window` steps after t, the memory the agent
   state's bytes at t. This is the paper's cumulative-time / memory-vs-tokens figure for whole agents.
2. Rollout throughput: 16 vectorised Hopper-v5 envs driven by the Aaren agent (folded and eager) against
   the same envs driven by random actions (the env-only ceiling): environment steps per second, the
   median of `rollout_reps` rounds of alternating runs, and the ratio to the ceiling as the median of
   each round's own ratio.
3. Training throughput at equal `train.batch_steps`, batches drawn as training draws them
   (`agents.decision.batching.make_batcher`): Transformer-DT on K = 20 windows and Aaren-DT under each
   `train.batching` (`TRAIN_CASES`: stored windows with their burn-ins and table refreshes,
   packed rows, whole episodes, prefix-rescanned windows), at the reference width, on two synthetic
   datasets (`TRAIN_DATASETS`: hopper-medium-like lengths and widely mixed ones), in `train_rounds`
   rounds of the cases alternating (each ratio: its median round's). Per case: real (supervised) steps per
   second as training counts its seconds (drawing the batch, one forward + backward + AdamW step, and
   the stored table's refresh spread over the steps it serves), the share of drawing (stored and prefix:
   the burn-in scans), and the peak memory (on CPU the growth of a fresh process's peak RSS from before
   the model is built; torch's peak allocation on CUDA). Per dataset and batch layout: the padded share
   of a batch's steps and its supervised steps. Goal: at the default `train.batching`, at least the
   Transformer's supervised steps per second on each dataset.

Writes agents_speed.json and agents_speed.png into --out: the tracked result for --quick, into
<out>/variants/ for any other run (`benchmarks.common`); --training-only writes the training section
alone, to <out>/variants/agents_training.json. Untrained models: this measures speed only.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from agents import load_config
from agents.decision.agent import DecisionAgent
from agents.decision.batching import BATCHINGS, batch_layout, make_batcher
from agents.decision.config import Config, TrainConfig
from agents.decision.distributed import DistContext
from agents.decision.model import DecisionModel, DecisionModelConfig, action_loss
from agents.decision.run_dir import MetricsLog, RunDir
from envs import OfflineDataset, VecRollout, load_dataset, make_vec_env
from envs.files import torch_threads

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from agents.common.cli import exits_2_on_user_errors  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Claim,
    add_output_arguments,
    machine_info,
    output_stem,
    ratio,
    variant_stem,
    write_json,
    write_png,
)

OBS_DIM, ACT_DIM = 11, 3  # Hopper
TARGET_RETURN = 3600.0  # Hopper's usual DT target (speed does not depend on it)
ACTING_GOALS = {1: 3.0, 16: 10.0}  # Aaren step at least this many times faster than the K-window step
STEP_GOAL_SECONDS = 300e-6  # Aaren step at batch 1, at most
FLAT_GOAL = 1.1  # Aaren latency at the longest episode over the shortest, at most
ROLLOUT_GOAL = 0.75  # Aaren-driven env steps/s over random-driven, at least
TRAIN_GOAL = 1.0  # default Aaren training's supervised steps/s over the Transformer's, at least
#: label -> (backbone, acting, eager) of each agent compared
AGENTS = {
    "aaren": ("aaren", "recurrent", False),
    "aaren-eager": ("aaren", "recurrent", True),
    "transformer-window": ("transformer", "window", False),
    "transformer-window-eager": ("transformer", "window", True),
    "transformer-kv": ("transformer", "recurrent", False),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repetition counts of one benchmark run."""

    lengths: tuple[int, ...] = (10, 100, 1000, 10000)
    batch_sizes: tuple[int, ...] = (1, 16)
    window: int = 20
    rollout_envs: int = 16
    rollout_steps: int = 300
    rollout_reps: int = 7
    train_batch_steps: int = 1280
    train_reps: int = 5
    train_rounds: int = 3
    train_transitions: int = 100_000
    padding_batches: int = 200
    kv_max_steps: int = 10000


QUICK = Settings(lengths=(10, 100, 1000, 3000), kv_max_steps=1000, train_reps=3)
CLAIM = Claim("agents_speed", QUICK)  # the tracked result: `make bench`'s sizes, training on a CPU


def _model(backbone: str, **kw) -> DecisionModel:
    """An untrained Hopper-sized decision model in eval mode (seeded, so every run builds the same)."""
    torch.manual_seed(0)
    return DecisionModel(
        DecisionModelConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM, backbone=backbone, **kw)
    ).eval()


def _agent(label: str) -> DecisionAgent:
    backbone, acting, eager = AGENTS[label]
    return DecisionAgent(_model(backbone), TARGET_RETURN, acting=acting, eager=eager)


def _lockstep(settings: Settings, batch: int) -> dict[str, tuple[list[float], list[int]]]:
    """Per-step seconds and state bytes of every agent driven through one long episode in lockstep."""
    max_steps = max(settings.lengths) + settings.window
    steps = {label: max_steps for label in AGENTS}
    steps["transformer-kv"] = min(max_steps, settings.kv_max_steps + settings.window)
    agents = {label: _agent(label) for label in AGENTS}
    obs = np.random.default_rng(0).standard_normal((max_steps, batch, OBS_DIM)).astype(np.float32)
    rewards = np.ones(batch, dtype=np.float32)
    states = dict.fromkeys(AGENTS)
    record: dict[str, tuple[list[float], list[int]]] = {label: ([], []) for label in AGENTS}
    labels = list(AGENTS)
    for t in range(max_steps):
        for label in labels[t % len(labels) :] + labels[: t % len(labels)]:
            if t >= steps[label]:
                continue
            start = time.perf_counter()
            _, states[label] = agents[label].act(obs[t], states[label], None, rewards if t else None)
            record[label][0].append(time.perf_counter() - start)
            record[label][1].append(states[label].nbytes)
    return record


def bench_acting(settings: Settings) -> list[dict]:
    """Per-step latency and state bytes at each episode length, for each agent and batch size."""
    cases = []
    for batch in settings.batch_sizes:
        for label, (times, nbytes) in _lockstep(settings, batch).items():
            cumulative = np.cumsum(times)
            for length in settings.lengths:
                if length + settings.window > len(times):
                    continue
                cases.append(
                    {
                        "agent": label,
                        "batch": batch,
                        "episode_length": length,
                        "step_seconds": statistics.median(times[length : length + settings.window]),
                        "state_bytes": nbytes[length],
                        "cumulative_seconds": float(cumulative[length]),
                    }
                )
    return cases


def acting_ratios(cases: list[dict], settings: Settings) -> list[dict]:
    """Transformer latency over Aaren latency at each (batch, length), folded over folded and eager over
    eager; what folding gains each agent; and Aaren's flatness."""
    by = {(c["agent"], c["batch"], c["episode_length"]): c for c in cases}
    pairs = {
        "transformer-window_over_aaren": ("transformer-window", "aaren"),
        "transformer-window-eager_over_aaren-eager": ("transformer-window-eager", "aaren-eager"),
        "transformer-kv_over_aaren": ("transformer-kv", "aaren"),
        "aaren-eager_over_aaren": ("aaren-eager", "aaren"),
        "transformer-window-eager_over_transformer-window": (
            "transformer-window-eager",
            "transformer-window",
        ),
    }
    rows = []
    for batch in settings.batch_sizes:
        for length in settings.lengths:
            if ("aaren", batch, length) not in by:
                continue
            row = {"batch": batch, "episode_length": length}
            for name, (num, den) in pairs.items():
                num, den = by.get((num, batch, length)), by.get((den, batch, length))
                row[name] = ratio(num and num["step_seconds"], den and den["step_seconds"])
            rows.append(row)
        first, last = (
            by.get(("aaren", batch, settings.lengths[0])),
            by.get(("aaren", batch, settings.lengths[-1])),
        )
        if first and last:
            rows.append(
                {"batch": batch, "aaren_flatness": ratio(last["step_seconds"], first["step_seconds"])}
            )
    return rows


def _rollout_seconds(agent: DecisionAgent | None, settings: Settings) -> float:
    """Seconds of `rollout_steps` steps of the vectorised Hopper envs driven by `agent` (None: random)."""
    rollout = VecRollout(make_vec_env("Hopper-v5", settings.rollout_envs, vectorization="sync", seed=0))
    obs, _ = rollout.reset()
    action_rng = np.random.default_rng(0)
    state, rewards = None, None
    start = time.perf_counter()
    for _ in range(settings.rollout_steps):
        if agent is None:
            actions = action_rng.uniform(-1, 1, (settings.rollout_envs, ACT_DIM)).astype(np.float32)
        else:
            actions, state = agent.act(obs, state, rollout.episode_start, rewards)
        step = rollout.step(actions.astype(np.float32))
        obs, rewards = step.obs, step.rewards
    elapsed = time.perf_counter() - start
    rollout.close()
    return elapsed


def bench_rollout(settings: Settings) -> dict:
    """Env steps per second of 16 Hopper-v5 envs driven by the Aaren agent (folded, eager) vs by random
    actions, the drivers alternating in `rollout_reps` rounds: the median speed of each, and the median
    over rounds of each agent's speed over the random run of its own round (the machine's drift between
    rounds moves both sides of a round alike)."""
    drivers = {"random": None, "aaren": _agent("aaren"), "aaren-eager": _agent("aaren-eager")}
    seconds: dict[str, list[float]] = {name: [] for name in drivers}
    for _ in range(settings.rollout_reps):
        for name, agent in drivers.items():
            seconds[name].append(_rollout_seconds(agent, settings))
    env_steps = settings.rollout_envs * settings.rollout_steps
    result = {f"{name}_env_steps_per_second": env_steps / statistics.median(s) for name, s in seconds.items()}
    for name in ("aaren", "aaren-eager"):
        rounds = [
            ratio(random, agent) for random, agent in zip(seconds["random"], seconds[name], strict=True)
        ]
        result[f"{name}_over_random"] = statistics.median(rounds)
        result[f"{name}_over_random_rounds"] = rounds
    return result


def _reset_peak_rss() -> None:
    """Reset this process's peak resident set size (Linux: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_rss() -> int:
    """This process's peak resident set size in bytes since the last reset (VmHWM)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _hopper_medium_lengths(rng: np.random.Generator, count: int) -> np.ndarray:
    """Episode lengths like hopper-medium's: most fall after a few hundred steps, a few reach the limit."""
    lengths = rng.normal(450, 80, count).clip(50, 1000)
    lengths[rng.random(count) < 0.02] = 1000
    return lengths


#: Synthetic datasets of the training section: name -> episode lengths (rng, count) -> lengths.
TRAIN_DATASETS = {
    "hopper-medium-like": _hopper_medium_lengths,
    "mixed-lengths": lambda rng, count: rng.uniform(10, 1000, count),
}


def synthetic_dataset(name: str, transitions: int) -> OfflineDataset:
    """Random Hopper-sized steps cut into episodes of TRAIN_DATASETS[name]'s lengths (speed and
    padding depend on the lengths only)."""
    rng = np.random.default_rng(0)
    lengths = TRAIN_DATASETS[name](rng, transitions).astype(np.int64)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), transitions) + 1]
    size = int(lengths.sum())
    timeouts = np.zeros(size, dtype=bool)
    timeouts[np.cumsum(lengths) - 1] = True
    return load_dataset(
        {
            "observations": rng.standard_normal((size, OBS_DIM), dtype=np.float32),
            "actions": rng.uniform(-1, 1, (size, ACT_DIM)).astype(np.float32),
            "rewards": rng.uniform(0, 3, size).astype(np.float32),
            "terminals": np.zeros(size, dtype=bool),
            "timeouts": timeouts,
        }
    )


#: The training section's cases: label -> (backbone, train.batching): the Transformer's K-windows, and the
#: Aaren agent under each of its batchings (agents.decision.batching).
TRAIN_CASES = {"transformer": ("transformer", None)} | {
    f"aaren-{batching}": ("aaren", batching) for batching in BATCHINGS
}
DEFAULT_CASE = f"aaren-{TrainConfig.batching}"  # the training goal's case: Aaren at the default batching


def _train_config(label: str, dataset_name: str, settings: Settings) -> Config:
    """The training config of a case (the dataset named only to pass validation)."""
    backbone, batching = TRAIN_CASES[label]
    overrides = [f"model.backbone={backbone}", f"train.batch_steps={settings.train_batch_steps}"]
    if batching is not None:
        overrides.append(f"train.batching={batching}")
    return load_config(None, [*overrides, f"data.dataset={dataset_name}"])


def _train_case(label: str, dataset_name: str, settings: Settings, device: str) -> dict:
    """One training-throughput case, timed as training times itself (`train/seconds`): drawing the batch
    (with the stored or prefix windows' entering states, scanned with the model being trained), one
    forward + backward + AdamW step, and batching=stored's table refresh, timed once and spread over the
    `train.state_refresh_every` steps it serves. In a fresh process, so that its peak memory is its own."""
    dataset = synthetic_dataset(dataset_name, settings.train_transitions)
    cfg = _train_config(label, dataset_name, settings)
    _reset_peak_rss()  # a spawned process starts with its parent's high-water mark
    baseline = _peak_rss()
    torch.manual_seed(0)
    config = DecisionModelConfig(
        obs_dim=OBS_DIM, act_dim=ACT_DIM, backbone=cfg.model.backbone, max_timestep=1000
    )
    model = DecisionModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    batcher = make_batcher(cfg, dataset, DistContext(device=torch.device(device)), model)
    # Before the first batch: batching=stored's first table (a refresh); nothing for the other batchers.
    refresh_seconds = batcher.after_step(0, MetricsLog(RunDir(Path(".")), enabled=False))
    rng = np.random.default_rng(0)
    draw_times, times, real_steps = [], [], 0
    for rep in range(settings.train_reps + 1):  # the first step warms up
        start = time.perf_counter()
        batch = batcher.sample(rng)
        drawn = time.perf_counter()
        loss = action_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if rep:
            draw_times.append(drawn - start)
            times.append(time.perf_counter() - start)
            real_steps += batch["num_real"]
    refresh_per_step = refresh_seconds / cfg.train.state_refresh_every
    seconds = sum(times) + settings.train_reps * refresh_per_step
    rows, row_steps = batch_layout(cfg, dataset)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _peak_rss() - baseline
    return {
        "agent": label,
        "dataset": dataset_name,
        "rows": rows,
        "row_steps": row_steps,
        "step_seconds": seconds / settings.train_reps,
        "draw_seconds": sum(draw_times) / settings.train_reps,  # of step_seconds (with the burn-in)
        "refresh_seconds_per_step": refresh_per_step,  # of step_seconds
        "supervised_steps_per_second": real_steps / seconds,
        "peak_memory_bytes": peak,
        "peak_memory_kind": "torch.cuda.max_memory_allocated"
        if device == "cuda"
        else "peak RSS growth of a fresh process from before the model is built",
    }


#: The batch layouts whose padding the training section reports: label -> its case in TRAIN_CASES.
LAYOUTS = {
    "windows": "transformer",  # K-windows: the Transformer's, and the stored and prefix Aaren's alike
    "aaren_packed": "aaren-packed",
    "aaren_episodes": "aaren-episodes",  # whole episodes padded to the batch's longest
}


def batch_shapes(dataset: OfflineDataset, settings: Settings) -> dict[str, dict[str, float]]:
    """Per batch layout (`LAYOUTS`): the padded share of a batch's steps and its supervised steps, mean
    over `padding_batches` batches."""
    rng = np.random.default_rng(0)
    shapes = {}
    for layout, label in LAYOUTS.items():
        batcher = make_batcher(_train_config(label, dataset.source, settings), dataset, DistContext())
        masks = [batcher.draw(rng).mask for _ in range(settings.padding_batches)]
        shapes[layout] = {
            "padded_fraction": float(1 - np.mean([m.mean() for m in masks])),
            "supervised_steps": float(np.mean([m.sum() for m in masks])),
        }
    return shapes


def bench_training(settings: Settings, device: str) -> dict:
    """Per synthetic dataset: every case's supervised steps/s and peak memory at equal batch_steps in
    `train_rounds` rounds of the cases alternating, each Aaren case's speed over the Transformer's (the
    median round's), and the batch layouts' padding."""
    results = {}
    for name in TRAIN_DATASETS:
        rounds = []
        for _ in range(settings.train_rounds):  # alternating, so that the machine's drift hits all alike
            cases = {}
            for label in TRAIN_CASES:  # a fresh process each, so that peak memory is its own
                with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
                    cases[label] = pool.submit(_train_case, label, name, settings, device).result()
            rounds.append(cases)
        ratios = {
            label: [
                ratio(
                    c[label]["supervised_steps_per_second"], c["transformer"]["supervised_steps_per_second"]
                )
                for c in rounds
            ]
            for label in TRAIN_CASES
            if label != "transformer"
        }
        results[name] = {
            "rounds": rounds,
            "over_transformer": {label: statistics.median_low(r) for label, r in ratios.items()},
            "over_transformer_rounds": ratios,
            "batches": batch_shapes(synthetic_dataset(name, settings.train_transitions), settings),
        }
    return results


def evaluate_goals(cases: list[dict], acting: list[dict], rollout: dict, training: dict) -> dict:
    """Value and met/not met of each goal: acting speed-up (folded over folded), Aaren's batch-1 latency,
    its flat latency, rollout ceiling, and per training dataset the default batching's training speed."""
    goals = {}
    batch1 = [c["step_seconds"] for c in cases if c["agent"] == "aaren" and c["batch"] == 1]
    if batch1:
        value = statistics.median(batch1)
        goals["aaren_step_us_batch1"] = {
            "goal": f"<= {STEP_GOAL_SECONDS * 1e6:.0f}",
            "value": value * 1e6,
            "met": value <= STEP_GOAL_SECONDS,
        }
    for batch, target in ACTING_GOALS.items():
        speedups = [
            r["transformer-window_over_aaren"]
            for r in acting
            if r.get("batch") == batch and "episode_length" in r
        ]
        speedups = [s for s in speedups if s is not None]
        if speedups:
            value = statistics.median(speedups)
            goals[f"acting_speedup_batch{batch}"] = {
                "goal": f">= {target}",
                "value": value,
                "met": value >= target,
            }
    for row in acting:
        if "aaren_flatness" in row:
            value = row["aaren_flatness"]
            goals[f"aaren_flat_batch{row['batch']}"] = {
                "goal": f"<= {FLAT_GOAL}",
                "value": value,
                "met": value <= FLAT_GOAL,
            }
    value = rollout["aaren_over_random"]
    goals["rollout_ceiling"] = {"goal": f">= {ROLLOUT_GOAL}", "value": value, "met": value >= ROLLOUT_GOAL}
    for name, row in training.items():
        value = row["over_transformer"][DEFAULT_CASE]
        goals[f"training_{name}"] = {"goal": f">= {TRAIN_GOAL}", "value": value, "met": value >= TRAIN_GOAL}
    return goals


def plot(results: dict, path: Path) -> None:
    """Three panels over episode length: step latency, cumulative acting time, agent state bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    styles = {
        "aaren": "C0",
        "aaren-eager": "C9",
        "transformer-window": "C1",
        "transformer-window-eager": "C8",
        "transformer-kv": "C3",
    }
    for case_key, ax, ylabel in (
        ("step_seconds", axes[0], "seconds per env step"),
        ("cumulative_seconds", axes[1], "cumulative seconds"),
        ("state_bytes", axes[2], "agent state bytes"),
    ):
        for agent, color in styles.items():
            for batch, ls in zip(sorted({c["batch"] for c in results["acting"]}), ("-", "--"), strict=False):
                pts = sorted(
                    (c["episode_length"], c[case_key])
                    for c in results["acting"]
                    if c["agent"] == agent and c["batch"] == batch
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls, color=color, marker="o", label=f"{agent} B={batch}")
        ax.set(xscale="log", yscale="log", xlabel="episode length (env steps)", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title("acting latency")
    axes[1].set_title("cumulative acting time")
    axes[2].set_title("acting memory")
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def run(settings: Settings, device: str, out_dir: Path) -> dict:
    """Measure everything, write agents_speed.json and agents_speed.png into out_dir, return the results."""
    with torch_threads(1):  # as the evaluation loop acts: per-step batches are too small for threads
        acting = bench_acting(settings)
        rollout = bench_rollout(settings)
    ratios = acting_ratios(acting, settings)
    training = bench_training(settings, device)
    results = {
        "machine": machine_info(device),
        "settings": dataclasses.asdict(settings),
        "acting": acting,
        "acting_ratios": ratios,
        "rollout": rollout,
        "training": training,
        "goals": evaluate_goals(acting, ratios, rollout, training),
    }
    write_json(out_dir / "agents_speed.json", results)
    plot(results, out_dir / "agents_speed.png")
    return results


def run_training_only(settings: Settings, device: str, out_dir: Path) -> dict:
    """The training section alone, to out_dir/agents_training.json (agents_speed.* stay a full run's)."""
    results = {
        "machine": machine_info(device),
        "settings": dataclasses.asdict(settings),
        "training": bench_training(settings, device),
    }
    write_json(out_dir / "agents_training.json", results)
    return results


def print_training(training: dict) -> None:
    """Per dataset: each case's supervised steps/s (the median round's) over the Transformer's, and the
    batch layouts' padding."""
    for name, row in training.items():
        print(f"{name}: supervised steps/s over the Transformer's (median of {len(row['rounds'])} rounds)")
        for label, value in row["over_transformer"].items():
            case = row["rounds"][row["over_transformer_rounds"][label].index(value)][label]
            print(
                f"  {label:16s} {value:5.2f}  ({case['supervised_steps_per_second']:,.0f} steps/s, drawing "
                f"{case['draw_seconds'] / case['step_seconds']:.0%} of a step){' default' if label == DEFAULT_CASE else ''}"
            )
        padding = ", ".join(f"{k} {v['padded_fraction']:.1%}" for k, v in row["batches"].items())
        print(f"  padding: {padding}")


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Writes agents_speed.json and agents_speed.png (see --out). Speed is reported as ratios "
        "measured side by side in this run; absolute times depend on the machine and its load.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="shorter episodes (up to 3000 steps) and fewer repetitions"
    )
    parser.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="device for the training case"
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--training-only",
        action="store_true",
        help="only the training section, written to <out>/variants/agents_training.json",
    )
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.training_only:
        stem = variant_stem("agents_training", args.out)
        print_training(run_training_only(settings, args.device, stem.parent)["training"])
        print(f"wrote {stem}.json")
        return 0
    stem = output_stem(CLAIM, settings, args.device, "agents_speed", args.out, args.allow_dirty)
    results = run(settings, args.device, stem.parent)
    print_training(results["training"])
    for name, goal in results["goals"].items():
        print(f"{name:28s} {goal['value']:.2f} (goal {goal['goal']}): {'met' if goal['met'] else 'NOT met'}")
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
