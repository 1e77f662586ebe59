"""`aaren-rl`, the installed command (also `python -m agents`): one subcommand per task, each a module
here whose `main(argv, prog)` parses its own flags. The files in scripts/ call the same functions, so
`python scripts/train_offline.py ...` and `aaren-rl train ...` take the same flags and print the same help
and `error:` lines (agents.common.cli: a user error is one line and exit status 2).

Under torchrun, run it as `torchrun ... --no-python aaren-rl train ...` (or `torchrun ... -m agents
train ...`); `console` records a failing rank's traceback for torchrun's summary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from agents.common.cli import ArgumentParser

#: Subcommand -> (its module, what it does). The scripts in scripts/ wrap the modules of the first six.
COMMANDS = {
    "train": (
        "agents.commands.train",
        "train an offline decision agent from a config (scripts/train_offline.py)",
    ),
    "evaluate": ("agents.commands.evaluate", "evaluate a trained decision agent live (scripts/evaluate.py)"),
    "collect": ("agents.commands.collect", "collect a D4RL-format dataset (scripts/collect_dataset.py)"),
    "sweep": ("agents.commands.sweep", "run a grid of training runs on Ray (scripts/sweep.py)"),
    "ppo": ("agents.commands.ppo", "train AarenPPO on a memory task (scripts/train_ppo.py)"),
    "demo": (
        "agents.commands.demo",
        "behaviour policy, dataset, agent and evaluation in minutes (scripts/demo.py)",
    ),
    "configs": ("agents.commands.configs", "list the shipped configs, or show one"),
    "push": ("agents.commands.push", "share a trained agent on the Hugging Face Hub"),
}

DESCRIPTION = """Aaren decision agents and AarenPPO from the command line.

commands:
{commands}

`%(prog)s COMMAND --help` shows a command's flags and examples; a first run:
  %(prog)s train --config quickstart --set data.dataset=PATH.hdf5    (or %(prog)s demo: data included)
"""


def _version() -> str:
    try:
        return version("aaren-rl")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None, prog: str = "aaren-rl") -> int:
    """Run `aaren-rl COMMAND ARGS...`: the command's own main with ARGS; its exit status."""
    listing = "\n".join(f"  {name:9s} {summary}" for name, (_, summary) in COMMANDS.items())
    parser = ArgumentParser(
        prog=prog,
        description=DESCRIPTION.format(commands=listing),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("command", nargs="?", metavar="COMMAND", help="one of the commands above")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command not in COMMANDS:
        given = "no command" if args.command is None else f"unknown command {args.command!r}"
        parser.error(f"{given}: choose from {', '.join(COMMANDS)}")
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(args.args, prog=f"{prog} {args.command}")


def console() -> NoReturn:
    """The process entry point of `aaren-rl` and `python -m agents` (torchrun's `record`: a failing
    rank's traceback goes into torchrun's summary)."""
    from torch.distributed.elastic.multiprocessing.errors import record

    name = Path(sys.argv[0]).name
    prog = "python -m agents" if name == "__main__.py" else name
    sys.exit(record(main)(prog=prog))
