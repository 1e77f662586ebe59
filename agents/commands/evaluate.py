"""Evaluate a trained decision agent live: vectorised episodes at several target returns, JSON report + PNG."""

from __future__ import annotations

import argparse

from agents.common.cli import ArgumentParser, exits_2_on_user_errors, target_return

EPILOG = """
examples:
  aaren-rl evaluate --run runs/hopper-medium-v2-aaren-s0
  aaren-rl evaluate --run runs/hopper-medium-v2-aaren-s0 --episodes 20 --envs 10 --target 3600 1800
  aaren-rl evaluate --hub user/hopper-aaren          # an agent shared with aaren-rl push
  MUJOCO_GL=egl aaren-rl evaluate --run runs/quickstart --video     # needs imageio
  aaren-rl evaluate --run runs/tmaze-100 --env tmaze-10000  # past the training corridors -> <run>/eval-tmaze-10000/

The Aaren agent acts through its recurrent path (O(1) memory per env); the Transformer re-runs its
last K steps (--acting window). Writes <run>/eval/eval.json and eval.png (with --env: <run>/eval-<env>/;
for --hub: eval-<user>--<name>/; or --out DIR). A Hub agent is downloaded into the cache
($AAREN_RL_CACHE/hub) and checked against its digests; nothing in it is unpickled.
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="run directory from aaren-rl train")
    source.add_argument(
        "--hub", metavar="REPO", help="Hugging Face Hub repository of an agent from aaren-rl push (user/name)"
    )
    parser.add_argument("--revision", help="with --hub: a branch, tag or commit (default: main)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per target (default 10)")
    parser.add_argument("--envs", type=int, default=5, help="vectorised envs (default 5)")
    parser.add_argument("--target", type=target_return, nargs="+", help="target returns (default: the run's)")
    parser.add_argument("--seed", type=int, default=1000, help="env i is seeded seed + i (default 1000)")
    parser.add_argument(
        "--vectorization",
        choices=["sync", "async"],
        default="sync",
        help="env copies stepped in this process (sync, default) or in worker processes (async)",
    )
    parser.add_argument("--acting", choices=["recurrent", "window"], help="acting path (default: backbone's)")
    parser.add_argument(
        "--env",
        help="evaluate in this env instead of the run's, one with the same spaces (e.g. tmaze-10000 for a "
        "run trained on shorter corridors)",
    )
    parser.add_argument("--video", action="store_true", help="also record one episode to eval/episode.mp4")
    parser.add_argument("--out", help="report folder (default RUN_DIR/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. in CI logs)")
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.envs < 1:
        parser.error("--episodes and --envs must be >= 1")
    if args.revision and not args.hub:
        parser.error("--revision applies to --hub")

    from agents.decision.evaluation import evaluate_run
    from agents.hub import evaluate_hub

    settings = dict(
        episodes=args.episodes,
        num_envs=args.envs,
        targets=args.target,
        seed=args.seed,
        vectorization=args.vectorization,
        acting=args.acting,
        video=args.video,
        env=args.env,
        out_dir=args.out,
        progress=not args.no_progress,
    )
    if args.hub:
        report = evaluate_hub(args.hub, revision=args.revision, **settings)
    else:
        report = evaluate_run(args.run, **settings)
    print(
        f"{report['env']}  {report['backbone']} ({report['acting']} acting), checkpoint step {report['step']}"
    )
    for r in report["results"]:
        score = f"  score {r['score_mean']:6.1f} ± {r['score_std']:.1f}" if "score_mean" in r else ""
        print(
            f"  target {r['target_return']:8g}: return {r['return_mean']:8.1f} ± {r['return_std']:.1f}"
            f"  length {r['length_mean']:.0f}{score}"
        )
    if report.get("dataset_score_mean") is not None:
        print(f"  dataset average score {report['dataset_score_mean']:.1f}")
    if report.get("video"):
        print(f"video: {report['video']}")
    print(f"report: {report['report_path']}")
    return 0
