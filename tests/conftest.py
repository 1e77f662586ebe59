"""Shared test settings: no test reaches the network unless it serves the data itself on loopback."""

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    monkeypatch.setenv("MUJOCO_GL", "egl")


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: tiny per-step batches are fastest that way, and several threads
    spin-waiting on a busy shared CPU made them tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
