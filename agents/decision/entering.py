"""Entering states of K-windows for the Aaren agent (train.batching "stored" and "prefix").

A K-window drawn anywhere in an episode (the Transformer's window sampling) is trained by the Aaren agent
from the backbone state its episode's earlier steps leave, which is what acting carries into that step.
Both ways of getting that state are no-grad scans with dropout off (the state acting would have), exact
because a scan continued from a state equals one call over the whole sequence:
- `PrefixStates`: each window's episode prefix is scanned with the current weights at every step: exact,
  and the cost grows with the prefix (about half an episode per window on average).
- `StoredStates`: one scan over the whole dataset writes the state at every `grid`-th step of every
  episode (`agents.decision.batching.StoredBatcher` redoes it every `train.state_refresh_every` steps); a
  window starting at step p enters with the stored state at the grid point g <= p, run on exactly
  (burn-in, fewer than `grid` steps, current weights) to p. Storing only every `grid`-th state bounds the
  table to about N / grid states (N dataset steps); the burn-in costs less than the window's own forward.
  The stored part is stale by up to the refresh interval: `state_gap` measures how far it is from the
  fresh state.

Batched runs of different lengths share one backbone call: rows are left-padded, and padding steps are
ignored (`DecisionModel.forward(ignore=...)`), so each row's state is its real steps' alone.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from aaren_rl import AarenState
from agents.decision.model import DecisionModel
from envs import OfflineDataset

#: Tokens per call of a refresh scan: bounds its memory whatever the dataset size.
REFRESH_TOKENS_PER_CALL = 1 << 16


@contextlib.contextmanager
def scanning(model: DecisionModel) -> Iterator[None]:
    """No gradient and no dropout for the block (entering states are what acting would carry); the
    model's training mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def empty_states(model: DecisionModel, batch_size: int) -> AarenState:
    """The empty state (no step seen) of `batch_size` rows, on the model's device and in its dtype."""
    weight = next(model.parameters())
    return model.init_state(batch_size, weight.device, weight.dtype)


