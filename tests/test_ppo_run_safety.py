"""PPO run directories under faults, as offline runs (tests/test_decision_run_safety.py): a run killed mid-write
leaves its lock with the dead process and starts again in place, and while a run trains a second one of
the same directory is refused; two racing runs of one directory end with one finished run and one
refused, never with a finished run replaced."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.common.run_lock import RunLockedError
from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import load_exported_policy
from agents.ppo.train import PPORun, train_ppo

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(steps=512, eval_episodes=2)
ARGS = ["--task", "RememberCue", "--steps", "512", "--eval-episodes", "2", "--no-progress"]
#: Trains a tiny run into argv[2] whose write of policy.zip stalls half-way: it writes argv[1] (the signal
#: to kill it) and sleeps, holding the run's lock.
STALLS_IN_EXPORT = """
import sys, time
from pathlib import Path
import agents.ppo.train as train
from envs.files import atomic_path

def stalling(model, path):
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"half an export")
        Path(sys.argv[1]).touch()
        time.sleep(600)

train.export_policy = stalling
train.train_ppo(train.PPORun.of_task("RememberCue", steps=512, eval_episodes=2), sys.argv[2], progress=False)
"""

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def assert_acts_as_exported(run_dir: Path) -> None:
    """model.zip and policy.zip load, and the export acts as the model."""
    model = AarenPPO.load(run_dir / "model.zip", device="cpu")
    exported = load_exported_policy(run_dir / "policy.zip")
    obs = np.stack([model.observation_space.sample() for _ in range(4)])
    starts = np.ones(4, dtype=bool)
    expected, _ = model.predict(obs, episode_start=starts, deterministic=True)
    np.testing.assert_array_equal(
        exported.predict(obs, episode_start=starts, deterministic=True)[0], expected
    )


def test_killed_export_second_writer_and_restart(tmp_path):
    """A run killed (SIGKILL) while writing policy.zip: while it lived a second writer was refused; its
    lock dies with it, and the run started again removes the half-written file and finishes."""
    script, stalled, run_dir = tmp_path / "stalls.py", tmp_path / "stalled", tmp_path / "run"
    script.write_text(STALLS_IN_EXPORT)
    child = subprocess.Popen(
        [sys.executable, str(script), str(stalled), str(run_dir)], cwd=ROOT, env=child_env()
    )
    try:
        for _ in range(1200):  # wait for the stall (or the child's end, which fails the test below)
            if stalled.exists() or child.poll() is not None:
                break
            time.sleep(0.1)
        assert stalled.exists(), f"the child did not reach its stall (exit code {child.poll()})"
        with pytest.raises(RunLockedError, match=rf"PID {child.pid} on host {socket.gethostname()}"):
            train_ppo(PPORun.of_task("RememberCue", **TINY), run_dir, progress=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert list(run_dir.glob(".policy.zip.*.tmp")) and not (run_dir / "model.zip").exists()
    train_ppo(PPORun.of_task("RememberCue", **TINY), run_dir, progress=False)
    assert not list(run_dir.glob(".*.tmp"))
    assert_acts_as_exported(run_dir)


def test_racing_runs_of_one_directory_finish_once(tmp_path):
    """The same command started twice at once: one run finishes, the other is refused with one line
    (locked while the first trains, or finished after), and the finished run's files are the winner's."""
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train_ppo.py"),
        *ARGS,
        "--out",
        str(tmp_path),
        "--name",
        "r",
    ]
    runs = [
        subprocess.Popen(command, cwd=ROOT, env=child_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = sorted((run.wait(timeout=600), run.stderr.read()) for run in runs)
    (won, _), (lost, err) = results
    assert (won, lost) == (0, 2), results
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    # the loser meets the lock (its holder named once it has written its PID) or the finished run
    assert re.search(r"is being trained by (PID \d+ on host \S+|another process)", lines[0]) or (
        "holds a finished run already" in lines[0]
    ), err
    assert_acts_as_exported(tmp_path / "r")
