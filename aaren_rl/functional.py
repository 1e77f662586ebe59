"""Aaren attention as a function: the exact many-to-many output of a single query, for every prefix.

For one head, tokens with scores s_1..s_N and values v_1..v_N, output k is

    o_k = sum_{j<=k} e^{s_j} v_j / sum_{j<=k} e^{s_j}.

The state after k tokens is (m_k, u_k, w_k): the running max of the scores, and the denominator and
numerator above scaled by e^{-m_k}. Every factor computed below is e^{x} with x <= 0, so the scan is
stable for any score range, and a state passed back in continues the sequence exactly.

How it is computed (exact, no loop over tokens or chunks):
  1. M = running max of the scores (including the entering state's m). It only stabilises: the output
     does not depend on it, so it is detached and gradients are exact.
  2. The sequence is cut into chunks of C tokens. Inside chunk c every term is taken relative to the
     chunk's final running max r_c, so a plain cumulative sum gives each row's numerator and
     denominator (O(N Dh) work, the memory-bound floor).
  3. The state entering each chunk comes from a small masked matmul over the N/C chunk totals
     (weights e^{r_c' - r_c}, c' <= c), so all chunks are done at once.
  4. A row whose running max is far below its chunk's r_c would lose its terms to underflow in step 2.
     Chunks where that can happen (r_c - M_first > _SAFE_RANGE) are recomputed exactly by a masked
     C x C matmul relative to each row's own running max; with ordinary scores there are none.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

AarenScanState = tuple[Tensor, Tensor, Tensor]
"""(m [B, H], u [B, H], w [B, H, Dh]): running max, scaled denominator, scaled numerator."""

DEFAULT_CHUNK_SIZE = 128


def _safe_range(dtype: torch.dtype) -> float:
    """Largest drop of a row's running max below its chunk's max that keeps every term a normal float."""
    return 0.5 * -math.log(torch.finfo(dtype).tiny)


def empty_state(
    batch_size: int, num_heads: int, head_dim: int, *, device=None, dtype: torch.dtype = torch.float32
) -> AarenScanState:
    """The state before any token: m = -inf, u = 0, w = 0 (m = 0 would underflow to 0/0 for low scores)."""
    m = torch.full((batch_size, num_heads), float("-inf"), device=device, dtype=dtype)
    u = torch.zeros(batch_size, num_heads, device=device, dtype=dtype)
    w = torch.zeros(batch_size, num_heads, head_dim, device=device, dtype=dtype)
    return m, u, w


def _check_inputs(scores: Tensor, values: Tensor, state: AarenScanState | None) -> None:
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


def _describe(t: object) -> str:
    return f"shape {list(t.shape)} ({t.dtype})" if isinstance(t, Tensor) else type(t).__name__


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half and bfloat16 inputs are computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _rows_exact(
    s: Tensor, v: Tensor, run_max: Tensor, m_in: Tensor, u_in: Tensor, w_in: Tensor
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of each row of one block, relative to the row's own running max.

    s [..., C], v [..., C, Dh], run_max [..., C] (includes m_in), entering state m_in [...], u_in [...],
    w_in [..., Dh]. O(C^2) per block; exact for any score range.
    """
    c = s.shape[-1]
    causal = torch.ones(c, c, dtype=torch.bool, device=s.device).tril()
    weights = (s.unsqueeze(-2) - run_max.unsqueeze(-1)).masked_fill(~causal, float("-inf")).exp()
    carry = (m_in.unsqueeze(-1) - run_max).exp()
    num = weights @ v + carry.unsqueeze(-1) * w_in.unsqueeze(-2)
    den = weights.sum(-1) + carry * u_in.unsqueeze(-1)
    return num, den


def _scan_one_block(
    s: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor
) -> tuple[Tensor, AarenScanState]:
    """Short sequences (and the O(1) recurrent step, N = 1): one exact block."""
    run_max = torch.maximum(s.detach().cummax(-1).values, m0.detach().unsqueeze(-1))
    num, den = _rows_exact(s, v, run_max, m0.detach(), u0, w0)
    out = num / den.unsqueeze(-1)
    return out, (run_max[..., -1], den[..., -1], num[..., -1, :])


