"""The folded form: the backbones prepared for acting, a few new tokens per call, the output at the
newest one only.

At batch 1 a backbone call costs its number of small operations, not its arithmetic, so the folded
backbones run on plain weight tensors prepared once from the modules (exact in real arithmetic; the
float roundoff differs from the modules' forward):
- An Aaren head's query is input-independent, so its score q . (W_k x + b_k) / sqrt(Dh) is one vector
  per head, (W_k^T q / sqrt(Dh)) . x + q . b_k / sqrt(Dh): the key projection collapses into one more
  output column of the value projection. A constant-1 column beside each head's values carries the
  softmax denominator through the same matmul, and the output projection's bias rides on it, so
  projection, bias and residual are one addmm.
- GELU's constants go into the feed-forward weights; weights are stored transposed for addmm.
- The last layer runs its projection and feed-forward on the newest token (or the read position) only.
- Where it can (`aaren_rl.ops.fused`: CPU, float32/64, no autograd, a C++ compiler) a whole call runs
  fused, as one C++ call doing the same arithmetic: the matmuls stay torch's, the small work between
  them is plain loops. Otherwise the same operations run from Python.

The folded weights are those of fold time: fold again after the module's weights change
(`ParameterVersions` tells). Inference only: no dropout, no gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from aaren_rl.model import AarenBackbone, Block, TransformerBackbone
from aaren_rl.ops import fused
from aaren_rl.states import AarenState


class ParameterVersions:
    """Whether any parameter or buffer of a module was changed in place (an optimiser step, a
    `load_state_dict`) or replaced since this was made: the cue to fold again. It reads the tensors'
    version counters, which fused optimizer kernels (`fused=True`) do not bump: after such a step,
    fold again regardless (`agents.ppo.policy.AarenActorCriticPolicy` does it with a step hook)."""

    def __init__(self, module: nn.Module):
        self._tensors = [*module.parameters(), *module.buffers()]
        built = fused.fused_module()
        self._fused = built.Versions(self._tensors) if built is not None else None  # the same check in C++
        self._seen = self._current() if self._fused is None else None

    def _current(self) -> list[tuple[int, int]]:
        return [(t._version, t.data_ptr()) for t in self._tensors]

    def changed(self) -> bool:
        return self._fused.changed() if self._fused is not None else self._current() != self._seen


@dataclass(frozen=True)
class _LayerNorm:
    weight: Tensor
    bias: Tensor
    eps: float

    @classmethod
    def of(cls, ln: nn.LayerNorm) -> _LayerNorm:
        return cls(ln.weight.detach(), ln.bias.detach(), ln.eps)

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@dataclass(frozen=True)
class _FeedForward:
    """x + FFN(LN(x)) with GELU(a) = a (1 + erf(a / sqrt 2)) / 2: 1/sqrt(2) folded into both matmuls."""

    ln: _LayerNorm
    w1_t: Tensor  # [D, F] times 1/sqrt(2)
    b1: Tensor
    w2_t: Tensor  # [F, D] times 1/sqrt(2)
    b2: Tensor

    @classmethod
    def of(cls, block: Block) -> _FeedForward:
        fc1, fc2 = block.ffn.net[0], block.ffn.net[2]
        if not isinstance(block.ffn.net[1], nn.GELU) or block.ffn.net[1].approximate != "none":
            raise ValueError("folding supports the exact GELU feed-forward only")
        r = 1 / math.sqrt(2)
        return cls(
            _LayerNorm.of(block.ln_2),
            (fc1.weight.detach() * r).t().contiguous(),
            fc1.bias.detach() * r,
            (fc2.weight.detach() * r).t().contiguous(),
            fc2.bias.detach(),
        )

    def __call__(self, x: Tensor) -> Tensor:
        a = torch.addmm(self.b1, self.ln(x), self.w1_t)  # a / sqrt(2) of the unfolded FFN
        return torch.addmm(x, a.erf().add_(1).mul_(a), self.w2_t).add_(self.b2)


def _norm_weights(ln: _LayerNorm) -> tuple[Tensor, Tensor]:
    return ln.weight.contiguous(), ln.bias.contiguous()


def _fused_weights(layers: list, ln_f: _LayerNorm, mixer: Callable[[Any], tuple[Tensor, ...]]):
    """The flat weight list the fused step takes (`aaren_rl/ops/fused.h`: per layer ln_1, the
    `mixer` tensors, ln_2 and the feed-forward; then the final norm) and the one eps of every layer
    norm (None where they differ: no fusion)."""
    flat = []
    for layer in layers:
        ffn = layer.ffn
        flat += [*_norm_weights(layer.ln_1), *mixer(layer), *_norm_weights(ffn.ln)]
        flat += [ffn.w1_t, ffn.b1.contiguous(), ffn.w2_t, ffn.b2.contiguous()]
    norms = [ln_f, *(n for layer in layers for n in (layer.ln_1, layer.ffn.ln))]
    return flat + list(_norm_weights(ln_f)), fused.shared_eps(*norms)


def _bias(linear: nn.Linear) -> Tensor:
    return linear.bias.detach() if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


@dataclass(frozen=True)
class _AarenLayer:
    """One Aaren block folded: [values_h, 1] per head then one score per head from a single addmm."""

    ln_1: _LayerNorm
    mix_t: Tensor  # [D, H (Dh + 1) + H]
    mix_b: Tensor
    proj_t: Tensor  # [H (Dh + 1), D]: each head's Dh rows of W_proj^T, then its 1 row (the bias on head 0)
    ffn: _FeedForward

    @classmethod
    def of(cls, block: Block) -> _AarenLayer:
        mixer = block.mixer
        h, dh, d = mixer.num_heads, mixer.head_dim, mixer.embed_dim
        w, b = mixer.key_value.weight.detach(), _bias(mixer.key_value)
        q = mixer.query.detach().to(w.dtype) / math.sqrt(dh)  # [H, Dh]
        w_k, w_v = w[:d].view(h, dh, d), w[d:].view(h, dh, d)
        b_k, b_v = b[:d].view(h, dh), b[d:].view(h, dh)
        ones_row = torch.zeros(h, 1, d, dtype=w.dtype, device=w.device)
        mix_w = torch.cat(
            [torch.cat([w_v, ones_row], 1).view(h * (dh + 1), d), torch.einsum("hk,hkd->hd", q, w_k)]
        )
        mix_b = torch.cat([torch.cat([b_v, b_v.new_ones(h, 1)], 1).view(-1), (q * b_k).sum(-1)])
        p_w, p_b = mixer.proj.weight.detach(), _bias(mixer.proj)
        bias_rows = torch.cat([p_b[None], p_b.new_zeros(h - 1, d)]).view(h, 1, d)
        proj_t = torch.cat([p_w.t().reshape(h, dh, d), bias_rows], 1).view(h * (dh + 1), d)
        return cls(
            _LayerNorm.of(block.ln_1),
            mix_w.t().contiguous(),
            mix_b,
            proj_t.contiguous(),
            _FeedForward.of(block),
        )

    def __call__(
        self,
        x: Tensor,
        m: Tensor,
        z: Tensor,
        mask: Tensor | None,
        n: int,
        last: bool,
        score_bias: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [n T, D]; m [n, H], z [n, H, Dh + 1] the state ([w, u]); mask [n|1, 1, T, T + 1] additive
        (None: T = 1 and no reset); score_bias [n|1, H, T] or None, added to the scores.
        Returns the block output (at every token, or the newest if `last`) and the new (m, z)."""
        heads = m.shape[1]
        t = x.shape[0] // n
        split = z.shape[-1] * heads
        mixed = torch.addmm(self.mix_b, self.ln_1(x), self.mix_t)
        values = mixed[:, :split].view(n, t, heads, -1).transpose(1, 2)  # [n, H, T, Dh + 1]
        scores = mixed[:, split:].view(n, t, heads).transpose(1, 2)  # [n, H, T]
        if score_bias is not None:
            scores = scores + score_bias
        if last and t > 1:
            mask = None if mask is None else mask[..., -1:, :]
            x = x.view(n, t, -1)[:, -1]
        logits = torch.cat([m.unsqueeze(-1), scores], -1).unsqueeze(-2)  # the state is key -1
        if mask is not None:
            logits = logits + mask
        run_max = logits.amax(-1, keepdim=True)
        num = logits.sub_(run_max).exp_() @ torch.cat([z.unsqueeze(-2), values], -2)  # [n, H, T', Dh + 1]
        out = num / num[..., -1:]  # per head: the attention output and a 1 (carries the proj bias)
        x = torch.addmm(x, out.transpose(1, 2).reshape(x.shape[0], split), self.proj_t)
        return self.ffn(x), run_max[..., -1, 0], num[..., -1, :]


