"""benchmarks/reference_dt.py with a stand-in for CORL's dt.py that uses its imports as dt.py does: the
gym 0.23 facade plays the dataset's environment from a seeded reset with rewards scaled and unscaled,
each run is trained at the sweep's budget once, and the report puts it beside the sweep's trials."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from agents.decision.config import ConfigError
from benchmarks import reference_dt
from envs import load_dataset, make_env

FAKE_DT = """
import d4rl  # noqa: F401
import gym
import numpy as np
import pyrallis
import wandb
from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    env_name: str = "halfcheetah-medium-v2"
    seq_len: int = 20
    batch_size: int = 64
    update_steps: int = 100_000
    warmup_steps: int = 10_000
    reward_scale: float = 0.001
    target_returns: tuple = (12000.0, 6000.0)
    eval_episodes: int = 100
    eval_every: int = 10_000
    eval_seed: int = 42
    train_seed: int = 10
    num_workers: int = 4
    device: str = "cuda"


@pyrallis.wrap()
def train(config: TrainConfig):
    wandb.init(config=asdict(config), project="CORL", group="DT", name="DT", id="0")
    wandb.run.save()
    mean = gym.make(config.env_name).get_dataset()["observations"].mean(0)
    env = gym.wrappers.TransformObservation(gym.make(config.env_name), lambda s: s - mean)
    env = gym.wrappers.TransformReward(env, lambda r: config.reward_scale * r)
    for step in range(config.update_steps):
        if step % config.eval_every == 0 or step == config.update_steps - 1:
            for target in config.target_returns:
                env.seed(config.eval_seed)
                returns = []
                for _ in range(config.eval_episodes):
                    env.reset()
                    total, done = 0.0, False
                    while not done:
                        _, reward, done, _ = env.step(np.full(env.action_space.shape, 0.1 * step))
                        total += reward
                    returns.append(total / config.reward_scale)
                scores = env.get_normalized_score(np.array(returns)) * 100
                wandb.log(
                    {f"eval/{target}_return_mean": np.mean(returns),
                     f"eval/{target}_normalized_score_mean": np.mean(scores)},
                    step=step,
                )
