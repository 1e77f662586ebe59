"""Offline training of a decision agent: `train`, a loop that reads top to bottom.

`train` takes a config (or a run directory to resume), checks the data against its env
(`agents.decision.data`), and trains on the batches of the one batcher the config makes
(`agents.decision.batching`: K-windows for the Transformer; for the Aaren agent, by `train.batching`, rows
packed with whole episodes, one whole episode per row, or K-windows entering with stored or rescanned
states). The loop draws a batch, takes one optimizer step on `action_loss` (`agents.decision.model`: masked
MSE of Box actions in [-1, 1], cross-entropy of discrete ones;
AdamW, linear warm-up, grad-norm clipping; docs/design.md, Decision agents), tells the batcher the step
(`after_step`: the stored-state refresh), logs, checkpoints, and evaluates live
(`agents.decision.evaluation`); the run directory (`agents.decision.run_dir`) holds config.yaml,
dataset_stats.json, checkpoints/, tb/ (TensorBoard), metrics.jsonl and curve.png.

Resuming restores weights, optimizer, scheduler, every RNG and the batcher's state (the packed sampler's
queue; batching=stored: the weights of the last refresh, from which the same table is rebuilt), so a
killed-and-resumed run ends with the same weights as an uninterrupted one. One process trains a run
directory at a time (its lock); a resume continues from the newest intact checkpoint, and may change only
`RESUMABLE` settings (how long, where, how it reports; not data, model, optimisation or seed). A non-finite loss or gradient (checked every step) or weight (checked
before each checkpoint) stops the run with a `DivergedError`, so `latest` stays the last finite checkpoint.

Under torchrun (`agents.decision.distributed`) the model is wrapped in DistributedDataParallel and
`train.batch_steps` makes the global batch, whose rows must split evenly across the ranks: every rank
draws the whole batch from the one seeded generator and trains on its own contiguous share of rows; the
loss divides by the real steps of the whole batch (times the world size, since DDP averages the ranks'
gradients), so the gradient, and the run, is the one-process run's (to float rounding; dropout masks
differ). lr is unchanged. Rank 0 alone writes the run directory and shows progress; logged losses are
averaged over the ranks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from agents.decision.batching import batcher_type, check_batch_splits, make_batcher
from agents.decision.checkpoint import USE_ANOTHER, CheckpointError, load_model, load_trainer_state
from agents.decision.config import (
    Config,
    ConfigError,
    apply_overrides,
    flat_keys,
    from_dict,
    read_yaml,
    writable_run_dir,
)
from agents.decision.data import TrainingData, dataset_stats, prepare_data
from agents.decision.distributed import DistContext, init_distributed
from agents.decision.evaluation import PeriodicEval, final_eval_and_curve
from agents.decision.model import (
    DecisionModel,
    DecisionModelConfig,
    ModelHyperparameters,
    action_loss,
    training_precision,
)
from agents.decision.run_dir import MetricsLog, RunDir, write_run_files
from envs.files import torch_threads
from envs.progress import progress_bar


class DivergedError(FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the message names the step and the fix."""


def build_model(cfg: Config, data: TrainingData) -> DecisionModel:
    """The configured model hyperparameters plus what the data decides (dims, horizon, action space) and
    the acting its batches train for."""
    model = DecisionModel(
        DecisionModelConfig(
            **{
                **asdict(cfg.model),
                "max_timestep": data.max_timestep,
                "obs_dim": data.dataset.obs_dim,
                "act_dim": data.dataset.act_dim,
                "action_space": data.action_space,
                "action_low": data.action_low,
                "action_high": data.action_high,
                "acting": batcher_type(cfg).acting,
            }
        )
    )
    model.set_state_stats(data.dataset.state_mean, data.dataset.state_std)
    return model


def lr_schedule(warmup_steps: int, total_steps: int, decay: str = "none"):
    """lr multiplier per step: linear warm-up to 1, then constant (reference DT, decay="none") or a
    cosine decay to 0 at `total_steps` (decay="cosine": a steadier final checkpoint in short runs)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if decay == "none":
            return 1.0
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return factor


def train(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train per `cfg` (or continue the run at `resume`, optionally with overrides); returns the run dir.

    stop_after: leave after this many steps of this session without finishing (what a kill does,
    for tests of resuming). Under torchrun every process calls this; see the module docstring.
    """
    cfg, run = _config_and_run_dir(cfg, resume, overrides)
    data = prepare_data(cfg)  # everything that can be wrong is checked before any work
    threads = torch_threads(cfg.train.threads) if cfg.train.threads else contextlib.nullcontext()
    with threads:  # train.threads applies to this run only
        dist = init_distributed(cfg.train.device, cfg.train.dist_timeout)
        try:
            with run.lock() if dist.is_main else contextlib.nullcontext():  # one writer per run directory
                return _train(cfg, data, run, dist, resume is not None, progress, stop_after)
        finally:
            dist.cleanup()


