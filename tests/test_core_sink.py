"""Aaren's learned sink: the same as a real token of the sink's score and value at the start of every
sequence (naive softmax, float64), whether the sequence starts at a reset, from no state or from
`init_state`; token-by-token and folded steps equal the parallel forward; the sink gets gradients."""

import pytest
import torch

from aaren_rl import Aaren, AarenBackbone
from aaren_rl.folded import FoldedAarenBackbone

B, N, D, H = 3, 11, 8, 2


def _aaren(sink_value: bool = True) -> Aaren:
    torch.manual_seed(0)
    aaren = Aaren(D, H, sink=True, sink_value=sink_value).double()
    with torch.no_grad():
        aaren.sink.copy_(torch.tensor([3.0, -1.0]))
        if sink_value:
            aaren.sink_value.normal_()
    return aaren


def _naive(aaren: Aaren, x: torch.Tensor, resets: torch.Tensor) -> torch.Tensor:
    """Each prefix's softmax over the sink (score aaren.sink, value aaren.sink_value or 0) and its
    sequence's tokens so far."""
    b, n, _ = x.shape
    keys, values = aaren.key_value(x).view(b, n, 2, H, D // H).unbind(2)  # [B, N, H, Dh]
    scores = torch.einsum("bnhd,hd->bhn", keys, aaren.query) / (D // H) ** 0.5
    out = torch.empty(b, n, H, D // H, dtype=x.dtype)
    sink_value = torch.zeros(H, D // H, dtype=x.dtype) if aaren.sink_value is None else aaren.sink_value
    for row in range(b):
        first = 0
        for t in range(n):
            first = t if resets[row, t] else first
            logits = torch.cat([aaren.sink[:, None], scores[row, :, first : t + 1]], 1)  # [H, 1 + k]
            with_sink = torch.cat([sink_value[None], values[row, first : t + 1]])
            out[row, t] = torch.einsum("hk,khd->hd", logits.softmax(-1), with_sink)
    return aaren.proj(out.reshape(b, n, D))


@pytest.mark.parametrize("sink_value", [True, False])
def test_sink_equals_a_real_token_at_every_sequence_start(sink_value: bool):
    aaren, x = _aaren(sink_value), torch.randn(B, N, D, dtype=torch.float64)
    resets = torch.zeros(B, N, dtype=torch.bool)
    resets[1, 4] = resets[2, [0, 5, 6]] = True
    want = _naive(aaren, x, resets | (torch.arange(N) == 0))
    got, _ = aaren(x, resets=resets)
    assert (got - want).abs().max() < 1e-10
    # From init_state, token by token: the state holds the sink, and a reset sets a row back to it.
    state, steps = aaren.init_state(B, dtype=torch.float64), []
    for t in range(N):
        start = aaren.init_state(B, dtype=torch.float64)
        state = tuple(
            torch.where(resets[:, t].view(-1, *(1,) * (s.dim() - 1)), s0, s)
            for s0, s in zip(start, state, strict=True)
        )
        y, state = aaren(x[:, t : t + 1], state)
        steps.append(y)
    assert (torch.cat(steps, 1) - want).abs().max() < 1e-10


def test_the_sinks_score_and_value_get_gradients_and_move_the_output():
    aaren, x = _aaren(), torch.randn(B, N, D, dtype=torch.float64)
    y, _ = aaren(x)
    y.square().sum().backward()
    for grad in (aaren.sink.grad, aaren.sink_value.grad):
        assert grad is not None and (grad.abs() > 0).all()
    without = Aaren(D, H).double()
    without.load_state_dict({k: v for k, v in aaren.state_dict().items() if not k.startswith("sink")})
    assert (without(x)[0] - y).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_steps_from_init_state_equal_the_forward(dtype):
    torch.manual_seed(0)
    backbone = (
        AarenBackbone(16, num_layers=2, num_heads=2, ffn_mult=2, dropout=0.0, sink=True).to(dtype).eval()
    )
    with torch.no_grad():
        for block in backbone.blocks:
            block.mixer.sink.uniform_(-2, 6)
            block.mixer.sink_value.normal_()
        x = torch.randn(2, 7, 16, dtype=dtype)
        whole, _ = backbone(x)
        step, state, ys = FoldedAarenBackbone(backbone), backbone.init_state(2, dtype=dtype), []
        for t in range(7):
            y, state = step(x[:, t : t + 1], state, None)
            ys.append(y)
        with pytest.raises(ValueError, match="init_state between calls"):
            step.score_mask(torch.tensor([[False, True]]))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(torch.stack(ys, 1), whole, atol=tol, rtol=tol)
