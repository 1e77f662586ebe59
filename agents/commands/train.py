"""Train an offline decision agent (Aaren backbone, or the Transformer or LSTM baseline) from a YAML config."""

from __future__ import annotations

import argparse
import os

from agents.common.cli import ArgumentParser, exits_2_on_user_errors

EPILOG = """
examples:
  aaren-rl train --config quickstart              # a shipped config by name (aaren-rl configs lists them)
  aaren-rl train --config hopper-medium --set model.backbone=transformer
  aaren-rl train --config my-experiment.yaml --set train.steps=500 train.device=cuda
  aaren-rl train --resume runs/hopper-medium-v2-aaren-s0                   # continue a killed run
  torchrun --nproc_per_node=4 --no-python aaren-rl train --config hopper-medium --set train.device=cuda
                                                     # DDP on 4 GPUs; train.batch_steps makes the global batch

The run directory (<output_dir>/<name>, default runs/<dataset>-<backbone>-s<seed>) gets config.yaml,
dataset_stats.json, checkpoints/ (safetensors), tb/ (tensorboard --logdir runs), metrics.jsonl and
curve.png. Keys: see the shipped base config (aaren-rl configs --show base); a config may include
another with `base: file.yaml`.
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", help="YAML experiment config: a file, or a shipped config by name (e.g. hopper-medium)"
    )
    source.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_overrides(help="override config keys, e.g. --set train.steps=500 model.backbone=transformer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    args = parser.parse_args(argv)

    from agents import load_config, train
    from agents.common.shipped import find_config
    from agents.decision.run_dir import RunDir

    if args.resume:
        run_dir = train(resume=args.resume, overrides=args.overrides, progress=not args.no_progress)
    else:
        run_dir = train(load_config(find_config(args.config), args.overrides), progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 wrote the run directory
        run = RunDir(run_dir)
        print(f"run directory: {run.root}\n  curve: {run.curve}\n  tensorboard --logdir {run.tb}")
    return 0
