"""The partially observable tasks' module: its old name still imports, with a deprecation warning."""

import importlib
import sys

import gymnasium as gym
import pytest

import envs.pomdp


def test_old_module_name_warns_and_gives_the_same_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "envs.memory", raising=False)
    with pytest.warns(DeprecationWarning, match="envs.pomdp"):
        old = importlib.import_module("envs.memory")
    assert old.RememberCueEnv is envs.pomdp.RememberCueEnv
    assert old.CARTPOLE_NO_VEL == envs.pomdp.CARTPOLE_NO_VEL
    assert gym.make("envs.memory:" + old.CARTPOLE_NO_VEL).observation_space.shape == (2,)
