"""Training under torchrun (CPU, gloo, loopback): 2 processes equal 1, resume, a failing rank, the splits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from agents import ConfigError, load_config, train
from agents.decision.batching import make_batcher
from agents.decision.distributed import DistContext
from agents.decision.evaluation import rank_share
from agents.decision.run_dir import latest_checkpoint
from envs import load_dataset
from envs.vector import split_evenly

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.embed_dim=32",
    "model.num_layers=1",
    "model.dropout=0",
    "train.batch_steps=240",
    "train.steps=6",
    "train.warmup_steps=2",
    "train.log_every=2",
    "train.checkpoint_every=3",
    "train.threads=1",
    "eval.episodes=2",
    "eval.num_envs=2",
    "eval.targets=[100]",
]
#: Runs train_offline.py with drawing a batch failing on rank 1 at its third call (the test's fault injection).
FAULTY = """
import os, runpy, sys
from agents.decision.batching import Batcher

if os.environ["RANK"] == "1":
    real, calls = Batcher.sample, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected fault on rank 1")
        return real(*args, **kwargs)

    Batcher.sample = failing
sys.argv[0] = "scripts/train_offline.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""
#: Runs train() for 4 steps and leaves, as a kill would (under torchrun: every rank leaves at step 4).
STOPPED = """
import sys
from agents import load_config, train

train(load_config(sys.argv[1], sys.argv[2:]), progress=False, stop_after=4)
"""


