"""Offline training of a decision agent: `train`, a loop that reads top to bottom.

A batch holds about `train.batch_steps` supervised timesteps for either backbone (`batch_layout`), and
what it is depends on the backbone, so that training sees what acting will do:
- Transformer (reference DT): round(batch_steps / K) windows of K = `model.context_steps` timesteps
  starting at uniformly drawn dataset rows, right-padded at episode ends (acting re-runs the last K
  steps).
- Aaren, `train.batching` = "packed": rows as long as the longest episode, round(batch_steps
  / that) of them (at least one), packed end to end with whole episodes from their first step
  (`envs.datasets.PackedSampler`: shuffled passes over the episodes, so every dataset step is supervised
  equally often, with little padding at row ends). The episode starts reset the scan (`resets`), so each
  episode is trained exactly as if run alone. The recurrent state while acting summarises the episode
  from its start; whole episodes train exactly that. With long episodes a batch holds few of them.
- Aaren, "stored" (the default) or "prefix": the Transformer's K-windows (the same sampler), each entering with the
  backbone state of its episode's earlier steps (no gradient, dropout off): rescanned from the episode
  start every step ("prefix", exact), or read from a table of states at every K-th step of every episode
  that one scan over the dataset rewrites every `train.state_refresh_every` steps, run on exactly to the
  window's start ("stored": stale by up to that interval; metrics.jsonl's state/* rows measure it on a
  fixed probe batch just before each refresh). See `agents.decision.batching`.

Loss: mean squared error between predicted and dataset actions (both scaled to [-1, 1]) over real
steps. AdamW, linear warm-up, grad-norm clipping (docs/design.md, Decision agents). The run
directory (`agents.decision.run_dir`) holds config.yaml, dataset_stats.json, checkpoints/, tb/
(TensorBoard), metrics.jsonl and curve.png. Resuming restores weights, optimizer, scheduler and
every RNG and the data sampler's queue (batching=stored: the weights of the last refresh, from which
the same table is rebuilt), so a killed-and-resumed run ends with the same weights as an uninterrupted
one. One process trains a run directory at a time (its lock); a resume continues from the newest intact
checkpoint, and must keep the model settings of that checkpoint. A non-finite loss
or gradient (checked every step) or weight (checked before each checkpoint) stops the run with a
`DivergedError`, so `latest` stays the last finite checkpoint.

Under torchrun (`agents.decision.distributed`) the model is wrapped in DistributedDataParallel and
`train.batch_steps` makes the global batch, whose rows must split evenly across the ranks: every rank
draws the whole batch from the one seeded sampler and trains on its own contiguous share of rows
(batching=stored: every rank keeps the same table of states, and scans its share's burn-ins); the loss
divides by the real steps of the whole batch (times the world size, since DDP averages the ranks'
gradients), so the gradient, and the run, is the one-process run's (to float rounding; dropout masks differ). lr is unchanged. Rank 0
alone writes the run directory and shows progress; logged losses are averaged over the ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from agents.decision.agent import DecisionAgent
from agents.decision.batching import PrefixStates, StoredStates, scanning, state_gap
from agents.decision.checkpoint import USE_ANOTHER, CheckpointError, load_model, load_trainer_state
from agents.decision.config import (
    Config,
    ConfigError,
    apply_overrides,
    dump_config,
    from_dict,
    read_yaml,
    writable_run_dir,
)
from agents.decision.distributed import DistContext, init_distributed
from agents.decision.evaluation import (
    default_targets,
    evaluate_agent,
    evaluate_run,
    merge_results,
    rank_share,
)
from agents.decision.model import DecisionModel, DecisionModelConfig, ModelHyperparameters
from agents.decision.run_dir import MetricsLog, RunDir, read_metrics
from envs import DatasetError, OfflineDataset, load_dataset, make_env, normalized_score
from envs.datasets import PackedBatch, PackedSampler, SequenceBatch
from envs.files import torch_threads, write_atomic
from envs.progress import progress_bar


class DivergedError(FloatingPointError):
    """Training produced a non-finite loss, gradient or weight; the message names the step and the fix."""


@dataclass
class TrainingData:
    """The dataset plus what the run needs to know about its environment."""

    dataset: OfflineDataset
    env: str
    action_low: list[float]
    action_high: list[float]
    max_timestep: int
    targets: list[float]
    score_ref: dict[str, Any]


def prepare_data(cfg: Config) -> TrainingData:
    """Load the dataset and check it against its env; any mismatch is one ConfigError, before any work."""
    try:
        dataset = load_dataset(cfg.data.dataset)
    except (DatasetError, FileNotFoundError) as exc:
        raise ConfigError(f"data.dataset = {cfg.data.dataset!r} cannot be loaded: {exc}") from exc
    env_name = cfg.data.env or str(dataset.metadata.get("env_id") or cfg.data.dataset)
    try:
        env = make_env(env_name)
    except Exception as exc:
        raise ConfigError(
            f"data.env = {env_name!r} cannot be made ({exc}). Fix: set data.env to the Gymnasium id or D4RL "
            "name of the task the data comes from, e.g. data.env=Hopper-v5"
        ) from exc
    try:
        obs_shape, act_space = env.observation_space.shape, env.action_space
        limit = env.spec.max_episode_steps if env.spec and env.spec.max_episode_steps else 0
    finally:
        env.close()
    if obs_shape != (dataset.obs_dim,) or act_space.shape != (dataset.act_dim,):
        raise ConfigError(
            f"data.dataset = {cfg.data.dataset!r} has observations of {dataset.obs_dim} and actions of "
            f"{dataset.act_dim} entries, but data.env = {env_name!r} has observation shape {obs_shape} and "
            f"action shape {act_space.shape}. Fix: set data.env to the task the data was collected in "
            f"(metadata env_id = {dataset.metadata.get('env_id')!r}) or use a dataset of this env."
        )
    longest = int(dataset.episode_lengths.max())
    max_timestep = cfg.model.max_timestep or max(limit, longest)
    targets = cfg.eval.targets or default_targets(env_name, float(dataset.episode_returns.max()))
    meta = dataset.metadata
    score_ref = {"env_id": env_name}
    if "ref_min_score" in meta and "ref_max_score" in meta:
        score_ref.update(
            ref_min_score=float(meta["ref_min_score"]), ref_max_score=float(meta["ref_max_score"])
        )
    return TrainingData(
        dataset,
        env_name,
        [float(x) for x in act_space.low],
        [float(x) for x in act_space.high],
        max_timestep,
        [float(t) for t in targets],
        score_ref,
    )


def dataset_stats(data: TrainingData) -> dict[str, Any]:
    """The JSON-able summary written to dataset_stats.json (also what evaluation reads back)."""
    ds = data.dataset
    try:
        score = float(np.mean(normalized_score(data.score_ref, ds.episode_returns)))
    except ValueError:
        score = None
    return {
        "source": ds.source,
        "env": data.env,
        "score_ref": data.score_ref,
        "eval_targets": data.targets,
        "num_transitions": int(ds.episode_lengths.sum()),
        "num_episodes": int(ds.num_episodes),
        "return_mean": float(ds.episode_returns.mean()),
        "return_std": float(ds.episode_returns.std()),
        "return_max": float(ds.episode_returns.max()),
        "length_mean": float(ds.episode_lengths.mean()),
        "length_max": int(ds.episode_lengths.max()),
        "score_mean": score,
        "state_mean": ds.state_mean.tolist(),
        "state_std": ds.state_std.tolist(),
        "metadata": {
            k: v.item() if isinstance(v, np.generic) else v
            for k, v in ds.metadata.items()
            if isinstance(v, (str, int, float, bool, np.generic))
        },
    }


def build_model(cfg: Config, data: TrainingData) -> DecisionModel:
    """The configured model hyperparameters plus what the data decides (dims, horizon, action bounds)."""
    model = DecisionModel(
        DecisionModelConfig(
            **{
                **asdict(cfg.model),
                "max_timestep": data.max_timestep,
                "obs_dim": data.dataset.obs_dim,
                "act_dim": data.dataset.act_dim,
                "action_low": data.action_low,
                "action_high": data.action_high,
            }
        )
    )
    model.set_state_stats(data.dataset.state_mean, data.dataset.state_std)
    return model


def packs_episodes(cfg: Config) -> bool:
    """Whether batches are rows packed with whole episodes (Aaren, batching=packed), not K-windows."""
    return cfg.model.backbone == "aaren" and cfg.train.batching == "packed"


def batch_layout(cfg: Config, dataset: OfflineDataset) -> tuple[int, int]:
    """(rows, steps per row) of the global batch for `train.batch_steps` supervised steps: rows as long as
    the longest episode (Aaren, packed) or K-windows, as many as come nearest, at least one."""
    row_steps = int(dataset.episode_lengths.max()) if packs_episodes(cfg) else cfg.model.context_steps
    return max(1, round(cfg.train.batch_steps / row_steps)), row_steps


def packed_sampler(cfg: Config, dataset: OfflineDataset) -> PackedSampler | None:
    """The Aaren agent's sampler of packed rows (None for K-windows)."""
    return PackedSampler(dataset, *batch_layout(cfg, dataset)) if packs_episodes(cfg) else None


