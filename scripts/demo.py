"""`make demo`: behaviour policy, dataset, agent and live evaluation: `aaren-rl demo` (agents/commands/demo.py)."""

import sys

from agents.commands.demo import main

if __name__ == "__main__":
    sys.exit(main())