def _config_and_run_dir(
    cfg: Config | None, resume: str | Path | None, overrides: list[str] | None
) -> tuple[Config, RunDir]:
    """A new run's config and directory, or those of the run at `resume` (its config.yaml + overrides)."""
    if resume is not None:
        run = RunDir(resume)
        if not run.config.is_file():
            raise ConfigError(
                f"--resume {run.root}: no config.yaml there. Fix: pass a run directory of train_offline.py"
            )
        saved = read_yaml(run.config)
        cfg = from_dict(apply_overrides(saved, overrides or []))
        _check_resume_overrides(run, from_dict(saved), cfg)
        return cfg, run
    if cfg is None:
        raise ConfigError("train() needs a config or resume=RUN_DIR")
    run = RunDir(writable_run_dir(cfg))
    if run.checkpoints.exists():
        raise ConfigError(
            f"run directory {run.root} already holds a run. Fix: --resume {run.root} to continue it, "
            "or choose a new one with --set name=<new name> (or output_dir=...)"
        )
    return cfg, run


#: What a resumed run may change: how long it trains, where, how it reports and evaluates, and train.lr
#: (lowered, the fix for a diverged run). The rest (data, model, optimisation, seed, batching) is what
#: its checkpoints were trained with.
RESUMABLE = (
    "train.steps",
    "train.lr",
    "train.device",
    "train.threads",
    "train.dist_timeout",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_every",
    "eval.",
)


def _check_resume_overrides(run: RunDir, saved: Config, cfg: Config) -> None:
    """One ConfigError for a resume whose overrides change the run's meaning, or end it before the step
    its newest checkpoint reached."""
    before, now = flat_keys(asdict(saved)), flat_keys(asdict(cfg))
    changed = [key for key in now if now[key] != before.get(key) and not key.startswith(RESUMABLE)]
    if changed:
        given = " ".join(f"{key}={now[key]!r}" for key in changed)
        raise ConfigError(
            f"--resume {run.root}: {given} would change what the run is (it was trained with "
            f"{', '.join(f'{key}={before.get(key)!r}' for key in changed)}). A resume may change only "
            f"{', '.join(key.rstrip('.') + ('.*' if key.endswith('.') else '') for key in RESUMABLE)}. "
            f"Fix: drop those overrides, or start a new run: --config {run.config} --set name=<new name> {given}"
        )
    folders = run.checkpoint_folders()
    reached = int(folders[0].name[len("step_") :]) if folders else 0
    if cfg.train.steps < reached:
        raise ConfigError(
            f"--resume {run.root}: train.steps = {cfg.train.steps} is below step {reached}, which the run has "
            f"reached. Fix: --set train.steps=<{reached} or more>"
        )


def _train(
    cfg: Config,
    data: TrainingData,
    run: RunDir,
    dist: DistContext,
    resuming: bool,
    progress: bool,
    stop_after: int | None,
) -> Path:
    """The training loop, on every rank once config, data and process group are ready."""
    t = cfg.train
    check_batch_splits(cfg, data.dataset, dist.world_size)
    progress = progress and dist.is_main
    trainer = Trainer(cfg, data, dist, run)
    if resuming:
        trainer.resume()
    if dist.is_main:
        write_run_files(run, cfg, dataset_stats(data), trainer.batcher.layout, dist)
    with contextlib.closing(MetricsLog(run, trainer.step, enabled=dist.is_main)) as metrics:
        train_steps(cfg, data, trainer, metrics, progress, stop_after)
        if trainer.step >= t.steps and dist.is_main:  # not stopped early (stop_after), and the writing rank
            final_eval_and_curve(cfg, data, run, metrics, trainer.step, progress)
    return run.root


