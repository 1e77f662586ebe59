"""Training batches of the decision agent: one `Batcher` per way of forming them, made by `make_batcher`.

A batch holds about `train.batch_steps` supervised timesteps for either backbone (`batch_layout`), and
what it is depends on the backbone, so that training sees what acting will do:
- `WindowBatcher` (the Transformer, reference DT; the LSTM's `train.batching` = "windows"):
  round(batch_steps / K) windows of K = `model.context_steps` timesteps starting at uniformly drawn dataset
  rows, right-padded at episode ends, each from an empty context (acting re-runs the last K steps).
- `PackedBatcher` (Aaren, `train.batching` = "packed", the default): rows as long as the longest episode,
  round(batch_steps / that) of them (at least one), packed end to end with whole episodes from their first
  step (`PackedSampler`: shuffled passes over the episodes, so every dataset step is supervised equally
  often, with little padding at row ends). The episode starts reset the scan ("resets"), so each episode
  is trained exactly as if run alone; the recurrent state while acting summarises the episode from its
  start, and whole episodes train exactly that. With long episodes a batch holds few of them.
- `EpisodesBatcher` ("episodes", every backbone): the same whole episodes, one per row, right-padded to
  the longest of the batch (each rank's share: of its own rows), drawn with replacement in proportion to
  their length (every dataset step equally likely), as many as hold batch_steps steps on average
  (round(batch_steps * sum(L) / sum(L^2)), at least one). No resets: each row's padding is what `packed`
  removes, at the price of fewer episodes per batch. The padding comes after an episode's steps, so it never reaches their outputs (under the
  Transformer's causal mask too: its context is then the whole episode from its first step).
- `StoredBatcher` (Aaren, "stored") and `PrefixBatcher` ("prefix"): the Transformer's
  K-windows, each entering with the backbone state of its episode's earlier steps
  (`agents.decision.entering`): read from a table of states (one every `train.state_grid` steps, default
  K) that one scan over the dataset rewrites every `train.state_refresh_every` steps and run on exactly to
  the window's start ("stored": stale by up to that
  interval; metrics.jsonl's state/* rows measure it on a fixed probe batch just before each refresh), or
  rescanned from the episode start every step ("prefix", exact).

Every batcher answers the same few calls, so the training loop never asks which one it has: `layout` (the
global batch's rows and steps per row), `sample(rng)` (this rank's share of one batch as the tensors
`action_loss` takes), `after_step(step, metrics)` (after each update, and before a session's first batch)
and `state_dict` / `load_state_dict` (the entries a checkpoint's trainer state keeps for it: the packed
sampler's queue as "sampler", the stored table's refresh as "stored_states"). `batcher_type` is the one
place the configured backbone and `train.batching` decide the batching, and `check_batching` refuses a
`train.batching` the backbone does not train with. The LSTM trains on whole episodes or on K-windows from
the empty state only: it cannot restart inside a packed row, nor enter a window with a stored or
rescanned state, without changing the method. The Transformer trains on whole episodes with "episodes" and
on K-windows from an empty context with any other value (the reference DT).

Under torchrun every rank draws the whole global batch from the one seeded generator and takes its own
contiguous share of rows (stored: every rank keeps the same table, and scans its share's burn-ins); the
batch's "num_real" counts the real steps of the whole global batch.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np
import torch

from agents.common.overrides import ConfigError
from agents.decision.distributed import DistContext
from agents.decision.entering import EnteringStates, PrefixStates, StoredStates, scanning, state_gap
from agents.decision.model import DecisionModel, action_loss, training_precision
from envs import OfflineDataset
from envs.datasets import PackedBatch, SequenceBatch

if TYPE_CHECKING:
    from agents.decision.config import Config
    from agents.decision.run_dir import MetricsLog

#: The per-step arrays of a batch that become its tensors.
STEP_KEYS = ("returns_to_go", "observations", "actions", "timesteps", "mask")
#: The probe batch of batching=stored (fixed windows on which staleness is measured) comes from its own
#: generator, seeded with (train.seed, PROBE_STREAM), so it leaves the training batches as they are.
PROBE_STREAM = 1


class BatchLayout(NamedTuple):
    """The global batch's shape: `rows` rows of `row_steps` steps each."""

    rows: int
    row_steps: int


