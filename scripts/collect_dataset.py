"""Collect a D4RL-format offline dataset: `aaren-rl collect` (agents/commands/collect.py)."""

import sys

from agents.commands.collect import main

if __name__ == "__main__":
    sys.exit(main())
