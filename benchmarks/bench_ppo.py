"""AarenPPO vs sb3-contrib's RecurrentPPO (LSTM) vs PPO (MLP) on partially observable tasks.

Every algorithm gets the same tasks, env steps, seeds and PPO hyperparameters (per task, after
rl-zoo's RecurrentPPO settings); the memories are sized alike (Aaren width 64, one layer, 4 heads;
LSTM 64 hidden units; separate actor and critic memories for both). Measured per run: the final
deterministic return (fresh eval envs), the mean return of the last 100 training episodes
(stochastic policy; steadier than one final evaluation), and the wall-clock of learn() split into
acting (rollout collection) and training (the PPO updates). Torch runs on one thread for every
algorithm.

Goal: AarenPPO reaches RecurrentPPO's return and trains >= 1.5x faster in wall-clock.
"Reaches" is recorded as (aaren - random) / (lstm - random) >= 0.9 on the seed means.

Acting speed (`--acting-only` runs just this section): the time per env step of `predict` (actor only)
and of a rollout-collection step (actor and critic, `policy.forward` without gradients), for AarenPPO
acting through its folded memories and through the modules' forward, against RecurrentPPO's LSTM of
the same width, at batch (envs) 1 and 8, one torch thread, timed interleaved; medians and ratios.
Goal: AarenPPO's folded acting no slower than the LSTM's (aaren / lstm <= 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from tqdm import tqdm

from agents.ppo import AarenPPO
from envs.files import torch_threads
from envs.memory import CARTPOLE_NO_VEL, PENDULUM_NO_VEL, REMEMBER_CUE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from benchmarks.common import (  # noqa: E402
    RESULTS,
    load_average,
    machine_info,
    time_interleaved,
    write_json,
    write_png,
)

ALGOS = ("aaren", "lstm", "mlp")
RETURN_FRACTION_GOAL = 0.9  # (aaren - random) / (lstm - random), at least
SPEEDUP_GOAL = 1.5  # LSTM wall-clock over Aaren's, at least
RANDOM_EPISODES = 200  # random play is cheap, and a floor from few episodes is noisy
# Tanh heads (SB3's default) rather than rl-zoo's ReLU: with ReLU and lr 1e-3 an AarenPPO seed of
# CartPoleNoVel collapsed to a constant action (entropy 0, KL 0: dead units); with Tanh it learned.
MEMORY = dict(ortho_init=False, activation_fn=torch.nn.Tanh, net_arch=dict(pi=[64], vf=[64]))
AAREN_KWARGS = dict(embed_dim=64, num_layers=1, num_heads=4, ffn_mult=2)
LSTM_KWARGS = dict(lstm_hidden_size=64, enable_critic_lstm=True)


@dataclass(frozen=True)
class Task:
    """One memory task: its env, parallel envs and PPO hyperparameters."""

    env_id: str
    n_envs: int
    ppo: dict[str, Any]
    normalize_reward: bool = False  # VecNormalize on rewards only (training); evaluation sees raw rewards


TASKS = {
    "CartPoleNoVel": Task(
        CARTPOLE_NO_VEL,
        8,
        dict(n_steps=32, batch_size=256, gamma=0.98, gae_lambda=0.8, n_epochs=20, learning_rate=1e-3),
    ),
    "PendulumNoVel": Task(
        PENDULUM_NO_VEL,
        4,
        dict(n_steps=1024, batch_size=256, gamma=0.9, gae_lambda=0.95, n_epochs=10, learning_rate=1e-3),
        normalize_reward=True,
    ),
    "RememberCue": Task(
        REMEMBER_CUE,
        8,
        dict(n_steps=32, batch_size=256, gamma=0.98, gae_lambda=0.8, n_epochs=20, learning_rate=1e-3),
    ),
}


@dataclass(frozen=True)
class Settings:
    """Budgets, seeds and algorithms of one benchmark run."""

    steps: dict[str, int]  # env steps per task
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_episodes: int = 10
    algos: tuple[str, ...] = ALGOS
    threads: int = 1
    notes: str = ""


QUICK = Settings(
    steps={"CartPoleNoVel": 40_000, "RememberCue": 10_000},
    notes="quick: CartPoleNoVel and RememberCue only, short budgets",
)
FULL = Settings(
    steps={"CartPoleNoVel": 100_000, "PendulumNoVel": 100_000, "RememberCue": 30_000},
    eval_episodes=20,
    notes="full: rl-zoo-sized budget for CartPoleNoVel, half of it for PendulumNoVel",
)


class PhaseTimer(BaseCallback):
    """Wall-clock seconds spent collecting rollouts (the rest of learn() is training)."""

    def __init__(self) -> None:
        super().__init__()
        self.collect_s = 0.0
        self._start = 0.0

    def _on_rollout_start(self) -> None:
        self._start = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.collect_s += time.perf_counter() - self._start

    def _on_step(self) -> bool:
        return True


def make_env(task: Task, seed: int, training: bool) -> VecEnv:
    """The task's training envs (reward-normalised where the task says so), or 4 raw envs for evaluation."""
    env = make_vec_env(task.env_id, n_envs=task.n_envs if training else 4, seed=seed)
    if training and task.normalize_reward:
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=task.ppo["gamma"])
    return env


