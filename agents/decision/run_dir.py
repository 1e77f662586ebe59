"""A training run's directory: where each of its files lives, its checkpoints and the `latest` pointer,
its one-writer lock, writing its files (`write_run_files`, `MetricsLog`, `plot_curve`), and reading a run
back (`load_agent`, `read_run_info`, `run_targets`, `read_metrics`).

    <output_dir>/<name>/
        config.yaml                  the resolved config (what --resume reads)
        dataset_stats.json           dataset summary, env, reference scores, evaluation targets
        checkpoints/step_NNNNNNN/    one checkpoint (format and digests: `agents.decision.checkpoint`)
        checkpoints/latest           name of the newest verified checkpoint (what evaluation reads)
        metrics.jsonl                one JSON row per logged step (train/*, eval/*), also in tb/
        tb/                          TensorBoard events
        curve.png                    training loss and live-evaluation score per step
        eval/                        the final evaluation report (eval.json, eval.png)
        .lock                        held by the process training the run (its PID and host inside)

A checkpoint folder is complete and verified before `latest` is replaced to name it, and pruning
keeps the newest intact one besides it, so a run killed at any moment, or a checkpoint damaged later,
leaves a usable checkpoint (docs/design.md, Run directories).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.common.run_lock import LOCK_FILE, run_lock
from agents.common.run_lock import RunLockedError as RunLockedError  # re-exported: what RunDir.lock raises
from agents.decision.agent import DecisionAgent
from agents.decision.checkpoint import CheckpointError, load_model, verify_checkpoint, write_checkpoint
from agents.decision.config import Config, dump_config
from agents.decision.model import DecisionModel
from envs.files import remove_temporaries, write_atomic

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

    from agents.decision.distributed import DistContext

#: How many checkpoints a run keeps: the one just written and the newest intact ones before it.
KEEP_CHECKPOINTS = 2
CHECKPOINT_NAME = re.compile(r"step_(\d+)")


class RunDirError(ValueError):
    """A folder that is not a run directory, or a run whose dataset_stats.json or metrics.jsonl is
    damaged; the message names the file and the fix."""


class RunDir:
    """The paths of one run directory (nothing is created until something is written)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset_stats(self) -> Path:
        return self.root / "dataset_stats.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        """The pointer file naming the newest verified checkpoint folder."""
        return self.checkpoints / "latest"

    @property
    def tb(self) -> Path:
        return self.root / "tb"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curve(self) -> Path:
        return self.root / "curve.png"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def checkpoint_folders(self) -> list[Path]:
        """The run's checkpoint folders, newest (highest step) first, intact or not; the temporaries of
        checkpoint writes are not among them."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if CHECKPOINT_NAME.fullmatch(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: int(p.name[len("step_") :]), reverse=True)

    def newest_intact_checkpoint(self) -> Path:
        """The newest checkpoint folder whose files verify (what --resume continues from); a warning names
        each newer one skipped and what is wrong with it. CheckpointError when none is intact."""
        damaged: list[CheckpointError] = []
        for folder in self.checkpoint_folders():
            problem = _damage(folder)
            if problem is None:
                for skipped in damaged:
                    warnings.warn(
                        f"skipping a damaged checkpoint: {skipped.problem}; using {folder}", stacklevel=2
                    )
                return folder
            damaged.append(problem)
        found = "; ".join(p.problem for p in damaged) or f"{self.checkpoints} holds none"
        raise CheckpointError(f"no intact checkpoint in {self.root} ({found})", self._no_checkpoint_fix())

    def latest_checkpoint(self) -> Path:
        """The checkpoint `latest` names, verified (what evaluation reads). A damaged one, or a pointer that
        names none, is a CheckpointError naming the newest intact checkpoint to use instead."""
        folder = None
        try:
            folder = self._latest_target()
            verify_checkpoint(folder)
        except CheckpointError as exc:
            instead = next((f for f in self.checkpoint_folders() if f != folder and _damage(f) is None), None)
            if instead is None:
                raise CheckpointError(exc.problem, self._no_checkpoint_fix()) from None
            raise CheckpointError(
                exc.problem,
                f"use the newest intact checkpoint, {instead}: point {self.latest} at it (echo {instead.name} > "
                f"{self.latest}), or load that folder with agents.load_model; --resume {self.root} continues "
                "from it by itself",
            ) from None
        return folder

    def _latest_target(self) -> Path:
        """The folder the `latest` pointer names (which may be damaged)."""
        try:
            name = self.latest.read_text().strip()
        except FileNotFoundError:
            raise CheckpointError(f"no checkpoint in {self.root}: {self.latest} is missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{self.latest} cannot be read ({exc})") from exc
        if not CHECKPOINT_NAME.fullmatch(name):
            raise CheckpointError(
                f"{self.latest} names {name[:40]!r}, not a checkpoint folder (step_NNNNNNN)"
            )
        folder = self.checkpoints / name
        if not folder.is_dir():
            raise CheckpointError(f"{self.latest} names {folder}, which does not exist")
        return folder

    def _no_checkpoint_fix(self) -> str:
        if not self.checkpoint_folders():
            return (
                "pass a run directory written by scripts/train_offline.py that got at least to its first "
                "checkpoint"
            )
        return "restore the run's checkpoints from a backup, or start a new run: none of them is intact"

    def save_checkpoint(self, model: DecisionModel, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write checkpoint `step`, verify it, point `latest` at it, and drop the other checkpoints but the
        newest KEEP_CHECKPOINTS - 1 intact ones (a damaged one is dropped and never counts as a copy)."""
        folder = write_checkpoint(self.checkpoint(step), model, step, trainer_state)
        verify_checkpoint(folder)
        write_atomic(self.latest, folder.name)
        others = (f for f in self.checkpoint_folders() if f != folder)
        keep = {folder, *itertools.islice((f for f in others if _damage(f) is None), KEEP_CHECKPOINTS - 1)}
        for old in self.checkpoint_folders():
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return folder

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files and checkpoint folders that writes killed mid-way left; returns them.
        Only for the holder of the run's lock."""
        return remove_temporaries(self.root) + remove_temporaries(self.checkpoints)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The run's one-writer lock, to hold while writing the run (`agents.common.run_lock.run_lock`:
        RunLockedError, naming the holder, when another process holds it)."""
        return run_lock(self.root)


def _damage(folder: Path) -> CheckpointError | None:
    """What is wrong with a checkpoint folder (None: it is intact)."""
    try:
        verify_checkpoint(folder)
    except CheckpointError as exc:
        return exc
    return None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The verified checkpoint folder a run's `latest` names (`RunDir.latest_checkpoint`)."""
    return RunDir(run_dir).latest_checkpoint()


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's dataset statistics (dataset_stats.json): env, reference scores, dataset returns, targets.
    RunDirError when `run_dir` is no run directory or the file lacks what evaluation reads."""
    root, path = Path(run_dir), RunDir(run_dir).dataset_stats
    if not path.is_file():
        if root.is_dir():
            why = f"{path} is missing"
        else:
            why = "it is a file" if root.exists() else "it does not exist"
        fix = (
            f"the run directory it lies in, {root.parent}"  # e.g. the run's config.yaml was given
            if RunDir(root.parent).dataset_stats.is_file()
            else "a run directory written by scripts/train_offline.py (<output_dir>/<name> of its config)"
        )
        raise RunDirError(f"{run_dir} is not a run directory: {why}. Fix: pass {fix}")
    try:
        info = json.loads(path.read_bytes())
        problem = _run_info_problem(info)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"is not JSON ({exc})"
    if problem is not None:
        raise RunDirError(
            f"{path} is damaged: it {problem}. Fix: restore it from a backup, or have it written again: "
            f"scripts/train_offline.py --resume {run_dir} rewrites it from the run's config and data"
        )
    return info


def _run_info_problem(info: Any) -> str | None:
    """What keeps a parsed dataset_stats.json from being read by evaluation (None: nothing)."""
    if not isinstance(info, dict):
        return "holds no JSON object"
    for key in ("env", "score_ref", "eval_targets", "return_mean"):
        if key not in info:
            return f"lacks {key!r}"
    if not isinstance(info["env"], str):
        return f"holds env = {info['env']!r:.60}, not an environment name"
    score_ref = info[
        "score_ref"
    ]  # what envs.normalized_score takes: a task name, or env_id + reference scores
    if score_ref is not None and not (
        isinstance(score_ref, str)
        or isinstance(score_ref, dict)
        and _numbers([v for k, v in score_ref.items() if k in ("ref_min_score", "ref_max_score")])
    ):
        return (
            f"holds score_ref = {score_ref!r:.60}, not null, a task name or an object with numbers as "
            "reference scores"
        )
    if not _numbers(info["eval_targets"]):
        return f"holds eval_targets = {info['eval_targets']!r:.60}, not a list of numbers"
    if not _numbers([info["return_mean"]]):
        return f"holds return_mean = {info['return_mean']!r:.60}, not a number"
    return None


def _numbers(value: Any) -> bool:
    """Whether `value` is a JSON list of numbers (not booleans)."""
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    )


def run_targets(run_dir: str | os.PathLike) -> list[float]:
    """The run's evaluation target returns, the main one first."""
    return [float(t) for t in read_run_info(run_dir)["eval_targets"]]


