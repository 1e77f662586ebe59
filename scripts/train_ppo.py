"""Train AarenPPO on a memory task: `aaren-rl ppo` (agents/commands/ppo.py)."""

import sys

from agents.commands.ppo import main

if __name__ == "__main__":
    sys.exit(main())
