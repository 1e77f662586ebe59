"""Batch-diversity study: the Aaren agent on packed whole episodes, or on K-windows with stored or
prefix-rescanned entering states (`train.batching`), beside the reference Transformer-DT (K-windows from
an empty context, the mode "transformer"), at equal supervised steps per batch.

Every mode trains with the same config (the task's file over configs/base.yaml), seeds, gradient steps and
`train.batch_steps`, and ends with the live evaluation of `agents.train`. The dataset is a
`<task>-<recipe>` made like bench_quality's (the RL Zoo's behaviour policies by D4RL's recipes, cached in
--work) or a D4RL-format file. Per run:
- score: the final evaluation's D4RL-normalised score at the best target (as bench_quality), every run
  on the same evaluation episodes (bench_quality's eval.seed, whatever the mode or training seed);
- training seconds (`train/seconds`: drawing batches, updates and state refreshes; no checkpoints or
  evaluations) and supervised steps per training second; the wall-clock of its attempts (evaluations
  included);
- for `stored`: just before each refresh, on a fixed probe batch (training windows drawn once), the mean
  relative distance between the stored and the exact entering states' readouts and the loss (dropout off)
  with either (metrics.jsonl's state/* rows);
- equal wall-clock: per seed, T = the shortest training time of the modes; each mode's score at its last
  periodic evaluation (first target) reached within T of training. Evaluations are every --eval-every
  steps, so a mode is credited with the score of the last evaluation before T, never after it.
At equal steps and at equal time, each mode's interquartile mean (IQM) over seeds with its 95%
stratified-bootstrap interval and, against the training default (train.batching) and against the
Transformer where each ran, the probability of improvement and a verdict that calls a difference only when
the intervals say so (`agents.common.stats`, rliable).

The runs are the trials of one sweep (`agents.decision.sweep`) on Ray, in <work>/runs/<mode>-s<seed>:
locally, or on a cluster with --address (then --work must be a folder every node shares). Each trial
reserves --threads CPUs and trains on as many torch threads. Training seconds feed the equal-time
comparison, and runs side by side share cores, caches and memory bandwidth, so each one's seconds would
depend on what ran beside it: by default one trial runs at a time. --max-concurrent runs more (on a
cluster, or where timing does not matter); the JSON records it.

Interrupted? Run the same command again: finished runs are skipped, an unfinished one resumes from its
last checkpoint. A --work folder holds one study's settings; other settings need another folder.

Writes the tracked batching_hopper_medium_200k_3000steps.json and .png into --out for the study of
CLAIM's settings, and <out>/variants/batching.json and .png (--quick: batching_quick.*) for any other
(`benchmarks.common`); Ray's own output goes to <work>/ray.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

from agents.common import stats
from agents.common.cli import exits_2_on_user_errors
from agents.decision.batching import BATCHINGS, batch_layout
from agents.decision.config import Config, ConfigError, TrainConfig, from_dict
from agents.decision.run_dir import RunDir, read_metrics
from agents.decision.sweep import (
    RAY_LOG,
    TRIAL_STATE,
    Resources,
    Trial,
    make_trial,
    print_failures,
    read_state,
    run_trials,
    write_state,
)
from envs import load_dataset
from envs.files import write_atomic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from benchmarks.bench_quality import Settings as QualitySettings  # noqa: E402
from benchmarks.bench_quality import make_dataset  # noqa: E402
from benchmarks.common import (  # noqa: E402
    REPO,
    Claim,
    add_output_arguments,
    machine_info,
    output_stem,
    write_json,
    write_png,
)

#: The reference Transformer-DT's mode: model.backbone=transformer, on K-windows whatever train.batching says.
TRANSFORMER = "transformer"
#: Every mode a study may run.
MODES = (*BATCHINGS, TRANSFORMER)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The study: dataset, modes, seeds and the training budget shared by every run."""

    dataset: str = "hopper-medium"  # <task>-<recipe> (collected into --work) or a D4RL-format file
    transitions: int = 1_000_000  # size of a collected dataset
    modes: tuple[str, ...] = MODES
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    steps: int = 20_000
    warmup_steps: int = 2_000
    batch_steps: int = 1000  # supervised timesteps per batch, every mode: a multiple of the longest episode
    # (packed rows) and of K (windows) makes the batches equal (hopper-medium: 1 row of 1000 = 50 x K = 20)
    refresh_every: int = 1_000  # train.state_refresh_every of `stored`
    eval_every: int = 2_000  # periodic evaluations (and checkpoints): the equal-time comparison's points
    eval_episodes: int = 20  # per target
    device: str = "cpu"
    threads: int = 1  # torch CPU threads of each run, and the CPUs its Ray trial reserves


