"""D4RL ids fetched over HTTP, on loopback only: download once, cache, verify, clean up failures."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from envs import DatasetError, load_dataset, save_dataset
from envs.download import DownloadError

DATASET_ID = "hopper-medium-v2"
FILE_NAME = "hopper_medium-v2.hdf5"


def _write_hopper_like(path: Path, *, drop_actions: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    n = 120
    terminals = np.zeros(n, dtype=bool)
    terminals[[39, 79]] = True
    timeouts = np.zeros(n, dtype=bool)
    timeouts[-1] = True
    save_dataset(
        path,
        rng.normal(size=(n, 11)).astype(np.float32),
        rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        terminals,
        timeouts,
        metadata={"env_id": "Hopper-v5"},
    )
    if drop_actions:
        with h5py.File(path, "a") as f:
            del f["actions"]
    return path.read_bytes()


class _Server:
    """A loopback HTTP server with one folder per behaviour: good, drop (half the bytes), html, noactions."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                mode, _, name = self.path.strip("/").partition("/")
                if mode == "html":
                    body = b"<html><body>Not here</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                body = server.files.get(f"{mode}/{name}")
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if mode == "drop" else body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    good = _write_hopper_like(tmp_path / "src" / "good.hdf5")
    broken = _write_hopper_like(tmp_path / "src" / "broken.hdf5", drop_actions=True)
    files = {f"good/{FILE_NAME}": good, f"drop/{FILE_NAME}": good, f"noactions/{FILE_NAME}": broken}
    srv = _Server(files)
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "d4rl"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(folder))
    monkeypatch.delenv("AAREN_RL_OFFLINE", raising=False)
    monkeypatch.delenv("AAREN_RL_D4RL_URL", raising=False)
    return folder


def test_first_load_downloads_and_caches_second_does_not_touch_server(server, cache):
    first = load_dataset(DATASET_ID, base_url=server.url("good"))
    assert server.requests == [f"/good/{FILE_NAME}"]
    assert (cache / FILE_NAME).read_bytes() == server.files[f"good/{FILE_NAME}"]
    second = load_dataset(DATASET_ID, base_url=server.url("good"))
    assert len(server.requests) == 1
    served = load_dataset(Path(cache / FILE_NAME))
    for loaded in (first, second):
        np.testing.assert_array_equal(loaded.observations, served.observations)
        np.testing.assert_array_equal(loaded.actions, served.actions)
        np.testing.assert_array_equal(loaded.episode_lengths, [40, 40, 40])


def test_base_url_from_environment_variable(server, cache, monkeypatch):
    monkeypatch.setenv("AAREN_RL_D4RL_URL", server.url("good"))
    load_dataset(DATASET_ID)
    assert server.requests == [f"/good/{FILE_NAME}"]


@pytest.mark.parametrize(
    "mode,message",
    [
        ("drop", r"connection dropped after [\d,]+ of [\d,]+ bytes"),
        ("html", r"returned an HTML page"),
        ("noactions", r"actions"),
        ("missing", r"HTTP 404"),
    ],
)
def test_failed_downloads_raise_clear_error_and_leave_no_file(server, cache, mode, message):
    with pytest.raises(DownloadError, match=message) as info:
        load_dataset(DATASET_ID, base_url=server.url(mode))
    assert "No file was left" in str(info.value)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_new_attempt_after_a_failure_starts_clean(server, cache):
    with pytest.raises(DownloadError):
        load_dataset(DATASET_ID, base_url=server.url("drop"))
    dataset = load_dataset(DATASET_ID, base_url=server.url("good"))
    assert dataset.num_episodes == 3
    assert [p.name for p in cache.iterdir()] == [FILE_NAME]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_never_opens_a_socket_and_says_where_and_how(server, cache, monkeypatch, how):
    kwargs = {"download": False} if how == "argument" else {}
    if how == "environment":
        monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    with pytest.raises(DatasetError) as info:
        load_dataset(DATASET_ID, base_url=server.url("good"), **kwargs)
    text = str(info.value)
    assert str(cache / FILE_NAME) in text
    assert f"{server.url('good')}/{FILE_NAME}" in text
    assert server.requests == []


def test_ids_d4rl_does_not_publish_are_not_fetched(server, cache):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("hopper-mixed-v2", base_url=server.url("good"))
    assert server.requests == []


def test_unreachable_server_says_where_what_url_and_how_by_hand(cache):
    url = "http://127.0.0.1:9"  # the discard port: nothing listens there
    with pytest.raises(DownloadError) as info:
        load_dataset(DATASET_ID, base_url=url)
    text = str(info.value)
    assert "cannot connect" in text and str(cache / FILE_NAME) in text
    assert f"{url}/{FILE_NAME}" in text and "by hand" in text
    assert not cache.exists() or list(cache.iterdir()) == []
