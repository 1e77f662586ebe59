"""A scratch git checkout for the benchmarks' provenance tests: benchmarks.common reads git there."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import common

CODE = "agents/ppo/algorithm.py"  # a committed code file: changing it makes the checkout dirty


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def scratch_checkout(repo: Path, monkeypatch: pytest.MonkeyPatch, dirty: bool = False) -> Path:
    """A git repository at `repo` with CODE and a result committed, made the benchmarks' REPO; with
    `dirty`, CODE then has an uncommitted change."""
    for path in (CODE, "benchmarks/results/old.json"):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text("1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(common, "REPO", repo)
    if dirty:
        (repo / CODE).write_text("2\n")
    return repo
