"""Aaren attention as a function: the exact many-to-many output of a single query, for every prefix.

For one head, tokens with scores s_1..s_N and values v_1..v_N, output k is

    o_k = sum_{j<=k} e^{s_j} v_j / sum_{j<=k} e^{s_j}.

The state after k tokens is (m_k, u_k, w_k): the running max of the scores, and the denominator and
numerator above scaled by e^{-m_k}. Every factor computed below is e^{x} with x <= 0, so the scan is
stable for any score range, and a state passed back in continues the sequence exactly.

How it is computed (exact, no loop over tokens or chunks, no special cases):
  1. M = running max of the scores (including the entering state's m). It only stabilises: the output
     does not depend on it, so it is treated as a constant and gradients are exact.
  2. The sequence is cut into chunks of C tokens (C ~ N^(1/3), 16..128). Inside a chunk, row k gets
     the weights e^{s_j - M_k} (j <= k, each <= 1) of a masked C x C matrix; its row sums are the
     denominators, and the matrix (scaled by 1/u_k) times the chunk's values gives the outputs:
     one batched matmul, O(N C Dh) work.
  3. The state entering each chunk comes from a small masked matmul over the N/C chunk totals
     (weights e^{r_c' - r_c} with r_c the running max at chunk ends), so all chunks are done at once.
  4. The backward is the same computation transposed (see `_ChunkedScan`), so training keeps only
     the inputs, the output and 1/u, and never builds autograd's graph of the steps above.

Packed rows (`resets`): several sequences may share a row, each starting where `resets` is set. A
token's segment is the number of resets up to it; every weight above is then also masked to pairs in
the same segment (token and row in a chunk, chunk end and chunk end, chunk end and the rows of later
chunks, the entering state and segment 0), and the running max restarts at each reset. Same matmuls,
no loop over segments: the cost of packing is a few boolean masks.

Two forms, one function (`aaren_scan`): the parallel form above, in torch operations, runs anywhere
(GPU); on a CPU the scan runs token by token in C++ instead (`_FusedScan`: the recurrent step's
arithmetic in one pass per row and head, O(N Dh) work, its reverse pass by hand), where the parallel
form's cost is mostly the dispatch of its hundred-odd small operations (docs/results.md has the timings). Both
agree with the naive softmax to float64 roundoff.
"""

from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

AarenScanState = tuple[Tensor, Tensor, Tensor]
"""(m [B, H], u [B, H], w [B, H, Dh]): running max, scaled denominator, scaled numerator."""

_NO_CONTEXT = contextlib.nullcontext()

ONE_BLOCK_MAX = 16
"""Sequences up to this length (the recurrent step, acting) are done as one block by plain autograd."""


def auto_chunk_size(n: int) -> int:
    """Chunk size near 1.6 N^(1/3) in [16, 128] (balances the in-chunk and across-chunk matmuls; measured
    fastest on CPU), nudged to divide N when a divisor is close, to avoid padding."""
    target = min(128, max(16, round(1.6 * n ** (1 / 3))))
    return min(range(max(16, target - 8), target + 9), key=lambda c: ((-n) % c, abs(c - target)))


def empty_state(
    batch_size: int, num_heads: int, head_dim: int, *, device=None, dtype: torch.dtype = torch.float32
) -> AarenScanState:
    """The empty state, before any token: m = -inf, u = 0, w = 0 (m = 0 would underflow to 0/0 for low
    scores). A backbone's `init_state` starts from it and adds the sinks where it has them."""
    m = torch.full((batch_size, num_heads), float("-inf"), device=device, dtype=dtype)
    u = torch.zeros(batch_size, num_heads, device=device, dtype=dtype)
    w = torch.zeros(batch_size, num_heads, head_dim, device=device, dtype=dtype)
    return m, u, w