def make_model(algo: str, task: Task, seed: int) -> BaseAlgorithm:
    """A fresh PPO-family model of `algo`, on the task's training envs and hyperparameters."""
    env = make_env(task, seed, training=True)
    common = dict(env=env, seed=seed, device="cpu", **task.ppo)
    if algo == "aaren":
        return AarenPPO("MlpAarenPolicy", policy_kwargs={**MEMORY, **AAREN_KWARGS}, **common)
    if algo == "lstm":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO("MlpLstmPolicy", policy_kwargs={**MEMORY, **LSTM_KWARGS}, **common)
    if algo == "mlp":
        return PPO("MlpPolicy", policy_kwargs=MEMORY, **common)
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


def run_one(name: str, algo: str, seed: int, settings: Settings) -> dict[str, Any]:
    """Train one (task, algorithm, seed), then evaluate it deterministically on fresh envs."""
    task = TASKS[name]
    model = make_model(algo, task, seed)
    timer = PhaseTimer()
    start = time.perf_counter()
    model.learn(settings.steps[name], callback=timer)
    wall = time.perf_counter() - start
    eval_env = make_env(task, 10_000 + seed, training=False)
    returns, _ = evaluate_policy(
        model,
        eval_env,
        n_eval_episodes=settings.eval_episodes,
        deterministic=True,
        return_episode_rewards=True,
    )
    eval_env.close()
    model.env.close()
    train_returns = [info["r"] for info in model.ep_info_buffer]
    return {
        "task": name,
        "algo": algo,
        "seed": seed,
        "env_steps": model.num_timesteps,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "train_return_last100": float(np.mean(train_returns)) if train_returns else None,
        "wall_s": wall,
        "collect_s": timer.collect_s,
        "train_s": wall - timer.collect_s,
    }


def summarize(runs: list[dict], randoms: dict[str, float]) -> dict[str, Any]:
    """Per task and algorithm: seed means/stds; then Aaren vs LSTM ratios and the goal verdicts."""
    table: dict[str, Any] = {}
    for name in dict.fromkeys(r["task"] for r in runs):
        rows = {}
        for algo in dict.fromkeys(r["algo"] for r in runs if r["task"] == name):
            mine = [r for r in runs if r["task"] == name and r["algo"] == algo]
            rows[algo] = {
                "seeds": len(mine),
                **{
                    f"{k}_mean": float(np.mean([r[k] for r in mine]))
                    for k in ("return_mean", "train_return_last100", "wall_s", "collect_s", "train_s")
                },
                "return_seed_std": float(np.std([r["return_mean"] for r in mine])),
            }
        entry: dict[str, Any] = {"random_return": randoms[name], "algos": rows}
        if "aaren" in rows and "lstm" in rows:
            a, lstm, floor = rows["aaren"], rows["lstm"], randoms[name]
            gap = lstm["return_mean_mean"] - floor
            # Only meaningful when the LSTM beat random play; otherwise "reached" means aaren >= lstm.
            entry["return_fraction_of_lstm"] = (a["return_mean_mean"] - floor) / gap if gap > 1e-9 else None
            entry["speedup_wall_vs_lstm"] = lstm["wall_s_mean"] / a["wall_s_mean"]
            entry["speedup_train_vs_lstm"] = lstm["train_s_mean"] / a["train_s_mean"]
            entry["goal_return_reached"] = bool(
                entry["return_fraction_of_lstm"] >= RETURN_FRACTION_GOAL
                if entry["return_fraction_of_lstm"] is not None
                else a["return_mean_mean"] >= lstm["return_mean_mean"]
            )
            entry["goal_speedup_1_5x"] = bool(entry["speedup_wall_vs_lstm"] >= SPEEDUP_GOAL)
        table[name] = entry
    return table


