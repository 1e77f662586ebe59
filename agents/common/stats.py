"""Statistics that decide: the interquartile mean (IQM) with stratified-bootstrap confidence intervals,
and the probability of improvement, computed by rliable (Agarwal et al. 2021, "Deep Reinforcement
Learning at the Edge of the Statistical Precipice").

Scores come as {method: array [runs, tasks]} of normalised scores: a run is one training seed, a task
one environment x dataset (in a sweep, one point of the axes not compared), every method on the same tasks in the same order (the number of runs may
differ). The bootstrap resamples runs within each task. Per method: the IQM over runs and tasks (the
mean of the middle half of the scores) with its interval. Against a baseline: the probability of
improvement P(method > baseline) (a Mann-Whitney U per task, averaged over tasks) and the IQM
difference, each with its interval. A difference is called only when the intervals say so: the
method's and the baseline's IQM intervals are disjoint and the probability-of-improvement interval
excludes 0.5, both on the same side; and only from MIN_RUNS runs of each.

rliable is optional (the `ray` and `bench` extras) and imported on first use; where it does not import,
a report that needs it stops with one MissingExtraError naming the install command.

rliable's stratified bootstraps draw their indices from NumPy's global generator (not from the
`random_state` they take), so each interval is computed under a fixed seed set there, and the caller's
generator state is put back afterwards: the same scores give the same intervals, whatever ran before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import io
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import numpy as np

from envs.errors import MissingExtraError
from envs.files import write_atomic

CONFIDENCE = 0.95
#: Bootstrap resamples per interval (rliable's own examples use 2,000 for the probability of improvement).
REPS = 2000
#: Seed of NumPy's global generator while an interval is bootstrapped.
SEED = 0
#: Runs of each method below which no difference is called, whatever the intervals.
MIN_RUNS = 5
BETTER, WORSE, NO_CALL = "better", "worse", "no difference called"
FEW_RUNS = f"too few runs (< {MIN_RUNS}) to call"
INSTALL_HINT = "pip install -e '.[ray]'"


def rliable(module: str) -> ModuleType:
    """rliable's `module` (library, metrics or plot_utils), or one MissingExtraError naming the install
    command where rliable does not import (missing, or pandas 3 under its arch dependency)."""
    try:
        return importlib.import_module(f"rliable.{module}")
    except ImportError as error:
        raise MissingExtraError(
            f"the report's statistics need rliable, which does not import here ({error}). Fix: {INSTALL_HINT}"
        ) from error


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval [low, high]."""

    point: float
    low: float
    high: float

    def __format__(self, spec: str) -> str:
        """`point [low, high]`, each number formatted by `spec` (default .1f)."""
        spec = spec or ".1f"
        return f"{self.point:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def __str__(self) -> str:
        return format(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Every method's IQM; against the baseline, each other method's probability of improvement, IQM
    difference (method - baseline) and verdict."""

    baseline: str
    runs: dict[str, int]
    tasks: int
    iqm: dict[str, Interval]
    poi: dict[str, Interval]
    difference: dict[str, Interval]
    verdict: dict[str, str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def describe(reps: int | None = None) -> dict:
    """The statistical protocol, for a result file (reps: None for REPS, as everywhere here)."""
    rliable("metrics")  # installed and importable, or one clear error
    return {
        "library": f"rliable {importlib.metadata.version('rliable')}",
        "aggregate": "IQM over runs and tasks",
        "interval": f"{CONFIDENCE:.0%} percentile stratified bootstrap over runs",
        "reps": reps or REPS,
        "seed": SEED,
        "min_runs": MIN_RUNS,
        "call": "IQM intervals disjoint and probability-of-improvement interval excluding 0.5, same side",
    }


def verdict(method: Interval, baseline: Interval, poi: Interval) -> str:
    """BETTER or WORSE than the baseline when both tests agree (IQM intervals disjoint, P(method >
    baseline) interval excluding 0.5, on the same side); NO_CALL otherwise."""
    if method.low > baseline.high and poi.low > 0.5:
        return BETTER
    if method.high < baseline.low and poi.high < 0.5:
        return WORSE
    return NO_CALL


def iqm(scores: np.ndarray, reps: int | None = None, seed: int = SEED) -> Interval:
    """The IQM of `scores` [runs, tasks] and its interval."""
    (array,) = _checked({"scores": scores}, "scores").values()
    return _interval("iqm", (array,), reps, seed)


def compare(
    scores: Mapping[str, np.ndarray], baseline: str, reps: int | None = None, seed: int = SEED
) -> Comparison:
    """IQMs, probabilities of improvement over `baseline`, IQM differences and verdicts of `scores`
    ({method: [runs, tasks]}, the baseline among them); `reps` bootstrap resamples (None: REPS) drawn
    under `seed`."""
    arrays = _checked(scores, baseline)
    others = [m for m in arrays if m != baseline]
    iqm = {m: _interval("iqm", (arrays[m],), reps, seed) for m in arrays}
    poi = {m: _interval("poi", (arrays[m], arrays[baseline]), reps, seed) for m in others}
    difference = {m: _interval("difference", (arrays[m], arrays[baseline]), reps, seed) for m in others}
    runs = {m: len(a) for m, a in arrays.items()}
    return Comparison(
        baseline,
        runs,
        arrays[baseline].shape[1],
        iqm,
        poi,
        difference,
        {
            m: verdict(iqm[m], iqm[baseline], poi[m])
            if min(runs[m], runs[baseline]) >= MIN_RUNS
            else FEW_RUNS
            for m in others
        },
    )


def _checked(scores: Mapping[str, np.ndarray], baseline: str) -> dict[str, np.ndarray]:
    """The scores as float64 arrays; a ValueError naming the method and the problem if they are not
    finite [runs >= 1, tasks >= 1] arrays with the same number of tasks, or the baseline is missing."""
    if baseline not in scores:
        raise ValueError(
            f"baseline {baseline!r} is not among the methods {list(scores)}. Fix: name one of them"
        )
    arrays = {m: np.asarray(s, dtype=np.float64) for m, s in scores.items()}
    tasks = arrays[baseline].shape[1:2]
    for method, array in arrays.items():
        if array.ndim != 2 or 0 in array.shape:
            raise ValueError(
                f"scores of {method!r} have shape {array.shape}. Fix: pass an array [runs, tasks] with at "
                "least one run and one task"
            )
        if array.shape[1:] != tasks:
            raise ValueError(
                f"scores of {method!r} cover {array.shape[1]} tasks, those of the baseline {baseline!r} "
                f"{tasks[0]}. Fix: give every method the same tasks, in the same order"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"scores of {method!r} hold a NaN or an infinity. Fix: pass finite scores")
    return arrays


def _iqm(x: np.ndarray) -> np.ndarray:
    return np.array([rliable("metrics").aggregate_iqm(x)])


def _poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([rliable("metrics").probability_of_improvement(x, y)])


def _difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    metrics = rliable("metrics")
    return np.array([metrics.aggregate_iqm(x) - metrics.aggregate_iqm(y)])


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"iqm": _iqm, "poi": _poi, "difference": _difference}


def _interval(kind: str, arrays: tuple[np.ndarray, ...], reps: int | None, seed: int) -> Interval:
    """The statistic `kind` of `arrays` and its interval, bootstrapped once per distinct input: benchmark
    reports are rewritten after every run, mostly from the same scores."""
    return _cached_interval(kind, tuple(tuple(map(tuple, a.tolist())) for a in arrays), reps or REPS, seed)


@functools.lru_cache(maxsize=4096)
def _cached_interval(kind: str, arrays: tuple, reps: int, seed: int) -> Interval:
    data = [np.array(a, dtype=np.float64) for a in arrays]
    with _global_seed(seed):
        # One array: rliable's StratifiedBootstrap; several: each resampled on its own.
        points, intervals = rliable("library").get_interval_estimates(
            {kind: data[0] if len(data) == 1 else data},
            STATISTICS[kind],
            reps=reps,
            confidence_interval_size=CONFIDENCE,
        )
    return Interval(float(points[kind][0]), float(intervals[kind][0, 0]), float(intervals[kind][1, 0]))


@contextlib.contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded with `seed` inside the block, and as it was after it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def plot_iqm(ax, comparisons: Mapping[str, Comparison]) -> np.ndarray:
    """Each method's IQM on `ax` as a bar with its interval, grouped by label (e.g. all tasks, then each
    task); returns the groups' x positions."""
    labels = list(comparisons)
    methods = list(comparisons[labels[0]].iqm)
    x = np.arange(len(labels))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        iqm = [comparisons[label].iqm[method] for label in labels]
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width,
            [s.point for s in iqm],
            width,
            yerr=[[s.point - s.low for s in iqm], [s.high - s.point for s in iqm]],
            capsize=3,
            label=method,
        )
    ax.set_xticks(x, labels)
    ax.set_title(f"IQM, {CONFIDENCE:.0%} CI")
    return x