def batch_tensors(
    batch: SequenceBatch, share: slice, device: torch.device, entering: EnteringStates | None = None
) -> dict:
    """The `share` of a batch's rows as the tensors `action_loss` takes, with each window's entering
    "state" from `entering` if given; "num_real" counts the real steps of the whole batch."""
    tensors = {k: torch.as_tensor(getattr(batch, k)[share], device=device) for k in STEP_KEYS}
    if entering is not None:
        tensors["state"] = entering(batch.episode_index[share], batch.start_step[share])
    return {**tensors, "num_real": int(batch.mask.sum())}


class Batcher(ABC):
    """Draws the training batches of one kind (see the module docstring for the calls and the kinds)."""

    #: What a row is, as the error for a batch that does not split across the processes names it.
    rows_are: ClassVar[str] = "windows of"
    #: How a model trained on these batches acts (`DecisionModelConfig.acting`): as it was trained.
    acting: ClassVar[str] = "recurrent"

    def __init__(
        self, cfg: Config, dataset: OfflineDataset, dist: DistContext, model: DecisionModel | None = None
    ):
        self.dataset, self.dist, self.model = dataset, dist, model  # the model being trained
        self.layout = self.layout_of(cfg, dataset)

    @classmethod
    def row_steps(cls, cfg: Config, dataset: OfflineDataset) -> int:
        """Steps per row: K-windows."""
        return cfg.model.context_steps

    @classmethod
    def steps_per_row(cls, cfg: Config, dataset: OfflineDataset) -> float:
        """The steps a row counts for when `train.batch_steps` is split into rows: `row_steps`."""
        return cls.row_steps(cfg, dataset)

    @classmethod
    def layout_of(cls, cfg: Config, dataset: OfflineDataset) -> BatchLayout:
        """Rows of `row_steps` steps, as many as come nearest to `train.batch_steps` steps
        (`steps_per_row` each), at least one."""
        rows = max(1, round(cfg.train.batch_steps / cls.steps_per_row(cfg, dataset)))
        return BatchLayout(rows, cls.row_steps(cfg, dataset))

    def sample(self, rng: np.random.Generator) -> dict:
        """This rank's share of the rows of one global batch drawn with `rng`, as tensors on its device."""
        batch = self.draw(rng)
        size = len(batch.mask) // self.dist.world_size
        return self.tensors(batch, slice(self.dist.rank * size, (self.dist.rank + 1) * size))

    @abstractmethod
    def draw(self, rng: np.random.Generator) -> SequenceBatch:
        """The whole global batch, as arrays (the same on every rank)."""

    @abstractmethod
    def tensors(self, batch: SequenceBatch, share: slice) -> dict:
        """The `share` of `batch`'s rows as tensors (`batch_tensors`, and what this kind adds)."""

    def after_step(self, step: int, metrics: MetricsLog) -> float:
        """Called with the step the weights are at, after each update and before a session's first batch;
        returns the seconds it spent on training work (counted as training time). Nothing here."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        """The entries this batcher adds to a checkpoint's trainer state (the same on every rank)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (a batcher without state)
        """Continue from a checkpoint's trainer state (which holds `state_dict`'s entries)."""


class WindowBatcher(Batcher):
    """K-windows from uniformly drawn dataset rows, each entering with `entering`'s state of its episode's
    earlier steps; None (the Transformer's windows, the LSTM's batching=windows): an empty context."""

    entering: EnteringStates | None = None
    acting = "window"

    def draw(self, rng: np.random.Generator) -> SequenceBatch:
        return self.dataset.sample_windows(rng, *self.layout)

    def tensors(self, batch: SequenceBatch, share: slice) -> dict:
        return batch_tensors(batch, share, self.dist.device, self.entering)


class PrefixBatcher(WindowBatcher):
    """Aaren, batching=prefix: K-windows entering with their exact state, rescanned every step."""

    acting = "recurrent"  # the windows enter with their episode's state, as recurrent acting carries it

    def __init__(self, cfg: Config, dataset: OfflineDataset, dist: DistContext, model: DecisionModel):
        super().__init__(cfg, dataset, dist, model)
        self.entering = PrefixStates(model, dataset)


