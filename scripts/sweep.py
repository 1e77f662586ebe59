"""Run a sweep of training runs on Ray: `aaren-rl sweep` (agents/commands/sweep.py)."""

import sys

from agents.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
