"""agents/common/stats.py: IQM, probability of improvement and their intervals by rliable, and the verdict
that calls a difference only when the intervals say so."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from agents.common import stats
from agents.common.stats import BETTER, FEW_RUNS, NO_CALL, WORSE, Interval
from envs.errors import MissingExtraError

REPS = 200  # few resamples: the tests check the wiring, not the intervals' precision


def separated(runs: int = 8, tasks: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"high": rng.normal(60, 1, (runs, tasks)), "low": rng.normal(40, 1, (runs, tasks))}


def by_hand_iqm(scores: np.ndarray) -> float:
    """The mean of the middle half of all scores (the count cut from each end rounded down)."""
    values = np.sort(scores, axis=None)
    cut = int(0.25 * values.size)
    return float(values[cut : values.size - cut].mean())


def by_hand_poi(x: np.ndarray, y: np.ndarray) -> float:
    """P(x > y) per task over all run pairs, ties counting half, averaged over tasks."""
    per_task = [
        np.mean([(a > b) + 0.5 * (a == b) for a in x[:, t] for b in y[:, t]]) for t in range(x.shape[1])
    ]
    return float(np.mean(per_task))


def test_separated_methods_are_called_both_ways():
    scores = separated()
    high = stats.compare(scores, baseline="low", reps=REPS)
    assert high.verdict == {"high": BETTER}
    assert high.poi["high"].point == 1.0
    assert high.iqm["high"].low > high.iqm["low"].high
    low = stats.compare(scores, baseline="high", reps=REPS)
    assert low.verdict == {"low": WORSE}
    assert low.poi["low"].point == 0.0


def test_point_estimates_are_the_iqm_and_the_mann_whitney_probability():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (6, 2)), rng.normal(0.3, 1, (5, 2))
    y[0, 0] = x[0, 0]  # a tie counts half
    result = stats.compare({"x": x, "y": y}, baseline="y", reps=REPS)
    assert abs(result.iqm["x"].point - by_hand_iqm(x)) < 1e-10
    assert abs(result.iqm["y"].point - by_hand_iqm(y)) < 1e-10
    assert abs(result.poi["x"].point - by_hand_poi(x, y)) < 1e-10
    assert abs(result.difference["x"].point - (by_hand_iqm(x) - by_hand_iqm(y))) < 1e-10
    assert result.runs == {"x": 6, "y": 5} and result.tasks == 2
    for interval in (*result.iqm.values(), result.poi["x"], result.difference["x"]):
        assert interval.low <= interval.point <= interval.high


def test_identical_methods_are_not_called():
    scores = separated()["high"]
    result = stats.compare({"a": scores, "b": scores.copy()}, baseline="b", reps=REPS)
    assert result.verdict == {"a": NO_CALL}
    assert result.iqm["a"] == result.iqm["b"]  # same scores, same seed: the same interval
    assert result.poi["a"].point == 0.5 and result.poi["a"].low < 0.5 < result.poi["a"].high


def test_too_few_runs_are_never_called():
    result = stats.compare(separated(runs=stats.MIN_RUNS - 1), baseline="low", reps=REPS)
    assert result.iqm["high"].low > result.iqm["low"].high  # the intervals alone would call it
    assert result.verdict == {"high": FEW_RUNS}


@pytest.mark.parametrize(
    ("method", "poi", "expected"),
    [
        (Interval(60, 55, 65), Interval(0.9, 0.7, 1.0), BETTER),
        (Interval(30, 25, 35), Interval(0.1, 0.0, 0.3), WORSE),
        (Interval(60, 55, 65), Interval(0.7, 0.4, 1.0), NO_CALL),  # disjoint IQMs, PoI spans 0.5
        (Interval(52, 45, 60), Interval(0.9, 0.7, 1.0), NO_CALL),  # PoI above 0.5, IQMs overlap
        (Interval(60, 55, 65), Interval(0.2, 0.1, 0.4), NO_CALL),  # the two disagree
        (Interval(50.5, 50.1, 51), Interval(0.9, 0.6, 1.0), BETTER),  # just disjoint
        (Interval(50.5, 50.0, 51), Interval(0.9, 0.6, 1.0), NO_CALL),  # touching is overlapping
    ],
)
def test_verdict(method, poi, expected):
    assert stats.verdict(method, Interval(45, 40, 50), poi) == expected


def test_the_bootstrap_is_seeded_and_leaves_numpys_generator_alone():
    scores = separated(runs=6)
    np.random.seed(123)
    expected_draw = np.random.random()
    np.random.seed(123)
    first = stats.compare(scores, baseline="low", reps=REPS)
    assert np.random.random() == expected_draw  # the caller's global state is as it was
    stats._cached_interval.cache_clear()
    np.random.seed(7)  # whatever ran before
    assert stats.compare(scores, baseline="low", reps=REPS) == first
    other = stats.compare(scores, baseline="low", reps=REPS, seed=stats.SEED + 1)
    assert other.iqm["high"].point == first.iqm["high"].point
    assert (other.iqm["high"].low, other.iqm["high"].high) != (first.iqm["high"].low, first.iqm["high"].high)


def test_iqm_alone():
    scores = separated()["high"]
    interval = stats.iqm(scores, reps=REPS)
    assert abs(interval.point - by_hand_iqm(scores)) < 1e-10
    assert interval == stats.compare({"a": scores}, baseline="a", reps=REPS).iqm["a"]


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ({"a": np.ones(5), "b": np.ones((5, 1))}, r"scores of 'a' have shape \(5,\). Fix: pass an array \[runs, tasks\]"),
        ({"a": np.ones((0, 2)), "b": np.ones((5, 2))}, r"scores of 'a' have shape \(0, 2\)"),
        ({"a": np.ones((5, 2)), "b": np.ones((5, 3))}, "scores of 'a' cover 2 tasks, those of the baseline 'b' 3"),
        ({"a": np.full((5, 1), np.nan), "b": np.ones((5, 1))}, "scores of 'a' hold a NaN or an infinity"),
        ({"a": np.ones((5, 1))}, r"baseline 'b' is not among the methods \['a'\]"),
    ],
)  # fmt: skip
def test_bad_scores_are_named(scores, message):
    with pytest.raises(ValueError, match=message):
        stats.compare(scores, baseline="b", reps=REPS)


def test_interval_text_and_json():
    assert f"{Interval(0.8312, 0.7, 0.96):.2f}" == "0.83 [0.70, 0.96]"
    assert str(Interval(44.06, 41.84, 46.2)) == "44.1 [41.8, 46.2]"
    result = stats.compare(separated(), baseline="low", reps=REPS)
    record = json.loads(json.dumps(result.to_json()))
    assert record["iqm"]["high"] == {"point": result.iqm["high"].point, "low": result.iqm["high"].low,
                                     "high": result.iqm["high"].high}  # fmt: skip
    assert record["verdict"] == {"high": BETTER} and record["baseline"] == "low"
    assert stats.describe(REPS)["reps"] == REPS


def test_plot_writes_a_png(tmp_path):
    scores = separated(runs=5, tasks=2)
    comparisons = {"all tasks": stats.compare(scores, baseline="low", reps=REPS)}
    for task in range(2):
        comparisons[f"task {task}"] = stats.compare(
            {m: s[:, task : task + 1] for m, s in scores.items()}, baseline="low", reps=REPS
        )
    iqm = {label: c.iqm for label, c in comparisons.items()}
    stats.plot(iqm, tmp_path / "stats.png", comparisons=comparisons)
    assert (tmp_path / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    del iqm["task 1"]["high"]  # a method one label lacks is left blank there
    stats.plot(iqm, tmp_path / "blank.png", xlabel="return")
    assert (tmp_path / "blank.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_rliable_is_one_error_naming_the_extra(monkeypatch):
    """rliable is optional: where it does not import, the statistics say how to install it."""
    for module in ("rliable", "rliable.library", "rliable.metrics", "rliable.plot_utils"):
        monkeypatch.setitem(sys.modules, module, None)  # an import of it fails, as when it is missing
    monkeypatch.setattr(stats, "_cached_interval", stats._cached_interval.__wrapped__)  # no cached result
    with pytest.raises(MissingExtraError, match=r"need rliable, .*Fix: pip install -e '\.\[ray\]'"):
        stats.iqm(np.ones((5, 1)), reps=REPS)
    with pytest.raises(MissingExtraError, match="need rliable"):
        stats.describe()
