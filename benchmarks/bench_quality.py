"""Quality benchmark: Aaren-DT against Transformer-DT, same data, budget and seeds.

Datasets are made here with the collection tool from the RL Zoo's SB3 behaviour policies (downloaded
once from the Hugging Face Hub, or from $AAREN_RL_EXPERTS offline: see `envs.experts`) by D4RL's
recipes (medium = a policy at about 1/3 of expert, medium-expert = medium + expert halves),
written in the D4RL format and cached. Every (task, dataset, backbone, seed) is trained with the
reference DT hyperparameters of configs/base.yaml and the same number of gradient steps and
`train.batch_steps` supervised timesteps per step: the Transformer sees batch_steps / K K-windows, the
Aaren agent as many steps in rows of its `train.batching` (the config's default; `--batching` picks
another; agents.decision.batching.batch_layout). Each run ends with a live
evaluation at the task's target returns (envs on Gymnasium v5), every run on the same evaluation
episodes (`eval.seed`, whatever the backbone or training seed). A run's score is its best target's
D4RL-normalised score; the table reports, per pair and over all pairs, each backbone's interquartile
mean (IQM) with 95% stratified-bootstrap intervals, the probability that Aaren-DT scores higher, and a
verdict that calls a difference only when the intervals say so (`agents.common.stats`, rliable).

The default protocol is sized for a couple of CPU cores (see QUICK); `--full`
is the papers' protocol (100k steps, 1M-transition datasets, all three tasks), unchanged code.
The runs are the trials of one sweep (`agents.decision.sweep`) on Ray: locally, one run per CPU at a time, or
on a cluster with --address (then --work must be a folder that every node shares).
Interrupted? Run the same command again: finished runs are kept, unfinished ones resume. Runs from
before train.batch_steps (their config.yaml sets train.batch_size) trained other batches: a --work
folder holding one is refused, with the fix (a new --work folder).

Writes quality.json, quality.png (scores and learning curves) and quality.md into --out: the tracked
result for the default protocol, into <out>/variants/ for any other run (`benchmarks.common`); the
datasets and run directories (checkpoints, TensorBoard logs) go to --work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from rliable import plot_utils

from agents.common import stats
from agents.common.cli import exits_2_on_user_errors
from agents.decision.batching import BATCHINGS
from agents.decision.config import ConfigError, read_yaml
from agents.decision.sweep import Trial, make_trial, print_failures, run_trials
from envs import collect_recipe
from envs.collect import RECIPES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from benchmarks.common import (  # noqa: E402
    REPO,
    Claim,
    add_output_arguments,
    machine_info,
    output_stem,
    write_json,
    write_png,
    write_text,
)

BACKBONES = ("aaren", "transformer")
BASELINE = "transformer"  # the reference DT: Aaren-DT is compared against it
GOAL_POINTS = 1.0  # Aaren's IQM may trail the Transformer's by at most this much


@dataclasses.dataclass(frozen=True)
class Settings:
    """Tasks, datasets, seeds and training budget of one benchmark run (the defaults: the papers')."""

    tasks: tuple[str, ...] = ("hopper", "halfcheetah", "walker2d")
    datasets: tuple[str, ...] = ("medium", "medium-expert")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    transitions: int = 1_000_000
    steps: int = 100_000
    warmup_steps: int = 10_000
    batch_steps: int = 1280  # supervised timesteps per batch, both backbones (reference DT: 64 x K = 20)
    eval_every: int = 10_000
    eval_episodes: int = 20  # per target
    eval_seed: int = 1000  # every run's evaluation episodes: the same for both backbones and all seeds
    batching: str | None = None  # the Aaren agent's train.batching (None: the config's default)


#: All six task x dataset pairs at a CPU budget.
QUICK = Settings(transitions=100_000, steps=500, warmup_steps=100, eval_every=250)
CLAIM = Claim("quality", QUICK)  # the tracked table: the default protocol


def make_dataset(task: str, dataset: str, settings: Settings, data_dir: Path) -> Path:
    """Collect (once) the D4RL-format dataset for task x recipe from the RL Zoo's behaviour policies."""
    path = data_dir / f"{task}_{dataset.replace('-', '_')}-{settings.transitions}.hdf5"
    if not path.is_file():
        collect_recipe(f"{task}-{dataset}-v2", path, settings.transitions, num_envs=4, seed=0)
    return path


def check_no_old_runs(work: Path) -> None:
    """A ConfigError if `work` holds a run started with the old train.batch_size: its batches were not
    those of train.batch_steps, so it can neither resume nor stand beside the new runs in the table."""
    for config in sorted((work / "runs").glob("*/config.yaml")):
        if "batch_size" in (read_yaml(config).get("train") or {}):
            raise ConfigError(
                f"{config} sets train.batch_size: that run predates train.batch_steps and trained other "
                f"batches, so it can neither resume nor be compared with new runs. Fix: use a new --work "
                f"folder (copy {work / 'data'} there to keep the datasets), or delete {work / 'runs'}"
            )


def _budget_overrides(settings: Settings) -> dict[str, int | str]:
    """Config overrides of the training budget (batch included) and evaluation, the same for every run."""
    return {
        "train.steps": settings.steps,
        "train.batch_steps": settings.batch_steps,
        "train.warmup_steps": settings.warmup_steps,
        "train.eval_every": settings.eval_every,
        "train.checkpoint_every": settings.eval_every,
        "eval.episodes": settings.eval_episodes,
        "eval.seed": settings.eval_seed,
        **({"train.batching": settings.batching} if settings.batching else {}),
    }


def _learning_curve(run_dir: Path, target: float) -> list[tuple[int, float]]:
    """(gradient step, mean score) of the run's periodic evaluations at `target`."""
    return [
        (row["step"], row["eval/score_mean"])
        for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if "eval/score_mean" in row and row["eval/target"] == target
    ]


def make_run(
    task: str, dataset: str, backbone: str, seed: int, data_path: Path, settings: Settings, work: Path
) -> Trial:
    """One run as a sweep trial, in work/runs/<task>-<dataset>-<backbone>-s<seed>."""
    config_path = REPO / "configs" / f"{task}-{dataset}.yaml"
    overrides = {
        "data.dataset": str(data_path),
        "model.backbone": backbone,
        "train.seed": seed,
        **_budget_overrides(settings),
    }
    point = {"task": task, "dataset": dataset, "backbone": backbone, "train.seed": str(seed)}
    return make_trial(f"{task}-{dataset}-{backbone}-s{seed}", work / "runs", config_path, overrides, point)


def run_summary(trial: Trial, record: dict) -> dict:
    """A finished run's summary: its best target's score and return, and its learning curve."""
    report = json.loads((trial.run_dir / "eval" / "eval.json").read_text())
    best = max(report["results"], key=lambda r: r["score_mean"])
    first_target = report["results"][0]["target_return"]  # periodic evaluations use the first target
    return {
        "task": trial.point["task"],
        "dataset": trial.point["dataset"],
        "backbone": trial.point["backbone"],
        "seed": trial.overrides["train.seed"],
        "batch_steps": trial.overrides["train.batch_steps"],
        "best_target": best["target_return"],
        "score": best["score_mean"],
        "return": best["return_mean"],
        "dataset_score": report["dataset_score_mean"],
        "curve": _learning_curve(trial.run_dir, first_target),
        "wall_s": record["wall_s"],
        "run_dir": str(trial.run_dir),
    }


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a (task, dataset) pair, or all pairs, and its comparison."""

    task: str
    dataset: str
    dataset_score: float | None
    comparison: stats.Comparison
    pairs: int = 1

    @property
    def label(self) -> str:
        return f"{self.task} {self.dataset}" if self.pairs == 1 else f"all {self.pairs} pairs"

    def to_json(self) -> dict:
        return {
            "task": self.task,
            "dataset": self.dataset,
            "dataset_score": self.dataset_score,
            "pairs": self.pairs,
            **self.comparison.to_json(),
        }


def summarise(runs: list[dict], settings: Settings) -> tuple[list[Row], Row | None]:
    """A row per (task, dataset) run by both backbones, over its seeds so far; and a row over the pairs
    every seed of which has run with both (None before the first), over seeds and pairs."""
    table, complete = [], []
    for task, dataset in dict.fromkeys((r["task"], r["dataset"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["dataset"]) == (task, dataset)]
        scores = {b: [r["score"] for r in mine if r["backbone"] == b] for b in BACKBONES}
        if not all(scores.values()):
            continue  # a partial report: this pair has not run with both backbones yet
        comparison = stats.compare({b: np.array(s)[:, None] for b, s in scores.items()}, BASELINE)
        table.append(Row(task, dataset, mine[0]["dataset_score"], comparison))
        if all(len(s) == len(settings.seeds) for s in scores.values()):
            complete.append(scores)
    if not complete:
        return table, None
    scores = {b: np.array([pair[b] for pair in complete]).T for b in BACKBONES}  # [seeds, pairs]
    return table, Row("all", "", None, stats.compare(scores, BASELINE), pairs=len(complete))


def goal_of(overall: Row | None) -> dict:
    """Aaren-DT's IQM over all pairs may trail the Transformer's by at most GOAL_POINTS: met when the
    gap's interval lies above -GOAL_POINTS, not met when it lies below, else (and from fewer than
    stats.MIN_RUNS seeds) undecided (None)."""
    goal = {
        "goal": f"IQM(aaren) - IQM(transformer) over all pairs >= -{GOAL_POINTS} points, by its interval",
        "gap": None,
        "met": None,
    }
    if overall is None:
        return goal
    gap = overall.comparison.difference["aaren"]
    if min(overall.comparison.runs.values()) >= stats.MIN_RUNS:
        goal["met"] = True if gap.low >= -GOAL_POINTS else False if gap.high < -GOAL_POINTS else None
    return {**goal, "gap": dataclasses.asdict(gap)}


def _seeds(comparison: stats.Comparison) -> str:
    runs = set(comparison.runs.values())
    return str(runs.pop()) if len(runs) == 1 else " / ".join(str(comparison.runs[b]) for b in BACKBONES)


def markdown(table: list[Row], overall: Row | None, settings: Settings, done: int, planned: int) -> str:
    """The score table and its caption, as written to quality.md (and shown in docs/results.md)."""
    lines = [
        "| task | dataset | dataset score | seeds | Aaren-DT | Transformer-DT | Aaren - Transformer "
        "| P(Aaren > Transformer) | Aaren-DT vs Transformer-DT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table + ([overall] if overall else []):
        c = row.comparison
        dataset_score = "" if row.dataset_score is None else f"{row.dataset_score:.1f}"
        task = row.task if row.pairs == 1 else f"all ({row.pairs} pairs)"
        lines.append(
            f"| {task} | {row.dataset} | {dataset_score} | {_seeds(c)} | {c.iqm['aaren']} "
            f"| {c.iqm['transformer']} | {c.difference['aaren']:+.1f} | {c.poi['aaren']:.2f} "
            f"| {c.verdict['aaren']} |"
        )
    goal = goal_of(overall)
    met = {True: "met", False: "not met", None: "undecided"}[goal["met"]]
    lines.append("")
    lines.append(
        f"D4RL-normalised scores on Gymnasium v5 tasks at each run's best target return: the interquartile "
        f"mean (IQM) over seeds, and over seeds and pairs in the all row (the pairs all of whose seeds have "
        f"run), with {stats.CONFIDENCE:.0%} stratified-bootstrap intervals (rliable, {stats.REPS} "
        f"resamples); P: the probability of improvement, with its interval. A difference is called only "
        f"when the IQM intervals are disjoint and P's interval excludes 0.5, from at least "
        f"{stats.MIN_RUNS} seeds. {done} of {planned} planned runs done; {settings.steps:,} gradient "
        f"steps, {settings.transitions:,}-transition datasets, {settings.eval_episodes} evaluation "
        f"episodes per target, the same for every run (eval.seed {settings.eval_seed})"
        f"{f', Aaren train.batching={settings.batching}' if settings.batching else ''}. "
        f"Goal: {goal['goal']}: {met}."
    )
    return "\n".join(lines) + "\n"


def _plot_scores(ax, rows: list[Row]) -> None:
    """Each backbone's IQM per row with its interval, and each pair's dataset score."""
    x = stats.plot_iqm(ax, {row.label: row.comparison for row in rows})
    shown = [(x[i], row.dataset_score) for i, row in enumerate(rows) if row.dataset_score is not None]
    ax.scatter(*zip(*shown, strict=True), color="k", marker="_", s=400, label="dataset mean", zorder=3)
    ax.set(ylabel="D4RL-normalised score", title=f"final score (best target): IQM, {stats.CONFIDENCE:.0%} CI")
    ax.legend(fontsize=8, loc="lower right")


def _plot_curves(ax, runs: list[dict], row: Row) -> None:
    """Learning curves of one (task, dataset): per backbone, the IQM over seeds at each evaluation with
    its interval (rliable's sample-efficiency plot)."""
    for backbone, color in zip(BACKBONES, ("C0", "C1"), strict=True):
        curves = [
            r["curve"]
            for r in runs
            if (r["task"], r["dataset"], r["backbone"]) == (row.task, row.dataset, backbone) and r["curve"]
        ]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        values = np.array([[v for _, v in c[: len(steps)]] for c in curves if len(c) >= len(steps)])
        iqm = [stats.iqm(values[:, i : i + 1]) for i in range(len(steps))]
        plot_utils.plot_sample_efficiency_curve(
            steps, {backbone: [s.point for s in iqm]}, {backbone: np.array([[s.low for s in iqm],
            [s.high for s in iqm]])}, colors={backbone: color}, ax=ax, xlabel="gradient step",
            ylabel="score (first target): IQM", labelsize="medium", ticklabelsize="small",
        )  # fmt: skip
    ax.set_title(row.label)
    if ax.lines:
        ax.legend(fontsize=8)


def plot(runs: list[dict], table: list[Row], overall: Row | None, path: Path) -> None:
    """Across the top, the scores and the probabilities of improvement; one learning-curve panel per
    (task, dataset) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ([overall] if overall else []) + table
    cols = min(3, len(table))
    lines = -(-len(table) // cols)
    fig = plt.figure(figsize=(max(5 * cols, 12), 4 * (1 + lines)))
    grid = fig.add_gridspec(1 + lines, cols)
    top = grid[0, :].subgridspec(1, 2, wspace=0.6)  # room for the probabilities' row names
    _plot_scores(fig.add_subplot(top[0]), rows)
    stats.plot_poi(fig.add_subplot(top[1]), {row.label: row.comparison for row in rows})
    for i, row in enumerate(table):
        _plot_curves(fig.add_subplot(grid[1 + i // cols, i % cols]), runs, row)
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def report(runs: list[dict], settings: Settings, out: Path, planned: int) -> dict:
    """Write the JSON, PNG and markdown table of the runs so far (partial until all `planned` ran)."""
    table, overall = summarise(runs, settings)
    results = {
        "machine": machine_info("cpu"),
        "settings": dataclasses.asdict(settings),
        "complete": len(runs) == planned,
        "runs_done": len(runs),
        "runs_planned": planned,
        "statistics": stats.describe(),
        "runs": runs,
        "table": [row.to_json() for row in table],
        "overall": overall and overall.to_json(),
        "goal": goal_of(overall),
    }
    write_json(out / "quality.json", results)
    if table:
        plot(runs, table, overall, out / "quality.png")
        write_text(out / "quality.md", markdown(table, overall, settings, len(runs), planned))
    return results


def run(settings: Settings, out: Path, work: Path, address: str | None = None) -> dict:
    """Every run as a trial of one sweep on Ray (locally, or on the cluster at `address`); the report
    is rewritten as each run ends. Task and dataset outermost, so the report soon has all seeds of a
    pair when trials run one or two at a time."""
    check_no_old_runs(work)
    pairs = [(t, d) for t in settings.tasks for d in settings.datasets]
    data = {pair: make_dataset(*pair, settings, work / "data") for pair in pairs}
    trials = [
        make_run(task, dataset, backbone, seed, data[task, dataset], settings, work)
        for task, dataset in pairs
        for seed in settings.seeds
        for backbone in BACKBONES
    ]
    results: dict = {}

    def write_report(records: list[dict]) -> None:
        runs = [run_summary(t, r) for t, r in zip(trials, records, strict=True) if r["status"] == "finished"]
        results.update(report(runs, settings, out, len(trials)))

    print_failures(run_trials(trials, address=address, on_result=write_report))
    return results


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument(
        "--full", action="store_true", help="the full protocol: 100k steps, 1M transitions, 3 tasks"
    )
    parser.add_argument("--tasks", nargs="+", help="override the tasks (hopper halfcheetah walker2d)")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(RECIPES),
        help="override the dataset recipes (medium medium-expert)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds")
    parser.add_argument("--steps", type=int, help="override the gradient steps per run")
    parser.add_argument("--warmup-steps", type=int, help="override the learning-rate warm-up steps")
    parser.add_argument("--eval-every", type=int, help="override the steps between evaluations")
    parser.add_argument(
        "--batching",
        choices=BATCHINGS,
        help="the Aaren agent's train.batching (default: the config's); another value than a --work "
        "folder's runs were made with needs its own --work folder",
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--work",
        type=Path,
        default=Path("~/.cache/aaren-rl/quality").expanduser(),
        help="folder of the datasets and run directories (reused: finished runs are kept)",
    )
    parser.add_argument(
        "--address",
        help="run on this Ray cluster (auto, or ray://HOST:10001) instead of a local Ray; --work must then "
        "be a folder every node shares",
    )
    args = parser.parse_args(argv)
    settings = Settings() if args.full else QUICK
    changes = {
        "tasks": tuple(args.tasks or ()),
        "datasets": tuple(args.datasets or ()),
        "seeds": tuple(args.seeds or ()),
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "eval_every": args.eval_every,
        "batching": args.batching,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v})
    stem = output_stem(CLAIM, settings, "cpu", "quality", args.out, args.allow_dirty)
    run(settings, stem.parent, args.work, args.address)
    print(Path(f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
