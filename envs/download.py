"""D4RL datasets by id on a connected machine: download once from D4RL's public location, verify, cache.

A file is fetched into a temporary file beside its final place, checked (complete, HDF5, the
required keys, the task's dimensions) and only then renamed into place, so the cache never holds a
partial or broken file. Nothing here touches the network when ``AAREN_RL_OFFLINE=1`` or
``download=False``.
"""

from __future__ import annotations

import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from envs.d4rl import BASE_URL
from envs.errors import DatasetError
from envs.files import atomic_path
from envs.progress import progress_bar

#: Environment variable overriding the base URL (a mirror, or a local server in tests).
BASE_URL_VAR = "AAREN_RL_D4RL_URL"
#: Environment variable that forbids every download when set to 1/true/yes.
OFFLINE_VAR = "AAREN_RL_OFFLINE"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_BLOCK = 1 << 20


class DownloadError(DatasetError):
    """A download that failed; the message says what happened, that no file was left, and what to do."""


def offline_mode() -> bool:
    """True when ``$AAREN_RL_OFFLINE`` forbids network access."""
    return os.environ.get(OFFLINE_VAR, "").strip().lower() in ("1", "true", "yes", "on")


def d4rl_base_url(base_url: str | None = None) -> str:
    """The base URL to fetch from: the argument, else ``$AAREN_RL_D4RL_URL``, else D4RL's own."""
    return (base_url or os.environ.get(BASE_URL_VAR) or BASE_URL).rstrip("/")


def download(
    url: str, dest: Path, *, validate: Callable[[Path], None] | None = None, timeout: float = 60.0
) -> Path:
    """Fetch ``url`` to ``dest`` atomically, with a progress bar (bytes, rate, ETA).

    The bytes go to a temporary file in ``dest``'s folder; ``validate(temp_path)`` may raise to reject
    the content. Any failure removes the temporary file and raises one :class:`DownloadError`.
    """
    try:
        with atomic_path(dest) as part:
            _fetch(url, part, timeout)
            if validate is not None:
                validate(part)
    except DatasetError as exc:
        raise DownloadError(
            f"{exc} No file was left in {dest.parent}; fix the source and run again."
        ) from exc
    return dest


def _fetch(url: str, part: Path, timeout: float) -> None:
    name = Path(url).name
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: the server answered HTTP {exc.code} ({exc.reason}).") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"{url}: cannot connect ({reason}). Fix: check the network, set ${BASE_URL_VAR} to a reachable "
            f"mirror, or place {name} by hand (see the error of load_dataset with download=False)."
        ) from exc
    with response:
        content_type = response.headers.get("Content-Type", "")
        expected = response.headers.get("Content-Length")
        total = int(expected) if expected and expected.isdigit() else None
        received = 0
        try:
            with (
                open(part, "wb") as out,
                progress_bar(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"download {name}",
                    leave=False,
                ) as bar,
            ):
                while block := response.read(_BLOCK):
                    if received == 0 and not block.startswith(_HDF5_SIGNATURE[: len(block)]):
                        kind = (
                            "an HTML page"
                            if "html" in content_type or block.lstrip()[:1] == b"<"
                            else "not HDF5"
                        )
                        raise DownloadError(
                            f"{url}: the server returned {kind} (Content-Type {content_type or 'unset'!r}), "
                            "not an HDF5 file. Fix: check the URL / mirror."
                        )
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
            raise DownloadError(
                f"{url}: the connection dropped after {received:,} of {total or '?'} bytes ({exc!r})."
            ) from exc
    if total is not None and received != total:
        raise DownloadError(f"{url}: the connection dropped after {received:,} of {total:,} bytes.")
