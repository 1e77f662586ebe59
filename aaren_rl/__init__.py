"""aaren_rl: the model core of aaren-rl (torch only).

Aaren attention (parallel prefix scan for training, O(1)-memory recurrent update for acting), Aaren
and causal-Transformer backbones behind one `forward(x, state=None) -> (y, state)` interface.
"""

from aaren_rl.functional import aaren_scan
from aaren_rl.model import Aaren, AarenBackbone, CausalSelfAttention, TransformerBackbone
from aaren_rl.states import AarenState, KVCache

__all__ = [
    "Aaren",
    "AarenBackbone",
    "AarenState",
    "CausalSelfAttention",
    "KVCache",
    "TransformerBackbone",
    "aaren_scan",
]
