"""What the scripts in scripts/ share: a mistake the user can fix ends the script with one line
`error: <message>` on stderr and exit status 2; anything else (a bug) keeps its traceback.

    @exits_2_on_user_errors
    def main(argv: list[str] | None = None) -> int:
        parser = ArgumentParser(description=__doc__)   # usage mistakes: the same one line and status 2
        ...

The user errors are the project's error types for bad input (each message names the file, key or value
and the fix) and the filesystem's errors about a path (missing, not writable, full disk).
"""

from __future__ import annotations

import argparse
import errno
import functools
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec

#: Exit status of a script stopped by a mistake the user can fix (argparse's own choice too).
USER_ERROR_STATUS = 2

#: Filesystem errors that are about a path (a missing file, a folder without write permission, ...).
PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)

#: What to do about an OSError naming a path, by its errno.
_PATH_FIXES = {
    errno.EACCES: "give yourself access to it (chmod/chown), or use another path",
    errno.EPERM: "give yourself access to it (chmod/chown), or use another path",
    errno.EROFS: "use a path on a writable filesystem",
    errno.ENOSPC: "free some disk space, or use a path on another disk",
    errno.EDQUOT: "free some of your disk quota, or use a path on another disk",
    errno.ENOENT: "check the path",
    errno.EEXIST: "remove it, or choose another path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}

P = ParamSpec("P")


@functools.cache
def user_error_types() -> tuple[type[Exception], ...]:
    """The project's error types for input a user can fix. Imported on first use: a script that fails
    this way pays for the imports, a script that runs (or only shows --help) does not."""
    from agents.common.overrides import ConfigError
    from agents.decision.checkpoint import CheckpointError
    from agents.decision.evaluation import EvaluationError
    from agents.decision.run_dir import RunDirError, RunLockedError
    from agents.decision.training import DivergedError
    from agents.hub import HubError
    from envs.errors import DatasetError, EnvNameError, MissingExtraError, SettingError
    from envs.experts import PolicyFileError

    return (
        ConfigError,
        DatasetError,
        PolicyFileError,
        CheckpointError,
        RunLockedError,
        RunDirError,
        DivergedError,
        EvaluationError,
        EnvNameError,
        SettingError,
        MissingExtraError,
        HubError,
    )


def user_error_message(exc: Exception) -> str | None:
    """The one line a script prints for `exc` ("error: ..."), or None when `exc` is not a user error."""
    if isinstance(exc, OSError) and (exc.filename is not None or isinstance(exc, PATH_ERRORS)):
        text = _path_error_text(exc)
    elif isinstance(exc, user_error_types()):
        text = str(exc)
    else:
        return None
    return "error: " + " ".join(text.split())  # one line, whatever the message's layout


def _path_error_text(exc: OSError) -> str:
    """`exc`'s message with the path it names and the fix for its errno (its own text when it has none)."""
    if exc.filename is None or exc.strerror is None:
        return str(exc)  # raised with a message of its own, which says what to do
    where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
    fix = _PATH_FIXES.get(exc.errno)
    return f"{where}: {exc.strerror}" + (f". Fix: {fix}" if fix else "")


def exits_2_on_user_errors(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a script's main: a user error (see `user_error_message`) is printed as one line on stderr and
    main returns USER_ERROR_STATUS; any other exception propagates with its traceback."""

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise
            print(message, file=sys.stderr)
            return USER_ERROR_STATUS

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line like every other user error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR_STATUS, f"error: {message} (see {self.prog} --help)\n")

    def add_overrides(self, help: str) -> None:
        """`--set KEY=VALUE ...`: dotted overrides, gathered in `args.overrides` (empty by default)."""
        self.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides", help=help)


def target_return(text: str) -> float:
    """argparse type of a target return: a number that can be one (`agents.decision.agent.target_return_problem`)."""
    from agents.decision.agent import TARGET_RETURN_FIX, target_return_problem

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number. Fix: {TARGET_RETURN_FIX}") from None
    problem = target_return_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{problem}. Fix: {TARGET_RETURN_FIX}")
    return value
