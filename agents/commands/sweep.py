"""Run a sweep (a grid of train-and-evaluate runs) on Ray: on this machine, or on a cluster with --address."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.common.cli import USER_ERROR_STATUS, ArgumentParser, exits_2_on_user_errors
from agents.common.shipped import SWEEPS, find_config
from agents.decision.sweep import (
    RAY_LOG,
    kept_files,
    load_sweep,
    print_failures,
    run_sweep,
    trial_record,
    write_report,
)

EPILOG = """
examples:
  aaren-rl sweep --config quality-quick             # a shipped sweep by name; local Ray, all CPUs
  aaren-rl sweep --config my-sweep.yaml --address auto                   # the cluster here
  aaren-rl sweep --config quality-quick --address ray://HEAD:10001 \\
      --out /shared/sweeps/quality-quick      # Ray Client; /shared: the same filesystem on every node

Each trial trains and evaluates in its own run directory, DIR/runs/<name>; DIR gets sweep.json (every
trial: overrides, status, attempts, final evaluation, wall time), sweep.md (per group the IQM over seeds
with its 95% interval; with compare: in the sweep file, each value of that axis against its baseline),
sweep.png, curves.png (learning curves, where trials evaluate during training) and ray.log (Ray's own
messages). Interrupted (Ctrl-C, a lost machine)? Run the same
command again: finished trials are kept, unfinished ones resume from their last checkpoint. On a cluster DIR must be on a filesystem
shared by the driver and every node, and every node needs aaren-rl with its ray extra installed. A cluster with
Ray's token authentication (the default of new Ray clusters) also needs its token on the driver and,
for ray://, RAY_AUTH_MODE=token (Ray's token-auth docs).
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", required=True, help="sweep file, or a shipped sweep by name (e.g. quality-quick)"
    )
    parser.add_argument(
        "--address",
        help="Ray cluster to run on: auto (the one on this machine) or ray://HOST:10001 (Ray Client)",
    )
    parser.add_argument("--out", type=Path, help="output folder DIR (default: sweeps/<sweep file name>)")
    parser.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="at most N trials at a time (default: as resources allow)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    parser.add_argument(
        "--kept",
        action="store_true",
        help="run nothing: list the report and the finished trials' small files, one per line, to carry the "
        "sweep to another machine (e.g. git add -f $(aaren-rl sweep --config X --out DIR --kept))",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: write the report again from the trials' run directories (e.g. after an update of "
        "aaren-rl that adds to it)",
    )
    args = parser.parse_args(argv)
    if args.max_concurrent is not None and args.max_concurrent < 1:
        parser.error(f"--max-concurrent {args.max_concurrent}: give a number >= 1")
    out = args.out or Path("sweeps") / Path(args.config).stem
    if args.kept:
        if not (out / "sweep.json").is_file():
            parser.error(
                f"--kept: {out / 'sweep.json'} does not exist; run the sweep first, or give its --out"
            )
        print("\n".join(map(str, kept_files(out))))
        return 0
    sweep = load_sweep(find_config(args.config, SWEEPS), out)
    if args.report:
        write_report(sweep, [trial_record(trial) for trial in sweep.trials], out)
        print((out / "sweep.md").read_text())
        return 0
    try:
        records = run_sweep(
            sweep,
            out,
            address=args.address,
            max_concurrent=args.max_concurrent,
            progress=not args.no_progress,
        )
    except ModuleNotFoundError as exc:  # the `ray` extra is missing: the message says how to add it
        if exc.name != "ray":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue (report so far: {out / 'sweep.md'})")
        return 130
    print((out / "sweep.md").read_text())
    return 1 if print_failures(records, out / RAY_LOG) else 0