#: A few minutes on a CPU: checks the whole path, measures nothing worth reporting.
QUICK = Settings(
    transitions=20_000,
    seeds=(0,),
    steps=40,
    warmup_steps=10,
    refresh_every=10,
    eval_every=20,
    eval_episodes=2,
)
#: The tracked study, every setting spelled out so that a new default leaves it as it was run.
CLAIM = Claim(
    "batching_hopper_medium_200k_3000steps",
    Settings(
        dataset="hopper-medium",
        transitions=200_000,
        modes=("packed", "stored"),
        seeds=(0, 1, 2),
        steps=3_000,
        warmup_steps=300,
        batch_steps=1000,
        refresh_every=1_000,
        eval_every=1_000,
        eval_episodes=5,
        device="cpu",
        threads=1,
    ),
)


def dataset_and_config(settings: Settings, work: Path) -> tuple[Path, Path]:
    """The dataset file (collected once into work/data for a <task>-<recipe>) and the config to train it
    with (configs/<task>-<recipe>.yaml where there is one, else configs/base.yaml)."""
    given = Path(settings.dataset).expanduser()
    if given.is_file():
        return given, REPO / "configs" / "base.yaml"
    task, _, recipe = settings.dataset.partition("-")
    if not recipe:
        raise ConfigError(
            f"--dataset {settings.dataset!r} is neither a file nor <task>-<recipe>. Fix: e.g. --dataset "
            "hopper-medium, or the path of a D4RL-format file"
        )
    path = make_dataset(task, recipe, QualitySettings(transitions=settings.transitions), work / "data")
    config = REPO / "configs" / f"{task}-{recipe}.yaml"
    return path, config if config.is_file() else REPO / "configs" / "base.yaml"


def make_run(settings: Settings, mode: str, seed: int, data: Path, config: Path, work: Path) -> Trial:
    """One run as a sweep trial, in work/runs/<mode>-s<seed>."""
    overrides = {
        "data.dataset": str(data),
        "model.backbone": TRANSFORMER if mode == TRANSFORMER else "aaren",
        **({} if mode == TRANSFORMER else {"train.batching": mode}),
        "train.state_refresh_every": settings.refresh_every,
        "train.seed": seed,
        "train.steps": settings.steps,
        "train.warmup_steps": settings.warmup_steps,
        "train.batch_steps": settings.batch_steps,
        "train.eval_every": settings.eval_every,
        "train.checkpoint_every": settings.eval_every,
        "train.log_every": math.gcd(settings.eval_every, 50),  # a training row at every evaluation
        "train.device": settings.device,
        "train.threads": settings.threads,
        "eval.episodes": settings.eval_episodes,
        "eval.seed": QualitySettings.eval_seed,
    }
    point = {"mode": mode, "train.seed": str(seed)}
    return make_trial(f"{mode}-s{seed}", work / "runs", config, overrides, point)


