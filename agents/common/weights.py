"""What both products check when weights are loaded into a module."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str:
    """How saved `weights` fail to fit a module's `expected` state dict (missing, unexpected or
    wrongly shaped entries, a few of each); "" when they fit."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: saved {list(weights[k].shape)} vs expected {list(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    return "; ".join(
        part
        for part in (
            f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
            f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
            f"shape mismatch {wrong[:4]}" if wrong else "",
        )
        if part
    )


def nonfinite_entries(weights: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point entries of `weights` holding a NaN or an infinity, sorted."""
    return sorted(
        name
        for name, value in weights.items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    )
