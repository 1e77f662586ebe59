"""The fused acting steps (one C++ call: the backbones' in `aaren_rl.ops.fused`, the decision agent's
in `agents/decision/fused_agent.cpp`) equal the folded steps run from Python, for both backbones, with
resets inside a call, score biases and envs starting episodes at different steps; where an extension
cannot be built, acting falls back to Python with one warning."""

import fnmatch
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_decision_acting import TARGET, TOLERANCE, drive, make_model  # (tests/ is on sys.path)

from aaren_rl import AarenBackbone, TransformerBackbone
from aaren_rl.folded import FoldedAarenBackbone, FoldedTransformerBackbone
from aaren_rl.ops import fused
from agents.decision import agent as agent_module
from agents.decision.agent import DecisionAgent

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DTYPES = [torch.float32, torch.float64]
ROOT = Path(__file__).resolve().parents[1]
#: Where a compiler is found the fused path must run: a fused-equals-Python test must not compare the
#: Python path with itself.
needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler on this machine"
)


@pytest.fixture
def python_steps(monkeypatch):
    """Within the test, the steps run from Python (the fused module is reported unavailable)."""

    def switch_off() -> None:
        monkeypatch.setattr(fused, "module_for", lambda *tensors: None)

    return switch_off


@needs_compiler
def test_both_extensions_build_where_a_compiler_is():
    assert fused.fused_module() is not None
    assert agent_module.fused_agent_module() is not None


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_rows", [None, 1, 3])
def test_aaren_step_fused_equals_python(dtype, bias_rows, python_steps):
    torch.manual_seed(0)
    backbone = AarenBackbone(16, num_layers=2, num_heads=2, ffn_mult=2).to(dtype).eval()
    step = FoldedAarenBackbone(backbone)
    x = torch.randn(3, 4, 16, dtype=dtype)
    assert fused.module_for(x) is not None
    state = backbone.init_state(3, dtype=dtype)
    with torch.no_grad():
        _, state = backbone(torch.randn(3, 5, 16, dtype=dtype), state)
        resets = torch.tensor([[False] * 4, [False, True, False, False], [True, False, True, True]])
        bias = None if bias_rows is None else torch.randn(bias_rows, 2, 4, dtype=dtype)
        got = step(x, state, step.score_mask(resets), bias)
        python_steps()
        want = step(x, state, step.score_mask(resets), bias)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=tol)
    for name in ("m", "u", "w"):
        torch.testing.assert_close(getattr(got[1], name), getattr(want[1], name), atol=tol, rtol=tol)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_step_fused_equals_python(dtype, python_steps):
    torch.manual_seed(0)
    backbone = TransformerBackbone(16, num_layers=2, num_heads=2, ffn_mult=2).to(dtype).eval()
    step = FoldedTransformerBackbone(backbone)
    x, read = torch.randn(3, 7, 16, dtype=dtype), torch.tensor([6, 0, 3])
    assert fused.module_for(x) is not None
    with torch.no_grad():
        got = step(x, read)
        python_steps()
        want = step(x, read)
    torch.testing.assert_close(got, want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def _state_tensors(state) -> list[torch.Tensor]:
    return [state.returns_to_go, state.timesteps, state.actions, *vars(state.memory).values()]


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_fused_agent_step_equals_the_python_one(backbone, dtype, monkeypatch):
    """Step by step from the same state: the same actions and the same next state (returns-to-go,
    timesteps, actions, memory), with rewards and episode starts given or left out."""
    agent = DecisionAgent(make_model(backbone, dtype), TARGET)
    assert agent._folded.fused is not None
    starts, obs, rewards, _ = drive(agent)
    state, tol = None, TOLERANCE[dtype]
    for t in range(len(obs)):
        args = (obs[t], state, starts[t] if t % 3 else None, rewards[t - 1] if t % 4 else None)
        fused_actions, fused_state = agent.act(*args)
        with monkeypatch.context() as python_only:
            python_only.setattr(agent._folded, "fused", None)
            python_actions, state = agent.act(*args)
        np.testing.assert_allclose(fused_actions, python_actions, atol=tol, rtol=tol)
        for got, want in zip(_state_tensors(fused_state), _state_tensors(state), strict=True):
            torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_a_failed_build_warns_once_and_acting_goes_on(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there: the load is tried
    fused.fused_module.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built.*C\\+\\+ compiler"):
            agent = DecisionAgent(make_model("aaren", torch.float32), TARGET)
            actions, state = agent.act(np.zeros((2, 5)))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            agent.act(np.zeros((2, 5)), state)
        assert np.isfinite(actions).all()
    finally:
        fused.fused_module.cache_clear()


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(fused.SWITCH, "0")
    fused.fused_module.cache_clear()
    try:
        assert fused.module_for(torch.zeros(1)) is None
    finally:
        fused.fused_module.cache_clear()


@needs_compiler
def test_a_failed_agent_build_warns_and_the_agent_acts_around_the_backbones_fused_step(monkeypatch, tmp_path):
    """The decision agent's extension is built apart from the core's: where only it fails, the agent's
    step runs in Python with one warning naming it, and its backbone step still runs fused."""
    from torch.utils import cpp_extension

    built = fused.fused_module()
    load = cpp_extension.load

    def agent_fails(name, *args, **kwargs):
        if name == agent_module.FUSED_NAME:
            raise RuntimeError(f"Error building extension '{name}'")
        return load(name, *args, **kwargs)

    monkeypatch.setattr(cpp_extension, "load", agent_fails)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there: the load is tried
    agent_module._build_fused_agent.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match=f"{agent_module.FUSED_NAME} could not be built"):
            agent = DecisionAgent(make_model("aaren", torch.float32), TARGET)
        assert agent._folded.fused is None and fused.fused_module() is built
        actions, _ = agent.act(np.zeros((2, 5)))
        assert np.isfinite(actions).all()
    finally:
        agent_module._build_fused_agent.cache_clear()


def test_built_under_torch_extensions_dir_in_a_folder_of_its_sources(monkeypatch, tmp_path):
    """$TORCH_EXTENSIONS_DIR is honoured, and the folder names the sources' and fused.h's paths and
    contents: a checkout elsewhere (of the same version or another) builds its own module instead of
    loading, or rebuilding over, this one's; the same checkout finds its folder again."""
    from torch.utils import cpp_extension

    folders = []
    monkeypatch.setattr(
        cpp_extension, "load", lambda *a, build_directory, **kw: folders.append(build_directory)
    )
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    source = fused.SOURCE.read_bytes()
    copy, changed = tmp_path / "copy" / "fused.cpp", tmp_path / "changed" / "fused.cpp"
    header = tmp_path / "header" / "fused.h"
    for path, text in (
        (copy, source),
        (changed, source + b"// another version\n"),
        (header, fused.HEADER.read_bytes() + b"// another version\n"),
    ):
        path.parent.mkdir()
        path.write_bytes(text)
    for path in (fused.SOURCE, copy, changed, fused.SOURCE):
        fused.build(fused.NAME, [path], "")
    monkeypatch.setattr(fused, "HEADER", header)
    fused.build(fused.NAME, [fused.SOURCE], "")
    assert all(folder.startswith(str(tmp_path)) for folder in folders)
    assert len(set(folders)) == 4 and folders[3] == folders[0], folders


def test_the_agents_extension_compiles_its_own_source_against_the_core_header(monkeypatch):
    from torch.utils import cpp_extension

    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda *args, **kwargs: calls.append((args, kwargs)))
    agent_module._build_fused_agent.__wrapped__()
    (name, sources), options = calls[0]
    assert sources == [str(ROOT / "agents" / "decision" / "fused_agent.cpp")]
    assert options["extra_include_paths"] == [str(ROOT / "aaren_rl" / "ops")]


