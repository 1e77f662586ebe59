"""Every ```python block of README.md runs as written, and its checks are asserts that can fail."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

#: The core example's recurrent step; without its state argument each token is seen alone.
RECURRENT_STEP = "y_t, state = backbone(x[:, t : t + 1], state)"


def run_block(source: str, name: str) -> None:
    exec(compile(source, name, "exec"), {})


def test_readme_has_its_examples():
    # A README whose fences changed would otherwise parametrize no test at all, and pass.
    assert len(BLOCKS) >= 3, (
        f"README.md has {len(BLOCKS)} ```python blocks, expected the core, AarenPPO and DecisionPolicy"
    )


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    run_block(BLOCKS[index], f"README.md block {index}")


def test_core_example_asserts_recurrent_equals_parallel():
    core = BLOCKS[0]
    assert "assert torch.allclose(" in core, "the core example must assert, not print, its check"
    assert RECURRENT_STEP in core, f"the core example no longer steps with {RECURRENT_STEP!r}"
    stateless = core.replace(RECURRENT_STEP, "y_t, _ = backbone(x[:, t : t + 1])")
    with pytest.raises(AssertionError):
        run_block(stateless, "README.md block 0, stepping without the state")
