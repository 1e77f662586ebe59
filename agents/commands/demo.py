"""`aaren-rl demo` (`make demo`): from a fresh install to a live-evaluated Aaren decision agent in minutes.

1. Train a behaviour policy with Stable-Baselines3 PPO on Hopper-v5 for a few minutes (cached).
2. Roll it out (stochastic actions, for varied returns) into a D4RL-format dataset (cached).
3. Train the Aaren decision agent on it (the shipped config quickstart) over whole trajectories.
4. Evaluate it live through the O(1)-memory recurrent path; print its D4RL-normalised score next
   to the dataset's average, and where the TensorBoard logs and the learning curve are.

The cache is $AAREN_RL_CACHE (default ~/.cache/aaren-rl): a second run reuses the data (and the
policy's weights, if only the data was deleted). The run directory is runs/demo-<time> in the current
folder.
"""

from __future__ import annotations

import argparse
import json
import time

from agents import load_config, train
from agents.common.cli import ArgumentParser, exits_2_on_user_errors
from agents.common.shipped import shipped_dir
from agents.decision.run_dir import RunDir
from envs import collect_dataset, load_dataset
from envs.behaviour import train_behaviour_policy
from envs.experts import cache_dir
from envs.files import torch_threads

ENV_ID = "Hopper-v5"


@exits_2_on_user_errors
def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--behaviour-minutes", type=float, default=4.0, help="PPO training budget (default 4)"
    )
    parser.add_argument(
        "--dataset-steps", type=int, default=50_000, help="transitions to collect (default 50k)"
    )
    parser.add_overrides(help="overrides for the quickstart config, e.g. train.steps=100")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)

    with torch_threads(1):  # small MLPs: one thread is fastest and immune to busy-CPU spin-waits
        data_path = cache / "hopper-demo.hdf5"
        if data_path.is_file():
            print(f"[1-2/4] behaviour policy and dataset: cached {data_path}")
        else:
            policy_path = cache / "hopper-ppo-behaviour.safetensors"
            cached = "cached" if policy_path.is_file() else f"training PPO for {args.behaviour_minutes:g} min"
            print(f"[1/4] behaviour policy on {ENV_ID}: {cached} ({policy_path})")
            policy = train_behaviour_policy(ENV_ID, policy_path, args.behaviour_minutes, args.seed)
            print(f"[2/4] dataset: {args.dataset_steps} steps of the behaviour policy -> {data_path}")
            result = collect_dataset(
                ENV_ID, policy, data_path, args.dataset_steps, num_envs=4, seed=args.seed, deterministic=False
            )  # stochastic actions: varied returns
            print(
                f"      {len(result.episode_returns)} episodes, return {result.episode_returns.mean():.0f} "
                f"± {result.episode_returns.std():.0f}"
            )

    ds = load_dataset(data_path)
    best = float(ds.episode_returns.max())
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    cfg = load_config(
        shipped_dir() / "quickstart.yaml",
        [
            f"data.dataset={data_path}",
            f"name={name}",
            f"eval.targets=[{best:.0f}]",
            *args.overrides,
        ],
    )
    print(
        f"[3/4] training the Aaren decision agent ({cfg.train.steps} steps, whole trajectories) -> {cfg.run_dir}"
    )
    print("[4/4] then evaluating it live through the recurrent path (O(1) memory per env)")
    run = RunDir(train(cfg))

    report = json.loads((run.eval / "eval.json").read_text())
    result = report["results"][0]
    print("\n" + "=" * 72)
    print(
        f"Aaren decision agent on {ENV_ID}, target return {result['target_return']:.0f} "
        f"({result['episodes']} live episodes, recurrent acting)"
    )
    print(
        f"  agent    : return {result['return_mean']:7.1f} ± {result['return_std']:.1f}   "
        f"D4RL-normalised score {result['score_mean']:5.1f} ± {result['score_std']:.1f}"
    )
    print(
        f"  dataset  : return {report['dataset_return_mean']:7.1f} (average)          "
        f"D4RL-normalised score {report['dataset_score_mean']:5.1f}   (best episode {best:.0f})"
    )
    print(f"  TensorBoard: tensorboard --logdir {run.tb}")
    print(f"  learning curve: {run.curve}   evaluation: {run.eval / 'eval.png'}")
    print(f"  total time {time.perf_counter() - start:.0f} s; cache {cache} (delete it to start over)")
    return 0
