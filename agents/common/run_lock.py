"""The one-writer lock of a run directory, shared by offline runs (`agents.decision.run_dir`) and PPO runs
(`agents.ppo.train`): while a process holds it, a second one writing the same run is refused.

It is an OS lock (`fcntl.flock`) on the run's .lock file, which the OS releases when the holder ends
however it ends, so a killed run never leaves a stale lock; the file names the holder (PID and host).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

#: The lock file inside a run directory.
LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock: it is training this run."""


@contextlib.contextmanager
def run_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of run directory `root` (created if missing) for the block. RunLockedError, naming
    the holder's PID and host, when another process holds it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lock_file = root / LOCK_FILE
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
            raise RunLockedError(
                f"{root} is being trained by {holder} (it holds {lock_file}). Fix: wait for that run to "
                "end, or stop it first; a stopped or killed process releases the lock by itself"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