class StoredBatcher(WindowBatcher):
    """Aaren, batching=stored: K-windows entering with states from a table refreshed every
    `train.state_refresh_every` steps; before each refresh rank 0 logs how stale the old table got on a
    fixed probe batch. Its checkpoint entry is the step and the weights of the last refresh, from which the
    same table is rebuilt."""

    acting = "recurrent"  # the windows enter with their episode's state, as recurrent acting carries it

    def __init__(self, cfg: Config, dataset: OfflineDataset, dist: DistContext, model: DecisionModel):
        super().__init__(cfg, dataset, dist, model)
        grid = cfg.train.state_grid or cfg.model.context_steps
        self.entering: StoredStates = StoredStates(model, dataset, grid=grid)
        self.probe = dataset.sample_windows(
            np.random.default_rng([cfg.train.seed, PROBE_STREAM]), *self.layout
        )
        self.refresh_every, self.total_steps = cfg.train.state_refresh_every, cfg.train.steps
        self.precision = training_precision(cfg.train.bf16, dist.device)

    def after_step(self, step: int, metrics: MetricsLog) -> float:
        """The first table, then a new one every refresh interval (its seconds returned), once rank 0 has
        logged how stale the old one got (`staleness`, not timed). At the last step the old table is
        measured only: no batch would use a new one."""
        stored = self.entering
        if stored.refreshed_at is not None:
            if step < stored.refreshed_at + self.refresh_every:
                return 0.0
            if self.dist.is_main:
                metrics.log({"step": step, **self.staleness(step)})
            if step >= self.total_steps:
                return 0.0
        tic = time.perf_counter()
        stored.refresh(step)
        return time.perf_counter() - tic

    def staleness(self, step: int) -> dict[str, float]:
        """How stale the stored states are at `step` on the probe batch: `state_gap` between its stored and
        rescanned (exact) entering states, and the loss (dropout off) with each, as state/* metrics."""
        assert self.entering.refreshed_at is not None
        stale = batch_tensors(self.probe, slice(None), self.dist.device, self.entering)
        exact = PrefixStates(self.model, self.dataset)
        fresh = {**stale, "state": exact(self.probe.episode_index, self.probe.start_step)}
        with scanning(self.model), self.precision:
            loss_stale, loss_fresh = (float(action_loss(self.model, b)) for b in (stale, fresh))
        gap = state_gap(stale["state"], fresh["state"], self.probe.start_step)
        return {
            "state/age": step - self.entering.refreshed_at,
            **{f"state/{key}": value for key, value in gap.items()},
            "state/loss_stale": loss_stale,
            "state/loss_fresh": loss_fresh,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"stored_states": self.entering.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Rebuild the table of the checkpoint's last refresh; a trainer state without one leaves it to the
        first `after_step`, which refreshes from the restored weights."""
        if "stored_states" in state:
            self.entering.load_state_dict(state["stored_states"])


class PackedBatcher(Batcher):
    """Aaren, batching=packed: rows as long as the longest episode packed with whole episodes
    (`PackedSampler`), with "resets" on each episode's first step. Its checkpoint entry is the sampler's
    queue."""

    rows_are = "rows of the longest episode's"

    def __init__(
        self, cfg: Config, dataset: OfflineDataset, dist: DistContext, model: DecisionModel | None = None
    ):
        super().__init__(cfg, dataset, dist, model)
        self.sampler = PackedSampler(dataset, *self.layout)

    @classmethod
    def row_steps(cls, cfg: Config, dataset: OfflineDataset) -> int:
        """Steps per row: the longest episode."""
        return int(dataset.episode_lengths.max())

    def draw(self, rng: np.random.Generator) -> PackedBatch:
        return self.sampler.sample(rng)

    def tensors(self, batch: PackedBatch, share: slice) -> dict:
        resets = torch.as_tensor(batch.resets[share], device=self.dist.device)
        return {**batch_tensors(batch, share, self.dist.device), "resets": resets}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


class EpisodesBatcher(Batcher):
    """Every backbone, batching=episodes: whole episodes from their first step, one per row, drawn with replacement
    in proportion to their length (so every dataset step is equally likely, as under DT's row sampling),
    as many as hold `train.batch_steps` steps on average; each rank's share is right-padded to its
    longest episode."""

    rows_are = "episodes of at most"

    @classmethod
    def row_steps(cls, cfg: Config, dataset: OfflineDataset) -> int:
        """Steps per row at most: the longest episode."""
        return int(dataset.episode_lengths.max())

    @classmethod
    def steps_per_row(cls, cfg: Config, dataset: OfflineDataset) -> float:
        """What a row holds on average: the mean length of an episode drawn in proportion to its length,
        sum(L^2) / sum(L) (above the plain mean wherever lengths differ: 4.8x on a mix of short random
        and full-length episodes)."""
        lengths = dataset.episode_lengths.astype(np.float64)
        return float((lengths**2).sum() / lengths.sum())

    def draw(self, rng: np.random.Generator) -> SequenceBatch:
        lengths = self.dataset.episode_lengths
        episodes = rng.choice(self.dataset.num_episodes, size=self.layout.rows, p=lengths / lengths.sum())
        return self.dataset.get_episodes(episodes)

    def tensors(self, batch: SequenceBatch, share: slice) -> dict:
        """The share's episodes padded to the longest of them, not of the whole batch."""
        mine = self.dataset.get_episodes(batch.episode_index[share])
        return {**batch_tensors(mine, slice(None), self.dist.device), "num_real": int(batch.mask.sum())}


class PackedSampler:
    """Batches of ``rows`` rows of ``row_steps`` steps packed with whole episodes, under which every
    dataset step is supervised equally often (as under uniform row sampling), with little padding.

    Episodes come from a stream of shuffled passes over the dataset, each pass holding every episode
    once. A batch fills its rows first-fit in stream order, looking up to ``lookahead`` episodes past
    ones that do not fit the space left; those stay at the head of the queue for the next batch, where
    they fit (``row_steps`` is at least the longest episode), so none is dropped or cut. The queue is
    the sampler's state (``state_dict``, for resuming); the shuffles come from the caller's generator.
    """

    def __init__(self, dataset: OfflineDataset, rows: int, row_steps: int, lookahead: int = 64):
        longest = int(dataset.episode_lengths.max())
        if rows < 1 or row_steps < longest:
            raise ValueError(
                f"PackedSampler needs rows >= 1 and row_steps >= the longest episode ({longest}), "
                f"got rows={rows}, row_steps={row_steps}"
            )
        self.dataset, self.rows, self.row_steps, self.lookahead = dataset, rows, row_steps, lookahead
        self.queue: list[int] = []  # episodes drawn from the stream and not yet packed, in stream order

    def sample(self, rng: np.random.Generator) -> PackedBatch:
        """The next batch; ``rng`` shuffles each new pass over the episodes."""
        lengths = self.dataset.episode_lengths
        shortest = int(lengths.min())
        free = np.full(self.rows, self.row_steps)
        packed: list[list[int]] = [[] for _ in range(self.rows)]
        skipped: list[int] = []
        taken = 0
        while len(skipped) < self.lookahead and free.max() >= shortest:
            if taken == len(self.queue):
                self.queue.extend(rng.permutation(self.dataset.num_episodes).tolist())
            episode = self.queue[taken]
            taken += 1
            room = np.flatnonzero(free >= lengths[episode])
            if room.size:
                packed[room[0]].append(episode)
                free[room[0]] -= lengths[episode]
            else:
                skipped.append(episode)
        self.queue = skipped + self.queue[taken:]
        return self.dataset.pack_episodes(packed, self.row_steps)

    def state_dict(self) -> dict[str, list[int]]:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, list[int]]) -> None:
        """Continue from a saved ``state_dict``; ValueError if it cannot be this dataset's."""
        queue = state["queue"]
        if not isinstance(queue, list) or not all(
            isinstance(e, int) and 0 <= e < self.dataset.num_episodes for e in queue
        ):
            raise ValueError(
                f"a packed sampler's queue must list episodes of this dataset, got {queue!r:.80}"
            )
        self.queue = list(queue)


