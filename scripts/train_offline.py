"""Train an offline decision agent from a YAML config: `aaren-rl train` (agents/commands/train.py)."""

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from agents.commands.train import main

if __name__ == "__main__":
    sys.exit(record(main)())  # record: under torchrun a failing rank's traceback goes into torchrun's summary