def load_agent(
    run_dir: str | os.PathLike,
    target_return: float | None = None,
    device: str = "cpu",
    acting: str | None = None,
) -> DecisionAgent:
    """The trained agent of a run (latest checkpoint), ready to act; target default: the run's first target."""
    model, _ = load_model(latest_checkpoint(run_dir), device)
    if target_return is None:
        targets = run_targets(run_dir)
        if not targets:
            raise RunDirError(
                f"{RunDir(run_dir).dataset_stats} lists no eval_targets to act towards. Fix: pass a target return"
            )
        target_return = targets[0]
    return DecisionAgent(model, target_return, acting=acting)


def load_policy(*args: Any, **kwargs: Any) -> DecisionAgent:
    """Deprecated name of `load_agent` (it returns the acting agent, not an SB3 policy)."""
    warnings.warn("load_policy is now load_agent", DeprecationWarning, stacklevel=2)
    return load_agent(*args, **kwargs)


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (none if it does not exist), those up to `upto_step` if given; a torn
    last line (a write cut short by a kill) is left out."""
    rows, _ = _parse_metrics(path)
    return rows if upto_step is None else [r for r in rows if r["step"] <= upto_step]


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The rows of a metrics.jsonl and its torn last line (None if the last line is whole). A bad line
    before the last is a RunDirError naming it: appends never tear those."""
    if not path.is_file():
        return [], None
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            if number == len(lines):
                return rows, line
            raise RunDirError(
                f"{path}, line {number} is not a metrics row ({line[:60]!r}). Fix: delete or repair that line"
            )
        rows.append(row)
    return rows, None


