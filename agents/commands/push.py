"""Share a trained agent on the Hugging Face Hub: its policy (safetensors + JSON), config, evaluation,
learning curve and a generated model card, and nothing that would run code when loaded."""

from __future__ import annotations

import argparse

from agents.common.cli import ArgumentParser, exits_2_on_user_errors

EPILOG = """
examples:
  aaren-rl push runs/hopper-medium-v2-aaren-s0 --repo user/hopper-aaren
  aaren-rl push runs/ppo-RepeatPreviousEasy-s0 --repo user/repeat-previous --private

RUN_DIR is a finished run of aaren-rl train (evaluated: eval/eval.json) or of aaren-rl ppo. The
repository gets policy.zip, config.yaml, eval.json (a decision agent also dataset_stats.json and
curve.png), README.md (the model card) and aaren-rl.json (sha256 of each file), and is created if
needed. Log in first (hf auth login, or set $HF_TOKEN); $HF_ENDPOINT names another Hub. Load it back
with aaren-rl evaluate --hub REPO, DecisionPolicy.from_hub(REPO) or load_exported_policy(REPO).
"""


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", metavar="RUN_DIR", help="run directory of aaren-rl train or aaren-rl ppo")
    parser.add_argument("--repo", required=True, help="Hub repository to write, user/name")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--message", help="commit message (default: aaren-rl push <run name>)")
    args = parser.parse_args(argv)

    from agents.hub import push

    url = push(args.run, args.repo, private=args.private, message=args.message)
    print(f"pushed {args.run} to {args.repo}: {url}")
    return 0
