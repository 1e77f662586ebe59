"""D4RL-normalised scores: 100 * (return - random) / (expert - random)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.d4rl import TASKS, reference_scores


def normalized_score(
    name: str | Mapping[str, Any] | Any,
    returns: float | np.ndarray,
    ref_min: float | None = None,
    ref_max: float | None = None,
) -> float | np.ndarray:
    """D4RL-normalised score x100 of ``returns`` (a number or an array, vectorised).

    The reference scores come from, in order: explicit ``ref_min``/``ref_max``; the ``ref_min_score``/
    ``ref_max_score`` of a dataset's metadata when ``name`` is an ``OfflineDataset`` or a metadata
    mapping (else its ``env_id``); D4RL's table for a name that names hopper/halfcheetah/walker2d/ant.
    Scores on Gymnasium v5 tasks are not the papers' v2 numbers: compare agents side by side.
    """
    if (ref_min is None) != (ref_max is None):
        raise ValueError("Give both ref_min and ref_max, or neither.")
    label = name
    if ref_min is None:
        meta = getattr(name, "metadata", name)
        if isinstance(meta, Mapping):
            label = meta.get("env_id", meta.get("name", "<dataset>"))
            if "ref_min_score" in meta and "ref_max_score" in meta:
                ref_min, ref_max = float(meta["ref_min_score"]), float(meta["ref_max_score"])
        if ref_min is None:
            refs = reference_scores(label) if isinstance(label, str) else None
            if refs is None:
                raise ValueError(
                    f"No reference scores known for {label!r}: D4RL's exist for {sorted(TASKS)} "
                    "(any id starting with one of them). Pass ref_min= and ref_max= explicitly."
                )
            ref_min, ref_max = refs
    if not ref_max > ref_min:
        raise ValueError(f"ref_max ({ref_max}) must be greater than ref_min ({ref_min}).")
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)
    return float(score) if score.ndim == 0 else score
