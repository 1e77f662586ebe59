"""Exactness, stability, gradients and input checks of `aaren_rl.functional.aaren_scan`."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scan_inputs import make  # tests/scan_inputs.py (pytest puts tests/ on sys.path)

from aaren_rl import functional
from aaren_rl.functional import aaren_scan, empty_state
from aaren_rl.ops.naive import naive_aaren, recurrent_aaren

TOL = 1e-10


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert torch.isfinite(a).all(), "non-finite output"
    err = (a - b).abs().max().item()
    assert err < tol, f"max abs error {err:.3e} >= {tol:.0e}"


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 3),
    n=st.integers(1, 300),
    dh=st.integers(1, 9),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    chunk=st.sampled_from([None, 1, 7, 16, 64, 128]),  # None: the fused C++ scan on a CPU
    seed=st.integers(0, 2**16),
)
def test_scan_matches_naive_softmax(b, h, n, dh, scale, chunk, seed):
    scores, values = make(b, h, n, dh, scale, seed)
    out, _ = aaren_scan(scores, values, chunk_size=chunk)
    assert_close(out, naive_aaren(scores, values))


@pytest.mark.parametrize("n", [1, 2, 127, 129, 1000, 1001])
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_lengths_not_multiple_of_chunk(n, scale):
    scores, values = make(2, 2, n, 8, scale)
    out, _ = aaren_scan(scores, values)
    assert_close(out, naive_aaren(scores, values))


@pytest.mark.parametrize("chunk", [64, None])
@pytest.mark.parametrize("pattern", ["rising", "falling", "spike", "all_very_negative"])
def test_extreme_score_patterns(pattern, chunk, extreme_scores):
    n = 700
    scores = extreme_scores(pattern, n)
    values = torch.randn(2, 1, n, 5, dtype=torch.float64)
    out, _ = aaren_scan(scores, values, chunk_size=chunk)
    assert_close(out, naive_aaren(scores, values))
    # and in float32 the stable form still never produces NaN or inf
    out32, _ = aaren_scan(scores.float(), values.float(), chunk_size=chunk)
    assert torch.isfinite(out32).all()


def test_token_by_token_recurrence_equals_parallel():
    scores, values = make(3, 2, 257, 6, scale=20.0)
    parallel, (m, u, w) = aaren_scan(scores, values)
    state, steps = None, []
    for k in range(scores.shape[-1]):
        out, state = aaren_scan(scores[..., k : k + 1], values[..., k : k + 1, :], state)
        steps.append(out)
    assert_close(torch.cat(steps, dim=-2), parallel)
    ref, (m_ref, u_ref, w_ref) = recurrent_aaren(scores, values)
    assert_close(parallel, ref)
    assert_close(m, m_ref)
    assert_close(u, u_ref, 1e-9)  # u is a sum of up to N terms of size <= 1
    assert_close(w, w_ref, 1e-9)


@pytest.mark.parametrize("splits", [[1], [128], [129, 300], [5, 6, 7, 500], [999]])
def test_split_and_continue_equals_whole(splits):
    scores, values = make(2, 3, 1000, 4, scale=50.0)
    whole, whole_state = aaren_scan(scores, values, chunk_size=64)
    state, parts, start = None, [], 0
    for end in [*splits, 1000]:
        out, state = aaren_scan(scores[..., start:end], values[..., start:end, :], state, chunk_size=64)
        parts.append(out)
        start = end
    assert_close(torch.cat(parts, dim=-2), whole)
    for a, b in zip(state, whole_state, strict=True):
        assert_close(a, b, 1e-9)


@pytest.mark.parametrize("n,chunk", [(1, 128), (37, 128), (40, 8), (41, 8), (1, None), (41, None)])
def test_gradcheck_float64(n, chunk):
    """Gradients wrt scores, values and the entering state, and through the returned state into a continuation."""
    scores, values = make(1, 2, n, 3, scale=3.0)
    scores.requires_grad_(True)
    values.requires_grad_(True)
    _, (m0, u0, w0) = aaren_scan(*make(1, 2, 5, 3, seed=1))
    u0.requires_grad_(True)
    w0.requires_grad_(True)
    next_scores, next_values = make(1, 2, 9, 3, scale=3.0, seed=2)

    def f(s, v, u, w):
        out, state = aaren_scan(s, v, (m0, u, w), chunk_size=chunk)
        continued, _ = aaren_scan(next_scores, next_values, state, chunk_size=chunk)
        return out, continued

    assert torch.autograd.gradcheck(f, (scores, values, u0, w0))


def test_cpu_scan_runs_fused_unless_a_chunk_size_is_given(monkeypatch):
    """On a CPU the scan runs in C++ (the tests above with chunk_size None check it against the naive
    softmax); a chunk size asks for the parallel form."""
    assert functional._fused_scan_module(torch.zeros(1)) is not None, "the fused module did not build"
    calls = []
    apply = functional._FusedScan.apply
    monkeypatch.setattr(functional._FusedScan, "apply", lambda *args: calls.append(1) or apply(*args))
    scores, values = make(1, 2, 40, 3)
    fused, _ = aaren_scan(scores, values)
    assert len(calls) == 1
    parallel, _ = aaren_scan(scores, values, chunk_size=16)
    assert len(calls) == 1
    assert_close(fused, parallel)


def test_gradient_through_unsafe_chunks_is_finite_and_exact():
    t = torch.arange(200, dtype=torch.float64)
    scores = (t * 40.0).expand(1, 1, 200).clone().requires_grad_(True)
    values = torch.randn(1, 1, 200, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 1, 200, 3, dtype=torch.float64)
    out, _ = aaren_scan(scores, values, chunk_size=32)
    gs, gv = torch.autograd.grad(out, (scores, values), grad)
    ref_gs, ref_gv = torch.autograd.grad(naive_aaren(scores, values), (scores, values), grad)
    assert_close(gs, ref_gs)
    assert_close(gv, ref_gv)


def test_batch_rows_are_independent():
    scores, values = make(4, 2, 300, 5, scale=10.0)
    out, _ = aaren_scan(scores, values)
    scores2, values2 = scores.clone(), values.clone()
    scores2[2] = torch.randn_like(scores2[2]) * 1e3
    values2[2] = torch.randn_like(values2[2])
    out2, _ = aaren_scan(scores2, values2)
    rows = [0, 1, 3]
    assert torch.equal(out[rows], out2[rows])


def test_reset_row_equals_fresh_state():
    scores, values = make(3, 2, 50, 4, scale=5.0)
    _, (m, u, w) = aaren_scan(scores[..., :20], values[..., :20, :])
    fresh_m, fresh_u, fresh_w = empty_state(3, 2, 4, dtype=torch.float64)
    row = torch.tensor([False, True, False])
    m, u, w = (
        torch.where(row.view(-1, *[1] * (a.dim() - 1)), b, a)
        for a, b in ((m, fresh_m), (u, fresh_u), (w, fresh_w))
    )
    out, _ = aaren_scan(scores[..., 20:], values[..., 20:, :], (m, u, w))
    assert_close(out[1], naive_aaren(scores[1:2, :, 20:], values[1:2, :, 20:])[0])
    assert_close(out[0], naive_aaren(scores[:1], values[:1])[0, :, 20:])


def test_hundred_thousand_recurrent_steps_stay_finite_and_match_parallel():
    n = 100_000
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 1, n, generator=g, dtype=torch.float64) * 10 + torch.linspace(
        0, 50, n, dtype=torch.float64
    )
    values = torch.randn(2, 1, n, 2, generator=g, dtype=torch.float64)
    parallel, _ = aaren_scan(scores, values)
    state = None
    worst = 0.0
    for k in range(n):
        out, state = aaren_scan(scores[..., k : k + 1], values[..., k : k + 1, :], state)
        if k % 997 == 0 or k == n - 1:
            worst = max(worst, (out[..., 0, :] - parallel[..., k, :]).abs().max().item())
    assert torch.isfinite(state[1]).all() and torch.isfinite(state[2]).all()
    assert worst < TOL
    assert (out[..., 0, :] - parallel[..., -1, :]).abs().max().item() < TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    scores, values = make(2, 2, 300, 8, scale=5.0)
    out, (m, u, w) = aaren_scan(scores.to(dtype), values.to(dtype))
    assert out.dtype == dtype and u.dtype == torch.float32
    ref = naive_aaren(scores.to(dtype).double(), values.to(dtype).double())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert (out.double() - ref).abs().max().item() < tol


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.zeros(2, 5), torch.zeros(2, 1, 5, 4)), r"`scores` must be a tensor of shape \[B, H, N\]"),
        (
            (torch.zeros(2, 1, 5), torch.zeros(2, 1, 5)),
            r"`values` must have shape \[B, H, N, Dh\] = \[2, 1, 5, Dh\]",
        ),
        ((torch.zeros(2, 1, 5), torch.zeros(2, 1, 6, 4)), r"`values` must have shape"),
        (
            (torch.zeros(2, 1, 5, dtype=torch.long), torch.zeros(2, 1, 5, 4)),
            r"`scores` must be a floating-point",
        ),
        ((torch.zeros(2, 1, 0), torch.zeros(2, 1, 0, 4)), r"empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, match):
    with pytest.raises(ValueError, match=match):
        aaren_scan(*args)


def test_mismatched_state_names_entry_and_shape():
    scores, values = make(2, 1, 5, 4)
    m, u, w = empty_state(3, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`state` entry m must have shape \[2, 1\]"):
        aaren_scan(scores, values, (m, u, w))
    with pytest.raises(ValueError, match=r"`state` must be a tuple"):
        aaren_scan(scores, values, (m, u))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    scores, values = make(2, 2, 1000, 16, scale=100.0)
    cpu, _ = aaren_scan(scores, values)
    gpu, _ = aaren_scan(scores.cuda(), values.cuda())
    assert_close(gpu.cpu(), cpu)


@pytest.mark.parametrize("n", [5, 300])
def test_autocast_bfloat16_forward_and_backward(n):
    """Under autocast the scan still computes (and differentiates) in float32."""
    scores, values = make(2, 2, n, 8, scale=3.0)
    scores = scores.float().requires_grad_(True)
    values = values.float().requires_grad_(True)
    proj = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = aaren_scan(scores * 1.0, proj(values))
        assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.isfinite(values.grad).all()


def test_masks_cached_under_inference_mode_still_train():
    """The scan caches its triangular masks; one first built under inference_mode must not break a
    later backward in the same process."""
    functional._triangle.cache_clear()  # so the masks are first built under inference_mode
    scores, values = torch.randn(1, 1, 301), torch.randn(1, 1, 301, 4)
    with torch.inference_mode():
        aaren_scan(scores, values)
    scores.requires_grad_()
    aaren_scan(scores, values)[0].sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()
