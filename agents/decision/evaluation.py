"""Live evaluation: roll a `DecisionAgent` out in vectorised environments and score it.

The agent's state is batched over the envs and reset per env at episode start (`VecRollout`'s
`episode_start` flags), so the Aaren agent acts through its recurrent path. Each env copy runs a
fixed share of the episodes (`envs.vector.split_evenly`), which keeps the result independent of
which episodes finish first. `evaluate_run` scores a run's latest checkpoint at several targets (what
`scripts/evaluate.py` and a finished training run do, `final_eval_and_curve`); `PeriodicEval` scores the
model being trained at the main target, its rows going to the run's metrics (docs/design.md, Decision
agents).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.decision.agent import TARGET_RETURN_FIX, DecisionAgent, target_return_problem
from agents.decision.checkpoint import load_model
from agents.decision.run_dir import MetricsLog, RunDir, plot_curve, read_metrics, read_run_info
from envs import VecRollout, make_env, make_vec_env, normalized_score
from envs.d4rl import eval_targets
from envs.files import torch_threads, write_atomic
from envs.progress import progress_bar
from envs.vector import split_evenly

if TYPE_CHECKING:
    from agents.decision.config import Config
    from agents.decision.data import TrainingData
    from agents.decision.distributed import DistContext
    from agents.decision.model import DecisionModel


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked (no usable target return, a video without imageio); the
    message says what to do."""


@dataclass
class EvalResult:
    """Episodes of one target return: returns, lengths, D4RL-normalised scores and their summaries."""

    target_return: float
    returns: list[float]
    lengths: list[int]
    scores: list[float] | None  # None when no reference scores are known for the env

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def score_mean(self) -> float | None:
        return None if self.scores is None else float(np.mean(self.scores))

    def summary(self) -> dict[str, Any]:
        out = {
            "target_return": self.target_return,
            "episodes": len(self.returns),
            "return_mean": self.return_mean,
            "return_std": float(np.std(self.returns)),
            "length_mean": float(np.mean(self.lengths)),
        }
        if self.scores is not None:
            out.update(score_mean=self.score_mean, score_std=float(np.std(self.scores)))
        return {**out, **asdict(self)}


def default_targets(env_name: str, dataset_max_return: float | None = None) -> list[float]:
    """The D4RL task's evaluation targets (`envs.d4rl.eval_targets`), else the dataset's best return."""
    targets = eval_targets(env_name)
    if targets is not None:
        return list(targets)
    if dataset_max_return is None:
        raise EvaluationError(
            f"no default target return for {env_name!r}. Fix: pass targets explicitly (eval.targets=[...] "
            "or --target R)"
        )
    return [float(dataset_max_return)]


def _scores(score_ref: Any, returns: list[float]) -> list[float] | None:
    try:
        return [float(s) for s in np.atleast_1d(normalized_score(score_ref, np.array(returns)))]
    except ValueError:
        return None


def rank_share(episodes: int, num_envs: int, rank: int, world_size: int) -> tuple[int, int, int]:
    """One rank's share of an evaluation as (episodes, env copies, index of its first env copy).

    The env copies are split into contiguous blocks across ranks; a block keeps each copy's seed
    (seed + index) and episode quota, so the ranks together run the episodes of a one-process run.
    """
    quota = split_evenly(episodes, min(num_envs, episodes))
    block = np.array_split(np.arange(len(quota)), world_size)[rank]
    return int(quota[block].sum()), len(block), int(block[0]) if len(block) else 0


def merge_results(results: list[EvalResult]) -> EvalResult:
    """One result from the ranks' shares of an evaluation at the same target."""
    scores = [s for r in results for s in r.scores or []]
    return EvalResult(
        results[0].target_return,
        [x for r in results for x in r.returns],
        [n for r in results for n in r.lengths],
        None if results[0].scores is None else scores,
    )


def env_actions(actions: np.ndarray) -> np.ndarray:
    """An agent's actions as the env takes them: Box actions as float32, discrete ones as they are (int64)."""
    return actions.astype(np.float32) if actions.dtype.kind == "f" else actions


