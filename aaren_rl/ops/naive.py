"""Readable reference implementations of Aaren: what the fast scan is tested against.

Both are deliberately simple and slow (O(N^2) memory, or a Python loop over tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_aaren(scores: Tensor, values: Tensor) -> Tensor:
    """Many-to-many attention of one query by masked softmax: out[..., k, :] = softmax(scores[..., :k+1]) @ values[..., :k+1, :].

    scores [B, H, N], values [B, H, N, Dh] -> [B, H, N, Dh].
    """
    n = scores.shape[-1]
    causal = torch.ones(n, n, dtype=torch.bool, device=scores.device).tril()
    logits = scores.unsqueeze(-2).expand(*scores.shape[:-1], n, n).masked_fill(~causal, float("-inf"))
    return torch.softmax(logits, dim=-1) @ values


def recurrent_aaren(
    scores: Tensor, values: Tensor, state: tuple[Tensor, Tensor, Tensor] | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Token-by-token Aaren recurrence (running max m, denominator u, numerator w), as in the paper.

    Same signature and state as `aaren_rl.functional.aaren_scan`.
    """
    if state is None:
        m = scores.new_full(scores.shape[:-1], float("-inf"))
        u = scores.new_zeros(scores.shape[:-1])
        w = values.new_zeros(values.shape[:-2] + values.shape[-1:])
    else:
        m, u, w = state
    outputs = []
    for k in range(scores.shape[-1]):
        s, v = scores[..., k], values[..., k, :]
        m_new = torch.maximum(m, s)
        decay, weight = torch.exp(m - m_new), torch.exp(s - m_new)
        u = u * decay + weight
        w = w * decay.unsqueeze(-1) + v * weight.unsqueeze(-1)
        m = m_new
        outputs.append(w / u.unsqueeze(-1))
    return torch.stack(outputs, dim=-2), (m, u, w)