class FoldedAarenBackbone:
    """An `AarenBackbone` folded for acting: `folded(x, state, mask) -> (y_newest, state)`.

    Equals the backbone's forward on the same tokens (its output at the newest token, and its state),
    with memory resets inside the call expressed by `score_mask` and the backbone's optional
    `score_bias` passed through.
    """

    def __init__(self, backbone: AarenBackbone):
        if not isinstance(backbone, AarenBackbone):
            raise ValueError(f"FoldedAarenBackbone folds an AarenBackbone, got {type(backbone).__name__}")
        self.layers = [_AarenLayer.of(block) for block in backbone.blocks]
        self.sinks = any(block.mixer.sink is not None for block in backbone.blocks)
        self.ln_f = _LayerNorm.of(backbone.ln_f)
        self.dtype = self.ln_f.weight.dtype
        self.flat_weights, self.eps = _fused_weights(
            self.layers, self.ln_f, lambda layer: (layer.mix_t, layer.mix_b, layer.proj_t)
        )

    def score_mask(self, resets: Tensor) -> Tensor:
        """Additive [B, 1, N, N + 1] mask from resets [B, N] bool (token j starts a new sequence: the
        state and the tokens before j are forgotten from token j on). Key 0 is the carried state.
        Not for a backbone with sinks, whose sequences start from its `init_state` rather than empty."""
        if self.sinks and bool(resets.any()):
            raise ValueError(
                "FoldedAarenBackbone: resets inside a call forget the state, sinks included. Fix: with sinks, "
                "set the rows' state to the backbone's init_state between calls (AarenState.reset(rows, to=...))"
            )
        n = resets.shape[-1]
        tokens = torch.arange(n, device=resets.device)
        keys = torch.arange(-1, n, device=resets.device)
        last_reset = torch.where(resets, tokens, -1).cummax(-1).values  # [B, N]
        allowed = (keys <= tokens[:, None]) & (keys >= last_reset[..., None])
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=resets.device)
        return mask.masked_fill_(~allowed, float("-inf")).unsqueeze(1)

    def __call__(
        self, x: Tensor, state: AarenState, mask: Tensor | None, score_bias: Tensor | None = None
    ) -> tuple[Tensor, AarenState]:
        """x [B, N, D] new tokens, state of B sequences, mask from `score_mask` ([B or 1, 1, N, N + 1];
        None for one token, N = 1, continuing the state), score_bias [B or 1, H, N] in the folded dtype
        as in `AarenBackbone.forward` (or None).
        Returns the output at the newest token [B, D] and the state after all N tokens."""
        if mask is None and x.shape[1] != 1:
            raise ValueError(
                f"FoldedAarenBackbone: `mask` may be None for one token only, got {x.shape[1]} tokens"
            )
        n = x.shape[0]
        x = x.reshape(-1, x.shape[-1])
        memory = (state.m, state.u, state.w, mask, score_bias)
        module = fused.module_for(x, *memory) if self.eps is not None else None
        if module is not None:
            mask, score_bias = (None if t is None else t.contiguous() for t in (mask, score_bias))
            y, *memory = module.aaren_step(
                x.contiguous(), state.m, state.u, state.w, mask, score_bias, n, self.flat_weights, self.eps
            )
            return y, AarenState(*memory)
        z = torch.cat([state.w, state.u.unsqueeze(-1)], -1)  # [L, B, H, Dh + 1]
        ms, zs = [], []
        for i, layer in enumerate(self.layers):
            x, m_i, z_i = layer(x, state.m[i], z[i], mask, n, i == len(self.layers) - 1, score_bias)
            ms.append(m_i)
            zs.append(z_i)
        z = torch.stack(zs)  # [L, B, H, Dh + 1] = [w, u]
        return self.ln_f(x), AarenState(torch.stack(ms), z[..., -1], z[..., :-1])


