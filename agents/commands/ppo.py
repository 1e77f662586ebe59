"""Train AarenPPO on a partially observable task (POPGym, or the aaren_rl/... memory tasks) and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.common.cli import ArgumentParser, exits_2_on_user_errors

EPILOG = """
examples:
  aaren-rl ppo --task RepeatPreviousEasy          # a POPGym task (the popgym extra)
  aaren-rl ppo --task CountRecallEasy --seed 1 --set policy.episode_time=true
  aaren-rl ppo --task CartPoleNoVel --steps 100000 --set ppo.learning_rate=3e-4 policy.num_heads=8

Each task's envs and PPO settings are those of the POPGym benchmark (agents/ppo/tasks.py; every
POPGym task gets the same set); --set
changes any option of AarenPPO (ppo.<option>) or of its policy (policy.<option>). The run directory
(<out>/<name>, default runs/ppo-<task>-s<seed>) gets config.yaml (what ran), tb/ (tensorboard --logdir
runs), model.zip (AarenPPO.load: SB3's format pickles, so load only your own), policy.zip (weights as
safetensors + JSON: agents.ppo.export.load_exported_policy, no unpickling) and eval.json (the final
deterministic return on fresh envs).
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    from agents.ppo.tasks import POPGYM_STEPS, TASKS

    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--task",
        required=True,
        help=f"{', '.join(TASKS)}, or any other POPGym task by name (e.g. RepeatPreviousMedium: the POPGym "
        "settings)",
    )
    parser.add_argument(
        "--steps", type=int, default=POPGYM_STEPS, help=f"env steps to train (default: {POPGYM_STEPS})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the envs (default: 0)")
    parser.add_argument(
        "--eval-episodes", type=int, default=10, help="final evaluation episodes (default: 10)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run directory")
    parser.add_argument("--name", help="run directory name inside --out (default: ppo-<task>-s<seed>)")
    parser.add_overrides(help="override options, e.g. --set ppo.learning_rate=3e-4 policy.num_heads=8")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, fastest here)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (e.g. in CI logs)")
    args = parser.parse_args(argv)
    for flag in ("steps", "eval_episodes", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    from agents.ppo.train import PPORun, train_ppo

    run = PPORun.of_task(
        args.task, args.overrides, steps=args.steps, seed=args.seed, eval_episodes=args.eval_episodes
    )
    run_dir = args.out.expanduser() / (args.name or f"ppo-{args.task}-s{args.seed}")
    train_ppo(run, run_dir, progress=not args.no_progress, threads=args.threads)
    print(
        f"run directory: {run_dir}\n  eval: {run_dir / 'eval.json'}\n  tensorboard --logdir {run_dir / 'tb'}"
    )
    return 0