def train_steps(
    cfg: Config,
    data: TrainingData,
    trainer: Trainer,
    metrics: MetricsLog,
    progress: bool,
    stop_after: int | None,
) -> None:
    """Train up to train.steps (or `stop_after` steps of this session), logging, checkpointing and
    evaluating on the way."""
    t, dist = cfg.train, trainer.dist
    evaluate = PeriodicEval(cfg, data, dist, metrics, progress)
    trainer.model.train()
    bar = progress_bar(
        total=t.steps, initial=trainer.step, disable=not progress, unit="step", desc=f"train {cfg.run_name}"
    )
    losses = LossLog(metrics, dist, bar, trainer.seconds)
    end = t.steps if stop_after is None else min(t.steps, trainer.step + stop_after)
    trainer.seconds += trainer.batcher.after_step(trainer.step, metrics)  # stored: a new run's first table
    while trainer.step < end:
        tic = time.perf_counter()
        batch = trainer.batcher.sample(trainer.rng)
        loss, grad_norm = trainer.update(batch)
        trainer.seconds += time.perf_counter() - tic
        step = trainer.step
        trainer.seconds += trainer.batcher.after_step(step, metrics)
        losses.count(batch)
        bar.update(1)
        if step % t.log_every == 0 or step == t.steps:
            losses.write(step, loss, grad_norm, trainer.lr, trainer.seconds)
        if step % t.checkpoint_every == 0 or step == t.steps:
            metrics.sync()
            trainer.save()
        if t.eval_every and step % t.eval_every == 0 and step != t.steps:
            evaluate(trainer.model, step)
    bar.close()