@dataclass(frozen=True)
class _TransformerLayer:
    ln_1: _LayerNorm
    qkv_t: Tensor  # [D, 3 D]
    qkv_b: Tensor
    proj_t: Tensor  # [D, D]
    proj_b: Tensor
    ffn: _FeedForward
    num_heads: int

    @classmethod
    def of(cls, block: Block) -> _TransformerLayer:
        mixer = block.mixer
        return cls(
            _LayerNorm.of(block.ln_1),
            mixer.qkv.weight.detach().t().contiguous(),
            _bias(mixer.qkv),
            mixer.proj.weight.detach().t().contiguous(),
            _bias(mixer.proj),
            _FeedForward.of(block),
            mixer.num_heads,
        )

    def __call__(self, x: Tensor, n: int, read: Tensor | None) -> Tensor:
        """x [n T, D] -> the block output at every token, or at positions `read` [n] only ([n, D])."""
        t, d = x.shape[0] // n, x.shape[1]
        qkv = torch.addmm(self.qkv_b, self.ln_1(x), self.qkv_t).view(n, t, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [n, H, T, Dh]
        if read is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            rows = torch.arange(n, device=x.device)
            q = q[rows, :, read].unsqueeze(2)  # [n, H, 1, Dh]
            visible = torch.arange(t, device=x.device) <= read[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None])
            x = x.view(n, t, d)[rows, read]
        y = y.transpose(1, 2).reshape(x.shape[0], d)
        return self.ffn(torch.addmm(x, y, self.proj_t).add_(self.proj_b))


