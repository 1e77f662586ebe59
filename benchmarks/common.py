"""Shared by the benchmarks: interleaved timing, machine info, ratios and atomic result files."""

from __future__ import annotations

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

from envs.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
"""Default output folder of every benchmark."""


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


#: What `_git_commit` checks for uncommitted changes: the code behind a result, not the results folder.
CODE_PATHS = ("aaren_rl", "agents", "envs", "benchmarks", ":!benchmarks/results")


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
