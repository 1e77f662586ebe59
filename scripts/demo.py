"""`make demo`: from nothing but this repository to a live-evaluated Aaren decision agent in minutes.

1. Train a behaviour policy with Stable-Baselines3 PPO on Hopper-v5 for a few minutes (cached).
2. Roll it out (stochastic actions, for varied returns) into a D4RL-format dataset (cached).
3. Train the Aaren decision agent on it (configs/quickstart.yaml) over whole trajectories.
4. Evaluate it live through the O(1)-memory recurrent path; print its D4RL-normalised score next
   to the dataset's average, and where the TensorBoard logs and the learning curve are.

The cache is $AAREN_RL_CACHE (default ~/.cache/aaren-rl): a second run reuses the data (and the
policy's weights, if only the data was deleted).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

ENV_ID = "Hopper-v5"
ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    return Path(os.environ.get("AAREN_RL_CACHE", "~/.cache/aaren-rl")).expanduser()


def behaviour_policy(path: Path, minutes: float, seed: int):
    """PPO on Hopper-v5 for a wall-clock budget (SB3 defaults, 4 envs); its policy weights are cached as
    safetensors (written atomically, loaded into a fresh PPO: no pickles)."""
    from safetensors.torch import load_file, save_file
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(ENV_ID, n_envs=4, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    if path.is_file():
        print(f"[1/4] behaviour policy: cached {path}")
        model.policy.load_state_dict(load_file(str(path)))
        return model

    class Budget(BaseCallback):
        """Stop after `minutes` of wall-clock time, with a progress line per rollout."""

        def __init__(self):
            super().__init__()
            self.start = time.perf_counter()

        def _on_rollout_end(self) -> None:
            ep = [e["r"] for e in self.model.ep_info_buffer]
            elapsed = time.perf_counter() - self.start
            mean = f"{np.mean(ep):.0f}" if ep else "-"
            print(f"      {self.num_timesteps:>7d} steps  {elapsed:5.0f}s  recent episode return {mean}", flush=True)

        def _on_step(self) -> bool:
            return time.perf_counter() - self.start < 60 * minutes

    print(f"[1/4] behaviour policy: training PPO on {ENV_ID} for {minutes:g} min (cached afterwards)")
    model.learn(total_timesteps=2_000_000, callback=Budget())
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in model.policy.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return model


def dataset(path: Path, policy, steps: int, seed: int) -> Path:
    """The policy's stochastic rollouts as a D4RL-format file (envs' collector)."""
    from envs import collect_dataset

    print(f"[2/4] dataset: {steps} steps of the behaviour policy -> {path}")
    result = collect_dataset(ENV_ID, policy, path, steps, num_envs=4, seed=seed, deterministic=False)
    print(f"      {len(result.episode_returns)} episodes, return {result.episode_returns.mean():.0f} "
          f"± {result.episode_returns.std():.0f}")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--behaviour-minutes", type=float, default=4.0, help="PPO training budget (default 4)")
    parser.add_argument("--dataset-steps", type=int, default=50_000, help="transitions to collect (default 50k)")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="overrides for configs/quickstart.yaml, e.g. train.steps=100")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLPs: one thread is fastest and immune to busy-CPU spin-waits
    data_path = cache / "hopper-demo.hdf5"
    if data_path.is_file():
        print(f"[1-2/4] behaviour policy and dataset: cached {data_path}")
    else:
        policy = behaviour_policy(cache / "hopper-ppo-behaviour.safetensors", args.behaviour_minutes, args.seed)
        dataset(data_path, policy, args.dataset_steps, args.seed)
    torch.set_num_threads(threads)

    from agents import load_config, train
    from envs import load_dataset

    ds = load_dataset(data_path)
    best = float(ds.episode_returns.max())
    name = time.strftime("demo-%Y%m%d-%H%M%S")
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [
        f"data.dataset={data_path}", f"output_dir={ROOT / 'runs'}", f"name={name}",
        f"eval.targets=[{best:.0f}]", *args.overrides,
    ])
    print(f"[3/4] training the Aaren decision agent ({cfg.train.steps} steps, whole trajectories) -> {cfg.run_dir}")
    print("[4/4] then evaluating it live through the recurrent path (O(1) memory per env)")
    run = train(cfg)

    import json

    report = json.loads((run / "eval" / "eval.json").read_text())
    result = report["results"][0]
    print("\n" + "=" * 72)
    print(f"Aaren decision agent on {ENV_ID}, target return {result['target_return']:.0f} "
          f"({result['episodes']} live episodes, recurrent acting)")
    print(f"  agent    : return {result['return_mean']:7.1f} ± {result['return_std']:.1f}   "
          f"D4RL-normalised score {result['score_mean']:5.1f} ± {result['score_std']:.1f}")
    print(f"  dataset  : return {report['dataset_return_mean']:7.1f} (average)          "
          f"D4RL-normalised score {report['dataset_score_mean']:5.1f}   (best episode {best:.0f})")
    print(f"  TensorBoard: tensorboard --logdir {run / 'tb'}")
    print(f"  learning curve: {run / 'curve.png'}   evaluation: {run / 'eval' / 'eval.png'}")
    print(f"  total time {time.perf_counter() - start:.0f} s; cache {cache} (delete it to start over)")


if __name__ == "__main__":
    main()