class FoldedTransformerBackbone:
    """A `TransformerBackbone` folded for acting on short windows: `folded(x, read) -> y` runs the causal
    forward over x [B, T, D] from an empty cache and returns the output at position read[b] of each row
    [B, D] (the last layer computes that position only)."""

    def __init__(self, backbone: TransformerBackbone):
        if not isinstance(backbone, TransformerBackbone) or backbone.max_context is not None:
            raise ValueError("FoldedTransformerBackbone folds a TransformerBackbone without max_context")
        self.layers = [_TransformerLayer.of(block) for block in backbone.blocks]
        self.ln_f = _LayerNorm.of(backbone.ln_f)
        self.flat_weights, self.eps = _fused_weights(
            self.layers, self.ln_f, lambda layer: (layer.qkv_t, layer.qkv_b, layer.proj_t, layer.proj_b)
        )
        self.num_heads = self.layers[0].num_heads

    def __call__(self, x: Tensor, read: Tensor) -> Tensor:
        n = x.shape[0]
        x = x.reshape(-1, x.shape[-1])
        module = fused.module_for(x) if self.eps is not None else None
        if module is not None:
            return module.transformer_step(
                x.contiguous(), read, n, self.num_heads, self.flat_weights, self.eps
            )
        for i, layer in enumerate(self.layers):
            x = layer(x, n, read if i == len(self.layers) - 1 else None)
        return self.ln_f(x)
