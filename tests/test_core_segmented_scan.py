"""Packed rows: `aaren_scan(..., resets=)` against each sequence run on its own, forward and gradients."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scan_inputs import make  # tests/scan_inputs.py (pytest puts tests/ on sys.path)

from aaren_rl import AarenBackbone
from aaren_rl.functional import aaren_scan
from aaren_rl.ops.naive import naive_segmented_aaren

TOL = 1e-10


def entering_state(b: int, h: int, dh: int, seed: int = 1):
    """A non-empty state from a short earlier call, with u and w as leaves that need gradients."""
    m, u, w = aaren_scan(*make(b, h, 5, dh, scale=3.0, seed=seed))[1]
    return m, u.clone().requires_grad_(True), w.clone().requires_grad_(True)


def resets_at(b: int, n: int, positions: list[int]) -> torch.Tensor:
    resets = torch.zeros(b, n, dtype=torch.bool)
    resets[:, positions] = True
    return resets


def random_resets(b: int, n: int, rate: float, seed: int) -> torch.Tensor:
    return torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < rate


def assert_close(a: torch.Tensor, b: torch.Tensor, tol: float = TOL) -> None:
    assert torch.isfinite(a).all(), "non-finite result"
    err = ((a - b).abs() / (1 + b.abs())).max().item()
    assert err < tol, f"max error {err:.3e} >= {tol:.0e}"


def outputs_and_grads(scan, scores, values, state, resets):
    """Outputs, returned state and the gradients of a random function of both wrt every input."""
    scores, values = scores.detach().requires_grad_(True), values.detach().requires_grad_(True)
    out, (m, u, w) = scan(scores, values, state, resets)
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in (out, u, w))
    inputs = [scores, values] + ([] if state is None else [state[1], state[2]])
    return [out, m, u, w, *torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)]


def check_against_sequences(scores, values, resets, state=None, chunk=None, tol=TOL):
    """aaren_scan on packed rows == naive softmax on each sequence alone: outputs, state, gradients."""
    got = outputs_and_grads(
        lambda s, v, st, r: aaren_scan(s, v, st, resets=r, chunk_size=chunk), scores, values, state, resets
    )
    want = outputs_and_grads(
        lambda s, v, st, r: naive_segmented_aaren(s, v, st, resets=r), scores, values, state, resets
    )
    names = ["out", "m", "u", "w", "d scores", "d values", "d u0", "d w0"][: len(got)]
    for name, a, b in zip(names, got, want, strict=True):
        assert a.shape == b.shape, name
        try:
            assert_close(a, b, tol)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 2),
    n=st.integers(1, 260),
    dh=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    chunk=st.sampled_from([None, 1, 7, 16, 64]),
    rate=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_packed_scan_matches_each_sequence_alone(b, h, n, dh, scale, chunk, rate, with_state, seed):
    scores, values = make(b, h, n, dh, scale, seed)
    state = entering_state(b, h, dh, seed + 1) if with_state else None
    check_against_sequences(scores, values, random_resets(b, n, rate, seed), state, chunk)


PATTERNS = {
    "first token": [0],
    "last token": [199],
    "adjacent": [50, 51, 52, 53],
    "at chunk boundaries": [15, 16, 32, 48, 49, 63, 64, 65, 192],
    "every chunk start": list(range(0, 200, 16)),
    "every token": list(range(200)),
    "none": [],
}


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("chunk", [16, 256, None])  # the chunked scan, one block, fused (on a CPU)
def test_reset_patterns(pattern, chunk):
    scores, values = make(2, 2, 200, 4, scale=5.0)
    resets = resets_at(2, 200, PATTERNS[pattern])
    resets[1, 100] = True  # the rows differ
    check_against_sequences(scores, values, resets, entering_state(2, 2, 4), chunk)


@pytest.mark.parametrize("pattern", ["rising", "falling", "spike", "all_very_negative"])
def test_extreme_scores(pattern, extreme_scores):
    n = 700
    scores = extreme_scores(pattern, n)
    values = torch.randn(2, 1, n, 5, dtype=torch.float64)
    resets = random_resets(2, n, 0.02, 0) | resets_at(2, n, [64, 65, 300])
    check_against_sequences(scores, values, resets, chunk=64)
    out32, state32 = aaren_scan(scores.float(), values.float(), resets=resets, chunk_size=64)
    assert torch.isfinite(out32).all() and all(torch.isfinite(x).all() for x in state32[1:])


def test_long_rows_with_many_sequences():
    """3,000 tokens per row, about 60 sequences of uneven lengths, the default chunk size."""
    scores, values = make(2, 2, 3000, 8, scale=10.0)
    check_against_sequences(scores, values, random_resets(2, 3000, 0.02, 3), entering_state(2, 2, 8))


@pytest.mark.parametrize("n,chunk", [(10, None), (300, None), (300, 16)])
def test_no_resets_equals_unsegmented_path(n, chunk):
    scores, values = make(2, 3, n, 4, scale=20.0)
    state = entering_state(2, 3, 4)

    def scan(s, v, st, r):
        return aaren_scan(s, v, st, resets=r, chunk_size=chunk)

    plain = outputs_and_grads(scan, scores, values, state, None)
    packed = outputs_and_grads(scan, scores, values, state, torch.zeros(2, n, dtype=torch.bool))
    for a, b in zip(plain, packed, strict=True):
        assert (a - b).abs().max().item() <= 1e-12


def test_every_token_a_reset_returns_the_values():
    scores, values = make(2, 2, 100, 3, scale=1e3)
    out, (m, u, w) = aaren_scan(
        scores, values, entering_state(2, 2, 3), resets=torch.ones(2, 100, dtype=bool)
    )
    assert torch.equal(out, values)
    assert torch.equal(m, scores[..., -1]) and torch.equal(u, torch.ones_like(u))
    assert torch.equal(w, values[..., -1, :])


@pytest.mark.parametrize("chunk", [16, 256, None])
def test_first_token_reset_ignores_the_entering_state(chunk):
    scores, values = make(2, 2, 120, 4, scale=5.0)
    m0, u0, w0 = entering_state(2, 2, 4)
    resets = resets_at(2, 120, [40])
    resets[0, 0] = True
    out, state = aaren_scan(scores, values, (m0, u0, w0), resets=resets, chunk_size=chunk)
    fresh, _ = aaren_scan(scores[:1, :, :40], values[:1, :, :40])
    assert_close(out[0, :, :40], fresh[0])
    grad_u0, grad_w0 = torch.autograd.grad(out.sum() + state[1].sum(), (u0, w0))
    assert torch.equal(grad_u0[0], torch.zeros_like(grad_u0[0])) and torch.equal(grad_w0[0], 0 * grad_w0[0])
    assert (grad_u0[1] != 0).all()  # row 1 continues the state


@pytest.mark.parametrize("chunk", [16, None])
@pytest.mark.parametrize("splits", [[1], [40], [41], [39, 40, 41], [5, 64, 199]])
def test_split_and_continue_equals_whole(splits, chunk):
    """A packed row may be cut anywhere, a reset included: the state carries the open sequence (the
    pieces' resets are strided views of the whole's)."""
    scores, values = make(2, 2, 200, 4, scale=30.0)
    resets = resets_at(2, 200, [0, 40, 41, 120])
    whole, whole_state = aaren_scan(scores, values, resets=resets, chunk_size=chunk)
    state, parts, start = None, [], 0
    for end in [*splits, 200]:
        piece = slice(start, end)
        out, state = aaren_scan(
            scores[..., piece], values[..., piece, :], state, resets=resets[:, piece], chunk_size=chunk
        )
        parts.append(out)
        start = end
    assert_close(torch.cat(parts, dim=-2), whole)
    for a, b in zip(state, whole_state, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("n,chunk", [(12, 128), (40, 8), (41, 8), (12, None), (41, None)])
def test_gradcheck_float64(n, chunk):
    """Gradients wrt scores, values and the entering state, and through the returned state into a
    continuation that has resets of its own."""
    scores, values = make(2, 2, n, 3, scale=3.0)
    scores.requires_grad_(True)
    values.requires_grad_(True)
    m0, u0, w0 = entering_state(2, 2, 3)
    resets = resets_at(2, n, [7, 8, n - 1])
    resets[0, 0] = True
    next_scores, next_values = make(2, 2, 20, 3, scale=3.0, seed=2)
    next_resets = resets_at(2, 20, [9])

    def f(s, v, u, w):
        out, state = aaren_scan(s, v, (m0, u, w), resets=resets, chunk_size=chunk)
        continued, _ = aaren_scan(next_scores, next_values, state, resets=next_resets, chunk_size=chunk)
        return out, continued

    assert torch.autograd.gradcheck(f, (scores, values, u0, w0))


@pytest.mark.parametrize(
    "resets,match",
    [
        (torch.zeros(2, 5, dtype=torch.long), r"`resets` must be a bool tensor of shape \[B, N\] = \[2, 5\]"),
        (torch.zeros(2, 6, dtype=torch.bool), r"got shape \[2, 6\]"),
        ([False] * 5, r"got list"),
    ],
)
def test_bad_resets_raise_clear_errors(resets, match):
    scores, values = make(2, 1, 5, 4)
    with pytest.raises(ValueError, match=match):
        aaren_scan(scores, values, resets=resets)


def build_backbone() -> AarenBackbone:
    torch.manual_seed(0)
    return AarenBackbone(32, 3, num_heads=2, dropout=0.0).double().eval()


def test_backbone_packed_row_equals_episodes_run_separately():
    model = build_backbone()
    first, second = torch.randn(1, 70, 32, dtype=torch.float64), torch.randn(1, 50, 32, dtype=torch.float64)
    y_first, _ = model(first)
    y_second, state_second = model(second)
    packed = torch.cat([first, second], dim=1)
    y, state = model(packed, resets=resets_at(1, 120, [0, 70]))
    assert_close(y[:, :70], y_first)
    assert_close(y[:, 70:], y_second)
    for a, b in zip(
        (state.m, state.u, state.w), (state_second.m, state_second.u, state_second.w), strict=True
    ):
        assert_close(a, b)


def test_backbone_packed_row_continues_the_entering_state():
    model = build_backbone()
    x = torch.randn(2, 90, 32, dtype=torch.float64)
    _, state = model(x[:, :30])
    resets = resets_at(2, 60, [25])
    resets[1, 0] = True  # row 1 starts a new episode right away
    y, _ = model(x[:, 30:], state, resets=resets)
    whole, _ = model(x[:1, :55])
    assert_close(y[0, :25], whole[0, 30:])
    fresh, _ = model(x[1:, 30:55])
    assert_close(y[1, :25], fresh[0])
    tail, _ = model(x[:, 55:])
    assert_close(y[:, 25:], tail)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    scores, values = make(2, 2, 1000, 16, scale=100.0)
    resets = random_resets(2, 1000, 0.02, 0)
    cpu, cpu_state = aaren_scan(scores, values, resets=resets)
    gpu, gpu_state = aaren_scan(scores.cuda(), values.cuda(), resets=resets.cuda())
    assert_close(gpu.cpu(), cpu)
    for a, b in zip(gpu_state, cpu_state, strict=True):
        assert_close(a.cpu(), b)
