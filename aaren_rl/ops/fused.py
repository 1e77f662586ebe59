"""The fused acting steps (`fused_step.cpp`): the folded steps of `aaren_rl.step` as one C++ call each,
and the scan's fused training form (`aaren_rl.functional._FusedScan`: forward and reverse pass).

Built on first use with the C++ compiler torch uses (`torch.utils.cpp_extension`, about half a minute,
once per machine and source version: the build is cached under ``$TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``, in a folder named by torch's version and a hash of the source file's path
and contents, so two checkouts never load or rebuild each other's build). Where it cannot be built (no
compiler) the steps stay in Python and the scan in its parallel form, with one warning.
``AAREN_RL_FUSED=0`` turns it off. CPU, float32 and float64; the steps are inference only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("fused_step.cpp")
NAME = "aaren_rl_fused_step"
SWITCH = "AAREN_RL_FUSED"
DTYPES = (torch.float32, torch.float64)
STALE_LOCK_SECONDS = 600  # a build lock this old belongs to a build that was killed


@functools.cache
def fused_module() -> ModuleType | None:
    """The built extension, or None where it is switched off or cannot be built (warned once)."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    # torch's build files name the source's path: a checkout elsewhere, even of the same version, gets
    # its own folder rather than rebuilding this one's
    source_hash = hashlib.sha256(str(SOURCE.resolve()).encode() + SOURCE.read_bytes()).hexdigest()[:12]
    build_dir = Path(root, f"{NAME}-torch{torch.__version__}-{source_hash}")
    if not (build_dir / f"{NAME}.so").exists():
        print("aaren-rl: building the fused C++ kernels (once per machine)...", file=sys.stderr, flush=True)
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_lock(build_dir / "lock")
        return cpp_extension.load(NAME, [str(SOURCE)], extra_cflags=["-O3"], build_directory=str(build_dir))
    except (OSError, RuntimeError, ImportError) as error:  # no compiler, or a failed build
        warnings.warn(
            f"aaren-rl: the fused C++ kernels could not be built ({error}); acting runs the folded "
            f"step in Python and the scan its parallel form (slower, same results). Install a C++ "
            f"compiler, or set {SWITCH}=0 to skip the build",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def _remove_stale_lock(lock: Path) -> None:
    """Remove the build lock of a build that was killed (torch would wait for it forever): one older
    than STALE_LOCK_SECONDS, when a build takes about half a minute."""
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        print(f"aaren-rl: removing a stale build lock ({lock}, {age:.0f} s old)", file=sys.stderr, flush=True)
        lock.unlink(missing_ok=True)


def module_for(x: Tensor, *more: Tensor | None) -> ModuleType | None:
    """The fused module if it can take `x` (CPU, float32/64) and `more`, none of them needing
    gradients (it has no backward), and is built; else None."""
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *more)):
        return None
    return fused_module()


def shared_eps(*norms: torch.nn.LayerNorm | object) -> float | None:
    """The one eps of these layer norms (the fused step takes one), or None where they differ."""
    values = {norm.eps for norm in norms}
    return values.pop() if len(values) == 1 else None
