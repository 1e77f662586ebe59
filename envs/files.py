"""Low-level helpers shared by the writers and rollout loops: atomic file writes and torch thread pinning."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``dest`` to write a file or a folder into, moved onto ``dest`` on success.

    The temporary path lies in ``dest``'s folder (created if missing), so the final ``os.replace`` is
    atomic and readers never see a partial file. An existing folder at ``dest`` is replaced by the new
    folder. On any exception inside the block the temporary file or folder tree is removed and the
    exception propagates; ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")  # a TEMPORARY_NAME
    try:
        yield tmp
        if tmp.is_dir() and dest.is_dir():
            shutil.rmtree(dest)  # os.replace cannot replace a non-empty folder
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


#: The names `atomic_path` gives its temporaries.
TEMPORARY_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that `atomic_path` writes killed mid-way left in ``folder``; returns them.

    Only safe while no other process writes into ``folder`` (its owner holds a lock on it).
    """
    folder = Path(folder)
    found = sorted(p for p in folder.glob(".*.tmp") if TEMPORARY_NAME.fullmatch(p.name))
    for path in found:
        _remove(path)
    return found


def _remove(path: Path) -> None:
    """Delete a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through :func:`atomic_path`; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous thread count.

    Acting on small per-step batches is fastest on one thread, and several threads spin-waiting on a
    busy CPU slow it down badly. torch is imported here so that importing ``envs`` does not need it.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