#: The Aaren agent's batchers by `train.batching`: whole episodes, packed in rows or one a row, or K-windows
#: whose entering state is stored (refreshed periodically) or rescanned from the prefix at every step.
AAREN_BATCHERS: dict[str, type[Batcher]] = {
    "packed": PackedBatcher,
    "episodes": EpisodesBatcher,
    "stored": StoredBatcher,
    "prefix": PrefixBatcher,
}
BATCHINGS = tuple(AAREN_BATCHERS)
#: The LSTM's batchers by `train.batching`: whole episodes one a row, or K-windows from the empty state.
LSTM_BATCHERS: dict[str, type[Batcher]] = {"episodes": EpisodesBatcher, "windows": WindowBatcher}
#: The batchers of the backbones that refuse a `train.batching` they do not train with, and why each has
#: only its own (for the error naming another).
BACKBONE_BATCHERS: dict[str, dict[str, type[Batcher]]] = {"aaren": AAREN_BATCHERS, "lstm": LSTM_BATCHERS}
WHY_ONLY = {
    "aaren": "acting carries every earlier step of the episode, so its windows enter with that state",
    "lstm": "an LSTM cannot restart inside a packed row, nor enter a window with a stored or rescanned state",
}
#: The Transformer's batchers apart from its K-windows from an empty context (every other `train.batching`):
#: whole episodes one a row, so that its context is the whole episode from its first step.
TRANSFORMER_BATCHERS: dict[str, type[Batcher]] = {"episodes": EpisodesBatcher}
#: Every `train.batching` value.
ALL_BATCHINGS = tuple(dict.fromkeys(name for own in BACKBONE_BATCHERS.values() for name in own))