#: Separates the two methods in rliable's probability-of-improvement pair names.
PAIR = "|"


def plot_poi(ax, comparisons: Mapping[str, Comparison]) -> None:
    """rliable's probability-of-improvement plot on `ax`: one row per (label, method), the first at the
    top, P(method > baseline) with its interval, and 0.5 marked."""
    estimates, intervals = {}, {}
    for label, comparison in reversed(comparisons.items()):
        for method, poi in comparison.poi.items():
            key = f"{method} ({label}){PAIR}{comparison.baseline}"
            estimates[key], intervals[key] = poi.point, np.array([poi.low, poi.high])
    if not estimates:
        return
    rliable("plot_utils").plot_probability_of_improvement(
        estimates, intervals, pair_separator=PAIR, ax=ax, xlabel="P(X > Y)", labelsize="medium",
        ticklabelsize="small", left_ylabel="X", right_ylabel="Y",
    )  # fmt: skip
    ax.axvline(0.5, color="k", lw=0.8, ls=":")
    ax.set_xlim(0, 1)


def plot(
    iqm: Mapping[str, Mapping[str, Interval]],
    path: Path,
    *,
    xlabel: str = "normalised score",
    comparisons: Mapping[str, Comparison] | None = None,
) -> None:
    """A PNG of rliable's plots: IQMs ({label: {method: IQM}}) with their intervals, one column per label
    (e.g. all tasks, then each task; a method a label lacks is left blank there), and below them, given
    `comparisons` ({label: Comparison}), the probabilities of improvement over the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(iqm)
    methods = list(dict.fromkeys(m for by_method in iqm.values() for m in by_method))
    missing = Interval(np.nan, np.nan, np.nan)
    shown = {m: [iqm[label].get(m, missing) for label in labels] for m in methods}
    points = {m: [s.point for s in shown[m]] for m in methods}
    intervals = {m: np.array([[s.low for s in shown[m]], [s.high for s in shown[m]]]) for m in methods}
    fig, _ = rliable("plot_utils").plot_interval_estimates(
        points, intervals, metric_names=[f"IQM: {label}" for label in labels], algorithms=methods,
        xlabel="", row_height=0.6,
    )  # fmt: skip
    for ax in fig.axes:
        ax.set_xlabel(f"{xlabel}, {CONFIDENCE:.0%} CI", fontsize="large")
    rows = sum(len(c.poi) for c in (comparisons or {}).values())
    if rows:
        width, height = fig.get_size_inches()
        extra = 1.0 + 0.45 * rows
        fig.set_size_inches(width, height + extra)
        for ax in fig.axes:  # keep the interval plots their height, at the top
            box = ax.get_position()
            ax.set_position([box.x0, 1 - (1 - box.y0) * height / (height + extra), box.width,
                             box.height * height / (height + extra)])  # fmt: skip
        poi_ax = fig.add_axes([0.25, 0.0, 0.5, (extra - 1.0) / (height + extra)])
        plot_poi(poi_ax, comparisons)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def plot_curves(
    curves: Mapping[str, Mapping[str, list[dict[int, float]]]], path: Path, *, ylabel: str
) -> None:
    """A PNG of learning curves, one panel per label of `curves` ({label: {method: [each run's {step:
    value}]}}): per method, the IQM over its runs at each step every run evaluated, with its interval as
    a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (label, by_method) in zip(axes[0], curves.items(), strict=True):
        for method, runs in by_method.items():
            steps = sorted(set.intersection(*(set(run) for run in runs)))
            estimates = [iqm(np.array([[run[step]] for run in runs])) for step in steps]
            line = ax.plot(
                steps, [e.point for e in estimates], marker="o", label=f"{method} ({len(runs)} runs)"
            )
            low, high = [e.low for e in estimates], [e.high for e in estimates]
            ax.fill_between(steps, low, high, color=line[0].get_color(), alpha=0.2)
        ax.set(title=label, xlabel="gradient step", ylabel=f"{ylabel} (IQM, {CONFIDENCE:.0%} CI)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
