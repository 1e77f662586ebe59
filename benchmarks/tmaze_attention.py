"""How much attention a trained T-Maze run pays to the cue when it decides: per Aaren layer, the softmax
weight of the first step's three tokens at the junction, in corridors of several lengths.

Why: an Aaren layer's readout is a softmax-weighted mean over every token so far, so a cue whose score
beats each corridor token's by a fixed margin keeps a weight of about e^margin / corridor length. This
shows that dilution, layer by layer, next to the action the run chooses.

The episode is the oracle's path (`envs.tmaze`): the cue (+1 up, -1 down) at step 0, moves right along
the corridor, the junction flag at step L; returns-to-go at target 1 and each step's own timestep (the
table clamps those past its end, as acting does; the step slopes of `model.step_slopes` see them all). One
parallel forward of the run's latest checkpoint per length and cue; each layer's scores are recomputed
from its input and score bias (a forward pre-hook) with its own keys and query. Prints each layer's largest
cue weight over its heads; writes every head's, and the run's step slopes, to <run>/tmaze_attention.json.

    .venv/bin/python benchmarks/tmaze_attention.py RUN_DIR [--lengths 100 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from aaren_rl.model import Aaren
from agents.common.cli import exits_2_on_user_errors
from agents.decision.checkpoint import load_model
from agents.decision.model import DecisionModel
from agents.decision.run_dir import latest_checkpoint
from envs.files import write_atomic
from envs.tmaze import DOWN, RIGHT, UP

CUE_TOKENS = 3  # the first step's return-to-go, observation (the cue) and action


def layer_scores(model: DecisionModel, run: Callable[[], object]) -> list[torch.Tensor]:
    """Each Aaren layer's scores [H, N] of one forward `run()` of a batch of one, in layer order, its score
    bias (the step slopes') included."""
    scores: list[torch.Tensor] = []

    def record(layer: Aaren, args: tuple) -> None:
        keys = layer.key_value(args[0])[0, :, : layer.embed_dim].view(-1, layer.num_heads, layer.head_dim)
        layer_scores = (keys * layer.query).sum(-1).T / math.sqrt(layer.head_dim)
        bias = args[2] if len(args) > 2 else None
        scores.append(layer_scores if bias is None else layer_scores + bias[0])

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, Aaren)]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return scores


def junction(model: DecisionModel, length: int, cue: float) -> dict:
    """The action chosen at the junction of a corridor of `length` and, per layer, the cue step's weight
    and the score margin of its best token over the corridor tokens' median (head 0)."""
    steps = length + 1
    obs = torch.zeros(1, steps, model.config.obs_dim)
    obs[0, 0, 0], obs[0, length, 1] = cue, 1.0
    actions = torch.full((1, steps, 1), float(RIGHT))
    returns, times = torch.ones(1, steps), torch.arange(steps)[None]
    outputs = {}
    scores = layer_scores(model, lambda: outputs.update(logits=model(returns, obs, actions, times)[0]))
    read = 3 * length + 1  # the junction's observation token, where its action is predicted
    layers = []
    for s in scores:
        weights = torch.softmax(s[:, : read + 1].double(), dim=-1)
        margin = s[0, :CUE_TOKENS].max() - s[0, CUE_TOKENS:read].median()
        layers.append({"cue_weight": weights[:, :CUE_TOKENS].sum(-1).tolist(), "score_margin": float(margin)})
    choice = int(outputs["logits"][0, length].argmax())
    return {
        "length": length,
        "cue": cue,
        "action": choice,
        "correct": choice == (UP if cue > 0 else DOWN),
        "layers": layers,
    }


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a T-Maze run directory (aaren backbone)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000, 10000], help="corridor lengths")
    args = parser.parse_args(argv)
    model, step = load_model(latest_checkpoint(args.run))
    if model.config.backbone != "aaren" or model.config.obs_dim != 3:
        parser.error(f"{args.run}: give a T-Maze run of the aaren backbone (3 observations)")
    rows = [junction(model, length, cue) for length in args.lengths for cue in (1.0, -1.0)]
    for row in rows:
        cells = ", ".join(
            f"layer {i} {max(layer['cue_weight']):.4f}" for i, layer in enumerate(row["layers"])
        )
        verdict = "correct" if row["correct"] else "wrong"
        print(f"corridor {row['length']:6d} cue {row['cue']:+.0f}: {verdict} turn; cue weight {cells}")
    out = args.run / "tmaze_attention.json"
    slopes = None if model.step_slope is None else model.step_slope.tolist()
    report = {"run": str(args.run), "step": step, "step_slopes": slopes, "junctions": rows}
    write_atomic(out, json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