class MetricsLog:
    """The run's metrics: each row goes to metrics.jsonl and, as scalars, to TensorBoard (tb/), together.

    Opened for a run resumed at `resumed_step`, it drops what a killed session logged after that
    checkpoint from both (TensorBoard's purge_step), so every step is logged once, and a torn last line
    (with a warning). `sync` makes the log durable; training calls it with each checkpoint. With
    `enabled=False` (the ranks other than 0 under torchrun) every call does nothing.
    """

    def __init__(self, run: RunDir, resumed_step: int = 0, enabled: bool = True):
        self.path = run.metrics
        self._writer: SummaryWriter | None = None
        if enabled:
            rows, torn = _parse_metrics(self.path)
            if torn is not None:
                warnings.warn(
                    f"{self.path}: dropped its torn last line {torn[:60]!r} (a write the previous session did "
                    "not finish)",
                    stacklevel=2,
                )
            kept = [r for r in rows if r["step"] <= resumed_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            from torch.utils.tensorboard import SummaryWriter  # here: TensorBoard is slow to import

            self._writer = SummaryWriter(str(run.tb), purge_step=resumed_step or None)
            self._file = self.path.open("a")

    def log(self, row: dict[str, Any]) -> None:
        """Append one row ({"step": int, name: value, ...}); its numbers also become TensorBoard scalars."""
        if self._writer is None:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, row["step"])

    def sync(self) -> None:
        """Put what was logged on the disk: metrics.jsonl (fsync) and the TensorBoard events."""
        if self._writer is not None:
            os.fsync(self._file.fileno())
            self._writer.flush()

    def close(self) -> None:
        """Close metrics.jsonl and flush and close the TensorBoard writer (again: nothing)."""
        if self._writer is not None:
            self._file.close()
            self._writer.close()
            self._writer = None


def write_run_files(
    run: RunDir, cfg: Config, stats: dict[str, Any], layout: tuple[int, int], dist: DistContext
) -> None:
    """config.yaml and dataset_stats.json (the data's `stats` with the resolved batch layout, rows and steps
    per row, and its split across the processes), written by every session."""
    run.root.mkdir(parents=True, exist_ok=True)
    write_atomic(run.config, dump_config(cfg))
    rows, row_steps = layout
    stats = {
        **stats,
        "batch": {"batch_steps": cfg.train.batch_steps, "rows": rows, "row_steps": row_steps},
        "distributed": {
            "world_size": dist.world_size,
            "backend": dist.backend,
            "per_rank_rows": rows // dist.world_size,
        },
    }
    write_atomic(run.dataset_stats, json.dumps(stats, indent=2))


def plot_curve(metrics_path: Path, out: Path, title: str) -> Path:
    """Learning curve: training loss and the evaluation's normalised score (or return) per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "eval/return_mean" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["step"] for r in train_rows], [r["train/loss"] for r in train_rows])
    ax1.set(xlabel="step", ylabel="action MSE", yscale="log", title=f"{title}: training loss")
    key = "eval/score_mean" if eval_rows and "eval/score_mean" in eval_rows[0] else "eval/return_mean"
    for target in sorted({r["eval/target"] for r in eval_rows}):
        pts = [r for r in eval_rows if r["eval/target"] == target]
        ax2.plot([r["step"] for r in pts], [r[key] for r in pts], "o-", label=f"target {target:g}")
    ax2.set(xlabel="step", ylabel=key.split("/")[1].replace("_", " "), title="live evaluation")
    if eval_rows:
        ax2.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