def plot(results: dict, path: Path) -> None:
    """Per task: final return per algorithm (top) and learn()'s wall-clock split into acting and training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["summary"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 7), squeeze=False)
    for col, name in enumerate(tasks):
        entry = results["summary"][name]
        algos = list(entry["algos"])
        x = np.arange(len(algos))
        ax = axes[0, col]
        ax.bar(
            x,
            [entry["algos"][a]["return_mean_mean"] for a in algos],
            yerr=[entry["algos"][a]["return_seed_std"] for a in algos],
            color="C0",
            capsize=4,
        )
        ax.axhline(entry["random_return"], color="gray", ls="--", label="random")
        ax.set_xticks(x, algos)
        ax.set_title(f"{name}: final return ({results['settings']['steps'][name]} steps)")
        ax.legend()
        ax = axes[1, col]
        collect = [entry["algos"][a]["collect_s_mean"] for a in algos]
        train = [entry["algos"][a]["train_s_mean"] for a in algos]
        ax.bar(x, collect, label="acting (rollouts)", color="C1")
        ax.bar(x, train, bottom=collect, label="training (updates)", color="C2")
        ax.set_xticks(x, algos)
        ax.set_ylabel("seconds (mean over seeds)")
        ax.set_title("wall-clock of learn()")
        ax.legend()
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def format_table(results: dict) -> str:
    """A short human-readable summary of the results."""
    lines = [
        f"{'task':<14} {'algo':<6} {'eval return':>16} {'train ret':>9} "
        f"{'wall s':>8} {'act s':>7} {'train s':>8}"
    ]
    for name, entry in results["summary"].items():
        for algo, row in entry["algos"].items():
            lines.append(
                f"{name:<14} {algo:<6} {row['return_mean_mean']:>9.1f} ± {row['return_seed_std']:<5.1f}"
                f" {row['train_return_last100_mean']:>9.1f} {row['wall_s_mean']:>8.1f}"
                f" {row['collect_s_mean']:>7.1f} {row['train_s_mean']:>8.1f}"
            )
        if "speedup_wall_vs_lstm" in entry:
            frac = entry["return_fraction_of_lstm"]
            lines.append(
                f"{'':<14} random {entry['random_return']:.1f}; aaren/lstm return fraction "
                f"{'n/a' if frac is None else f'{frac:.2f}'}, "
                f"speedup wall {entry['speedup_wall_vs_lstm']:.2f}x, "
                f"train {entry['speedup_train_vs_lstm']:.2f}x"
            )
    return "\n".join(lines)


def run(settings: Settings, out_dir: Path, name: str) -> dict:
    """All runs (results rewritten after each, so an interrupted benchmark keeps what it measured)."""
    with torch_threads(settings.threads):
        results: dict[str, Any] = {
            "machine": machine_info("cpu"),
            "settings": dataclasses.asdict(settings),
            "hyperparameters": {
                k: {**dataclasses.asdict(t)} for k, t in TASKS.items() if k in settings.steps
            },
            "memory": {
                "aaren": AAREN_KWARGS,
                "lstm": LSTM_KWARGS,
                "shared": {**MEMORY, "activation_fn": MEMORY["activation_fn"].__name__},
            },
            "runs": [],
        }
        randoms = {t: random_return(TASKS[t], RANDOM_EPISODES, 10_000) for t in settings.steps}
        jobs = [(t, a, s) for t in settings.steps for s in settings.seeds for a in settings.algos]
        start = time.perf_counter()
        for task, algo, seed in (bar := tqdm(jobs, desc="runs")):
            bar.set_postfix(task=task, algo=algo, seed=seed)
            results["runs"].append(run_one(task, algo, seed, settings))
            results["summary"] = summarize(results["runs"], randoms)
            results["total_wall_s"] = time.perf_counter() - start
            results["machine"]["load_average_at_end"] = load_average()
            write_json(out_dir / f"{name}.json", results)
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


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.notes}; full: {FULL.notes}")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), help="only these tasks (their budgets)")
    parser.add_argument("--seeds", type=int, help="only the first SEEDS seeds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    parser.add_argument(
        "--acting-only", action="store_true", help="only the acting-speed section (ppo_acting.json, .png)"
    )
    args = parser.parse_args(argv)
    acting = run_acting(ACTING, args.out)
    print(format_acting(acting) + f"\nwrote {args.out / 'ppo_acting.json'}\n")
    if args.acting_only:
        return
    settings, name = (QUICK, "ppo_memory_quick") if args.quick else (FULL, "ppo_memory")
    if args.tasks:
        missing = [t for t in args.tasks if t not in settings.steps]
        if missing:
            parser.error(f"{missing} not in this mode's tasks {list(settings.steps)}")
        settings = dataclasses.replace(settings, steps={t: settings.steps[t] for t in args.tasks})
        name += "_" + "_".join(args.tasks)
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=settings.seeds[: args.seeds])
        name += f"_{args.seeds}seed"
    results = run(settings, args.out, name)
    print(format_table(results))
    json_path, png_path = args.out / f"{name}.json", args.out / f"{name}.png"
    print(f"\nwrote {json_path} and {png_path} in {results['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