def test_every_cpp_file_ships_in_the_wheel():
    """The builds read their sources beside their modules, so pyproject's package data must hold them."""
    tomllib = pytest.importorskip("tomllib")
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [
        p
        for pattern in ("*.cpp", "*.h")
        for top in ("aaren_rl", "agents")
        for p in (ROOT / top).rglob(pattern)
    ]
    assert {fused.SOURCE, fused.HEADER, agent_module.FUSED_SOURCE} <= set(files)
    for path in files:
        package = ".".join(path.parent.relative_to(ROOT).parts)
        patterns = package_data.get(package, [])
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), (path, package)


def test_a_killed_builds_lock_is_removed_a_live_one_kept(tmp_path):
    """torch waits forever on the lock of a build that was killed; one older than any build is removed."""
    lock = tmp_path / "lock"
    lock.touch()
    fused._remove_stale_lock(lock)
    assert lock.exists(), "a fresh lock belongs to a build in progress"
    old = lock.stat().st_mtime - fused.STALE_LOCK_SECONDS - 1
    os.utime(lock, (old, old))
    fused._remove_stale_lock(lock)
    assert not lock.exists()


def test_taken_unless_a_tensor_needs_gradients():
    if fused.fused_module() is None:
        pytest.skip("the fused module is not built here")
    needs = torch.zeros(2, requires_grad=True)
    assert fused.module_for(torch.zeros(2)) is fused.fused_module()
    assert fused.module_for(torch.zeros(2), None, needs) is None
    with torch.no_grad():
        assert fused.module_for(needs) is fused.fused_module()