def _check_inputs(
    scores: Tensor, values: Tensor, state: AarenScanState | None, resets: Tensor | None
) -> None:
    if not isinstance(scores, Tensor) or scores.dim() != 3:
        raise ValueError(f"aaren_scan: `scores` must be a tensor of shape [B, H, N], got {_describe(scores)}")
    b, h, n = scores.shape
    if not isinstance(values, Tensor) or values.dim() != 4 or tuple(values.shape[:3]) != (b, h, n):
        raise ValueError(
            f"aaren_scan: `values` must have shape [B, H, N, Dh] = [{b}, {h}, {n}, Dh] to match `scores`, "
            f"got {_describe(values)}"
        )
    if n == 0:
        raise ValueError("aaren_scan: the sequence is empty (N = 0); pass at least one token")
    for name, t in (("scores", scores), ("values", values)):
        if not t.is_floating_point():
            raise ValueError(f"aaren_scan: `{name}` must be a floating-point tensor, got dtype {t.dtype}")
    if scores.device != values.device:
        raise ValueError(f"aaren_scan: `scores` is on {scores.device} but `values` is on {values.device}")
    _check_resets(resets, scores)
    if state is None:
        return
    if not isinstance(state, (tuple, list)) or len(state) != 3:
        raise ValueError("aaren_scan: `state` must be a tuple (m [B, H], u [B, H], w [B, H, Dh]) or None")
    dh = values.shape[-1]
    for name, t, shape in (("m", state[0], (b, h)), ("u", state[1], (b, h)), ("w", state[2], (b, h, dh))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(
                f"aaren_scan: `state` entry {name} must have shape {list(shape)} for scores {list(scores.shape)} "
                f"and values {list(values.shape)}, got {_describe(t)}; pass the state returned by the previous "
                "call on the same batch, or None to start empty"
            )
        if t.device != scores.device:
            raise ValueError(
                f"aaren_scan: `state` entry {name} is on {t.device} but `scores` is on {scores.device}"
            )


def _check_resets(resets: Tensor | None, scores: Tensor) -> None:
    if resets is None:
        return
    b, _, n = scores.shape
    if not isinstance(resets, Tensor) or resets.dtype != torch.bool or tuple(resets.shape) != (b, n):
        raise ValueError(
            f"aaren_scan: `resets` must be a bool tensor of shape [B, N] = [{b}, {n}] (True where a token "
            f"starts a new sequence), got {_describe(resets)}"
        )
    if resets.device != scores.device:
        raise ValueError(f"aaren_scan: `resets` is on {resets.device} but `scores` is on {scores.device}")


def _describe(t: object) -> str:
    return f"shape {list(t.shape)} ({t.dtype})" if isinstance(t, Tensor) else type(t).__name__


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bfloat16 inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _masked_exp(logits: Tensor, cut: Tensor | None) -> Tensor:
    """exp(logits), exactly 0 where `cut` is true (set before the exp: no inf, no NaN gradient); None cuts
    nothing."""
    return logits.exp() if cut is None else logits.masked_fill(cut, float("-inf")).exp()


@functools.lru_cache(maxsize=64)
def _triangle(n: int, device: torch.device, diagonal: int = 0, upper: bool = False) -> Tensor:
    """The n x n lower (or upper) triangular bool mask, made once per size and device (a normal tensor
    even when first asked for under inference mode, since training reuses it)."""
    with torch.inference_mode(False):
        ones = torch.ones(n, n, dtype=torch.bool, device=device)
        return ones.triu(diagonal) if upper else ones.tril(diagonal)


def _future(n: int, device: torch.device) -> Tensor:
    """[n, n]: column j comes after row k (what causal attention cuts)."""
    return _triangle(n, device, 1, upper=True)


def _other_segment(seg: Tensor) -> Tensor:
    """[..., C, C]: row k and column j are in different segments."""
    return seg.unsqueeze(-1) != seg.unsqueeze(-2)


class _Cuts(NamedTuple):
    """Where the chunked scan passes nothing: causality, and in a packed row a reset in between (None:
    nothing cut). Shapes, for nc chunks of C tokens and a head axis of 1: in_chunk [B, 1, nc, C, C],
    carried and in_end_segment [B, 1, nc, C], end_to_end and end_to_later [B, 1, nc, nc], the rest
    [B, 1, nc] or [B, 1]; without resets in_chunk, end_to_end and end_to_later are the causal [C, C] and
    [nc, nc] triangles and the rest None.
    """

    in_chunk: Tensor  # [k, j]: row k does not see token j of its chunk
    carried: Tensor | None  # row k does not receive the state entering its chunk
    in_end_segment: Tensor | None  # token j does not reach the end of its chunk
    end_to_end: Tensor  # [c, c']: the end of chunk c' does not reach the end of chunk c
    end_to_later: Tensor  # [c', c]: the end of chunk c' is not the state entering chunk c
    end_from_start: Tensor | None  # the entering state does not reach chunk c's end
    enter_from_start: Tensor | None  # the entering state does not reach the start of chunk c
    end_to_final: Tensor | None  # chunk c's end does not reach the returned state
    final_from_start: Tensor | None  # the entering state does not reach the returned state


def _cuts(seg: Tensor | None, nc: int, chunk: int, device: torch.device) -> _Cuts:
    """The cuts of `_Cuts` from the segment id of every token, seg [B, 1, nc, C], or None (no resets)."""
    future, later_chunk, not_later_chunk = _future(chunk, device), _future(nc, device), _triangle(nc, device)
    if seg is None:
        return _Cuts(future, None, None, later_chunk, not_later_chunk, None, None, None, None)
    end = seg[..., -1]
    enter = F.pad(end[..., :-1], (1, 0))  # the first chunk is entered by segment 0, the entering state's
    final = end[..., -1:]
    return _Cuts(
        in_chunk=_other_segment(seg) | future,
        carried=seg != enter.unsqueeze(-1),
        in_end_segment=seg != end.unsqueeze(-1),
        end_to_end=_other_segment(end) | later_chunk,
        end_to_later=(end.unsqueeze(-1) != enter.unsqueeze(-2)) | not_later_chunk,
        end_from_start=end != 0,
        enter_from_start=enter != 0,
        end_to_final=end != final,
        final_from_start=final.squeeze(-1) != 0,
    )


def _running_max(s: Tensor, m0: Tensor, seg: Tensor | None) -> Tensor:
    """M_k: the max of the scores up to k and of m0, restarting at each reset (m0 counts before the first).

    s [B, H, N] (no gradient), m0 [B, H], seg [B, 1, N] segment ids or None. The segmented max needs no
    loop: lifting each token by its segment id times a step larger than any score difference makes
    one cumulative max never look back past a reset; the maxima are read back from the scores by index.
    """
    if seg is None:
        return torch.maximum(s.cummax(-1).values, m0.unsqueeze(-1))
    with_state = torch.cat([m0.unsqueeze(-1), s], dim=-1)  # the state as a token of segment 0
    finite = torch.where(with_state.isfinite(), with_state, 0.0).double()
    step = 2 * (finite.amax(-1, keepdim=True) - finite.amin(-1, keepdim=True)) + 1
    lifted = with_state.double() + F.pad(seg, (1, 0)) * step
    return with_state.gather(-1, lifted.cummax(-1).indices)[..., 1:]


def _exact_weights(s: Tensor, run_max: Tensor, cut: Tensor) -> Tensor:
    """[..., C, C] weights e^{s_j - M_k} of token j in row k, 0 where cut (j > k, or another segment),
    each <= 1: one exact block."""
    return _masked_exp(s.unsqueeze(-2) - run_max.unsqueeze(-1), cut)


def _rows_exact(
    s: Tensor, v: Tensor, run_max: Tensor, m_in: Tensor, u_in: Tensor, w_in: Tensor, seg: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of each row of one block, relative to the row's own running max.

    s [..., C], v [..., C, Dh], run_max [..., C] (includes m_in), entering state m_in [...], u_in [...],
    w_in [..., Dh], segment ids seg [..., C] or None. O(C^2) per block; exact for any score range.
    """
    cut = _future(s.shape[-1], s.device)
    weights = _exact_weights(s, run_max, cut if seg is None else cut | _other_segment(seg))
    carry = _masked_exp(m_in.unsqueeze(-1) - run_max, None if seg is None else seg != 0)
    num = weights @ v + carry.unsqueeze(-1) * w_in.unsqueeze(-2)
    den = weights.sum(-1) + carry * u_in.unsqueeze(-1)
    return num, den


def _scan_one_block(
    s: Tensor, v: Tensor, run_max: Tensor, m0: Tensor, u0: Tensor, w0: Tensor, seg: Tensor | None
) -> tuple[Tensor, AarenScanState]:
    """Short sequences (and the O(1) recurrent step, N = 1): one exact block, differentiated by autograd."""
    num, den = _rows_exact(s, v, run_max, m0, u0, w0, seg)
    out = num / den.unsqueeze(-1)
    return out, (run_max[..., -1], den[..., -1], num[..., -1, :])


def _chunk_views(
    s: Tensor, v: Tensor, run_max: Tensor, seg: Tensor | None, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """[B, H, nc, C] / [B, H, nc, C, Dh] views, padding the end with tokens of score -inf (weight 0) that
    continue the last token's running max and segment."""
    b, h, n = s.shape
    pad = (-n) % chunk
    if pad:
        s = F.pad(s, (0, pad), value=float("-inf"))
        v = F.pad(v, (0, 0, 0, pad))
        run_max, seg = (
            None if t is None else torch.cat([t, t[..., -1:].expand(*t.shape[:-1], pad)], -1)
            for t in (run_max, seg)
        )
    nc = (n + pad) // chunk
    seg = None if seg is None else seg.view(b, 1, nc, chunk)
    return s.view(b, h, nc, chunk), v.view(b, h, nc, chunk, v.shape[-1]), run_max.view(b, h, nc, chunk), seg


class _ChunkedScan(torch.autograd.Function):
    """The chunked scan (module docstring, steps 1-3) with a hand-written backward.

    With g_k the gradient of out_k and u_k the row denominator, the gradients are reverse scans with
    the same weights: d values_j = sum_{k>=j} e^{s_j - M_k} g_k / u_k and d scores_j = values_j .
    d values_j - sum_{k>=j} e^{s_j - M_k} (g_k . out_k) / u_k, plus the returned state's gradients as
    a row after the last. The entering state acts as one more token, of score m0. In a packed row,
    k only runs over the rows of j's segment (`_Cuts`).
    """

    @staticmethod
    def forward(
        ctx,
        s: Tensor,
        v: Tensor,
        run_max: Tensor,
        m0: Tensor,
        u0: Tensor,
        w0: Tensor,
        seg: Tensor | None,
        chunk: int,
    ):
        b, h, n = s.shape
        dh = v.shape[-1]
        s, v, run_max, seg = _chunk_views(s, v, run_max, seg, chunk)
        nc = s.shape[2]
        cuts = _cuts(seg, nc, chunk, s.device)
        chunk_max = run_max[..., -1]  # r_c
        enter_max = torch.cat([m0.unsqueeze(-1), chunk_max[..., :-1]], dim=-1)  # r_{c-1}, with r_{-1} = m0
        weights = _exact_weights(s, run_max, cuts.in_chunk)  # [b, h, nc, C, C]

        # Denominators first (scalars per row): in-chunk row sums plus the carried entering state.
        # e^{r_c' - r_c} from each chunk end c' to each later end c of the same segment
        decay = _masked_exp(chunk_max.unsqueeze(-2) - chunk_max.unsqueeze(-1), cuts.end_to_end)
        from_start = _masked_exp(m0.unsqueeze(-1) - chunk_max, cuts.end_from_start)
        local_den = weights.sum(-1)
        end_den = (decay @ local_den[..., -1:]).squeeze(-1) + from_start * u0.unsqueeze(-1)
        enter_den = torch.cat([u0.unsqueeze(-1), end_den[..., :-1]], dim=-1)
        carry = _masked_exp(enter_max.unsqueeze(-1) - run_max, cuts.carried)  # e^{r_{c-1} - M_k} <= 1
        inv_u = local_den.addcmul_(carry, enter_den.unsqueeze(-1)).reciprocal_()  # u_k >= 1

        # Outputs: (weights / u) @ values, then the entering numerator; chunk totals give the carries.
        out = (weights * inv_u.unsqueeze(-1)) @ v
        local_num_end = out[..., -1, :] / inv_u[..., -1:]  # the last row's own sum, relative to r_c
        end_num = decay @ local_num_end + from_start.unsqueeze(-1) * w0.unsqueeze(-2)
        enter_num = torch.cat([w0.unsqueeze(-2), end_num[..., :-1, :]], dim=-2)
        out.addcmul_((carry * inv_u).unsqueeze(-1), enter_num.unsqueeze(-2))

        ctx.save_for_backward(s, v, run_max, enter_max, out, inv_u, m0, *cuts)
        ctx.n = n
        return out.view(b, h, nc * chunk, dh)[:, :, :n], end_den[..., -1], end_num[..., -1, :]

    @staticmethod
    def backward(ctx, g_out: Tensor | None, g_u: Tensor | None, g_w: Tensor | None):
        s, v, run_max, enter_max, out, inv_u, m0, *saved_cuts = ctx.saved_tensors
        cuts = _Cuts(*saved_cuts)
        b, h, nc, chunk = s.shape
        dh, n = v.shape[-1], ctx.n
        g_out = torch.zeros_like(out.view(b, h, -1, dh)[:, :, :n]) if g_out is None else g_out
        g_u = torch.zeros_like(m0) if g_u is None else g_u
        g_w = torch.zeros_like(out[:, :, 0, 0]) if g_w is None else g_w
        g = F.pad(g_out, (0, 0, 0, nc * chunk - n)).view(b, h, nc, chunk, dh)
        chunk_max = run_max[..., -1]
        final_max = chunk_max[..., -1]

        # Inside each chunk: token j collects e^{s_j - M_k} / u_k times the row gradients of rows k >= j.
        weights_t = _exact_weights(s, run_max, cuts.in_chunk).mT * inv_u.unsqueeze(-2)  # [.., j, k]
        g_den = -torch.linalg.vecdot(g, out)  # gradient of each row's denominator, times u_k
        grad_v = weights_t @ g
        grad_den = (weights_t @ g_den.unsqueeze(-1)).squeeze(-1)

        # The entering state of chunk c collects e^{r_{c-1} - M_k} / u_k from every row it reaches.
        carry = _masked_exp(enter_max.unsqueeze(-1) - run_max, cuts.carried)
        enter_w = (carry * inv_u).unsqueeze(-2)  # [.., 1, C]
        total_num = (enter_w @ g).squeeze(-2)
        total_den = (enter_w @ g_den.unsqueeze(-1)).squeeze(-1).squeeze(-1)

        # Later chunks and the returned state reach chunk c through its end state: relative to r_c,
        # R_c = sum_{c' > c} e^{r_c - r_{c'-1}} T_c' + e^{r_c - M_N} g_state (those its segment reaches).
        cross = _masked_exp(chunk_max.unsqueeze(-1) - enter_max.unsqueeze(-2), cuts.end_to_later)
        to_final = _masked_exp(chunk_max - final_max.unsqueeze(-1), cuts.end_to_final)
        after_num = cross @ total_num + to_final.unsqueeze(-1) * g_w.unsqueeze(-2)
        after_den = (cross @ total_den.unsqueeze(-1)).squeeze(-1) + to_final * g_u.unsqueeze(-1)
        from_max = _masked_exp(s - chunk_max.unsqueeze(-1), cuts.in_end_segment)  # e^{s_j - r_c} <= 1
        grad_v.addcmul_(from_max.unsqueeze(-1), after_num.unsqueeze(-2))
        grad_den.addcmul_(from_max, after_den.unsqueeze(-1))
        grad_s = torch.linalg.vecdot(v, grad_v).add_(grad_den)

        # The state passed in is the token before the first, of score m0.
        from_m0 = _masked_exp(m0.unsqueeze(-1) - enter_max, cuts.enter_from_start)
        m0_to_final = _masked_exp(m0 - final_max, cuts.final_from_start)
        grad_w0 = (from_m0.unsqueeze(-1) * total_num).sum(-2) + m0_to_final.unsqueeze(-1) * g_w
        grad_u0 = (from_m0 * total_den).sum(-1) + m0_to_final * g_u
        return (
            grad_s.view(b, h, -1)[:, :, :n],
            grad_v.view(b, h, -1, dh)[:, :, :n],
            None,
            None,
            grad_u0,
            grad_w0,
            None,
            None,
        )


class _FusedScan(torch.autograd.Function):
    """The scan token by token in C++ (`aaren_rl/ops/fused.cpp`, `scan_forward` and `scan_backward`):
    the recurrent step's arithmetic, one pass per row and head, and its reverse pass by hand. On a CPU its
    cost is its arithmetic, where the chunked scan's is mostly the dispatch of about a hundred small
    operations (docs/results.md). Inputs in the compute dtype, contiguous."""

    @staticmethod
    def forward(ctx, s: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor, resets: Tensor | None, module):
        out, run_max, den, u, w = module.scan_forward(s, v, m0, u0, w0, resets)
        ctx.save_for_backward(s, v, out, run_max, den, m0, resets)
        ctx.module = module
        m = run_max[..., -1]
        ctx.mark_non_differentiable(m)
        return out, m, u, w

    @staticmethod
    @once_differentiable  # the reverse pass is C++: first derivatives only
    def backward(ctx, g_out: Tensor | None, _: Tensor | None, g_u: Tensor | None, g_w: Tensor | None):
        s, v, out, run_max, den, m0, resets = ctx.saved_tensors
        g_out = torch.zeros_like(out) if g_out is None else g_out.contiguous()
        g_u = torch.zeros_like(m0) if g_u is None else g_u.contiguous()
        g_w = torch.zeros_like(out[:, :, 0]) if g_w is None else g_w.contiguous()
        grad_s, grad_v, grad_u0, grad_w0 = ctx.module.scan_backward(
            g_out, g_u, g_w, s, v, out, run_max, den, m0, resets
        )
        return grad_s, grad_v, None, grad_u0, grad_w0, None, None


def _fused_scan_module(scores: Tensor) -> ModuleType | None:
    """The built C++ module where the scan can run in it (CPU), else None."""
    if scores.device.type != "cpu":
        return None
    from aaren_rl.ops.fused import fused_module  # the build is only wanted where it runs

    return fused_module()


def _parallel_scan(
    s: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor, resets: Tensor | None, chunk_size: int | None
) -> tuple[Tensor, AarenScanState]:
    """The scan in torch operations: one exact block for short sequences, else chunked."""
    n = s.shape[-1]
    seg = None if resets is None else resets.cumsum(-1).unsqueeze(1)  # [B, 1, N] segment of each token
    run_max = _running_max(s.detach(), m0, seg)
    if n <= (chunk_size or ONE_BLOCK_MAX):
        return _scan_one_block(s, v, run_max, m0, u0, w0, seg)
    out, u, w = _ChunkedScan.apply(s, v, run_max, m0, u0, w0, seg, chunk_size or auto_chunk_size(n))
    return out, (run_max[..., -1], u, w)


def aaren_scan(
    scores: Tensor,
    values: Tensor,
    state: AarenScanState | None = None,
    *,
    resets: Tensor | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, AarenScanState]:
    """Aaren output for every prefix, continuing from `state`.

    Args:
        scores: [B, H, N] attention scores q . k_i / sqrt(Dh) of each token.
        values: [B, H, N, Dh] values of each token.
        state: (m [B, H], u [B, H], w [B, H, Dh]) returned by a previous call, or None to start empty.
        resets: optional [B, N] bool, True where a token starts a new sequence (packed rows): the state
            is emptied just before it, as `AarenState.reset` does between calls, so each sequence only
            attends to itself; a row whose first token resets ignores `state`. None: one sequence per row.
        chunk_size: tokens per chunk of the parallel form (a speed knob; results do not depend on it).
            Given, the parallel form runs; None: the fused C++ scan on a CPU where it is built (see
            `aaren_rl.ops.fused`), else the parallel form with `auto_chunk_size(N)`. Sequences of at
            most `ONE_BLOCK_MAX` tokens (or chunk_size if given) are done as one block.

    Returns:
        out [B, H, N, Dh] with out[..., k, :] = softmax(scores[..., :k+1]) @ values[..., :k+1, :]
        (over all tokens seen since the empty state or the last reset), and the new state (of the last
        sequence of each row). Continuing is exact:
        aaren_scan(cat(a, b)) == aaren_scan(b, state=aaren_scan(a)[1]). N = 1 is the O(1) recurrent step.
        The state stands for (u e^m, w e^m): m is a stabiliser without gradient, and gradients through
        u and w are exact for everything computed by continuing from the state.

    float64 inputs are computed in float64; float32, float16 and bfloat16 in float32. `out` has the
    dtype of `values`, the state the compute dtype.
    """
    _check_inputs(scores, values, state, resets)
    dtype = _compute_dtype(scores, values, *(state or ()))
    b, h, _ = scores.shape
    if state is None:
        state = empty_state(b, h, values.shape[-1], device=scores.device, dtype=dtype)
    s, v = scores.to(dtype), values.to(dtype)
    m0, u0, w0 = state[0].detach().to(dtype), state[1].to(dtype), state[2].to(dtype)
    autocast_off = (
        torch.autocast(scores.device.type, enabled=False)
        if torch.is_autocast_enabled(scores.device.type)
        else _NO_CONTEXT
    )
    module = None if chunk_size else _fused_scan_module(scores)
    with autocast_off:  # the scan itself always runs in `dtype`
        if module is not None:
            contiguous = (t.contiguous() for t in (s, v, m0, u0, w0))
            flags = None if resets is None else resets.contiguous()  # C++ reads them row by row
            out, m, u, w = _FusedScan.apply(*contiguous, flags, module)
            new_state = (m, u, w)
        else:
            out, new_state = _parallel_scan(s, v, m0, u0, w0, resets, chunk_size)
    return out.to(values.dtype), new_state
