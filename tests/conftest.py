"""Shared test settings and fixtures: no test reaches the network unless it serves the data itself
on loopback."""

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from envs import save_dataset

# Property tests draw the same examples on every run, so a test run cannot fail by chance (a new failing
# example found by chance is pinned with @example); HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("deterministic", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

#: Behaviour policies for tests and CI: $AAREN_RL_EXPERTS if set, else the shared folder beside the checkout.
EXPERTS = Path(
    os.environ.get("AAREN_RL_EXPERTS") or Path(__file__).resolve().parents[2] / "shared" / "experts"
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    monkeypatch.setenv("MUJOCO_GL", "egl")
    if EXPERTS.is_dir():
        monkeypatch.setenv("AAREN_RL_EXPERTS", str(EXPERTS))


@pytest.fixture(autouse=True, scope="session")
def _sb3_log_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SB3's learn() makes a log folder even when it logs nothing (by default /tmp/SB3-<time>): keep
    them in the session's temporary folder (session-wide, so module fixtures that train are covered)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3")))
        yield


@pytest.fixture
def expert_policies() -> Path:
    """The behaviour-policy folder (RL Zoo agents, `<algo>-<Env>/model.zip`); skips the test without it."""
    if not (EXPERTS / "tqc-Hopper" / "model.zip").is_file():
        pytest.skip(f"behaviour policies not found at {EXPERTS} (set AAREN_RL_EXPERTS to a folder of them)")
    return EXPERTS


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray instance with 2 CPUs for a module's tests (new, even where a Ray cluster runs); skips
    without Ray."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local", num_cpus=2, log_to_driver=False, runtime_env={"env_vars": {"AAREN_RL_OFFLINE": "1"}}
    )
    yield
    ray.shutdown()


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: tiny per-step batches are fastest that way, and several threads
    spin-waiting on a busy shared CPU made them tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A synthetic Hopper-shaped dataset (11-dim observations, 3-dim actions) of 6 episodes of different
    lengths (so padding differs between batches and between ranks)."""
    rng = np.random.default_rng(0)
    lengths = [40, 25, 60, 10, 35, 30]
    n = sum(lengths)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[np.cumsum(lengths) - 1] = True
    path = tmp_path_factory.mktemp("data") / "hopper_tiny.hdf5"
    save_dataset(
        path,
        rng.normal(size=(n, 11)).astype(np.float32),
        rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        rng.normal(1, 0.3, n).astype(np.float32),
        np.zeros(n, dtype=bool),
        timeouts,
        metadata={"env_id": "Hopper-v5"},
    )
    return path


@pytest.fixture
def extreme_scores():
    """make(pattern, n) -> float64 scores [2, 1, n] that stress the scan's running max: "rising" and
    "falling" by 40 per token (a chunk's max spans far more than exp can hold), "spike" (+-1e4) and
    "all_very_negative" (about -1e4)."""

    def make(pattern: str, n: int) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float64)
        scores = {
            "rising": t * 40.0,
            "falling": -t * 40.0,
            "spike": torch.where(t % 97 == 0, 1e4, -1e4).double(),
            "all_very_negative": torch.full((n,), -1e4, dtype=torch.float64)
            + torch.randn(n, dtype=torch.float64),
        }[pattern]
        return scores.expand(2, 1, n)

    return make
