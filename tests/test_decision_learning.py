"""A real learning check: a short run on expert Hopper data lowers the loss and beats a random policy live."""

import json

import numpy as np
import pytest

from agents import evaluate_run, load_config, train
from envs import collect_dataset, rollout_policy


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.usefixtures("expert_policies")
def test_short_training_on_expert_data_beats_random_policy(tmp_path):
    data = collect_dataset(
        "Hopper-v5", "tqc-Hopper", tmp_path / "hopper_expert.hdf5", 12_000, num_envs=4, seed=0, progress=False
    ).path
    cfg = load_config(
        None,
        [
            f"data.dataset={data}",
            f"output_dir={tmp_path}",
            "name=smoke",
            "model.embed_dim=64",
            "train.steps=250",
            "train.batch_steps=4000",  # four 1000-step episodes
            "train.lr=1e-3",
            "train.warmup_steps=25",
            "train.log_every=10",
            "train.checkpoint_every=250",
            "eval.episodes=2",
            "eval.num_envs=2",
            "eval.targets=[3600]",
            "train.threads=1",  # one thread: robust to a busy shared CPU
        ],
    )
    run = train(cfg, progress=False)
    losses = [
        r["train/loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])

    random_returns = rollout_policy("Hopper-v5", "random", 3000, seed=0, progress=False).episode_returns
    report = evaluate_run(run, episodes=4, num_envs=4, progress=False)
    agent_return = report["results"][0]["return_mean"]
    assert agent_return > max(400.0, 10 * float(np.mean(random_returns))), (
        agent_return,
        random_returns.mean(),
    )
