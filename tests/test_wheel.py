"""The wheel works outside the checkout: built from this tree, installed into a fresh virtualenv in a
temporary folder (its dependencies read from this environment, no checkout on the path), it runs
`aaren-rl --help`, lists the shipped configs, collects a dataset, trains by the shipped config's name,
evaluates, builds and acts through the fused C++ path from the sources in the wheel, and pushes the agent
to a loopback Hub that gives it back acting the same. Slow: a build, an install and two C++ builds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_hub import FakeHub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[1]
#: What the wheel is built from (a copy, so the build leaves nothing in the checkout).
SOURCES = ("pyproject.toml", "README.md", "aaren_rl", "agents", "envs", "configs")
#: Files the installed package reads at run time: the fused extensions' sources and the shipped configs.
SHIPPED = (
    "aaren_rl/ops/fused.cpp",
    "aaren_rl/ops/fused.h",
    "agents/decision/fused_agent.cpp",
    "aaren_rl_configs/quickstart.yaml",
    "aaren_rl_configs/base.yaml",
    "aaren_rl_configs/sweeps/quality-quick.yaml",
)
TINY = [
    "name=q",
    "model.embed_dim=16",
    "model.num_layers=1",
    "train.batch_steps=120",
    "train.steps=2",
    "train.warmup_steps=1",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.threads=1",
    "eval.episodes=1",
    "eval.num_envs=1",
    "eval.targets=[50]",
]
#: Run in the installed environment: the run's policy and the Hub's act the same, through the fused step.
SAME_ACTIONS = """
import numpy as np
from agents import DecisionPolicy
from agents.decision.agent import fused_agent_module

assert fused_agent_module() is not None, "the fused agent step was not built"
local, shared = DecisionPolicy.load("runs/q"), DecisionPolicy.from_hub("user/q")
obs, starts = np.random.default_rng(0).normal(size=(4, 12)), np.ones(4, dtype=bool)
np.testing.assert_array_equal(local.predict(obs, None, starts)[0], shared.predict(obs, None, starts)[0])
print("same actions")
"""


@dataclass
class Installed:
    """A virtualenv holding the wheel: its bin folder, an empty work folder, the environment to run in."""

    bin: Path
    work: Path
    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-6000:]}"
        return done


def build_wheel(tmp: Path) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*command, "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("aaren_rl-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert set(SHIPPED) <= names, set(SHIPPED) - names
    assert "aaren-rl = agents.commands:console" in entry_points
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    # the dependencies (torch, gymnasium, SB3, ...) from this environment: a path in a .pth file, whose
    # own .pth files (this checkout's editable install among them) are not run
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        AAREN_RL_CACHE=str(tmp / "cache"),
        TORCH_EXTENSIONS_DIR=str(tmp / "extensions"),  # built afresh from the wheel's sources
        OMP_NUM_THREADS="1",
    )
    (tmp / "work").mkdir()
    return Installed(venv / "bin", tmp / "work", env)


@pytest.fixture
def hub(installed: Installed) -> Iterator[FakeHub]:
    fake = FakeHub()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    installed.env.update(HF_ENDPOINT=fake.url, HF_TOKEN="hf_loopback")
    installed.env.pop("AAREN_RL_OFFLINE", None)
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=10)


def test_the_installed_package_is_the_wheels(installed: Installed) -> None:
    printed = installed.run(
        "python",
        "-c",
        "import json, sys, agents, aaren_rl, envs, aaren_rl_configs; "
        "print(json.dumps([[m.__file__ for m in (agents, aaren_rl, envs, aaren_rl_configs)], sys.path]))",
    ).stdout
    files, path = json.loads(printed)
    assert all(Path(f).is_relative_to(installed.bin.parent) for f in files), files
    assert ROOT not in [Path(installed.work, p).resolve() for p in path], path  # nor the checkout


def test_a_newcomer_trains_evaluates_and_shares_an_agent(installed: Installed, hub: FakeHub) -> None:
    assert "train" in installed.run("aaren-rl", "--help").stdout
    configs = installed.run("aaren-rl", "configs").stdout
    assert "quickstart" in configs and str(installed.bin.parent) in configs
    installed.run(
        "aaren-rl", "collect", "Hopper-v5", "--policy", "random", "--steps", "300", "--out", "data.hdf5",
        "--no-progress",
    )  # fmt: skip
    trained = installed.run(
        "aaren-rl", "train", "--config", "quickstart", "--set", "data.dataset=data.hdf5", *TINY
    )
    assert "building the C++ extension aaren_rl_fused_agent" in trained.stderr
    built = sorted(p.name.split("-")[0] for p in Path(installed.env["TORCH_EXTENSIONS_DIR"]).iterdir())
    assert built == ["aaren_rl_fused", "aaren_rl_fused_agent"]
    assert "\r" not in trained.stderr  # progress bars as lines: stderr is no terminal here
    installed.run("aaren-rl", "evaluate", "--run", "runs/q", "--episodes", "1", "--envs", "1")
    assert json.loads((installed.work / "runs/q/eval/eval.json").read_text())["step"] == 2

    installed.run("aaren-rl", "push", "runs/q", "--repo", "user/q")
    assert "policy.zip" in hub.files("user/q")
    assert installed.run("python", "-c", SAME_ACTIONS).stdout.strip() == "same actions"
    installed.run("aaren-rl", "evaluate", "--hub", "user/q", "--episodes", "1", "--envs", "1")
    assert json.loads((installed.work / "eval-user--q" / "eval.json").read_text())["hub"] == "user/q"
