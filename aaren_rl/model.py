"""Aaren, causal-Transformer and LSTM backbones behind one interface.

    y, state = backbone(x, state=None)        # x [B, N, D]; N = a whole sequence, a few tokens, or 1

Aaren (Feng et al. 2024, "Attention as an RNN") is attention with a learned, input-independent query
per head, whose output at every prefix is computed by a parallel scan; its state is constant in size.
The Transformer baseline is the same stack with causal self-attention, whose state is a KV cache that
grows with every token. Both blocks are pre-LayerNorm: x + mix(LN(x)), then x + FFN(LN(x)). The LSTM
baseline (the Decision LSTM of Siebenborn et al. 2022) is a stacked LSTM with the same final LayerNorm;
its state (h, c) is constant in size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aaren_rl.functional import AarenScanState, aaren_scan, empty_state
from aaren_rl.states import AarenState, KVCache, LSTMState


def _check_x(x: Tensor, embed_dim: int, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != embed_dim:
        got = f"shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{who}: input `x` must have shape [B, N, {embed_dim}] (batch, tokens, embed_dim), got {got}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{who}: input `x` has no tokens (N = 0)")


def _starts(resets: Tensor | None, from_empty: bool, b: int, n: int, device: torch.device) -> Tensor:
    """[B, N] bool: where a sequence starts: the resets, and the first token when `from_empty`."""
    if resets is not None and not from_empty:
        return resets
    starts = torch.zeros(b, n, dtype=torch.bool, device=device) if resets is None else resets.clone()
    starts[:, 0] |= from_empty
    return starts


def _check_heads(embed_dim: int, num_heads: int) -> None:
    if num_heads < 1 or embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads})")


class Aaren(nn.Module):
    """Multi-head Aaren attention: a learned query per head attends over every prefix of the input.

    sink: give each head a learned sink, a token of learned score that starts every sequence (as
    attention sinks): lets a head count (`forward`).
    sink_value: with a sink, learn its value too (starting at 0); False keeps it at 0 (softmax with an
    extra "nothing" option), as sinks were at first.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        sink: bool = False,
        sink_value: bool = True,
    ):
        super().__init__()
        _check_heads(embed_dim, num_heads)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.query = nn.Parameter(torch.randn(num_heads, self.head_dim) / math.sqrt(self.head_dim))
        self.key_value = nn.Linear(embed_dim, 2 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        # Each head's learned score and value of a token that starts every sequence (None: no sink).
        self.sink = nn.Parameter(torch.zeros(num_heads)) if sink else None
        self.sink_value = nn.Parameter(torch.zeros(num_heads, self.head_dim)) if sink and sink_value else None

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> AarenScanState:
        """The state before any token: empty, or holding only the sink token (m = its score, u = 1, w = its
        value, or 0)."""
        m, u, w = empty_state(
            batch_size, self.num_heads, self.head_dim, device=device, dtype=dtype or torch.float32
        )
        if self.sink is None:
            return m, u, w
        if self.sink_value is not None:
            w = self.sink_value.detach().to(w).expand_as(w).clone()
        return self.sink.detach().to(m).expand_as(m).clone(), torch.ones_like(u), w

    def _join_sink(self, scores: Tensor, values: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Scores [B, H, N] and values [B, H, N, Dh] with the sink joined to each token of `starts` [B, N]:
        the softmax over {sink, token, later tokens} is the softmax with that token's score
        logaddexp(s, sink) and value lerp(sink value, v, sigmoid(s - sink)), so the scan runs unchanged
        and the sink's score and value get their gradients."""
        sink, at = self.sink.to(scores.dtype)[:, None], starts[:, None, :]
        weight = torch.sigmoid(scores - sink)[..., None]
        if self.sink_value is None:
            joined_values = values * weight
        else:
            joined_values = torch.lerp(self.sink_value.to(values.dtype)[:, None], values, weight)
        return (
            torch.where(at, torch.logaddexp(scores, sink), scores),
            torch.where(at[..., None], joined_values, values),
        )

    def forward(
        self,
        x: Tensor,
        state: AarenScanState | None = None,
        score_bias: Tensor | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, AarenScanState]:
        """x [B, N, D] -> (y [B, N, D], state). Output k depends on x[:, :k+1] and the state only.

        score_bias: optional [B, H, N] (broadcastable) added to the scores, e.g. slope * timestep for a
        recency preference (ALiBi-like), which the input-independent query cannot express by itself.
        resets: optional [B, N] bool, True where a token starts a new sequence (see `aaren_scan`).

        With a sink, every sequence starts with it: at each reset, and before the first token when
        `state` is None (a given state holds its sink already: `init_state`, or a previous call's). Its
        weight e^sink / (e^sink + sum e^s) shrinks as matching tokens add up, so a head whose sink
        outweighs them sums its values (beside the sink's) rather than averaging them: it can count.
        """
        _check_x(x, self.embed_dim, "Aaren")
        b, n, _ = x.shape
        keys, values = (
            t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, N, Dh]
            for t in self.key_value(x).split(self.embed_dim, dim=-1)
        )
        scores = (keys @ self.query.to(keys.dtype).unsqueeze(-1)).squeeze(-1) / math.sqrt(self.head_dim)
        if score_bias is not None:  # added in the wider dtype: a bias over thousands of steps needs float32
            scores = scores.to(torch.promote_types(scores.dtype, score_bias.dtype)) + score_bias
        if self.sink is not None and (resets is not None or state is None):  # else nothing starts here
            resets = _starts(resets, state is None, b, n, x.device)
            scores, values = self._join_sink(scores, values, resets)
        out, state = aaren_scan(scores, values, state, resets=resets)
        y = out.transpose(1, 2).reshape(b, n, self.embed_dim)
        return self.dropout(self.proj(y)), state


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a KV cache, optionally limited to the last `max_context` tokens."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int = 1,
        dropout: float = 0.0,
        bias: bool = True,
        max_context: int | None = None,
    ):
        super().__init__()
        _check_heads(embed_dim, num_heads)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.max_context = max_context
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.attn_dropout = dropout
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, mask: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [B, N, D]; cache (keys, values) [B, H, T, Dh] of earlier tokens; mask [B, N, T + N] or None for
        plain causal attention without a cache. Returns y and the keys/values of all T + N tokens."""
        b, n, _ = x.shape
        q, k, v = (
            t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for t in self.qkv(x).split(self.embed_dim, 2)
        )
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        p = self.attn_dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.unsqueeze(1), dropout_p=p)
        y = y.transpose(1, 2).reshape(b, n, self.embed_dim)
        return self.dropout(self.proj(y)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, embed_dim: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(embed_dim, ffn_mult * embed_dim),
            nn.GELU(),
            nn.Linear(ffn_mult * embed_dim, embed_dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm residual block around a sequence mixer (Aaren or causal self-attention)."""

    def __init__(self, mixer: nn.Module, embed_dim: int, ffn_mult: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(embed_dim)
        self.mixer = mixer
        self.ln_2 = nn.LayerNorm(embed_dim)
        self.ffn = FeedForward(embed_dim, ffn_mult, dropout)

    def forward(self, x: Tensor, *mixer_args, **mixer_kwargs) -> tuple[Tensor, object]:
        mixed, state = self.mixer(self.ln_1(x), *mixer_args, **mixer_kwargs)
        x = x + mixed
        return x + self.ffn(self.ln_2(x)), state


class AarenBackbone(nn.Module):
    """A stack of Aaren blocks. Its state (`AarenState`) has the same size after 1 or 1,000,000 tokens."""

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_heads: int = 1,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        sink: bool = False,
        sink_value: bool = True,
    ):
        """sink, sink_value: a learned sink per head in every layer, and its learned value (`Aaren`)."""
        super().__init__()
        self.embed_dim = embed_dim
        mixer = dict(sink=sink, sink_value=sink_value)
        self.blocks = nn.ModuleList(
            Block(Aaren(embed_dim, num_heads, dropout, **mixer), embed_dim, ffn_mult, dropout)
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(embed_dim)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> AarenState:
        """The state before any token for `batch_size` sequences (empty, or each layer's sinks)."""
        return AarenState.from_layers(
            [blk.mixer.init_state(batch_size, device, dtype) for blk in self.blocks]
        )

    def forward(
        self,
        x: Tensor,
        state: AarenState | None = None,
        score_bias: Tensor | None = None,
        *,
        resets: Tensor | None = None,
    ) -> tuple[Tensor, AarenState]:
        """score_bias: optional [B, H, N] added to the scores of every layer (see `Aaren.forward`).
        resets: optional [B, N] bool, True where a token starts a new episode (packed rows): every layer
        empties its state just before it, so a packed row equals its episodes run one by one."""
        _check_x(x, self.embed_dim, type(self).__name__)
        if state is not None:
            _check_state(state, AarenState, x.shape[0], type(self).__name__)
        layer_states = []
        for i, blk in enumerate(self.blocks):
            x, layer_state = blk(x, None if state is None else state.layer(i), score_bias, resets=resets)
            layer_states.append(layer_state)
        return self.ln_f(x), AarenState.from_layers(layer_states)


class TransformerBackbone(nn.Module):
    """The causal-Transformer baseline with the same constructor and interface; its state is a `KVCache`.

    max_context: if set, each token attends to at most this many tokens (itself included), and the
    cache keeps only that many: a sliding window. Otherwise the cache grows with every token.
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_heads: int = 1,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        max_context: int | None = None,
    ):
        super().__init__()
        if max_context is not None and max_context < 1:
            raise ValueError(f"max_context must be None or >= 1, got {max_context}")
        self.embed_dim, self.max_context = embed_dim, max_context
        self.blocks = nn.ModuleList(
            Block(
                CausalSelfAttention(embed_dim, num_heads, dropout, max_context=max_context),
                embed_dim,
                ffn_mult,
                dropout,
            )
            for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(embed_dim)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> KVCache:
        """The empty cache for `batch_size` sequences."""
        first = self.blocks[0].mixer
        empty = torch.zeros(
            batch_size, first.num_heads, 0, first.head_dim, device=device, dtype=dtype or torch.float32
        )
        layers = (empty,) * len(self.blocks)
        return KVCache(layers, layers, torch.zeros(batch_size, 0, dtype=torch.bool, device=device))

    def _mask(self, valid: Tensor, n: int) -> Tensor:
        """[B, N, T + N] attention mask: earlier valid cache entries and the causal part, within the window."""
        t = valid.shape[1]
        causal = torch.ones(n, t + n, dtype=torch.bool, device=valid.device).tril(diagonal=t)
        allowed = torch.cat([valid, valid.new_ones(valid.shape[0], n)], dim=1)
        mask = causal.unsqueeze(0) & allowed.unsqueeze(1)
        if self.max_context is not None:
            pos = torch.arange(t + n, device=valid.device)
            mask &= (pos.unsqueeze(0) > pos[t:].unsqueeze(1) - self.max_context).unsqueeze(0)
        return mask

    def forward(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        _check_x(x, self.embed_dim, type(self).__name__)
        b, n, _ = x.shape
        if state is None and self.max_context is None:
            caches, mask = [None] * len(self.blocks), None  # training: plain causal attention
            valid = x.new_ones(b, 0, dtype=torch.bool)
        else:
            state = state if state is not None else self.init_state(b, x.device, x.dtype)
            _check_state(state, KVCache, b, type(self).__name__)
            caches, valid = list(zip(state.keys, state.values, strict=True)), state.valid
            mask = self._mask(valid, n)
        keys, values = [], []
        for blk, cache in zip(self.blocks, caches, strict=True):
            x, (k, v) = blk(x, cache, mask)
            keys.append(k)
            values.append(v)
        valid = torch.cat([valid, valid.new_ones(b, n)], dim=1)
        return self.ln_f(x), self._trim(KVCache(tuple(keys), tuple(values), valid))

    def _trim(self, cache: KVCache) -> KVCache:
        """Drop entries no row can attend to again: outside the window, or before every row's last reset."""
        start = cache.length - self.max_context if self.max_context is not None else 0
        any_valid = cache.valid.any(dim=0)
        first_valid = int(any_valid.float().argmax()) if bool(any_valid.any()) else cache.length
        start = max(start, first_valid, 0)
        if start == 0:
            return cache
        return KVCache(
            tuple(k[:, :, start:] for k in cache.keys),
            tuple(v[:, :, start:] for v in cache.values),
            cache.valid[:, start:],
        )


class LSTMBackbone(nn.Module):
    """The recurrent baseline with the same constructor and interface: a stacked `nn.LSTM` (cuDNN on a
    GPU) of width `embed_dim`, then a final LayerNorm as the other backbones have. Its state is an
    `LSTMState`, zeros before any token.

    num_heads and ffn_mult are taken for the shared constructor and unused. dropout is nn.LSTM's, between
    layers (none with one layer).
    """

    def __init__(
        self, embed_dim: int, num_layers: int, num_heads: int = 1, ffn_mult: int = 4, dropout: float = 0.1
    ):
        super().__init__()
        self.embed_dim = embed_dim
        between = dropout if num_layers > 1 else 0.0  # nn.LSTM warns about dropout after its last layer
        self.lstm = nn.LSTM(embed_dim, embed_dim, num_layers, batch_first=True, dropout=between)
        self.ln_f = nn.LayerNorm(embed_dim)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> LSTMState:
        """The zero state for `batch_size` sequences."""
        shape = (self.lstm.num_layers, batch_size, self.embed_dim)
        zeros = torch.zeros(shape, device=device, dtype=dtype or torch.float32)
        return LSTMState(zeros, torch.zeros_like(zeros))

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        _check_x(x, self.embed_dim, type(self).__name__)
        if state is not None:
            _check_state(state, LSTMState, x.shape[0], type(self).__name__)
        y, (h, c) = self.lstm(x, None if state is None else (state.h, state.c))
        return self.ln_f(y), LSTMState(h, c)


def _check_state(state: object, kind: type, batch_size: int, who: str) -> None:
    if not isinstance(state, kind):
        raise ValueError(
            f"{who}: `state` must be a {kind.__name__} (from init_state or a previous call), got {type(state).__name__}"
        )
    if state.batch_size != batch_size:
        raise ValueError(
            f"{who}: `state` holds {state.batch_size} sequences but `x` has batch size {batch_size}; "
            "use init_state(batch_size) or the state returned for this batch"
        )