EnteringStates = StoredStates | PrefixStates


def entering_states(cfg: Config, dataset: OfflineDataset, model: DecisionModel) -> EnteringStates | None:
    """Where the Aaren agent's K-windows get their entering states (None for packed rows and the
    Transformer, whose windows start from an empty context); see `agents.decision.batching`."""
    if cfg.model.backbone != "aaren" or cfg.train.batching == "packed":
        return None
    if cfg.train.batching == "stored":
        return StoredStates(model, dataset, grid=cfg.model.context_steps)
    return PrefixStates(model, dataset)


def sample_batch(
    cfg: Config,
    dataset: OfflineDataset,
    rng: np.random.Generator,
    device: torch.device,
    dist: DistContext,
    packer: PackedSampler | None,
    entering: EnteringStates | None = None,
) -> dict:
    """This rank's share of rows of one global batch as tensors: rows packed with whole episodes by
    `packer` (Aaren, with "resets" on each episode's first step) or K-windows, with their entering
    "state" from `entering` for the Aaren agent's windows; see the module docstring. "num_real" counts
    the real steps of the whole global batch."""
    aaren_windows = packer is None and cfg.model.backbone == "aaren"
    if (entering is not None) != aaren_windows:
        raise ValueError(
            "sample_batch takes entering states (agents.decision.training.entering_states) exactly for the Aaren "
            f"backbone's K-windows; got train.batching = {cfg.train.batching!r}, model.backbone = "
            f"{cfg.model.backbone!r}, packer {packer is not None}, entering states {entering is not None}"
        )
    if packer is not None:
        batch = packer.sample(rng)
    else:
        batch = dataset.sample_windows(rng, *batch_layout(cfg, dataset))
    size = len(batch.mask) // dist.world_size
    return batch_tensors(batch, slice(dist.rank * size, (dist.rank + 1) * size), device, entering)


