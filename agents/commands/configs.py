"""List the experiment configs shipped with aaren-rl, or show one with its includes resolved."""

from __future__ import annotations

import argparse

from agents.common.cli import ArgumentParser, exits_2_on_user_errors

EPILOG = """
examples:
  aaren-rl configs                              # every shipped config and sweep, by name
  aaren-rl configs --show hopper-medium         # its keys, with `base:` includes merged in
  aaren-rl configs --show quickstart > my.yaml  # a standalone copy to edit, then: aaren-rl train --config my.yaml

A name works wherever a config file does (aaren-rl train --config NAME, aaren-rl sweep --config NAME)
unless a file of that name is in the current folder.
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--show", metavar="NAME", help="print this config (or file) as one YAML file")
    args = parser.parse_args(argv)

    import yaml

    from agents.common.shipped import find_config, shipped_configs, shipped_dir, summary
    from agents.decision.config import read_yaml

    if args.show:
        print(yaml.safe_dump(read_yaml(find_config(args.show)), sort_keys=False), end="")
        return 0
    configs = shipped_configs()
    width = max(map(len, configs))
    print(f"shipped configs ({shipped_dir()}):")
    for name, path in configs.items():
        print(f"  {name:{width}}  {summary(path)}")
    return 0
