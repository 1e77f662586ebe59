"""The fused form: C++ versions of the folded steps of `aaren_rl.folded` (one call per step) and of the
scan's training form (`aaren_rl.functional._FusedScan`: forward and reverse pass), in `fused.cpp` over the
kernels of `fused.h`; and `build`, which builds such an extension, for this package and for code that
builds on its backbone steps (`fused.h` is on every build's include path).

An extension is built on first use with the C++ compiler torch uses (`torch.utils.cpp_extension`, about
half a minute, once per machine and source version: the build is cached under ``$TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``, in a folder named by the extension, torch's version and a hash of
its sources' paths and contents and of `fused.h`, so two checkouts never load or rebuild each other's
build). Where it cannot be built (no compiler) callers fall back to Python, with one warning per
extension. ``AAREN_RL_FUSED=0`` turns every extension off. CPU, float32 and float64; the steps are
inference only.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("fused.cpp")
HEADER = Path(__file__).with_name("fused.h")
NAME = "aaren_rl_fused"
SWITCH = "AAREN_RL_FUSED"
DTYPES = (torch.float32, torch.float64)
STALE_LOCK_SECONDS = 600  # a build lock this old belongs to a build that was killed


def build(name: str, sources: Sequence[Path], fallback: str) -> ModuleType | None:
    """The C++ extension `name` compiled from `sources` (with `fused.h` on the include path), built on
    first use and cached per machine; None where ``AAREN_RL_FUSED=0`` or it cannot be built, with a
    warning that says what runs instead (`fallback`, e.g. "acting runs in Python")."""
    if os.environ.get(SWITCH, "1") == "0":
        return None
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    # torch's build files name the sources' paths: a checkout elsewhere, even of the same version, gets
    # its own folder rather than rebuilding this one's
    digest = hashlib.sha256()
    for path in (*sources, HEADER):
        digest.update(str(path.resolve()).encode() + path.read_bytes())
    build_dir = Path(root, f"{name}-torch{torch.__version__}-{digest.hexdigest()[:12]}")
    if not (build_dir / f"{name}.so").exists():
        print(
            f"aaren-rl: building the C++ extension {name} (once per machine)...", file=sys.stderr, flush=True
        )
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_lock(build_dir / "lock")
        return cpp_extension.load(
            name,
            [str(path) for path in sources],
            extra_cflags=["-O3"],
            extra_include_paths=[str(HEADER.parent)],
            build_directory=str(build_dir),
        )
    except (OSError, RuntimeError, ImportError) as error:  # no compiler, or a failed build
        warnings.warn(
            f"aaren-rl: the C++ extension {name} could not be built ({error}); {fallback} (slower, same "
            f"results). Install a C++ compiler, or set {SWITCH}=0 to skip the build",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


@functools.cache
def fused_module() -> ModuleType | None:
    """This package's extension (`fused.cpp`), or None where it is switched off or cannot be built."""
    return build(NAME, [SOURCE], "the folded steps run in Python and the scan in its parallel form")


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