def batch_tensors(
    batch: SequenceBatch, share: slice, device: torch.device, entering: EnteringStates | None = None
) -> dict:
    """The `share` of a batch's rows as the tensors `action_loss` takes (with "resets" for packed rows,
    "state" from `entering` for windows); "num_real" counts the real steps of the whole batch."""
    keys = ["returns_to_go", "observations", "actions", "timesteps", "mask"]
    keys += ["resets"] if isinstance(batch, PackedBatch) else []
    tensors = {k: torch.as_tensor(getattr(batch, k)[share], device=device) for k in keys}
    if entering is not None:
        tensors["state"] = entering(batch.episode_index[share], batch.start_step[share])
    return {**tensors, "num_real": int(batch.mask.sum())}


def action_loss(model: DecisionModel | DDP, batch: dict, world_size: int = 1) -> torch.Tensor:
    """Masked mean squared error of the predicted actions, in the [-1, 1] action scale.

    Divided by the global batch's real steps over `world_size`: DDP averages the ranks' gradients,
    so their mean is the gradient of the one-process loss over the whole batch.
    """
    pred, _ = model(
        batch["returns_to_go"],
        batch["observations"],
        batch["actions"],
        batch["timesteps"],
        batch.get("state"),
        resets=batch.get("resets"),
    )
    target = getattr(model, "module", model).unit_actions(batch["actions"])
    err = (pred.float() - target).pow(2).mean(-1)
    return (err * batch["mask"].float()).sum() / (batch["num_real"] / world_size)


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
        return from_dict(apply_overrides(read_yaml(run.config), overrides or [])), run
    if cfg is None:
        raise ConfigError("train() needs a config or resume=RUN_DIR")
    run = RunDir(writable_run_dir(cfg))
    if run.checkpoints.exists():
        raise ConfigError(
            f"run directory {run.root} already holds a run. Fix: --resume {run.root} to continue it, "
            "or choose a new one with --set name=<new name> (or output_dir=...)"
        )
    return cfg, run


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
        write_run_files(cfg, data, run, dist)
    with contextlib.closing(MetricsLog(run, trainer.step, enabled=dist.is_main)) as metrics:
        train_steps(cfg, data, trainer, metrics, progress, stop_after)
        if trainer.step >= t.steps and dist.is_main:  # not stopped early (stop_after), and the writing rank
            final_eval_and_curve(cfg, data, run, metrics, trainer.step, progress)
    return run.root


