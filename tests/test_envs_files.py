"""envs.files: atomic writes of files and folders, and torch thread pinning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from envs.files import atomic_path, torch_threads, write_atomic


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_writes_a_file_beside_its_destination(tmp_path):
    dest = tmp_path / "sub" / "out.txt"
    with atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp != dest and not dest.exists()
        tmp.write_text("new")
    assert dest.read_text() == "new" and names(dest.parent) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_path_failure_removes_the_temp_file_and_keeps_the_old_one(tmp_path, error):
    dest = write_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(error), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise error
    assert names(tmp_path) == ["out.txt"] and dest.read_text() == "old"


def test_atomic_path_replaces_a_folder(tmp_path):
    dest = tmp_path / "ckpt"
    dest.mkdir()
    (dest / "stale").write_text("x")
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_bytes(b"w")
    assert names(tmp_path) == ["ckpt"] and names(dest) == ["weights"]


def test_atomic_path_failure_removes_the_temp_folder_tree(tmp_path):
    with pytest.raises(OSError, match="disk full"), atomic_path(tmp_path / "ckpt") as tmp:
        (tmp / "inner").mkdir(parents=True)
        (tmp / "inner" / "weights").write_bytes(b"w")
        raise OSError("disk full")
    assert names(tmp_path) == []


def test_write_atomic_text_and_bytes(tmp_path):
    assert write_atomic(tmp_path / "a.txt", "héllo").read_bytes() == "héllo".encode()
    assert write_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert names(tmp_path) == ["a.txt", "b.bin"]


def test_torch_threads_sets_and_restores_even_on_error():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), torch_threads(1):
        raise ValueError
    assert torch.get_num_threads() == before