def run_summary(trial: Trial, record: dict[str, Any]) -> dict[str, Any]:
    """A finished run's numbers, read back from its eval/eval.json and metrics.jsonl, and its sweep
    record (the wall-clock and attempts: more than one when it was interrupted or failed and resumed)."""
    report = json.loads((trial.run_dir / "eval" / "eval.json").read_text())
    best = max(report["results"], key=lambda r: r["score_mean"])
    first_target = report["results"][0]["target_return"]  # periodic evaluations use the first target
    rows = read_metrics(trial.run_dir / "metrics.jsonl")
    train_rows = [r for r in rows if "train/seconds" in r]
    seconds_at = {r["step"]: r["train/seconds"] for r in train_rows}
    previous = [0.0] + [r["train/seconds"] for r in train_rows[:-1]]
    supervised = sum(
        r["train/tokens_per_s"] * (r["train/seconds"] - s) / 3
        for r, s in zip(train_rows, previous, strict=True)
    )
    stale = [r for r in rows if "state/readout_gap" in r]
    return {
        "mode": trial.point["mode"],
        "seed": trial.overrides["train.seed"],
        "score": best["score_mean"],
        "best_target": best["target_return"],
        "dataset_score": report["dataset_score_mean"],
        "train_seconds": train_rows[-1]["train/seconds"],
        "supervised_steps_per_s": supervised / train_rows[-1]["train/seconds"],
        "supervised_steps_per_batch": supervised / train_rows[-1]["step"],
        "wall_s": record["wall_s"],
        "resumed": record["attempts"] > 1,
        "attempts": record["attempts"],
        "curve": [  # (gradient step, training seconds, score at the first target)
            (r["step"], seconds_at[r["step"]], r["eval/score_mean"])
            for r in rows
            if r.get("eval/target") == first_target and "eval/score_mean" in r
        ],
        "staleness": [
            {key.removeprefix("state/"): r[key] for key in r if key == "step" or key.startswith("state/")}
            for r in stale
        ],
        "run_dir": str(trial.run_dir),
    }


def score_within(curve: list, seconds: float) -> float | None:
    """The score of the last evaluation reached within `seconds` of training (None: none was)."""
    scores = [score for _, at, score in curve if at <= seconds]
    return scores[-1] if scores else None


def summarise(runs: list[dict], modes: tuple[str, ...]) -> dict[str, Any]:
    """Per mode: means over seeds of the speed and (stored) staleness; the equal-time scores; and the
    scores compared at equal steps and at equal time against the training default (train.batching, else
    the first mode run) and against the Transformer (where it ran and is not that baseline already)."""
    table = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        if not mine:
            continue
        row = {
            "seeds": len(mine),
            **{
                key: statistics.mean(r[key] for r in mine)
                for key in ("train_seconds", "supervised_steps_per_s", "supervised_steps_per_batch", "wall_s")
            },
        }
        stale = [s for r in mine for s in r["staleness"]]
        if stale:
            row["readout_gap"] = statistics.mean(s["readout_gap"] for s in stale)
            row["log_norm_gap"] = statistics.mean(s["log_norm_gap"] for s in stale)
            row["loss_stale_minus_fresh"] = statistics.mean(s["loss_stale"] - s["loss_fresh"] for s in stale)
            row["loss_fresh"] = statistics.mean(s["loss_fresh"] for s in stale)
        table[mode] = row
    points = equal_time(runs)
    ran = list(table)
    default = TrainConfig.batching if TrainConfig.batching in ran else next(iter(ran), None)
    return {
        "by_mode": table,
        "equal_time": points,
        "comparisons": compare_modes(runs, ran, points, default) if default else {},
        "comparisons_vs_transformer": (
            compare_modes(runs, ran, points, TRANSFORMER)
            if TRANSFORMER in ran and default != TRANSFORMER
            else {}
        ),
    }


def compare_modes(
    runs: list[dict], modes: list[str], points: list[dict], baseline: str
) -> dict[str, stats.Comparison]:
    """The modes' scores over seeds at equal steps, and within T at equal time (the seeds where every
    mode has an evaluation within T), against `baseline`."""
    scores = {m: [[r["score"]] for r in runs if r["mode"] == m] for m in modes}
    out = {"equal steps": stats.compare(scores, baseline)}
    timed = [p["score"] for p in points if all(p["score"].get(m) is not None for m in modes)]
    if timed:
        out["equal time"] = stats.compare({m: [[score[m]] for score in timed] for m in modes}, baseline)
    return out


def equal_time(runs: list[dict]) -> list[dict]:
    """Per seed run by several modes: T = their shortest training time, and each one's score within T."""
    out = []
    for seed in sorted({r["seed"] for r in runs}):
        mine = [r for r in runs if r["seed"] == seed]
        if len(mine) < 2:
            continue
        budget = min(r["train_seconds"] for r in mine)
        out.append(
            {
                "seed": seed,
                "seconds": budget,
                "score": {r["mode"]: score_within(r["curve"], budget) for r in mine},
            }
        )
    return out