def check_batch_splits(cfg: Config, dataset: OfflineDataset, world_size: int) -> None:
    """The global batch's rows must split evenly across the processes: a ConfigError naming a
    train.batch_steps that does."""
    rows, row_steps = batch_layout(cfg, dataset)
    if rows % world_size:
        what = "rows of the longest episode's" if packs_episodes(cfg) else "windows of"
        raise ConfigError(
            f"train.batch_steps = {cfg.train.batch_steps} makes a global batch of {rows} {what} {row_steps} "
            f"steps, which does not split evenly across {world_size} processes. Fix: "
            f"train.batch_steps={-(-rows // world_size) * world_size * row_steps}, or another --nproc_per_node"
        )


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
    trainer.refresh_states(metrics)  # batching=stored: a new run's first table (a resumed run has its own)
    while trainer.step < end:
        tic = time.perf_counter()
        batch = sample_batch(
            cfg, data.dataset, trainer.rng, dist.device, dist, trainer.packer, trainer.entering
        )
        loss, grad_norm = trainer.update(batch)
        trainer.seconds += time.perf_counter() - tic
        step = trainer.step
        trainer.refresh_states(metrics)
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


#: The probe batch of batching=stored (fixed windows on which staleness is measured) comes from its own
#: generator, seeded with (train.seed, PROBE_STREAM), so it leaves the training batches as they are.
PROBE_STREAM = 1


