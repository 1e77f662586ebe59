"""Random float64 scan inputs shared by the scan tests."""

import torch


def make(b: int, h: int, n: int, dh: int, scale: float = 1.0, seed: int = 0):
    """(scores [b, h, n], values [b, h, n, dh]) in float64 from a seeded generator; scores times `scale`."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, h, n, generator=g, dtype=torch.float64) * scale
    values = torch.randn(b, h, n, dh, generator=g, dtype=torch.float64)
    return scores, values