def plot(runs: list[dict], summary: dict, path: Path) -> None:
    """Score per gradient step and per training second, and the stored states' staleness; below, the
    scores' IQMs and the probabilities of improvement over the training default and over the Transformer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(18, 8.4))
    grid = fig.add_gridspec(2, 6)
    by_step, by_time, stale = (fig.add_subplot(grid[0, 2 * i : 2 * i + 2]) for i in range(3))
    for i, mode in enumerate(summary["by_mode"]):
        for r in (r for r in runs if r["mode"] == mode):
            steps, seconds, scores = zip(*r["curve"], strict=True) if r["curve"] else ((), (), ())
            label = mode if r["seed"] == min(x["seed"] for x in runs if x["mode"] == mode) else None
            by_step.plot(steps, scores, "o-", color=f"C{i}", alpha=0.7, label=label)
            by_time.plot(seconds, scores, "o-", color=f"C{i}", alpha=0.7, label=label)
    for point in summary["equal_time"]:
        by_time.axvline(point["seconds"], color="k", lw=0.8, ls=":")
    by_step.set(xlabel="gradient step", ylabel="score (first target)", title="equal gradient steps")
    by_time.set(
        xlabel="training seconds", ylabel="score (first target)", title="equal wall-clock (dotted: T)"
    )
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    stored = [r for r in runs if r["staleness"]]
    for r in stored:
        steps = [s["step"] for s in r["staleness"]]
        stale.plot(steps, [s["readout_gap"] for s in r["staleness"]], "o-", label=f"readout gap s{r['seed']}")
        stale.plot(
            steps,
            [(s["loss_stale"] - s["loss_fresh"]) / s["loss_fresh"] for s in r["staleness"]],
            "x--",
            label=f"loss stale/fresh - 1, s{r['seed']}",
        )
    stale.set(xlabel="gradient step (just before a refresh)", title="stored states: staleness")
    stale.grid(alpha=0.3)
    if stored:
        stale.legend(fontsize=8)
    scores = fig.add_subplot(grid[1, :2])
    stats.plot_iqm(scores, summary["comparisons"])
    scores.set(ylabel="score (best target; at equal time: first target)")
    scores.legend(fontsize=8)
    for column, comparisons in ((2, summary["comparisons"]), (4, summary["comparisons_vs_transformer"])):
        stats.plot_poi(fig.add_subplot(grid[1, column : column + 2]), comparisons)
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def report(runs: list[dict], settings: Settings, out: Path, name: str, planned: int, ray: dict) -> dict:
    """Write <out>/<name>.json and .png for the runs so far (partial until all `planned` ran); `ray`:
    how the trials were run (concurrency, address, resources of each)."""
    summary = summarise(runs, settings.modes)
    results = {
        "machine": machine_info(settings.device),
        "settings": dataclasses.asdict(settings),
        "ray": ray,
        "complete": len(runs) == planned,
        "runs_done": len(runs),
        "runs_planned": planned,
        "statistics": stats.describe(),
        **summary,
        **{
            key: {label: c.to_json() for label, c in summary[key].items()}
            for key in ("comparisons", "comparisons_vs_transformer")
        },
        "runs": runs,
    }
    write_json(out / f"{name}.json", results)
    if runs:
        plot(runs, summary, out / f"{name}.png")
    return results


def check_equal_batches(configs: dict[str, Config], data: Path) -> None:
    """A warning when the modes' batches do not hold the same number of steps: packed rows are as long as
    the longest episode, windows K steps, and `train.batch_steps` rounds to a whole number of either."""
    dataset = load_dataset(str(data))
    sizes = {mode: math.prod(batch_layout(cfg, dataset)) for mode, cfg in configs.items()}
    if len(set(sizes.values())) > 1:
        cfg = next(iter(configs.values()))
        equal = math.lcm(int(dataset.episode_lengths.max()), cfg.model.context_steps)
        warnings.warn(
            f"train.batch_steps = {cfg.train.batch_steps} makes batches of {sizes} steps (with padding). "
            f"Fix for equal batches: --batch-steps {equal} or a multiple of it",
            stacklevel=2,
        )


#: Settings a study's work folder may change between sittings.
GROWABLE = ("seeds", "modes")


def check_work_folder(work: Path, settings: Settings) -> None:
    """A ConfigError if `work` holds a study with other settings, whose runs cannot stand beside these.
    Seeds and modes may differ: each run is its own (mode, seed), so a study can grow by seeds or modes."""
    work.mkdir(parents=True, exist_ok=True)
    recorded = work / "settings.json"
    mine = json.loads(json.dumps(dataclasses.asdict(settings)))
    if recorded.is_file():
        theirs = json.loads(recorded.read_text())
        changed = sorted(k for k in mine if k not in GROWABLE and mine[k] != theirs.get(k))
        if changed:
            raise ConfigError(
                f"{work} holds a study with other settings ({', '.join(changed)} differ). Fix: pass another "
                f"--work folder, or the same settings to go on with that study"
            )
    else:
        write_atomic(recorded, json.dumps(mine, indent=2))


def adopt_finished_runs(work: Path) -> None:
    """Runs that the study finished before its runs were sweep trials (listed in <work>/finished.json,
    with their wall-clock) become finished trials, so that they are not run again."""
    listed = work / "finished.json"
    if not listed.is_file():
        return
    for key, summary in json.loads(listed.read_text()).items():
        run = RunDir(work / "runs" / key)
        if (run.eval / "eval.json").is_file() and not (run.root / TRIAL_STATE).is_file():
            write_state(
                run, {**read_state(run), "attempts": 1, "seconds": summary["wall_s"], "finished": True}
            )


def run(
    settings: Settings,
    out: Path,
    work: Path,
    name: str,
    *,
    max_concurrent: int = 1,
    address: str | None = None,
) -> tuple[dict, int]:
    """Train and evaluate every (seed, mode) as a trial of one sweep, `max_concurrent` at a time,
    skipping finished ones; the report is rewritten as each run ends. Returns it and how many trials
    failed. Seeds outermost, so a partial study compares the modes on the same seeds."""
    if settings.threads < 1:
        raise ConfigError(
            f"--threads {settings.threads}: each run is a Ray trial that reserves --threads CPUs and trains on "
            "as many torch threads. Fix: --threads 1 or more"
        )
    if max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {max_concurrent}: expected 1 or more. Fix: --max-concurrent 1")
    check_work_folder(work, settings)
    adopt_finished_runs(work)
    data, config = dataset_and_config(settings, work)
    trials = [
        make_run(settings, mode, seed, data, config, work)
        for seed in settings.seeds
        for mode in settings.modes
    ]
    check_equal_batches({t.point["mode"]: from_dict(t.settings) for t in trials[: len(settings.modes)]}, data)
    resources = Resources(cpus=settings.threads, gpus=1 if settings.device.startswith("cuda") else 0)
    ray = {"max_concurrent": max_concurrent, "address": address, "resources": dataclasses.asdict(resources)}
    results: dict = {}

    def write_report(records: list[dict]) -> None:
        runs = [run_summary(t, r) for t, r in zip(trials, records, strict=True) if r["status"] == "finished"]
        results.update(report(runs, settings, out, name, len(trials), ray))

    records = run_trials(
        trials,
        resources,
        address=address,
        max_concurrent=max_concurrent,
        on_result=write_report,
        log=work / RAY_LOG,
    )
    return results, print_failures(records, work / RAY_LOG)


def _against(comparison: dict | None, mode: str) -> tuple[str, str]:
    """`mode`'s probability of improvement over the comparison's baseline, and its verdict ("baseline"
    for the baseline itself, blank without the comparison)."""
    if comparison is None:
        return "", ""
    if mode not in comparison["poi"]:
        return "", "baseline" if mode == comparison["baseline"] else ""
    return f"{stats.Interval(**comparison['poi'][mode]):.2f}", comparison["verdict"][mode]


def print_table(results: dict) -> None:
    """Per mode: the score's IQM, its probability of improvement and verdict against the training default
    and against the Transformer, and the speed and staleness means; then the equal-time scores, on stdout."""
    if not results["by_mode"]:
        return
    same = results["comparisons"]["equal steps"]
    baseline = same["baseline"]
    vs_transformer = results["comparisons_vs_transformer"]
    wide = max(map(len, (stats.NO_CALL, stats.FEW_RUNS)))  # the verdicts' columns
    print(
        f"{'mode':11} {'score IQM [95% CI]':>20} {f'P(> {baseline})':>20} {'verdict':>{wide}} "
        f"{f'P(> {TRANSFORMER})':>20} {f'vs {TRANSFORMER}':>{wide}} {'steps/batch':>11} {'steps/s':>9} "
        f"{'train s':>9} {'readout gap':>12} {'dloss stale':>12}"
    )
    for mode, row in results["by_mode"].items():
        gap = f"{row['readout_gap']:12.3g}" if "readout_gap" in row else f"{'':12}"
        dloss = f"{row['loss_stale_minus_fresh']:12.3g}" if "readout_gap" in row else f"{'':12}"
        default = _against(same, mode)
        transformer = _against(vs_transformer.get("equal steps"), mode)
        print(
            f"{mode:11} {format(stats.Interval(**same['iqm'][mode])):>20} {default[0]:>20} {default[1]:>{wide}} "
            f"{transformer[0]:>20} {transformer[1]:>{wide}} {row['supervised_steps_per_batch']:11.0f} "
            f"{row['supervised_steps_per_s']:9.0f} {row['train_seconds']:9.1f} {gap} {dloss}"
        )
    for point in results["equal_time"]:
        scores = ", ".join(f"{m} {s:.1f}" if s is not None else f"{m} -" for m, s in point["score"].items())
        print(f"seed {point['seed']}, equal time T = {point['seconds']:.1f} s: {scores}")
    timed = results["comparisons"].get("equal time")
    for mode, iqm in (timed["iqm"] if timed else {}).items():
        line = f"at equal time, {mode}: IQM {stats.Interval(**iqm)}"
        for comparison in (timed, vs_transformer.get("equal time")):
            poi, verdict = _against(comparison, mode)
            if poi:
                line += f", P(> {comparison['baseline']}) {poi}: {verdict}"
        print(line)


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--quick", action="store_true", help="a tiny preset that checks the whole path")
    parser.add_argument("--dataset", help="<task>-<recipe> (default hopper-medium) or a D4RL-format file")
    parser.add_argument("--transitions", type=int, help="size of a collected dataset")
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, help=f"the train.batching values to compare, and {TRANSFORMER}"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="override the seeds")
    parser.add_argument("--steps", type=int, help="gradient steps per run")
    parser.add_argument("--warmup-steps", type=int, help="lr warm-up steps")
    parser.add_argument("--batch-steps", type=int, help="supervised timesteps per batch, every mode")
    parser.add_argument("--refresh-every", type=int, help="train.state_refresh_every of the stored mode")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (and checkpoints)")
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation")
    parser.add_argument(
        "--device", help="train.device: cpu, cuda, cuda:<i> (cuda: each trial reserves a GPU)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads of each run, and the CPUs Ray reserves for it"
    )
    parser.add_argument(
        "--max-concurrent",
        type=int,
        default=1,
        help="trials run at once (default 1, so that training seconds do not depend on neighbours): more on "
        "a cluster, or where timing does not matter",
    )
    parser.add_argument(
        "--address",
        help="run on this Ray cluster (auto, or ray://HOST:10001) instead of a local Ray; --work must then "
        "be a folder every node shares",
    )
    add_output_arguments(parser)
    parser.add_argument(
        "--work",
        type=Path,
        help="folder of the dataset and run directories (reused: finished runs are skipped); default "
        "~/.cache/aaren-rl/batching/<dataset>[-quick]",
    )
    args = parser.parse_args(argv)
    settings, name = (QUICK, "batching_quick") if args.quick else (Settings(), "batching")
    changes = {field.name: getattr(args, field.name) for field in dataclasses.fields(Settings)}
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    settings = dataclasses.replace(settings, **changes)
    stem = Path(settings.dataset).name.removesuffix(".hdf5")
    work = (
        args.work or Path(f"~/.cache/aaren-rl/batching/{stem}{'-quick' if args.quick else ''}").expanduser()
    )
    dest = output_stem(CLAIM, settings, settings.device, name, args.out, args.allow_dirty)
    try:
        results, failed = run(
            settings, dest.parent, work, dest.name, max_concurrent=args.max_concurrent, address=args.address
        )
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue (report so far: {dest}.json)")
        return 130
    print_table(results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