class Trainer:
    """The model (DDP-wrapped under torchrun), AdamW, the lr schedule, the data sampler's RNG, the
    entering states of K-windows, the step and the training seconds: what one update changes and a
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
        self.rng = np.random.default_rng(t.seed)
        self.packer = packed_sampler(cfg, data.dataset)
        self.entering = entering_states(cfg, data.dataset, self.model)
        self.probe = (
            data.dataset.sample_windows(
                np.random.default_rng([t.seed, PROBE_STREAM]), *batch_layout(cfg, data.dataset)
            )
            if isinstance(self.entering, StoredStates)
            else None
        )
        self.refresh_every, self.total_steps = t.state_refresh_every, t.steps
        self.autocast = (
            torch.autocast(dist.device.type, dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext()
        )
        self.grad_clip, self.base_lr = t.grad_clip, t.lr
        self.dist, self.run = dist, run
        self.step = 0
        self.seconds = 0.0  # spent drawing batches, updating and refreshing stored states, over all sessions
        self.last_checkpoint: Path | None = None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def update(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on `batch` (this rank's share); returns (loss, gradient norm). A non-finite
        loss or gradient on any rank stops every rank before the step, with a DivergedError."""
        with self.autocast:
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

    def refresh_states(self, metrics: MetricsLog) -> None:
        """batching=stored: the first table, then a new one every train.state_refresh_every steps (timed
        as training), once rank 0 has logged how stale the old one got (`staleness`, not timed). At the
        last step the old table is measured only: no batch would use a new one."""
        stored = self.entering
        if not isinstance(stored, StoredStates):
            return
        if stored.refreshed_at is not None:
            if self.step < stored.refreshed_at + self.refresh_every:
                return
            if self.dist.is_main:
                metrics.log({"step": self.step, **self.staleness()})
            if self.step >= self.total_steps:
                return
        tic = time.perf_counter()
        stored.refresh(self.step)
        self.seconds += time.perf_counter() - tic

    def staleness(self) -> dict[str, float]:
        """How stale the stored states are on the fixed probe batch: `state_gap` between its stored and
        rescanned (exact) entering states, and the loss (dropout off) with each, as state/* metrics."""
        assert isinstance(self.entering, StoredStates) and self.probe is not None
        stale = batch_tensors(self.probe, slice(None), self.dist.device, self.entering)
        exact = PrefixStates(self.model, self.entering.dataset)
        fresh = {**stale, "state": exact(self.probe.episode_index, self.probe.start_step)}
        with scanning(self.model), self.autocast:
            loss_stale, loss_fresh = (float(action_loss(self.model, b)) for b in (stale, fresh))
        gap = state_gap(stale["state"], fresh["state"], self.probe.start_step)
        return {
            "state/age": self.step - self.entering.refreshed_at,
            **{f"state/{key}": value for key, value in gap.items()},
            "state/loss_stale": loss_stale,
            "state/loss_fresh": loss_fresh,
        }

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
        """Continue from `checkpoint`: weights, step, optimizer, scheduler, the sampler's and this rank's
        torch RNG (a checkpoint from fewer ranks gives its states out in turn). Its model must be the
        configured one (ConfigError otherwise); the lr schedule goes on from the configured train.lr."""
        loaded, step = load_model(checkpoint, self.dist.device)
        check_same_model(checkpoint, loaded.config, self.model.config)
        state = load_trainer_state(checkpoint)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.rng.bit_generator.state = state["rng"]["numpy"]
            torch_ranks = state["rng"].get("torch_ranks", [state["rng"]["torch"]])
            torch.set_rng_state(torch_ranks[self.dist.rank % len(torch_ranks)])
            if self.packer is not None:
                self.packer.load_state_dict(state["sampler"])
            self.seconds = float(state.get("seconds", 0.0))
            if isinstance(self.entering, StoredStates) and "stored_states" in state:
                self.entering.load_state_dict(state["stored_states"])  # else: refreshed from these weights
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
            # The sampler's state is the same on every rank; the torch states (dropout) differ.
            "rng": {
                "numpy": self.rng.bit_generator.state,
                "torch": torch_ranks[0],
                "torch_ranks": torch_ranks,
            },
        }
        if self.packer is not None:  # the same on every rank
            state["sampler"] = self.packer.state_dict()
        if isinstance(self.entering, StoredStates):  # the same on every rank
            state["stored_states"] = self.entering.state_dict()
        state["seconds"] = self.seconds
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


def write_run_files(cfg: Config, data: TrainingData, run: RunDir, dist: DistContext) -> None:
    """config.yaml and dataset_stats.json (with the resolved batch layout and split), written by every
    session."""
    run.root.mkdir(parents=True, exist_ok=True)
    write_atomic(run.config, dump_config(cfg))
    rows, row_steps = batch_layout(cfg, data.dataset)
    stats = {
        **dataset_stats(data),
        "batch": {"batch_steps": cfg.train.batch_steps, "rows": rows, "row_steps": row_steps},
        "distributed": {
            "world_size": dist.world_size,
            "backend": dist.backend,
            "per_rank_rows": rows // dist.world_size,
        },
    }
    write_atomic(run.dataset_stats, json.dumps(stats, indent=2))


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