def evaluate_agent(
    agent: DecisionAgent,
    env_name: str,
    episodes: int = 10,
    num_envs: int = 5,
    *,
    seed: int = 0,
    vectorization: str = "sync",
    score_ref: Any = None,
    progress: bool = True,
) -> EvalResult:
    """Run `episodes` live episodes of `agent` in `num_envs` vectorised copies of `env_name` (copy i
    seeded seed + i; vectorization "sync" or "async" as `envs.make_vec_env`).

    score_ref: what `envs.normalized_score` takes (dataset metadata with reference scores, or a
    name); default the env name.
    """
    num_envs = min(num_envs, episodes)
    quota = split_evenly(episodes, num_envs)
    rollout = VecRollout(make_vec_env(env_name, num_envs, vectorization, seed))
    returns: list[float] = []
    lengths: list[int] = []
    done = np.zeros(num_envs, dtype=np.int64)
    bar = progress_bar(
        total=episodes, unit="ep", disable=not progress, leave=False, desc=f"eval R={agent.target_return:g}"
    )
    with torch_threads(1), contextlib.closing(rollout), contextlib.closing(bar):
        obs, _ = rollout.reset()
        state, rewards = None, None
        while (done < quota).any():
            actions, state = agent.act(obs, state, rollout.episode_start, rewards)
            step = rollout.step(env_actions(actions))
            rewards = step.rewards
            for ep in rollout.pop_finished():
                if done[ep.env_index] < quota[ep.env_index]:
                    done[ep.env_index] += 1
                    returns.append(ep.episode_return)
                    lengths.append(ep.length)
                    bar.update(1)
                    bar.set_postfix(last_return=f"{ep.episode_return:.0f}")
            obs = step.obs
    return EvalResult(agent.target_return, returns, lengths, _scores(score_ref or env_name, returns))


