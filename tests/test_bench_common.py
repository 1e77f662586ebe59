"""Benchmark provenance: the commit and whether the code behind a result had uncommitted changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from benchmarks import common


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_code_dirty_sees_the_code_and_not_the_results(tmp_path, monkeypatch) -> None:
    for path in ("agents/ppo/algorithm.py", "benchmarks/results/old.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    monkeypatch.setattr(common, "REPO", tmp_path)
    assert common._git_commit()["code_dirty"] is False
    (tmp_path / "benchmarks/results/new.json").write_text("{}\n")  # a result being written
    assert common._git_commit()["code_dirty"] is False
    (tmp_path / "agents/ppo/algorithm.py").write_text("2\n")
    info = common._git_commit()
    assert info["code_dirty"] is True and len(info["commit"]) == 40
    monkeypatch.setattr(common, "REPO", tmp_path / "missing")
    assert common._git_commit() == {"commit": None, "code_dirty": None}
