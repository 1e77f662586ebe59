"""Aaren and Transformer backbones: one interface, parallel == step-by-step, resets, state sizes, errors."""

import pytest
import torch

from aaren_rl import Aaren, AarenBackbone, AarenState, KVCache, TransformerBackbone

BACKBONES = [AarenBackbone, TransformerBackbone]


def build(cls, **kw):
    torch.manual_seed(0)
    return cls(32, 3, num_heads=2, dropout=0.0, **kw).double().eval()


def run_in_steps(model, x, step_sizes, state=None):
    ys, t = [], 0
    for n in step_sizes:
        y, state = model(x[:, t : t + n], state)
        ys.append(y)
        t += n
    return torch.cat(ys, dim=1), state


@pytest.mark.parametrize("cls", BACKBONES)
def test_forward_equals_single_token_steps(cls):
    model = build(cls)
    x = torch.randn(3, 60, 32, dtype=torch.float64)
    whole, _ = model(x)
    stepped, _ = run_in_steps(model, x, [1] * 60, model.init_state(3, dtype=torch.float64))
    assert (stepped - whole).abs().max() < 1e-10


@pytest.mark.parametrize("cls", BACKBONES)
def test_forward_equals_uneven_chunks(cls):
    model = build(cls)
    x = torch.randn(2, 300, 32, dtype=torch.float64)
    whole, _ = model(x)
    chunked, _ = run_in_steps(model, x, [3, 130, 1, 166])
    assert (chunked - whole).abs().max() < 1e-10


@pytest.mark.parametrize("cls", BACKBONES)
def test_reset_rows_equals_fresh_sequence(cls):
    model = build(cls)
    x = torch.randn(3, 40, 32, dtype=torch.float64)
    _, state = model(x[:, :15])
    state = state.reset(torch.tensor([False, True, False]))
    y, _ = model(x[:, 15:], state)
    fresh, _ = model(x[1:2, 15:])
    whole, _ = model(x)
    assert (y[1] - fresh[0]).abs().max() < 1e-10
    assert (y[[0, 2]] - whole[[0, 2], 15:]).abs().max() < 1e-10


def test_aaren_state_is_constant_in_size_and_kv_cache_grows():
    aaren, transformer = build(AarenBackbone), build(TransformerBackbone)
    x = torch.randn(2, 200, 32, dtype=torch.float64)
    _, s_short = aaren(x[:, :10])
    _, s_long = aaren(x)
    assert isinstance(s_long, AarenState) and s_short.nbytes == s_long.nbytes
    _, c_short = transformer(x[:, :10])
    _, c_long = transformer(x)
    assert isinstance(c_long, KVCache) and c_long.nbytes > 10 * c_short.nbytes


def test_sliding_window_transformer_matches_stepping_and_bounds_cache():
    model = build(TransformerBackbone, max_context=7)
    x = torch.randn(2, 50, 32, dtype=torch.float64)
    whole, _ = model(x)
    stepped, cache = run_in_steps(model, x, [1] * 50)
    assert (stepped - whole).abs().max() < 1e-10
    assert cache.length == 7


def test_cache_drops_entries_no_row_can_see():
    model = build(TransformerBackbone)
    x = torch.randn(2, 20, 32, dtype=torch.float64)
    _, cache = model(x)
    cache = cache.reset(torch.tensor([True, True]))
    _, cache = model(x[:, :3], cache)
    assert cache.length == 3


def test_aaren_parameter_count_differs_from_transformer_by_the_queries_only():
    """As in the paper: Aaren replaces the query projection (D*D + D) by learned queries (D)."""
    d, layers = 128, 3
    a = sum(p.numel() for p in AarenBackbone(d, layers).parameters())
    t = sum(p.numel() for p in TransformerBackbone(d, layers).parameters())
    assert t - a == layers * (d * d + d - d)


def test_dropout_is_active_in_training_only():
    model = AarenBackbone(16, 2, dropout=0.5)
    x = torch.randn(2, 10, 16)
    model.train()
    assert not torch.equal(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


def test_aaren_layer_gradients_flow_to_query():
    layer = Aaren(16, num_heads=4)
    y, _ = layer(torch.randn(2, 30, 16))
    y.sum().backward()
    assert layer.query.grad is not None and layer.query.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", BACKBONES)
def test_bad_inputs_raise_clear_errors(cls):
    model = build(cls)
    with pytest.raises(ValueError, match=r"input `x` must have shape \[B, N, 32\]"):
        model(torch.zeros(2, 5, 31, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input `x` must have shape"):
        model(torch.zeros(5, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`state` holds 3 sequences but `x` has batch size 2"):
        model(torch.zeros(2, 5, 32, dtype=torch.float64), model.init_state(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`state` must be a"):
        model(torch.zeros(2, 5, 32, dtype=torch.float64), (1, 2, 3))
    with pytest.raises(ValueError, match=r"multiple of num_heads"):
        cls(30, 2, num_heads=4)
