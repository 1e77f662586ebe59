"""Train an offline decision agent (Aaren backbone, or the Transformer baseline) from a YAML config."""

from __future__ import annotations

import argparse
import os
import sys

from torch.distributed.elastic.multiprocessing.errors import record

from agents import load_config, train
from agents.common.cli import ArgumentParser, exits_2_on_user_errors
from agents.decision.run_dir import RunDir

EPILOG = """
examples:
  python scripts/train_offline.py --config configs/quickstart.yaml
  python scripts/train_offline.py --config configs/hopper-medium.yaml --set model.backbone=transformer
  python scripts/train_offline.py --config configs/hopper-medium.yaml --set train.steps=500 train.device=cuda
  python scripts/train_offline.py --resume runs/hopper-medium-v2-aaren-s0          # continue a killed run
  torchrun --nproc_per_node=4 scripts/train_offline.py --config configs/hopper-medium.yaml --set train.device=cuda
                                                     # DDP on 4 GPUs; train.batch_steps makes the global batch

The run directory (<output_dir>/<name>, default runs/<dataset>-<backbone>-s<seed>) gets config.yaml,
dataset_stats.json, checkpoints/ (safetensors), tb/ (tensorboard --logdir runs), metrics.jsonl and
curve.png. Keys: see configs/base.yaml; a config may include another with `base: file.yaml`.
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="YAML experiment config, e.g. configs/hopper-medium.yaml")
    source.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_overrides(help="override config keys, e.g. --set train.steps=500 model.backbone=transformer")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    args = parser.parse_args(argv)
    if args.resume:
        run_dir = train(resume=args.resume, overrides=args.overrides, progress=not args.no_progress)
    else:
        run_dir = train(load_config(args.config, args.overrides), progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 wrote the run directory
        run = RunDir(run_dir)
        print(f"run directory: {run.root}\n  curve: {run.curve}\n  tensorboard --logdir {run.tb}")
    return 0


if __name__ == "__main__":
    sys.exit(record(main)())  # record: under torchrun a failing rank's traceback goes into torchrun's summary