def torchrun(script: str | Path, *args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 script args` on one torch thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)


def failure_report(result: subprocess.CompletedProcess) -> str:
    """Where a torchrun job failed: the start of its stderr (the failing rank's own error) and the end."""
    err = result.stderr
    return err if len(err) <= 8000 else f"{err[:5000]}\n[...]\n{err[-3000:]}"


def train_cli(*args: str) -> subprocess.CompletedProcess:
    result = torchrun("scripts/train_offline.py", *args, "--no-progress")
    assert result.returncode == 0, failure_report(result)
    return result


def settings(dataset: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"data.dataset={dataset}", f"output_dir={out}", f"name={name}", *TINY, *extra]


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def max_difference(a: Path, b: Path, skip: str = "") -> float:
    """The largest absolute difference between two runs' final weights (keys containing `skip` left out)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa if not skip or skip not in k)


def train_steps(run_dir: Path) -> list[int]:
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["step"] for r in rows if "train/loss" in r]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("backbone", "batching"),
    [("aaren", "stored"), ("aaren", "packed"), pytest.param("transformer", "stored", marks=pytest.mark.slow)],
)
def test_two_processes_train_the_one_process_weights(
    tiny_dataset, tmp_path, backbone, batching, one_torch_thread
):
    extra = (f"model.backbone={backbone}", f"train.batching={batching}", "train.eval_every=3")
    common = settings(tiny_dataset, tmp_path, "", *extra)
    train_cli("--config", str(ROOT / "configs/quickstart.yaml"), "--set", *common, "name=two")
    one = train(load_config(ROOT / "configs/quickstart.yaml", [*common, "name=one"]), progress=False)
    two = tmp_path / "two"
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
        "latest",
        "step_0000003",
        "step_0000006",
    ]
    # The Transformer's key bias has a zero gradient (softmax ignores a shift shared by all keys), so AdamW
    # turns each run's rounding noise there into lr-sized steps (1.1e-5 apart); every other weight agrees.
    skip = "mixer.qkv.bias" if backbone == "transformer" else ""
    assert max_difference(one, two, skip) < 1e-5  # measured 1.9e-6 (aaren), 6e-8 (transformer)
    stats = json.loads((two / "dataset_stats.json").read_text())
    packed = backbone == "aaren" and batching == "packed"
    rows, row_steps = (4, 60) if packed else (12, 20)  # the tiny data's longest episode; K
    assert stats["batch"] == {"batch_steps": 240, "rows": rows, "row_steps": row_steps}
    assert stats["distributed"] == {"world_size": 2, "backend": "gloo", "per_rank_rows": rows // 2}
    rows = [
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (one, two)
    ]
    assert [sorted(r) for r in rows[0]] == [sorted(r) for r in rows[1]]  # losses, periodic and final evals
    for a, b in zip(*rows, strict=True):
        for key in ("train/loss", "train/grad_norm", "eval/return_mean"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
    assert (two / "eval" / "eval.json").is_file() and (two / "curve.png").is_file()


@pytest.mark.timeout(150)
def test_two_process_run_resumes_to_the_uninterrupted_weights(tiny_dataset, tmp_path):
    config = str(ROOT / "configs/quickstart.yaml")
    common = settings(tiny_dataset, tmp_path, "", "model.dropout=0.1")  # per-rank dropout RNGs restored too
    train_cli("--config", config, "--set", *common, "name=full")
    stopped = tmp_path / "stopped.py"
    stopped.write_text(STOPPED)
    result = torchrun(stopped, config, *common, "name=killed")
    assert result.returncode == 0, failure_report(result)
    killed = tmp_path / "killed"
    assert latest_checkpoint(killed).name == "step_0000003" and train_steps(killed) == [2, 4]
    train_cli("--resume", str(killed))
    assert max_difference(tmp_path / "full", killed) == 0.0
    assert train_steps(killed) == [2, 4, 6]


@pytest.mark.timeout(120)
def test_a_failing_rank_ends_the_job_with_its_error(tiny_dataset, tmp_path):
    faulty = tmp_path / "faulty.py"
    faulty.write_text(FAULTY)
    result = torchrun(
        faulty,
        "--config",
        str(ROOT / "configs/quickstart.yaml"),
        "--set",
        *settings(tiny_dataset, tmp_path, "faulty", "train.steps=1000"),
        "--no-progress",
    )
    assert result.returncode != 0
    assert "injected fault on rank 1" in result.stderr and "Root Cause" in result.stderr  # torchrun's summary
    assert not (tmp_path / "faulty" / "checkpoints" / "step_0001000").exists()


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_rank_shares_make_up_the_one_process_batch(tiny_dataset, tmp_path, backbone):
    cfg = load_config(
        None,
        settings(
            tiny_dataset,
            tmp_path,
            "x",
            f"model.backbone={backbone}",
            "train.batch_steps=360",
            "train.batching=packed",
        ),
    )
    dataset = load_dataset(str(tiny_dataset))

    def draw(rank: int, world_size: int) -> dict:
        return make_batcher(cfg, dataset, DistContext(rank, world_size)).sample(np.random.default_rng(0))

    whole, shares = draw(0, 1), [draw(r, 3) for r in range(3)]
    assert all(s["num_real"] == whole["num_real"] == int(whole["mask"].sum()) for s in shares)
    assert sum(int(s["mask"].sum()) for s in shares) == whole["num_real"]
    keys = ["observations", "actions", "returns_to_go", "timesteps", "mask"]
    for key in keys + (["resets"] if backbone == "aaren" else []):
        torch.testing.assert_close(torch.cat([s[key] for s in shares]), whole[key], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("episodes", "num_envs", "world_size"), [(10, 5, 2), (7, 3, 2), (3, 5, 4), (12, 5, 3)]
)
def test_rank_shares_of_an_evaluation_are_the_one_process_episodes(episodes, num_envs, world_size):
    quota, seeds = split_evenly(episodes, min(num_envs, episodes)), []
    for rank in range(world_size):
        n, envs, first = rank_share(episodes, num_envs, rank, world_size)
        if (
            n
        ):  # this rank's evaluate_agent(n, envs, seed=seed + first) runs env copies first.. with these quotas
            assert list(split_evenly(n, envs)) == list(quota[first : first + envs])
            seeds += range(first, first + envs)
    assert seeds == list(range(len(quota)))


def test_global_batch_must_split_evenly(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("agents.decision.training.init_distributed", lambda *args: DistContext(world_size=3))
    with pytest.raises(
        ConfigError, match="train.batch_steps = 240 .* does not split evenly across 3 processes"
    ):
        train(
            load_config(None, settings(tiny_dataset, tmp_path, "odd", "train.batching=packed")),
            progress=False,
        )
