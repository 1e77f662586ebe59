"""The agents package: `import agents` stays light, and every public name it lists resolves."""

import subprocess
import sys
from pathlib import Path

import pytest

import agents

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("stable_baselines3", "sb3_contrib", "tensorboard", "torch.utils.tensorboard", "matplotlib", "ray")


def test_import_agents_loads_neither_sb3_tensorboard_matplotlib_nor_ray():
    code = (
        "import agents, sys\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY!r})]\n"
        "print(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves_to_its_module():
    assert sorted(agents.__all__) == sorted(agents._SOURCES)
    for name in agents.__all__:
        value = getattr(agents, name)
        assert value.__module__ == agents._SOURCES[name], name
    assert set(agents.__all__) <= set(dir(agents))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'evaluate_policy'"):
        agents.evaluate_policy  # noqa: B018
