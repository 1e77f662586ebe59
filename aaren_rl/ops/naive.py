"""Readable reference implementations of Aaren: what the chunked and fused scans are tested against.

All are deliberately simple and slow (O(N^2) memory, or Python loops over tokens or sequences).
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


def naive_segmented_aaren(
    scores: Tensor, values: Tensor, state: tuple[Tensor, Tensor, Tensor] | None = None, *, resets: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Packed rows done the slow way: `naive_aaren` on each sequence of each row separately.

    Same signature and results as `aaren_scan(scores, values, state, resets=resets)`: a token whose
    `resets` flag is set starts a new sequence, a row's first sequence continues `state` unless its
    first token resets, and the returned state is each row's after its last sequence.
    """
    n = scores.shape[-1]
    rows, row_states = [], []
    for b in range(scores.shape[0]):
        starts = sorted({0, *resets[b].nonzero().flatten().tolist()})
        continues = state is not None and not bool(resets[b, 0])
        outputs = []
        for start, end in zip(starts, [*starts[1:], n], strict=True):
            entering = tuple(t[b] for t in state) if start == 0 and continues else None
            out, last_state = _one_sequence(scores[b, :, start:end], values[b, :, start:end], entering)
            outputs.append(out)
        rows.append(torch.cat(outputs, dim=-2))
        row_states.append(last_state)
    m, u, w = (torch.stack(t) for t in zip(*row_states, strict=True))
    return torch.stack(rows), (m, u, w)


def _one_sequence(
    scores: Tensor, values: Tensor, entering: tuple[Tensor, Tensor, Tensor] | None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Softmax attention over one sequence, scores [H, n], values [H, n, Dh], and its final state.

    An entering state (m, u, w) is one more token before the first, of score m + log u and value w / u
    (weight 0 when empty). The returned m is the max score, without gradient (a stabiliser).
    """
    n = scores.shape[-1]
    m = scores.detach().max(-1).values
    if entering is not None:
        m0, u0, w0 = entering
        m = torch.maximum(m, m0.detach())
        scores = torch.cat([(m0 + u0.log()).unsqueeze(-1), scores], dim=-1)
        state_value = torch.where(u0.unsqueeze(-1) > 0, w0 / u0.unsqueeze(-1), 0.0)
        values = torch.cat([state_value.unsqueeze(-2), values], dim=-2)
    out = naive_aaren(scores[None], values[None])[0, :, -n:]
    weights = (scores - m.unsqueeze(-1)).exp()
    return out, (m, weights.sum(-1), (weights.unsqueeze(-1) * values).sum(-2))
