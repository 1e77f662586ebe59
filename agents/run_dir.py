"""A training run's directory: where each of its files lives, its checkpoints and the `latest` pointer,
its metrics log, and reading a run back (`load_policy`, `read_run_info`, `run_targets`).

    <output_dir>/<name>/
        config.yaml                  the resolved config (what --resume reads)
        dataset_stats.json           dataset summary, env, reference scores, evaluation targets
        checkpoints/step_NNNNNNN/    one checkpoint (format: `agents.checkpoint`); the newest two are kept
        checkpoints/latest           name of the newest complete checkpoint
        metrics.jsonl                one JSON row per logged step (train/*, eval/*), also in tb/
        tb/                          TensorBoard events
        curve.png                    training loss and live-evaluation score per step
        eval/                        the final evaluation report (eval.json, eval.png)

A checkpoint folder is complete before `latest` is replaced to name it, so a run killed at any
moment keeps a usable checkpoint (docs/design.md, Run directories).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.checkpoint import load_model, write_checkpoint
from agents.model import DecisionModel
from agents.policy import DecisionAgent
from envs.files import write_atomic

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

KEEP_CHECKPOINTS = 2


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
        """The pointer file naming the newest complete checkpoint folder."""
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

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}"

    def has_checkpoint(self) -> bool:
        return self.latest.is_file()

    def latest_checkpoint(self) -> Path:
        """The newest complete checkpoint folder, or FileNotFoundError saying what is missing."""
        if not self.latest.is_file():
            raise FileNotFoundError(
                f"no checkpoint in {self.root}: {self.latest} is missing. Fix: pass a run directory written by "
                "scripts/train_offline.py that got at least to its first checkpoint."
            )
        return self.checkpoints / self.latest.read_text().strip()

    def save_checkpoint(self, model: DecisionModel, step: int, trainer_state: dict[str, Any]) -> Path:
        """Write checkpoint `step`, point `latest` at it, and drop all but the newest KEEP_CHECKPOINTS."""
        folder = write_checkpoint(self.checkpoint(step), model, step, trainer_state)
        write_atomic(self.latest, folder.name)
        for old in sorted(self.checkpoints.glob("step_*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint folder of a run, or FileNotFoundError saying what is missing."""
    return RunDir(run_dir).latest_checkpoint()


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's dataset statistics (dataset_stats.json): env, reference scores, dataset returns, targets."""
    path = RunDir(run_dir).dataset_stats
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} missing: is {run_dir} a run directory from scripts/train_offline.py?"
        )
    return json.loads(path.read_text())


def run_targets(run_dir: str | os.PathLike) -> list[float]:
    """The run's evaluation target returns, the main one first."""
    return list(read_run_info(run_dir)["eval_targets"])


def load_policy(
    run_dir: str | os.PathLike,
    target_return: float | None = None,
    device: str = "cpu",
    acting: str | None = None,
) -> DecisionAgent:
    """The trained agent of a run (latest checkpoint), ready to act; target default: the run's first target."""
    model, _ = load_model(latest_checkpoint(run_dir), device)
    if target_return is None:
        target_return = run_targets(run_dir)[0]
    return DecisionAgent(model, target_return, acting=acting)


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (none if it does not exist), those up to `upto_step` if given."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if upto_step is None else [r for r in rows if r["step"] <= upto_step]


class MetricsLog:
    """The run's metrics: each row goes to metrics.jsonl and, as scalars, to TensorBoard (tb/), together.

    Opened for a run resumed at `resumed_step`, it drops what a killed session logged after that
    checkpoint from both (TensorBoard's purge_step), so every step is logged once. With
    `enabled=False` (the ranks other than 0 under torchrun) every call does nothing.
    """

    def __init__(self, run: RunDir, resumed_step: int = 0, enabled: bool = True):
        self.path = run.metrics
        self._writer: SummaryWriter | None = None
        if enabled:
            kept = read_metrics(self.path, resumed_step)
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            from torch.utils.tensorboard import SummaryWriter  # here: TensorBoard is slow to import

            self._writer = SummaryWriter(str(run.tb), purge_step=resumed_step or None)

    def log(self, row: dict[str, Any]) -> None:
        """Append one row ({"step": int, name: value, ...}); its numbers also become TensorBoard scalars."""
        if self._writer is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
