"""Run directories survive crashes and damage: verified checkpoints, recovery from the newest intact
one, the one-writer lock, torn metrics lines, killed checkpoint writes, diverging runs, and resumes
whose config no longer describes the checkpoint's model."""

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import ConfigError, evaluate_run, load_agent, load_config, train
from agents.decision.checkpoint import (
    CheckpointError,
    content_digest,
    file_record,
    load_model,
    load_trainer_state,
)
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import RunDir, RunLockedError, read_metrics
from agents.decision.training import DivergedError

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.embed_dim=32",
    "model.num_layers=1",
    "model.context_steps=5",
    "train.batch_steps=180",
    "train.steps=30",
    "train.warmup_steps=3",
    "train.log_every=5",
    "train.checkpoint_every=10",
    "train.lr=1e-3",
    "train.threads=1",
    "eval.episodes=1",
    "eval.num_envs=1",
    "eval.targets=[100]",
]
#: Trains a run whose write of its step-20 checkpoint stalls after the first file: it writes argv[1]
#: (the signal to kill it) and sleeps, holding the run's lock.
STALLS_IN_CHECKPOINT = """
import sys, time
from pathlib import Path
import agents.decision.checkpoint as checkpoint
from agents import load_config, train

real = checkpoint._write_synced

def stalling(path, data):
    real(path, data)
    if path.parent.name.startswith(".step_0000020."):
        Path(sys.argv[1]).write_text("stalled")
        time.sleep(600)

checkpoint._write_synced = stalling
train(load_config(None, sys.argv[2:]), progress=False)
"""

#: Trains (under torchrun) and writes the DivergedError each rank raised to argv[1]/rank<RANK>.txt.
RECORDS_DIVERGENCE = """
import os, sys
from pathlib import Path
from agents import load_config, train
from agents.decision.training import DivergedError

try:
    train(load_config(None, sys.argv[2:]), progress=False)
except DivergedError as exc:
    Path(sys.argv[1], f"rank{os.environ['RANK']}.txt").write_text(str(exc))
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def settings_for(dataset: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [f"data.dataset={dataset}", f"output_dir={out}", f"name={name}", *TINY, *extra]


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory) -> Path:
    """A finished 30-step run (checkpoints step_0000020 and step_0000030); tests damage copies of it."""
    out = tmp_path_factory.mktemp("runs")
    return train(load_config(None, settings_for(tiny_dataset, out, "original")), progress=False)


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A copy of the finished run, free to damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_model(checkpoint)[0].state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def damage(path: Path, how: str) -> str:
    """Truncate or flip a byte of a checkpoint file (an edit of a value, in model.json); returns what a
    reader should report."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
        return "cannot be read" if path.name == "model.json" else "is truncated"
    if path.name == "model.json":
        path.write_bytes(bytes(data).replace(b'"embed_dim": 32', b'"embed_dim": 36'))
        return "was changed after it was written"
    data[-5 if path.name == "model.safetensors" else len(data) // 2] ^= 0x10  # tensor data / inside the zip
    path.write_bytes(data)
    return "is damaged"


FILES = ["model.safetensors", "trainer.pt", "model.json"]


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("name", FILES)
def test_evaluation_refuses_a_damaged_latest_naming_the_intact_one(run, name, how):
    problem = damage(run / "checkpoints" / "step_0000030" / name, how)
    expected = rf"step_0000030/{name} {problem}.*Fix: use the newest intact checkpoint, .*step_0000020"
    for read in (
        lambda: RunDir(run).latest_checkpoint(),
        lambda: load_agent(run),
        lambda: evaluate_run(run),
    ):
        with pytest.raises(CheckpointError, match=expected):
            read()


@pytest.mark.parametrize(("name", "how"), [("model.safetensors", "truncate"), ("trainer.pt", "flip")])
def test_resume_continues_from_the_newest_intact_checkpoint(run, finished_run, name, how):
    problem = damage(run / "checkpoints" / "step_0000030" / name, how)
    with pytest.warns(
        UserWarning, match=rf"skipping a damaged checkpoint: .*{name} {problem}.*; using .*step_0000020"
    ):
        train(resume=run, progress=False)
    latest = RunDir(run).latest_checkpoint()
    assert latest.name == "step_0000030"  # rewritten from step 20, to the uninterrupted run's weights
    assert_same_weights(weights(latest), weights(RunDir(finished_run).latest_checkpoint()))


def test_pointer_to_a_missing_folder_and_no_intact_checkpoint(run):
    rd = RunDir(run)
    shutil.rmtree(rd.checkpoint(30))
    with pytest.raises(
        CheckpointError, match=r"latest names .*step_0000030, which does not exist.*step_0000020"
    ):
        rd.latest_checkpoint()
    (rd.latest).write_text("../../etc")
    with pytest.raises(CheckpointError, match=r"not a checkpoint folder"):
        rd.latest_checkpoint()
    damage(rd.checkpoint(20) / "trainer.pt", "truncate")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*trainer.pt is truncated"):
        train(resume=run, progress=False)


def test_planted_trainer_state_never_runs_code(run, tmp_path):
    """A trainer.pt holding pickled code, even with model.json's digests forged to match, is refused
    by weights_only loading before anything runs."""

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    folder = RunDir(run).checkpoint(30)
    buffer = io.BytesIO()
    torch.save({"optimizer": Planted()}, buffer)
    (folder / "trainer.pt").write_bytes(buffer.getvalue())
    meta = json.loads((folder / "model.json").read_text())
    meta["files"]["trainer.pt"] = file_record(buffer.getvalue())
    meta["digest"] = content_digest(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError,
        match=r"trainer.pt is not a trainer state of tensors .*\(UnpicklingError naming posix.system\)",
    ) as caught:
        load_trainer_state(folder)
    assert not (tmp_path / "ran").exists()
    assert "weights_only" not in str(caught.value)  # torch's advice to load it unsafely is not repeated
    assert caught.value.__suppress_context__  # nor shown in a traceback


def test_a_checkpoint_with_weights_that_are_not_finite_is_refused(tmp_path):
    run = RunDir(tmp_path / "run")
    model = DecisionModel(DecisionModelConfig(obs_dim=3, act_dim=2, embed_dim=8, max_timestep=16))
    with torch.no_grad():
        model.state_std[1] = float("inf")
        model.predict_action.bias[0] = float("nan")
    run.save_checkpoint(model, 1, {})  # digests and all: only the values are wrong
    with pytest.raises(
        CheckpointError,
        match=r"step_0000001/model.safetensors holds NaN or infinite values in "
        r"\['predict_action.bias', 'state_std'\]",
    ):
        load_model(run.latest_checkpoint())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("override", r"model.embed_dim=64 would change what the run is .*Fix: drop those overrides"),
        (
            "edited config",
            r"model.backbone = 'transformer', but the checkpoint has 'aaren'.*Fix: resume with the "
            "checkpoint's model settings",
        ),
    ],
)
def test_resume_with_another_model_is_one_config_error(run, change, message):
    rd = RunDir(run)
    overrides = ["model.embed_dim=64"] if change == "override" else []
    if change == "edited config":
        rd.config.write_text(rd.config.read_text().replace("backbone: aaren", "backbone: transformer"))
    before = {p: p.read_bytes() for p in (rd.config, rd.metrics)}
    with pytest.raises(ConfigError, match=message):
        train(resume=run, overrides=overrides, progress=False)
    assert {p: p.read_bytes() for p in before} == before  # nothing was started