class Trainer:
    """The model (DDP-wrapped under torchrun), AdamW, the lr schedule, the generator of the batches, the
    batcher (`agents.decision.batching`), the step and the training seconds: what one update changes and a
    checkpoint of `run` saves and restores."""

    def __init__(self, cfg: Config, data: TrainingData, dist: DistContext, run: RunDir):
        t = cfg.train
        # DDP starts every rank from rank 0's weights; the per-rank torch seeds only make the ranks'
        # dropout masks differ.
        torch.manual_seed(t.seed + dist.rank)
        self.model = build_model(cfg, data).to(dist.device)
        self.net = DDP(self.model) if dist.world_size > 1 else self.model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(t.warmup_steps, t.steps, t.lr_decay)
        )
        self.rng = np.random.default_rng(t.seed)  # draws the batches
        self.batcher = make_batcher(cfg, data.dataset, dist, self.model)
        self.precision = training_precision(t.bf16, dist.device)
        self.grad_clip, self.base_lr = t.grad_clip, t.lr
        self.dist, self.run = dist, run
        self.step = 0
        self.seconds = 0.0  # drawing batches, updates and the batcher's after_step, over all sessions
        self.last_checkpoint: Path | None = None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def update(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on `batch` (this rank's share); returns (loss, gradient norm). A non-finite
        loss or gradient on any rank stops every rank before the step, with a DivergedError."""
        with self.precision:
            loss = action_loss(self.net, batch, self.dist.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        if not self._all_finite([loss.detach(), grad_norm]):
            raise self._diverged(
                self.step + 1, f"the loss is {loss.item():g}, the gradient norm {grad_norm.item():g}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss, grad_norm

    def resume(self) -> None:
        """Continue the run from its newest intact checkpoint, if it got to one (a warning names any newer
        damaged one skipped). Rank 0, holding the run's lock, first removes the temporaries of writes a
        kill cut short, then chooses the checkpoint for every rank."""
        chosen = None
        if self.dist.is_main:
            self.run.remove_temporaries()
            chosen = self.run.newest_intact_checkpoint() if self.run.checkpoint_folders() else None
        checkpoint = self.dist.gather_objects(chosen)[0]
        if checkpoint is not None:
            self.restore(checkpoint)

    def restore(self, checkpoint: Path) -> None:
        """Continue from `checkpoint`: weights, step, optimizer, scheduler, the batches' generator, the
        batcher's state and this rank's torch RNG (a checkpoint from fewer ranks gives its states out in
        turn). Its model must be the configured one (ConfigError otherwise); the lr schedule goes on from the
        configured train.lr."""
        loaded, step = load_model(checkpoint, self.dist.device)
        check_same_model(checkpoint, loaded.config, self.model.config)
        state = load_trainer_state(checkpoint)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.rng.bit_generator.state = state["rng"]["numpy"]
            torch_ranks = state["rng"].get("torch_ranks", [state["rng"]["torch"]])
            torch.set_rng_state(torch_ranks[self.dist.rank % len(torch_ranks)])
            self.batcher.load_state_dict(state)
            self.seconds = float(state.get("seconds", 0.0))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{checkpoint / 'trainer.pt'} does not fit this run's optimizer and sampler ({exc!r})",
                USE_ANOTHER,
            ) from exc
        self.model.load_state_dict(loaded.state_dict())
        self._continue_schedule_at(self.base_lr)
        self.step, self.last_checkpoint = step, checkpoint

    def _continue_schedule_at(self, lr: float) -> None:
        """Go on with the lr schedule from base `lr`, not the saved one: train.lr may be lowered for a
        resumed session (the fix for a diverged run). Unchanged, it is the saved lr exactly."""
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["initial_lr"], group["lr"] = lr, lr * factor

    def save(self) -> None:
        """Checkpoint this step, once weights and optimizer state are finite (DivergedError otherwise, so
        `latest` stays the last finite checkpoint). Every rank calls it (their torch RNG states are
        gathered); rank 0 writes."""
        optimizer_tensors = [
            v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        ]
        if not self._all_finite([*self.model.state_dict().values(), *optimizer_tensors]):
            raise self._diverged(self.step, "the weights or the optimizer state are not finite")
        torch_ranks = self.dist.gather_objects(torch.get_rng_state())
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # The batches' generator is the same on every rank; the torch states (dropout) differ.
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch_ranks[0],
                "torch_ranks": torch_ranks,
            },
            **self.batcher.state_dict(),  # the same on every rank
            "seconds": self.seconds,
        }
        if self.dist.is_main:
            self.run.save_checkpoint(self.model, self.step, state)
        self.last_checkpoint = self.run.checkpoint(self.step)

    def _all_finite(self, tensors: Iterable[torch.Tensor]) -> bool:
        """Whether `tensors` are finite on every rank (a collective, so that all ranks stop together)."""
        local = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
        return self.dist.all_reduce_mean(local.float()) == 1.0

    def _diverged(self, step: int, what: str) -> DivergedError:
        """The error that stops a run whose numbers stopped being finite at `step`."""
        since = (
            f"continues from {self.last_checkpoint}, the last finite checkpoint; should it diverge again "
            "from there, start a new run with the lower lr"
            if self.last_checkpoint
            else "starts over, as no checkpoint was written yet"
        )
        return DivergedError(
            f"training diverged at step {step}: {what}. Fix: lower train.lr (now {self.base_lr:g}) or check "
            f"the data, then --resume {self.run.root} --set train.lr=<lower> ({since})"
        )


def check_same_model(checkpoint: Path, saved: DecisionModelConfig, configured: DecisionModelConfig) -> None:
    """A resumed run keeps its model: a ConfigError naming each model setting (or size the data decides)
    that differs from the checkpoint's, before any work."""
    before, now = saved.to_dict(), configured.to_dict()
    changed = [key for key in now if before.get(key) != now[key]]
    if not changed:
        return
    settings = {f.name for f in fields(ModelHyperparameters)}
    differences = "; ".join(
        f"{f'model.{key}' if key in settings else f'{key} (from the data)'} = {now[key]!r}, but the checkpoint "
        f"has {before.get(key)!r}"
        for key in changed
    )
    raise ConfigError(
        f"--resume: the config does not describe the model of {checkpoint}: {differences}. Fix: resume with "
        "the checkpoint's model settings (drop the --set model.* override, or undo the edit of config.yaml "
        "or the data), or start a new run under another name (--config ... --set name=<new name>)"
    )


class LossLog:
    """Training rows: the loss averaged over the ranks, lr, gradient norm, the training seconds so far
    (`Trainer.seconds`: batches, updates and state refreshes, not checkpoints or evaluations) and the
    tokens per training second since the previous row; also shown on the progress bar."""

    def __init__(self, metrics: MetricsLog, dist: DistContext, bar: tqdm, seconds: float):
        self.metrics, self.dist, self.bar = metrics, dist, bar
        self.tokens, self.seconds = 0, seconds

    def count(self, batch: dict) -> None:
        self.tokens += 3 * batch["num_real"]  # R, s and a tokens per real step

    def write(
        self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float, seconds: float
    ) -> None:
        """Log one row at `seconds` of training (every rank calls it: the loss is averaged with a
        collective)."""
        tok_s = self.tokens / max(seconds - self.seconds, 1e-9)
        loss_value = self.dist.all_reduce_mean(loss.detach())
        self.metrics.log(
            {
                "step": step,
                "train/loss": loss_value,
                "train/lr": lr,
                "train/grad_norm": float(grad_norm),
                "train/tokens_per_s": tok_s,
                "train/seconds": seconds,
            }
        )
        self.bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
        self.tokens, self.seconds = 0, seconds