def _scan_chunked(
    s: Tensor, v: Tensor, m0: Tensor, u0: Tensor, w0: Tensor, chunk: int
) -> tuple[Tensor, AarenScanState]:
    b, h, n = s.shape
    dh = v.shape[-1]
    m0 = m0.detach()
    run_max = torch.maximum(s.detach().cummax(-1).values, m0.unsqueeze(-1))
    pad = (-n) % chunk
    if pad:  # padded tokens get score -inf (weight 0) and keep the last running max
        s = torch.nn.functional.pad(s, (0, pad), value=float("-inf"))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
        run_max = torch.cat([run_max, run_max[..., -1:].expand(b, h, pad)], dim=-1)
    nc = (n + pad) // chunk
    s = s.view(b, h, nc, chunk)
    v = v.view(b, h, nc, chunk, dh)
    run_max = run_max.view(b, h, nc, chunk)
    chunk_max = run_max[..., -1]  # r_c: the running max at each chunk's end

    # Step 2: rows relative to r_c by cumulative sums.
    p = (s - chunk_max.unsqueeze(-1)).exp()
    local_num = (p.unsqueeze(-1) * v).cumsum(-2)
    local_den = p.cumsum(-1)

    # Step 3: inclusive chunk-end states relative to r_c, from the chunk totals and the entering state.
    causal = torch.ones(nc, nc, dtype=torch.bool, device=s.device).tril()
    decay = (chunk_max.unsqueeze(-2) - chunk_max.unsqueeze(-1)).masked_fill(~causal, float("-inf")).exp()
    from_start = (m0.unsqueeze(-1) - chunk_max).exp()  # [b, h, nc]
    end_num = decay @ local_num[..., -1, :] + from_start.unsqueeze(-1) * w0.unsqueeze(-2)
    end_den = (decay @ local_den[..., -1:]).squeeze(-1) + from_start * u0.unsqueeze(-1)

    # State entering chunk c (relative to r_{c-1}), then rescaled to r_c and added to every row.
    enter_max = torch.cat([m0.unsqueeze(-1), chunk_max[..., :-1]], dim=-1)
    enter_num = torch.cat([w0.unsqueeze(-2), end_num[..., :-1, :]], dim=-2)
    enter_den = torch.cat([u0.unsqueeze(-1), end_den[..., :-1]], dim=-1)
    carry = (enter_max - chunk_max).exp()
    num = local_num + (carry.unsqueeze(-1) * enter_num).unsqueeze(-2)
    den = local_den + (carry * enter_den).unsqueeze(-1)
    out = num / den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(-1)

    # Step 4: exact recomputation of chunks whose rows could underflow relative to r_c.
    unsafe = (chunk_max - run_max[..., 0]) > _safe_range(s.dtype)
    if unsafe.any():
        idx = unsafe.flatten().nonzero().squeeze(1)
        rows_num, rows_den = _rows_exact(
            s.reshape(-1, chunk)[idx],
            v.reshape(-1, chunk, dh)[idx],
            run_max.reshape(-1, chunk)[idx],
            enter_max.reshape(-1)[idx],
            enter_den.reshape(-1)[idx],
            enter_num.reshape(-1, dh)[idx],
        )
        out = out.reshape(-1, chunk, dh).index_copy(0, idx, rows_num / rows_den.unsqueeze(-1))

    out = out.reshape(b, h, nc * chunk, dh)[:, :, :n]
    return out, (chunk_max[..., -1], end_den[..., -1], end_num[..., -1, :])


def aaren_scan(
    scores: Tensor,
    values: Tensor,
    state: AarenScanState | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, AarenScanState]:
    """Aaren output for every prefix, continuing from `state`.

    Args:
        scores: [B, H, N] attention scores q . k_i / sqrt(Dh) of each token.
        values: [B, H, N, Dh] values of each token.
        state: (m [B, H], u [B, H], w [B, H, Dh]) returned by a previous call, or None to start empty.
        chunk_size: tokens per chunk of the parallel scan (a speed knob; results do not depend on it).

    Returns:
        out [B, H, N, Dh] with out[..., k, :] = softmax(scores[..., :k+1]) @ values[..., :k+1, :]
        (over all tokens seen since the empty state), and the new state. Continuing is exact:
        aaren_scan(cat(a, b)) == aaren_scan(b, state=aaren_scan(a)[1]). N = 1 is the O(1) recurrent step.
        The state stands for (u e^m, w e^m): m is a stabiliser without gradient, and gradients through
        u and w are exact for everything computed by continuing from the state.

    float64 inputs are computed in float64; float32, float16 and bfloat16 in float32. `out` has the
    dtype of `values`, the state the compute dtype.
    """
    _check_inputs(scores, values, state)
    dtype = _compute_dtype(scores, values, *(state or ()))
    b, h, n = scores.shape
    if state is None:
        state = empty_state(b, h, values.shape[-1], device=scores.device, dtype=dtype)
    s, v = scores.to(dtype), values.to(dtype)
    m0, u0, w0 = (t.to(dtype) for t in state)
    if n <= chunk_size:
        out, new_state = _scan_one_block(s, v, m0, u0, w0)
    else:
        out, new_state = _scan_chunked(s, v, m0, u0, w0, chunk_size)
    return out.to(values.dtype), new_state
