"""Shared by the benchmarks: interleaved timing, machine info, ratios, where results go, atomic result files.

Where results go: each benchmark claim has one canonical result, tracked in git as RESULTS/<name>.*
(a `Claim`: the name, and the settings and device of the run that makes it). A run at other settings
(a preset, fewer tasks, other seeds, a variant) writes into RESULTS/variants/, which git ignores.
A canonical result must say which code made it: it is written only from a known commit with no
uncommitted code changes, unless the run is told `--allow-dirty` (its JSON then records code_dirty).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from agents.common.overrides import ConfigError
from envs.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
"""Default output folder of every benchmark."""
VARIANTS = "variants"
"""Subfolder of the output folder for every run that is not a claim's canonical run."""


def sync(device: str) -> None:
    """Wait for queued CUDA work, so a timer around a call measures the call (a no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_call(fn: Callable[[], object], device: str) -> float:
    """Wall-clock seconds of one call, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    device: str,
    min_reps: int,
    max_reps: int,
    budget_s: float,
    progress: bool = False,
    desc: str = "",
) -> dict[str, list[float]]:
    """Per-call seconds of each function: one warm-up call each, then round-robin repetitions.

    Each function gets budget_s / (its warm-up time) repetitions, clamped to [min_reps, max_reps].
    The round-robin order rotates every round, so no function is always first.
    """
    warm = {name: _time_call(fn, device) for name, fn in fns.items()}
    reps = {name: max(min_reps, min(max_reps, int(budget_s / max(t, 1e-9)))) for name, t in warm.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in tqdm(range(max(reps.values())), desc=desc, disable=not progress, leave=False):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            if i < reps[name]:
                times[name].append(_time_call(fns[name], device))
    return times


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, or None where either was not measured."""
    return None if num is None or den is None else num / den


#: What `_git_commit` checks for uncommitted changes: the code and configs behind a result, not the
#: results folder.
CODE_PATHS = ("aaren_rl", "agents", "envs", "configs", "benchmarks", ":!benchmarks/results")


def _git_commit() -> dict:
    """HEAD commit and whether the code a result depends on (the packages and the benchmarks, not their
    results) has uncommitted changes; None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *CODE_PATHS],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "code_dirty": None}
    return {"commit": head, "code_dirty": bool(dirty)}


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other processes competing for the cores make timings noisy."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info(device: str) -> dict:
    """Where and when the benchmark ran."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_average(),
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **_git_commit(),
    }


class ProvenanceError(ConfigError):
    """A canonical result that would not say which code made it: an unknown commit or uncommitted code."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """A benchmark's canonical result: the name of its tracked files in RESULTS, and the settings and
    device of the run that makes them."""

    name: str
    settings: object
    device: str = "cpu"


def output_stem(
    claim: Claim, settings: object, device: str, variant: str, out: Path = RESULTS, allow_dirty: bool = False
) -> Path:
    """Where a run's result files go, without their suffix: out/<claim.name> for a run at the claim's
    settings and device, out/variants/<variant> for any other run. A canonical run needs a known commit
    and no uncommitted code changes (`_git_commit`): otherwise a ProvenanceError naming the fix, unless
    `allow_dirty` (the JSON's machine.commit and machine.code_dirty then tell)."""
    if settings != claim.settings or device != claim.device:
        return variant_stem(variant, out)
    git = _git_commit()
    if not allow_dirty and (git["commit"] is None or git["code_dirty"]):
        why = (
            "its commit is unknown (not a git checkout, or git failed)"
            if git["commit"] is None
            else f"the code has uncommitted changes (git status -- {' '.join(CODE_PATHS[:-1])})"
        )
        raise ProvenanceError(
            f"{out / claim.name}.json is the canonical result of its settings, but {why}. Fix: commit the "
            f"changes and run again, or pass --allow-dirty to write it anyway (its JSON then records "
            f"code_dirty); runs at other settings write into {out / VARIANTS} without this check"
        )
    return out / claim.name


def variant_stem(variant: str, out: Path = RESULTS) -> Path:
    """Where the result files of a run that is no claim's canonical run go, without their suffix."""
    return out / VARIANTS / variant


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """--out and --allow-dirty, the same for every benchmark (see `output_stem`)."""
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help=f"results folder: a run at the canonical settings writes its tracked files here, any other "
        f"run into <out>/{VARIANTS}/",
    )
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write a canonical result even from uncommitted code or an unknown commit (the JSON records "
        "commit and code_dirty)",
    )


def write_json(path: Path, data: dict) -> None:
    """Atomically write `data` as indented JSON."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    write_atomic(path, text)


def write_png(fig: Figure, path: Path) -> None:
    """Atomically save a matplotlib figure as PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    write_atomic(path, buffer.getvalue())