def test_resumed_session_trains_at_the_lr_it_is_given(run):
    train(resume=run, overrides=["train.steps=35", "train.lr=1e-4"], progress=False)
    rows = [r for r in read_metrics(RunDir(run).metrics) if "train/lr" in r]
    assert [(r["step"], r["train/lr"]) for r in rows[-2:]] == [(30, 1e-3), (35, 1e-4)]


def test_torn_metrics_line_is_cut_on_resume(run):
    rd = RunDir(run)
    rows = read_metrics(rd.metrics)
    with rd.metrics.open("a") as f:
        f.write('{"step": 31, "train/lo')  # an append cut short by a kill
    assert read_metrics(rd.metrics) == rows
    with pytest.warns(UserWarning, match=r"dropped its torn last line '\{\"step\": 31"):
        train(resume=run, progress=False)
    assert read_metrics(rd.metrics) == rows
    rd.metrics.write_text('{"step": 1}\n{"step": 2,\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2 is not a metrics row"):
        read_metrics(rd.metrics)


def test_diverging_run_stops_and_keeps_the_last_finite_checkpoint(tiny_dataset, tmp_path):
    """lr=1e12: the loss is NaN from step 2; checkpoints every step and rows every 3rd step used to
    leave a NaN checkpoint as `latest`."""
    cfg = load_config(
        None,
        settings_for(
            tiny_dataset,
            tmp_path,
            "diverging",
            "train.lr=1e12",
            "train.log_every=3",
            "train.checkpoint_every=1",
        ),
    )
    with pytest.raises(
        DivergedError,
        match=r"diverged at step 2: the loss is nan.*Fix: lower train.lr \(now 1e\+12\).*--resume .*"
        r"continues from .*step_0000001, the last finite checkpoint",
    ):
        train(cfg, progress=False)
    latest = RunDir(tmp_path / "diverging").latest_checkpoint()
    assert latest.name == "step_0000001"
    assert all(torch.isfinite(t).all() for t in weights(latest).values())


@pytest.mark.timeout(150)
def test_diverging_ranks_stop_together(tiny_dataset, tmp_path):
    """Under torchrun every rank learns of the non-finite loss and raises; none waits for the others
    (a hang would run into the timeout)."""
    script = tmp_path / "diverging.py"
    script.write_text(RECORDS_DIVERGENCE)
    args = settings_for(
        tiny_dataset,
        tmp_path,
        "ddp",
        "train.batch_steps=240",
        "train.lr=1e12",
        "train.log_every=3",
        "train.checkpoint_every=1",
        "train.steps=6",
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [*torchrun, str(script), str(tmp_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().startswith("training diverged at step 2")
    assert RunDir(tmp_path / "ddp").latest_checkpoint().name == "step_0000001"


def test_killed_checkpoint_write_second_writer_and_resume(tiny_dataset, finished_run, tmp_path):
    """A run killed (SIGKILL) while writing a checkpoint: while it lived a second writer was refused;
    its lock dies with it, and the resume removes the half-written folder and ends as an
    uninterrupted run."""
    script, stalled = tmp_path / "stalls.py", tmp_path / "stalled"
    script.write_text(STALLS_IN_CHECKPOINT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = settings_for(tiny_dataset, tmp_path, "killed")
    child = subprocess.Popen([sys.executable, str(script), str(stalled), *args], cwd=ROOT, env=env)
    try:
        for _ in range(1200):  # wait for the stall (or the child's end, which fails the test below)
            if stalled.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert stalled.exists(), f"the child did not reach its stall (exit code {child.poll()})"
        with pytest.raises(RunLockedError, match=rf"PID {child.pid} on host {socket.gethostname()}"):
            train(resume=tmp_path / "killed", progress=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    checkpoints = RunDir(tmp_path / "killed").checkpoints
    assert [p.name for p in checkpoints.glob(".step_0000020.*.tmp")]  # the half-written checkpoint
    train(resume=tmp_path / "killed", progress=False)
    assert not list(checkpoints.glob(".*")) and not list((tmp_path / "killed").glob(".*.tmp"))
    assert_same_weights(
        weights(RunDir(tmp_path / "killed").latest_checkpoint()),
        weights(RunDir(finished_run).latest_checkpoint()),
    )


# --- property-based: damaged checkpoint files give the project's errors, never anything else ---------


Contents = tuple[dict[str, torch.Tensor], int, dict]


def contents(folder: Path) -> Contents:
    """What a reader gets from a checkpoint folder: weights, step and trainer state."""
    model, step = load_model(folder)
    return model.state_dict(), step, load_trainer_state(folder)


@pytest.fixture(scope="module")
def pristine_run(tmp_path_factory) -> tuple[Path, dict[str, Contents]]:
    """A run directory with two small checkpoints (steps 1 and 2, different weights and trainer
    states), and the contents of each."""
    run = RunDir(tmp_path_factory.mktemp("pristine") / "run")
    torch.manual_seed(0)
    for step in (1, 2):
        model = DecisionModel(DecisionModelConfig(obs_dim=3, act_dim=2, embed_dim=8, max_timestep=16))
        state = {"optimizer": {"step": torch.tensor(float(step))}, "rng": {"torch": torch.get_rng_state()}}
        run.save_checkpoint(model, step, state)
    return run.root, {folder.name: contents(folder) for folder in run.checkpoint_folders()}


def mutate(data: bytes, where: float, kind: str, garbage: bytes) -> bytes:
    """`data` truncated at `where` (a fraction of its length), a byte there flipped, or `garbage` written
    over the bytes there."""
    at = min(int(where * len(data)), max(len(data) - 1, 0))
    if kind == "truncate":
        return data[:at]
    if kind == "flip" and data:
        return data[:at] + bytes([data[at] ^ (garbage[0] or 1)]) + data[at + 1 :]
    return data[:at] + garbage + data[at + len(garbage) :]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from([*FILES, "latest"]),
    where=st.floats(0, 1),
    kind=st.sampled_from(["truncate", "flip", "garbage"]),
    garbage=st.binary(min_size=1, max_size=16),
)
def test_fuzzed_checkpoint_files_give_only_project_errors(pristine_run, target, where, kind, garbage):
    """Reading a run whose newest checkpoint or pointer was truncated, bit-flipped or overwritten either
    raises the project's own error or returns exactly what a checkpoint of the run holds."""
    pristine, expected = pristine_run
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newest_intact_checkpoint's warnings about skipped checkpoints
        run = RunDir(shutil.copytree(pristine, Path(tmp) / "run"))
        path = run.latest if target == "latest" else run.checkpoint(2) / target
        path.write_bytes(mutate(path.read_bytes(), where, kind, garbage))
        for read in (run.latest_checkpoint, run.newest_intact_checkpoint):
            try:
                folder = read()
                state, step, trainer_state = contents(folder)
            except (CheckpointError, ConfigError):
                continue
            want_state, want_step, want_trainer_state = expected[folder.name]
            assert step == want_step
            assert_same_weights(state, want_state)
            torch.testing.assert_close(trainer_state, want_trainer_state, rtol=0, atol=0)
