"""aaren_rl: the model core of aaren-rl (torch only).

Aaren attention (parallel prefix scan for training, O(1)-memory recurrent update for acting), Aaren,
causal-Transformer and LSTM backbones behind one `forward(x, state=None) -> (y, state)` interface.
"""

from aaren_rl.functional import aaren_scan
from aaren_rl.model import Aaren, AarenBackbone, CausalSelfAttention, LSTMBackbone, TransformerBackbone
from aaren_rl.states import AarenState, KVCache, LSTMState

__all__ = [
    "Aaren",
    "AarenBackbone",
    "AarenState",
    "CausalSelfAttention",
    "KVCache",
    "LSTMBackbone",
    "LSTMState",
    "TransformerBackbone",
    "aaren_scan",
]