def record_video(agent: DecisionAgent, env_name: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """One episode rendered to an mp4 (a GIF without imageio[ffmpeg]); needs imageio. MuJoCo renders
    headless with MUJOCO_GL=egl."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    imageio = _imageio()
    env = make_env(env_name, render_mode="rgb_array")
    frames = []
    with torch_threads(1), contextlib.closing(env):
        obs, _ = env.reset(seed=seed)
        state, reward, done = None, None, False
        while not done:
            frames.append(env.render())
            action, state = agent.act(
                obs[None], state, np.array([state is None]), None if reward is None else np.array([reward])
            )
            obs, reward, terminated, truncated, _ = env.step(env_actions(action)[0])
            done = terminated or truncated
    path, fps = Path(path), int(env.metadata.get("render_fps", 30))
    try:
        imageio.mimsave(path, frames, fps=fps)
    except (ValueError, RuntimeError, OSError):  # no mp4 backend (imageio[ffmpeg]): GIF via Pillow
        path = path.with_suffix(".gif")
        imageio.mimsave(path, frames, duration=1000 / fps)
    return path


def _imageio() -> ModuleType:
    """imageio's v2 API, which videos need (an optional dependency)."""
    try:
        import imageio.v2 as imageio
    except ImportError as exc:
        raise EvaluationError(
            "a video needs imageio, which is not installed. Fix: pip install 'aaren-rl[video]' (imageio, "
            "moviepy), or leave out --video"
        ) from exc
    return imageio


def _checked_targets(targets: list[float] | None, stats: Path, info: dict[str, Any]) -> list[float]:
    """The targets to evaluate at: those given, else the run's (`info`, read from `stats`); an
    EvaluationError when there are none or one cannot be a target return (naming where it came from)."""
    source = "the given targets" if targets else f"eval_targets of {stats}"
    targets = list(targets or info.get("eval_targets") or [])
    if not targets:
        raise EvaluationError(
            f"no target return to evaluate {stats.parent} at: none given and {stats} lists no "
            "eval_targets. Fix: pass targets, e.g. --target 3600"
        )
    for target in targets:
        problem = target_return_problem(float(target))
        if problem is not None:
            raise EvaluationError(f"target return {problem} (in {source}). Fix: {TARGET_RETURN_FIX}")
    return [float(target) for target in targets]


def _default_out(run: RunDir, env: str | None, trained_in: str) -> Path:
    """RUN_DIR/eval for the run's own env (what training's final evaluation writes), else RUN_DIR/eval-<env>:
    evaluating elsewhere never replaces that report."""
    return run.eval if env is None or env == trained_in else run.root / f"eval-{env}"


def _checked_env(env: str | None, trained_in: str) -> str:
    """The env to evaluate in: the run's own (`trained_in`), or `env`, another registered env with the same
    observation and action spaces (e.g. a longer T-Maze corridor: acting past the training episodes'
    lengths); an EvaluationError naming both spaces when they differ."""
    if env is None or env == trained_in:
        return trained_in
    mine, theirs = make_env(trained_in), make_env(env)
    try:
        for what in ("observation_space", "action_space"):
            if getattr(mine, what) != getattr(theirs, what):
                raise EvaluationError(
                    f"cannot evaluate in {env}: its {what} {getattr(theirs, what)} differs from "
                    f"{getattr(mine, what)} of {trained_in}, the env the run trained for. Fix: pick an env "
                    f"with the same spaces, or evaluate in {trained_in}"
                )
    finally:
        mine.close()
        theirs.close()
    return env


def finite_or_none(value: Any) -> Any:
    """`value` (numbers, lists, dicts of them) with every non-finite float replaced by None: what strict
    JSON can hold (eval.json is read by other tools, which reject NaN and Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    episodes: int = 10,
    num_envs: int = 5,
    targets: list[float] | None = None,
    seed: int = 1000,
    vectorization: str = "sync",
    acting: str | None = None,
    video: bool = False,
    env: str | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's latest checkpoint at several targets (default, or when empty: the run's), in the
    run's env or in `env` (same spaces);
    write eval.json (strict JSON: null for a number that is not finite) and eval.png (and a video) to
    `out_dir` (default RUN_DIR/eval). EvaluationError before any episode when it cannot run as asked."""
    run = RunDir(run_dir)
    info = read_run_info(run.root)
    checkpoint = run.latest_checkpoint()
    model, step = load_model(checkpoint)
    return evaluate_model(
        model,
        info,
        run.dataset_stats,
        Path(out_dir) if out_dir is not None else _default_out(run, env, info["env"]),
        {"run_dir": str(run.root), "checkpoint": str(checkpoint), "step": step},
        episodes=episodes,
        num_envs=num_envs,
        targets=targets,
        seed=seed,
        vectorization=vectorization,
        acting=acting,
        video=video,
        env=env,
        progress=progress,
    )


def evaluate_model(
    model: DecisionModel,
    info: dict[str, Any],
    stats: Path,
    out: Path,
    source: dict[str, Any],
    *,
    episodes: int = 10,
    num_envs: int = 5,
    targets: list[float] | None = None,
    seed: int = 1000,
    vectorization: str = "sync",
    acting: str | None = None,
    video: bool = False,
    env: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` at several targets (default: the run's) in the env of `info`, a run's dataset
    statistics read from `stats`, or in `env` (see `_checked_env`); write eval.json (`source`, where the
    model came from, first) and eval.png (and a video) to `out` (`evaluate_run`, `agents.hub.evaluate_hub`)."""
    targets = _checked_targets(targets, stats, info)
    if video:
        _imageio()
    env_name = _checked_env(env, info["env"])
    out.mkdir(parents=True, exist_ok=True)
    agents = [DecisionAgent(model, target, acting=acting) for target in targets]
    results = [
        evaluate_agent(
            agent,
            env_name,
            episodes,
            num_envs,
            seed=seed,
            vectorization=vectorization,
            score_ref=info["score_ref"] if env_name == info["env"] else None,
            progress=progress,
        )
        for agent in agents
    ]
    report = {
        **source,
        "env": env_name,
        "backbone": model.config.backbone,
        "acting": agents[0].acting,
        "seed": seed,
        "dataset_return_mean": info["return_mean"],
        "dataset_score_mean": info.get("score_mean"),
        "results": [r.summary() for r in results],
    }
    if video:
        report["video"] = str(record_video(agents[0], env_name, out / "episode.mp4", seed))
    write_atomic(out / "eval.json", json.dumps(finite_or_none(report), indent=2, allow_nan=False))
    plot_eval(report, out / "eval.png")
    report["report_path"] = str(out / "eval.json")
    return report


def plot_eval(report: dict[str, Any], path: Path) -> None:
    """Bar chart: mean return (or normalised score) per target, with std bars and the dataset's mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_score = report["results"][0].get("score_mean") is not None
    key, label = ("score", "D4RL-normalised score") if use_score else ("return", "return")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = [f"R={r['target_return']:g}" for r in report["results"]]
    ax.bar(
        names,
        [r[f"{key}_mean"] for r in report["results"]],
        yerr=[r[f"{key}_std"] for r in report["results"]],
        capsize=4,
        color="tab:blue",
    )
    dataset = report["dataset_score_mean"] if use_score else report["dataset_return_mean"]
    if dataset is not None:
        ax.axhline(dataset, color="tab:gray", ls="--", label="dataset mean")
        ax.legend()
    ax.set_ylabel(label)
    ax.set_title(f"{report['env']} {report['backbone']} ({report['acting']}), step {report['step']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def eval_row(step: int, result: dict[str, Any]) -> dict[str, Any]:
    """The metrics row of one evaluation summary (`EvalResult.summary`)."""
    row = {
        "step": step,
        "eval/target": result["target_return"],
        "eval/return_mean": result["return_mean"],
        "eval/return_std": result["return_std"],
    }
    if "score_mean" in result:
        row["eval/score_mean"] = result["score_mean"]
    return row


class PeriodicEval:
    """Live evaluation of the model being trained at the main target. Each rank runs its share of the
    env copies (`rank_share`); rank 0 logs them together."""

    def __init__(
        self, cfg: Config, data: TrainingData, dist: DistContext, metrics: MetricsLog, progress: bool
    ):
        self.cfg, self.data, self.dist, self.metrics, self.progress = cfg.eval, data, dist, metrics, progress

    def __call__(self, model: DecisionModel, step: int) -> None:
        e, data, dist = self.cfg, self.data, self.dist
        model.eval()
        episodes, num_envs, first = rank_share(e.episodes, e.num_envs, dist.rank, dist.world_size)
        mine = (
            evaluate_agent(
                DecisionAgent(model, data.targets[0]),
                data.env,
                episodes,
                num_envs,
                seed=e.seed + first,
                vectorization=e.vectorization,
                score_ref=data.score_ref,
                progress=self.progress,
            )
            if episodes
            else None
        )
        self.metrics.log(
            eval_row(step, merge_results([r for r in dist.gather_objects(mine) if r is not None]).summary())
        )
        model.train()


def final_eval_and_curve(
    cfg: Config, data: TrainingData, run: RunDir, metrics: MetricsLog, step: int, progress: bool
) -> None:
    """Rank 0, after the last step: evaluate the saved checkpoint at every target (eval/eval.json,
    eval.png) unless an earlier session of this run already did, then draw the learning curve."""
    if not any("eval/return_mean" in r and r["step"] == step for r in read_metrics(run.metrics, step)):
        report = evaluate_run(
            run.root,
            episodes=cfg.eval.episodes,
            num_envs=cfg.eval.num_envs,
            targets=data.targets,
            seed=cfg.eval.seed,
            vectorization=cfg.eval.vectorization,
            progress=progress,
        )
        for result in report["results"]:
            metrics.log(eval_row(step, result))
    metrics.close()
    plot_curve(run.metrics, run.curve, cfg.run_name)
