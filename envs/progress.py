"""Progress bars that a log can hold, for every long loop of the project (collection, downloads,
training, evaluation, sweeps).

On a terminal (and in a notebook) `progress_bar` is tqdm's live bar. Where its stream is not a
terminal (a CI log, `cmd > log 2>&1`), redrawing one line with carriage returns leaves the file full
of fragments, nested bars worst of all; there the same bar writes whole plain lines instead: one at
the start, then at most one every `LOG_SECONDS`, and the final count when it closes.

    bar = progress_bar(total=steps, unit="step", desc="train", disable=not progress)
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm

#: Seconds between two lines of a bar written to a log.
LOG_SECONDS = 30.0
#: Whether tqdm found a notebook (its widget bars stand in for the terminal's).
IN_NOTEBOOK = any(cls.__module__ == "tqdm.notebook" for cls in auto_tqdm.__mro__)


class LogLines(tqdm):
    """A tqdm bar written as whole lines (start, at most one per `LOG_SECONDS`, final count on close)
    rather than one line redrawn with '\\r'."""

    _line_at: float | None = None  # when the last line was written
    _line_n: float | None = None  # the count it showed

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line: lines written stay
            return False
        now = time.monotonic()
        if msg is None and self._line_at is not None and now - self._line_at < LOG_SECONDS:
            return True
        self._line_at, self._line_n = now, self.n
        self.fp.write(f"{msg or self}\n")
        self.fp.flush()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: lines written stay."""

    def close(self) -> None:
        if not self.disable and self.leave and self.n != self._line_n:
            self._line_at = None
            self.display()  # the final count
        self.leave = False  # tqdm's own close would write an empty line after it
        super().close()


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is a terminal (a closed or detached stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Any = None, *, file: TextIO | None = None, **kwargs: Any) -> tqdm:
    """tqdm(iterable, file=file, **kwargs): a live bar on a terminal or in a notebook, `LogLines`
    (plain ASCII lines) where `file` (default stderr) is not a terminal."""
    if IN_NOTEBOOK or is_terminal(sys.stderr if file is None else file):
        return auto_tqdm(iterable, file=file, **kwargs)
    return LogLines(iterable, file=file, ascii=True, **kwargs)