def batcher_type(cfg: Config) -> type[Batcher]:
    """The batching `cfg` trains with, the one place it is decided: Aaren's and the LSTM's by
    `train.batching` (`check_batching` has refused one they do not train with), the Transformer's whole
    episodes for "episodes" and K-windows from an empty context for any other value."""
    own = BACKBONE_BATCHERS.get(cfg.model.backbone)
    if own is None:
        return TRANSFORMER_BATCHERS.get(cfg.train.batching, WindowBatcher)
    return own[cfg.train.batching]


def check_batching(cfg: Config) -> None:
    """A ConfigError naming model.backbone, train.batching and the fix when the backbone does not train
    with that batching."""
    backbone, batching = cfg.model.backbone, cfg.train.batching
    own = BACKBONE_BATCHERS.get(backbone, {})
    if own and batching not in own:
        raise ConfigError(
            f"train.batching = {batching!r} is impossible with model.backbone = {backbone!r}, which trains "
            f"with train.batching in {list(own)} only ({WHY_ONLY[backbone]}). Fix: --set "
            f"train.batching={next(iter(own))} (or another of those), or another model.backbone"
        )


def make_batcher(
    cfg: Config, dataset: OfflineDataset, dist: DistContext, model: DecisionModel | None = None
) -> Batcher:
    """The batcher of `cfg` on `dataset` for this process; `model` (the one being trained) is what the
    stored and prefix windows scan their entering states with, and the other batchers do not need it."""
    return batcher_type(cfg)(cfg, dataset, dist, model)


def batch_layout(cfg: Config, dataset: OfflineDataset) -> BatchLayout:
    """The global batch's (rows, steps per row) that `cfg` trains with on `dataset`."""
    return batcher_type(cfg).layout_of(cfg, dataset)


def check_batch_splits(cfg: Config, dataset: OfflineDataset, world_size: int) -> None:
    """The global batch's rows must split evenly across the processes: a ConfigError naming a
    train.batch_steps that does."""
    kind = batcher_type(cfg)
    rows, row_steps = kind.layout_of(cfg, dataset)
    if rows % world_size:
        fix = round(-(-rows // world_size) * world_size * kind.steps_per_row(cfg, dataset))
        raise ConfigError(
            f"train.batch_steps = {cfg.train.batch_steps} makes a global batch of {rows} {kind.rows_are} "
            f"{row_steps} steps, which does not split evenly across {world_size} processes. Fix: "
            f"train.batch_steps={fix}, or another --nproc_per_node"
        )
