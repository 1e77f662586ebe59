"""Shared test settings: no test reaches the network unless it serves the data itself on loopback."""

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    monkeypatch.setenv("MUJOCO_GL", "egl")
