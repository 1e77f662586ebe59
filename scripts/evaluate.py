"""Evaluate a trained decision agent live: `aaren-rl evaluate` (agents/commands/evaluate.py)."""

import sys

from agents.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
