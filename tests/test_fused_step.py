"""The fused acting step (`aaren_rl.ops.fused`, one C++ call) equals the folded step run from Python,
for both backbones, with resets inside a call, score biases and envs starting episodes at different
steps; where it cannot be built, acting falls back to Python with one warning."""

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from test_agents_fast_acting import TARGET, TOLERANCE, drive, make_model  # (tests/ is on sys.path)

from aaren_rl import AarenBackbone, TransformerBackbone
from aaren_rl.ops import fused
from aaren_rl.step import AarenStep, TransformerStep
from agents.decision.agent import DecisionAgent

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def python_steps(monkeypatch):
    """Within the test, the steps run from Python (the fused module is reported unavailable)."""

    def switch_off() -> None:
        monkeypatch.setattr(fused, "module_for", lambda *tensors: None)

    return switch_off


def test_the_fused_module_builds_where_a_compiler_is():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert fused.fused_module() is not None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias_rows", [None, 1, 3])
def test_aaren_step_fused_equals_python(dtype, bias_rows, python_steps):
    torch.manual_seed(0)
    backbone = AarenBackbone(16, num_layers=2, num_heads=2, ffn_mult=2).to(dtype).eval()
    step = AarenStep(backbone)
    x = torch.randn(3, 4, 16, dtype=dtype)
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


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_step_fused_equals_python(dtype, python_steps):
    torch.manual_seed(0)
    backbone = TransformerBackbone(16, num_layers=2, num_heads=2, ffn_mult=2).to(dtype).eval()
    step = TransformerStep(backbone)
    x, read = torch.randn(3, 7, 16, dtype=dtype), torch.tensor([6, 0, 3])
    with torch.no_grad():
        got = step(x, read)
        python_steps()
        want = step(x, read)
    torch.testing.assert_close(got, want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def _state_tensors(state) -> list[torch.Tensor]:
    return [state.returns_to_go, state.timesteps, state.actions, *vars(state.memory).values()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_fused_agent_step_equals_the_python_one(backbone, dtype, monkeypatch):
    """Step by step from the same state: the same actions and the same next state (returns-to-go,
    timesteps, actions, memory), with rewards and episode starts given or left out."""
    agent = DecisionAgent(make_model(backbone, dtype), TARGET)
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


def test_built_under_torch_extensions_dir_in_a_folder_of_this_source(monkeypatch, tmp_path):
    """$TORCH_EXTENSIONS_DIR is honoured, and the folder names the source file's path and contents: a
    checkout elsewhere (of the same version or another) builds its own module instead of loading, or
    rebuilding over, this one's; the same checkout finds its folder again."""
    from torch.utils import cpp_extension

    folders = []
    monkeypatch.setattr(
        cpp_extension, "load", lambda *a, build_directory, **kw: folders.append(build_directory)
    )
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    source = fused.SOURCE.read_bytes()
    copy, changed = tmp_path / "copy" / "fused_step.cpp", tmp_path / "changed" / "fused_step.cpp"
    for path, text in ((copy, source), (changed, source + b"// another version\n")):
        path.parent.mkdir()
        path.write_bytes(text)
    try:
        for path in (fused.SOURCE, copy, changed, fused.SOURCE):
            monkeypatch.setattr(fused, "SOURCE", path)
            fused.fused_module.cache_clear()
            fused.fused_module()
    finally:
        fused.fused_module.cache_clear()
    assert all(folder.startswith(str(tmp_path)) for folder in folders)
    assert len(set(folders[:3])) == 3 and folders[3] == folders[0], folders


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