def scan_steps(
    model: DecisionModel, dataset: OfflineDataset, rows: np.ndarray, lengths: np.ndarray, state: AarenState
) -> AarenState:
    """The backbone state after `lengths[i]` dataset steps from flat row `rows[i]` on, entering with row i
    of `state`, in one backbone call (rows left-padded to the longest; a row of length 0 keeps its state).
    Each run must stay inside its episode. Call it under `scanning`."""
    rows, lengths = np.asarray(rows, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    ends = dataset.episode_ends
    outside = (rows < 0) | (rows >= ends[-1]) | (lengths < 0)
    if outside.any() or np.any(rows + lengths > ends[np.searchsorted(ends, rows, side="right")]):
        raise ValueError("scan_steps: every run must start in an episode and end by that episode's end")
    longest = int(lengths.max(initial=0))
    if longest == 0:
        return state
    column = np.arange(longest) - (longest - lengths)[:, None]  # step within the run; < 0 on padding
    idx = rows[:, None] + np.maximum(column, 0)  # padding repeats the first step (finite; ignored)
    device = state.m.device
    steps = {
        name: torch.as_tensor(getattr(dataset, name)[idx], device=device)
        for name in ("returns_to_go", "observations", "actions", "timesteps")
    }
    padding = torch.as_tensor(column < 0, device=device)
    _, new = model(
        steps["returns_to_go"],
        steps["observations"],
        steps["actions"],
        steps["timesteps"],
        state,
        ignore=padding if bool(padding.any()) else None,
    )
    moved = torch.as_tensor(lengths > 0, device=device)
    return AarenState(
        torch.where(moved[None, :, None], new.m, state.m),
        torch.where(moved[None, :, None], new.u, state.u),
        torch.where(moved[None, :, None, None], new.w, state.w),
    )


class PrefixStates:
    """Entering states recomputed exactly for every batch: a no-grad scan of each window's episode
    prefix with the current weights."""

    def __init__(self, model: DecisionModel, dataset: OfflineDataset):
        self.model, self.dataset = model, dataset

    def __call__(self, episodes: np.ndarray, starts: np.ndarray) -> AarenState:
        """The state entering each window: episode `episodes[i]`'s steps before step `starts[i]`."""
        with scanning(self.model):
            rows = self.dataset.episode_starts[episodes]
            return scan_steps(self.model, self.dataset, rows, starts, empty_states(self.model, len(starts)))


class StoredStates:
    """Entering states from a table of the backbone states at every `grid`-th step of every episode
    (see the module docstring). `refresh` rewrites the table; `state_dict` (the step and the weights of
    the last refresh) is what rebuilds the same table on resume."""

    def __init__(self, model: DecisionModel, dataset: OfflineDataset, grid: int):
        if grid < 1:
            raise ValueError(f"StoredStates needs grid >= 1 (steps between stored states), got {grid}")
        self.model, self.dataset, self.grid = model, dataset, grid
        counts = -(-dataset.episode_lengths // grid)  # grid points 0, grid, ... before each episode's end
        self.first = np.cumsum(counts) - counts  # each episode's first row in the table
        self.counts = counts
        self.table: AarenState | None = None  # [L, G, H(, Dh)]: one row per grid point
        self.refreshed_at: int | None = None  # the optimizer step of the last refresh
        self.weights: dict[str, Tensor] | None = None  # a CPU copy of the weights it used

    def refresh(self, step: int, weights: dict[str, Tensor] | None = None) -> None:
        """Rewrite the table by one no-grad scan over every episode, with the model's current weights or,
        given `weights` (a `state_dict`'s), with those (what resuming does), and note `step`."""
        model = self.model
        if weights is not None:
            model = copy.deepcopy(self.model)
            model.load_state_dict(weights)
        self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        with scanning(model):
            self.table = self._scan(model)
        self.refreshed_at = step

    def _scan(self, model: DecisionModel) -> AarenState:
        """The table: episodes longest first, in groups of bounded size; each call runs `grid` steps of
        the episodes that reach the next grid point, continuing from the states at the previous one."""
        ds, grid = self.dataset, self.grid
        table = empty_states(model, int(self.counts.sum()))
        order = np.argsort(-ds.episode_lengths, kind="stable")
        group = max(1, REFRESH_TOKENS_PER_CALL // (3 * grid))
        for i in range(0, len(order), group):
            episodes = order[i : i + group]
            state = empty_states(model, len(episodes))  # grid point 0 is the empty state, as in the table
            for k in range(1, int(self.counts[episodes[0]])):
                n = int(np.count_nonzero(self.counts[episodes] > k))  # the longest first: a prefix
                rows = ds.episode_starts[episodes[:n]] + (k - 1) * grid
                state = scan_steps(model, ds, rows, np.full(n, grid), state.select(np.arange(n)))
                at = torch.as_tensor(self.first[episodes[:n]] + k, device=table.m.device)
                table.m[:, at], table.u[:, at], table.w[:, at] = state.m, state.u, state.w
        return table

    def __call__(self, episodes: np.ndarray, starts: np.ndarray) -> AarenState:
        """The state entering each window: the stored state at the grid point at or before `starts[i]`
        in episode `episodes[i]`, run on to `starts[i]` with the current weights."""
        if self.table is None:
            raise RuntimeError("StoredStates: refresh() before asking for entering states")
        point = np.asarray(starts) // self.grid
        with scanning(self.model):
            stored = self.table.select(self.first[episodes] + point)
            rows = self.dataset.episode_starts[episodes] + point * self.grid
            return scan_steps(self.model, self.dataset, rows, starts - point * self.grid, stored)

    def state_dict(self) -> dict:
        return {"refreshed_at": self.refreshed_at, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the table of a saved `state_dict`: the same weights give the same table."""
        self.refresh(int(state["refreshed_at"]), state["weights"])


#: Where a K-window's entering state comes from.
EnteringStates = StoredStates | PrefixStates


def state_gap(stale: AarenState, fresh: AarenState, starts: np.ndarray) -> dict[str, float]:
    """How far `stale` entering states are from `fresh` ones, over the windows that have a prefix
    (starts > 0; at an episode's start both are empty): per layer, window and head, the relative distance
    of the attention readouts w / u (what the next token mixes with) and the absolute difference of the
    log-normalisers m + log u (how much weight the prefix keeps against the next token), averaged."""
    rows = torch.as_tensor(np.flatnonzero(np.asarray(starts) > 0), device=fresh.m.device)
    if rows.numel() == 0:
        return {"readout_gap": 0.0, "log_norm_gap": 0.0}
    a, b = stale.select(rows), fresh.select(rows)
    readout_a, readout_b = a.w / a.u.unsqueeze(-1), b.w / b.u.unsqueeze(-1)
    rel = (readout_a - readout_b).norm(dim=-1) / readout_b.norm(dim=-1)
    log_norm = (a.m + a.u.log() - b.m - b.u.log()).abs()
    return {"readout_gap": float(rel.mean()), "log_norm_gap": float(log_norm.mean())}
