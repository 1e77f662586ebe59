"""Collect a D4RL-format offline dataset by rolling out behaviour policies (see envs/collect.py)."""

from __future__ import annotations

import argparse

from agents.common.cli import ArgumentParser, exits_2_on_user_errors
from envs.collect import (
    POPGYM_RECIPES,
    RECIPES,
    TMAZE_RECIPES,
    collect_dataset,
    collect_recipe,
    parse_recipe_id,
)
from envs.d4rl import TASKS, canonical_env_id
from envs.experts import experts_dir
from envs.popgym import OFFLINE_TASKS, offline_name

EPILOG = (
    f"""
recipes (NAME = <task>-<recipe>[-vK], written by default to the D4RL location so that
envs.load_dataset(NAME) finds it: $D4RL_DATASET_DIR or ~/.d4rl/datasets, file <task>_<recipe>-vK.hdf5):
  random         uniform random actions
  medium         a policy at about 1/3 of expert return   expert: the best policy
  medium-expert  half medium, half expert data             mixed: random + weak + medium, sampled
                                                          stochastically (a stand-in for medium-replay)
default policies: RL Zoo agents, from the folder $AAREN_RL_EXPERTS when set (offline machines), else
downloaded once from the Hugging Face Hub (sb3/<algo>-<Env>-v3, $HF_ENDPOINT) into the cache.
Policy names are looked up in {experts_dir()}:
"""
    + "\n".join(
        f"  {task.name:12s} " + ", ".join(f"{r}={p}" for r, p in task.policies.items())
        for task in TASKS.values()
        if task.policies
    )
    + """
T-Maze (envs/tmaze.py): tmaze-<length>[-<length>...][-noisy]-<recipe>[-vK], --steps split evenly over the
corridor lengths; a scripted oracle with detours along the corridor, turning to the wrong goal in
"""
    + ", ".join(f"{share:.0%} ({recipe})" for recipe, share in TMAZE_RECIPES.items())
    + """ of episodes
POPGym (envs/popgym.py): popgym-<task>-<level>-<recipe>[-vK]; a scripted oracle taking random actions in
each episode at a share drawn from """
    + "; ".join(
        f"{', '.join(f'{p:g}' for p in shares)} ({recipe})" for recipe, shares in POPGYM_RECIPES.items()
    )
    + """. <task>-<level>:
  """
    + ", ".join(offline_name(name).removeprefix("popgym-") for name in OFFLINE_TASKS)
    + """

examples:
  aaren-rl collect hopper-medium-v2 --steps 1000000 --num-envs 4
  aaren-rl collect walker2d-medium-expert-v2 --policy expert=path/to/model.zip
  aaren-rl collect Hopper-v5 --policy tqc-Hopper --steps 20000 --out data/hopper_tqc.hdf5
  aaren-rl collect hopper-random-v2 --steps 20000 --out data/hopper_random.hdf5
  aaren-rl collect tmaze-20-50-oracle-v0 --steps 200000
  aaren-rl collect popgym-repeatfirst-easy-oracle-v0 --steps 200000

Same arguments (seed, steps, num-envs) give a byte-identical file. SB3 zips and vecnormalize.pkl files
are read with a restricted unpickler: a policy file that would run code is refused.
"""
)


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "name", help="recipe id <task>-<recipe>[-vK], or an env name when --policy is a single policy"
    )
    parser.add_argument("--out", default=None, help="output .hdf5 (default for recipes: the D4RL location)")
    parser.add_argument("--steps", type=int, default=1_000_000, help="transitions to record (default 1M)")
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        help="'random', an SB3 model.zip, a folder holding one, or an RL Zoo agent name (e.g. tqc-Hopper): "
        "rolls out that one policy in env NAME. ROLE=POLICY (roles weak/medium/expert) replaces a recipe "
        f"role instead; repeatable. Recipes: {', '.join(RECIPES)}",
    )
    parser.add_argument("--algo", default=None, help="SB3 algorithm of --policy (default: read from the zip)")
    parser.add_argument("--num-envs", type=int, default=1, help="vectorised envs (env i is seeded seed+i)")
    parser.add_argument(
        "--vectorization", choices=("sync", "async"), default="sync", help="one process, or one per env"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise", type=float, default=0.0, help="Gaussian action noise std, in half action ranges"
    )
    parser.add_argument(
        "--stochastic", action="store_true", help="sample policy actions (single policy only)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    common = dict(
        num_envs=args.num_envs,
        vectorization=args.vectorization,
        seed=args.seed,
        action_noise=args.noise,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    roles = dict(spec.split("=", 1) for spec in args.policy if "=" in spec)
    singles = [spec for spec in args.policy if "=" not in spec]
    if len(singles) > 1 or (singles and roles):
        parser.error("give one single --policy, or ROLE=POLICY overrides, not both")
    if singles and args.out is None:
        parser.error("--out is required with a single --policy")
    if not singles and (args.stochastic or args.algo):
        parser.error("--stochastic and --algo apply to a single --policy; recipes fix them")
    if not 1 <= args.num_envs <= args.steps:
        parser.error(f"--num-envs {args.num_envs} and --steps {args.steps}: give 1 <= --num-envs <= --steps")
    try:  # the name first: a typo is reported before any policy is loaded
        if singles:
            canonical_env_id(args.name)
        else:
            parse_recipe_id(args.name)
    except ValueError as exc:
        parser.error(f"NAME: {exc}")
    if singles:
        result = collect_dataset(
            args.name,
            singles[0],
            args.out,
            args.steps,
            algo=args.algo,
            deterministic=not args.stochastic,
            **common,
        )
    else:
        result = collect_recipe(args.name, args.out, args.steps, policies=roles, **common)
    returns = result.episode_returns
    print(
        f"wrote {result.path}: {args.steps} steps, {result.metadata['num_episodes']} episodes, "
        f"policy {result.metadata['behavior_policy']}, {result.steps_per_second:.0f} steps/s, "
        + (
            f"episode return {returns.mean():.1f} +- {returns.std():.1f}"
            if len(returns)
            else "no complete episode"
        )
    )
    return 0
