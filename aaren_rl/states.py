"""Recurrent states of the backbones: what one backbone call hands to the next.

Every state type supports `reset(rows)` (rows of the batch whose episode starts again: one line in a
vectorised rollout loop), `detach()` (truncate gradients) and `nbytes` (memory held).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _rows_mask(rows: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """A bool [B] mask from a bool mask or a list of row indices."""
    rows = torch.as_tensor(rows, device=device)
    if rows.dtype == torch.bool:
        if rows.shape != (batch_size,):
            raise ValueError(
                f"reset: a boolean `rows` mask must have shape [{batch_size}], got {list(rows.shape)}"
            )
        return rows
    mask = torch.zeros(batch_size, dtype=torch.bool, device=device)
    mask[rows.long()] = True
    return mask


@dataclass(frozen=True)
class AarenState:
    """Aaren state of every layer, constant in size however many tokens were seen.

    m [L, B, H] running max of scores, u [L, B, H] denominator, w [L, B, H, Dh] numerator.
    """

    m: Tensor
    u: Tensor
    w: Tensor

    @property
    def batch_size(self) -> int:
        return self.m.shape[1]

    def layer(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.m[i], self.u[i], self.w[i]

    @classmethod
    def from_layers(cls, layers: list[tuple[Tensor, Tensor, Tensor]]) -> AarenState:
        m, u, w = zip(*layers, strict=True)
        return cls(torch.stack(m), torch.stack(u), torch.stack(w))

    def reset(self, rows: Tensor, to: AarenState | None = None) -> AarenState:
        """The same state with `rows` (bool mask [B] or indices) emptied, as if no token had been seen,
        or set to those of `to` (a backbone's `init_state`, which holds its sinks where it has them)."""
        mask = _rows_mask(rows, self.batch_size, self.m.device)
        fills = (float("-inf"), 0.0, 0.0) if to is None else (to.m, to.u, to.w)
        return AarenState(
            *(
                torch.where(mask.view(1, -1, *(1,) * (t.dim() - 2)), fill, t)
                for fill, t in zip(fills, (self.m, self.u, self.w), strict=True)
            )
        )

    def select(self, rows: Tensor) -> AarenState:
        """The state of `rows` (indices along the batch axis, repeats allowed)."""
        rows = torch.as_tensor(rows, device=self.m.device)
        return AarenState(self.m[:, rows], self.u[:, rows], self.w[:, rows])

    def detach(self) -> AarenState:
        return AarenState(self.m.detach(), self.u.detach(), self.w.detach())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.m, self.u, self.w))


@dataclass(frozen=True)
class KVCache:
    """Key/value cache of a causal Transformer: grows by one entry per token (up to an optional window).

    keys, values: one [B, H, T, Dh] tensor per layer; valid [B, T] marks the entries each row may
    attend to (False for entries from before the row's last reset).
    """

    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    valid: Tensor

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    @property
    def length(self) -> int:
        return self.valid.shape[1]

    def reset(self, rows: Tensor) -> KVCache:
        """The same cache with `rows` (bool mask [B] or indices) emptied."""
        mask = _rows_mask(rows, self.batch_size, self.valid.device)
        return KVCache(self.keys, self.values, self.valid & ~mask[:, None])

    def detach(self) -> KVCache:
        return KVCache(
            tuple(k.detach() for k in self.keys), tuple(v.detach() for v in self.values), self.valid
        )

    @property
    def nbytes(self) -> int:
        tensors = (*self.keys, *self.values, self.valid)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class LSTMState:
    """Hidden and cell state of a stacked LSTM, constant in size: h [L, B, D] and c [L, B, D]."""

    h: Tensor
    c: Tensor

    @property
    def batch_size(self) -> int:
        return self.h.shape[1]

    def reset(self, rows: Tensor) -> LSTMState:
        """The same state with `rows` (bool mask [B] or indices) zeroed, as before any token."""
        mask = _rows_mask(rows, self.batch_size, self.h.device).view(1, -1, 1)
        return LSTMState(self.h.masked_fill(mask, 0.0), self.c.masked_fill(mask, 0.0))

    def detach(self) -> LSTMState:
        return LSTMState(self.h.detach(), self.c.detach())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.h, self.c))