"""


@pytest.fixture
def setup(tmp_path: Path, tiny_dataset: Path) -> dict:
    corl = tmp_path / "corl"
    (corl / reference_dt.DT_FILE).parent.mkdir(parents=True)
    (corl / reference_dt.DT_FILE).write_text(FAKE_DT)
    sweep = tmp_path / "tiny.yaml"
    sweep.write_text(
        textwrap.dedent(f"""
        grid:
          data:
            - {{label: hopper-tiny, data.dataset: {tiny_dataset}}}
          train.seed: [0, 1]
          mode:
            - {{label: transformer, model.backbone: transformer}}
            - {{label: stored, train.batching: stored}}
        set: {{train.steps: 3, train.batch_steps: 60, train.warmup_steps: 1, eval.episodes: 2, eval.seed: 7}}
        compare: {{axis: mode, baseline: transformer}}
        config: {Path(reference_dt.__file__).parents[1] / "configs" / "base.yaml"}
        """)
    )
    out = tmp_path / "out"
    args = ["--corl", str(corl), "--sweep", str(sweep), "--work", str(tmp_path / "work"), "--out", str(out)]
    return {"args": args, "data": tiny_dataset, "out": out, "work": tmp_path / "work" / "tiny"}


def expected_return(seed: int, episodes: int, action: float) -> float:
    """The mean return of `episodes` Hopper episodes after one reset seeded with `seed`, as gym 0.23 plays
    them, played here with Gymnasium directly."""
    env, totals = make_env("Hopper-v5"), []
    for episode in range(episodes):
        env.reset(seed=seed if episode == 0 else None)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(np.full(3, action, dtype=np.float32))
            total, done = total + reward, terminated or truncated
        totals.append(total)
    return float(np.mean(totals))


def test_each_run_trains_at_the_sweeps_budget_and_scores_as_gym_would(setup) -> None:
    before = {name: sys.modules.get(name) for name in ("gym", "gym.wrappers", "d4rl", "wandb", "pyrallis")}
    assert reference_dt.main(setup["args"]) == 0
    assert {name: sys.modules.get(name) for name in before} == before  # the stand-ins are gone
    records = sorted(setup["work"].glob("runs/*.json"))
    assert [p.name for p in records] == ["hopper-tiny-s0.json", "hopper-tiny-s1.json"]
    record = json.loads(records[1].read_text())
    config = record["dt_config"]
    assert config["batch_size"] * config["seq_len"] == 60 and config["update_steps"] == 3
    assert (config["warmup_steps"], config["eval_episodes"], config["eval_seed"], config["train_seed"]) == (
        1,
        2,
        7,
        1,
    )
    assert [e["target_return"] for e in record["evaluation"]] == [3600.0, 1800.0]  # Hopper's targets
    mean = expected_return(7, 2, 0.1 * 2)  # the last step's evaluation (step 2)
    dataset = load_dataset(str(setup["data"]))
    for row in record["evaluation"]:
        assert row["return_mean"] == pytest.approx(mean, rel=1e-6)  # scaled by 1e-3 and back
        assert row["score_mean"] == pytest.approx(dataset.normalized_score(mean), rel=1e-6)
    result = json.loads((setup["out"] / "variants" / "reference_dt_tiny.json").read_text())
    assert [r["seed"] for r in result["runs"]] == [0, 1] and result["comparison"]["strata"] == []


def test_finished_runs_are_kept_and_compared_with_the_sweeps_trials(setup, monkeypatch, capsys) -> None:
    assert reference_dt.main(setup["args"]) == 0
    record = json.loads((setup["work"] / "runs" / "hopper-tiny-s0.json").read_text())
    reference = record["evaluation"][0]["score_mean"]
    trials = [
        {
            "name": f"t{seed}",
            "point": {"data": "hopper-tiny", "train.seed": str(seed), "mode": "stored"},
            "status": "finished",
            "evaluation": [{"target_return": 3600.0, "return_mean": 1.0, "score_mean": reference + 10}],
        }
        for seed in (0, 1)
    ]
    report = setup["out"] / "sweeps" / "tiny" / "sweep.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"trials": trials}))
    monkeypatch.setattr(
        reference_dt, "train_reference", lambda *args: pytest.fail("a finished run trained again")
    )
    assert reference_dt.main(setup["args"]) == 0
    (stratum,) = json.loads((setup["out"] / "variants" / "reference_dt_tiny.json").read_text())["comparison"][
        "strata"
    ]
    assert stratum["baseline"] == "reference" and stratum["seeds"]["stored"] == ["0", "1"]
    assert stratum["difference"]["stored"]["point"] == pytest.approx(10)
    assert "hopper-tiny: reference" in capsys.readouterr().out


def test_a_record_of_another_run_or_a_missing_checkout_is_one_clear_error(setup, capsys) -> None:
    assert reference_dt.main(setup["args"]) == 0
    path = setup["work"] / "runs" / "hopper-tiny-s0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "steps": 5}))
    with pytest.raises(ConfigError, match="hopper-tiny-s0.json was made for another run"):
        reference_dt.recorded(
            reference_dt.Run("hopper-tiny", str(setup["data"]), 0, 3, 60, 1, 2, 7),
            Path("x"),
            setup["work"],
            1,
        )
    uneven = reference_dt.Run("hopper-tiny", str(setup["data"]), 0, 3, 50, 1, 2, 7)
    with pytest.raises(
        ConfigError, match="train.batch_steps = 50 is not a whole number of dt.py's windows of 20"
    ):
        reference_dt.train_reference(uneven, Path(setup["args"][1]), 1)
    args = list(setup["args"])
    args[1] = str(setup["work"] / "nowhere")
    assert reference_dt.main(args) == 2
    assert "Fix: pass --corl a CORL checkout" in capsys.readouterr().err
