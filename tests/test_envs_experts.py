"""envs.experts: behaviour policies from $AAREN_RL_EXPERTS, the cache or the Hub, loaded without running
code from their files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import pickle
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3.common.save_util as sb3_save_util
import torch
from sb3_contrib import ARS, TQC
from stable_baselines3 import A2C

from envs.download import DownloadError
from envs.experts import (
    MODEL_FILE,
    NORMALIZER_FILE,
    PolicyFileError,
    PredictPolicy,
    UnsafePolicyFileError,
    check_policy_folder,
    download_expert,
    load_sb3_policy,
    read_model_data,
    restricted_loads,
)

ENV_IDS = {"Hopper": "Hopper-v5", "HalfCheetah": "HalfCheetah-v5", "Walker2d": "Walker2d-v5"}


@pytest.fixture
def no_code_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything unpickles with the standard unpickler (SB3's loader must get every entry
    ready-made, the normaliser goes through the restricted one)."""

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled with the standard unpickler")

    monkeypatch.setattr(sb3_save_util.cloudpickle, "loads", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)


def spaces_of(name: str) -> tuple[gym.Space, gym.Space]:
    env = gym.make(ENV_IDS[name.split("-")[1]])
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def act(policy: PredictPolicy, obs_dim: int) -> np.ndarray:
    obs = np.random.default_rng(0).normal(size=(8, obs_dim)).astype(np.float32)
    return policy.act(obs, np.arange(8) * 100, np.ones(8, dtype=bool))


# --------------------------------------------------------------------------------------------------
# The RL Zoo's policies


@pytest.mark.usefixtures("no_code_unpickled")
def test_every_local_expert_loads_safely(expert_policies):
    folders = sorted(d for d in expert_policies.iterdir() if (d / MODEL_FILE).is_file())
    assert len(folders) >= 18
    for folder in folders:
        check_policy_folder(folder)
        observation_space, action_space = spaces_of(folder.name)
        policy = load_sb3_policy(folder.name, observation_space, action_space)
        assert policy.name == folder.name and policy.algo == folder.name.split("-")[0]
        actions = act(policy, observation_space.shape[0])
        assert actions.shape == (8, *action_space.shape) and np.isfinite(actions).all()


def sb3_reference_policy(folder: Path, monkeypatch: pytest.MonkeyPatch) -> PredictPolicy:
    """The experts README recipe with the standard unpickler (trusted local files only): what the loader
    did before it refused to run code from files, as the baseline for identical actions."""
    observation_space, action_space = spaces_of(folder.name)
    normalizer = None
    if (folder / NORMALIZER_FILE).is_file():
        for name in ("gym", "gym.spaces", "gym.spaces.box"):
            monkeypatch.setitem(sys.modules, name, sys.modules[name.replace("gym", "gymnasium", 1)])
        normalizer = pickle.loads((folder / NORMALIZER_FILE).read_bytes())
    algo = folder.name.split("-")[0]
    model = {"a2c": A2C, "ars": ARS, "tqc": TQC}[algo].load(
        folder / MODEL_FILE,
        device="cpu",
        custom_objects={
            "observation_space": observation_space,
            "action_space": action_space,
            "learning_rate": 0.0,
            "lr_schedule": lambda _: 0.0,
            "clip_range": lambda _: 0.0,
            "delta_std_schedule": lambda _: 0.0,
        },
    )
    return PredictPolicy(model, name=folder.name, algo=algo, obs_normalizer=normalizer)


@pytest.mark.parametrize("name", ["a2c-Hopper", "ars-Hopper", "tqc-Hopper"])
def test_actions_identical_to_sb3s_own_loading(name, expert_policies, monkeypatch):
    reference = act(sb3_reference_policy(expert_policies / name, monkeypatch), 11)
    observation_space, action_space = spaces_of(name)
    np.testing.assert_array_equal(act(load_sb3_policy(name, observation_space, action_space), 11), reference)


# --------------------------------------------------------------------------------------------------
# Files that would run code


class CreatesFile:
    """Unpickling this with the standard unpickler creates ``path`` (the attack these tests refuse)."""

    def __init__(self, path: Path, via: str):
        self.path, self.via = path, via

    def __reduce__(self):
        if self.via == "os.system":
            return os.system, (f"touch {self.path}",)
        return open, (str(self.path), "w")


@pytest.mark.parametrize("via", ["os.system", "builtins.open"])
def test_attack_payload_works_on_the_standard_unpickler(tmp_path, via):
    """The crafted pickles below are real attacks: the standard unpickler creates the file."""
    marker = tmp_path / "created"
    result = pickle.loads(pickle.dumps(CreatesFile(marker, via)))
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    """A small A2C policy for Hopper-v5 saved by current SB3, with a VecNormalize and a zoo config."""
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    folder = tmp_path_factory.mktemp("tiny") / "a2c-Hopper"
    folder.mkdir()
    venv = DummyVecEnv([lambda: gym.make("Hopper-v5")])
    A2C("MlpPolicy", venv, policy_kwargs={"net_arch": [8]}, device="cpu", seed=0).save(folder / MODEL_FILE)
    VecNormalize(venv).save(str(folder / NORMALIZER_FILE))
    (folder / "config.yml").write_text("policy: MlpPolicy\nnormalize: true\n")
    venv.close()
    return folder


def with_data_entry(zip_path: Path, out: Path, key: str, payload: bytes) -> Path:
    """A copy of an SB3 zip whose ``data`` has entry ``key`` pickled as ``payload``."""
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == "data":
                data = json.loads(content)
                data[key] = {
                    **data.get(key, {}),
                    ":type:": "<class 'object'>",
                    ":serialized:": base64.b64encode(payload).decode(),
                }
                content = json.dumps(data).encode()
            dst.writestr(item, content)
    return out


@pytest.mark.usefixtures("no_code_unpickled")
@pytest.mark.parametrize("key", ["policy_class", "injected_entry"])
@pytest.mark.parametrize("via", ["os.system", "builtins.open"])
def test_zip_entry_that_would_run_code_is_refused(tiny_policy, tmp_path, key, via):
    marker = tmp_path / "created"
    zip_path = with_data_entry(
        tiny_policy / MODEL_FILE, tmp_path / "model.zip", key, pickle.dumps(CreatesFile(marker, via))
    )
    global_name = f"{os.system.__module__}.system" if via == "os.system" else f"{open.__module__}.open"
    pattern = rf"{re.escape(str(zip_path))} \(data entry '{key}'\): refused to unpickle {global_name}"
    with pytest.raises(UnsafePolicyFileError, match=pattern):
        load_sb3_policy(zip_path, *spaces_of("a2c-Hopper"))
    assert not marker.exists()


@pytest.mark.parametrize("via", ["os.system", "builtins.open"])
def test_normalizer_that_would_run_code_is_refused(tiny_policy, tmp_path, via):
    marker = tmp_path / "created"
    folder = tmp_path / "a2c-Hopper"
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes((tiny_policy / MODEL_FILE).read_bytes())
    (folder / NORMALIZER_FILE).write_bytes(pickle.dumps({"obs_rms": CreatesFile(marker, via)}))
    with pytest.raises(UnsafePolicyFileError, match=rf"{re.escape(str(folder / NORMALIZER_FILE))}: refused"):
        load_sb3_policy(folder, *spaces_of("a2c-Hopper"))
    assert not marker.exists()


def with_zip_entry(zip_path: Path, out: Path, entry: str, content: bytes) -> Path:
    """A copy of an SB3 zip whose entry ``entry`` holds ``content`` (zip CRCs right)."""
    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, content if item.filename == entry else src.read(item))
    return out


@pytest.mark.usefixtures("no_code_unpickled")
@pytest.mark.parametrize("entry", ["policy.pth", "pytorch_variables.pth"])
@pytest.mark.parametrize("saved_by", ["torch.save", "pickle.dumps"])
def test_torch_entry_that_would_run_code_is_refused(tiny_policy, tmp_path, entry, saved_by):
    """A crafted torch file in the zip is one UnsafePolicyFileError line, from loading and from the
    check a download gets alike; its payload never runs."""
    marker = tmp_path / "created"
    payload = {"weights": CreatesFile(marker, "os.system")}
    if saved_by == "torch.save":
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        content = buffer.getvalue()
    else:
        content = pickle.dumps(payload, protocol=2)
    folder = tmp_path / "a2c-Hopper"
    folder.mkdir()
    with_zip_entry(tiny_policy / MODEL_FILE, folder / MODEL_FILE, entry, content)
    pattern = (
        rf"^{re.escape(str(folder / MODEL_FILE))} \(entry '{entry}'\): refused to unpickle it \(.*GLOBAL "
        rf"{os.system.__module__}\.system.*could run code from the file"
    )
    for load in (
        lambda: load_sb3_policy(folder, *spaces_of("a2c-Hopper")),
        lambda: check_policy_folder(folder),
    ):
        with pytest.raises(UnsafePolicyFileError, match=pattern) as caught:
            load()
        assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_torch_entry_that_is_not_a_torch_file_is_one_error(tiny_policy, tmp_path):
    zip_path = with_zip_entry(
        tiny_policy / MODEL_FILE, tmp_path / "model.zip", "policy.pth", b"PK\x03\x04 torn"
    )
    with pytest.raises(PolicyFileError, match=r"\(entry 'policy.pth'\): not a readable torch file \("):
        load_sb3_policy(zip_path, *spaces_of("a2c-Hopper"))


def test_torch_entry_that_loads_but_is_not_what_sb3_saved_is_one_error(tiny_policy, tmp_path):
    """A damaged optimizer state that still unpickles (found by tests/test_ppo_fuzz.py: a KeyError)."""
    buffer = io.BytesIO()
    torch.save({"state": {}, "param_groups": [{"lr": 1.0}]}, buffer)  # no "params"
    zip_path = with_zip_entry(
        tiny_policy / MODEL_FILE, tmp_path / "model.zip", "policy.optimizer.pth", buffer.getvalue()
    )
    with pytest.raises(PolicyFileError, match=r"Stable-Baselines3 cannot load it \(KeyError: 'params'\)"):
        load_sb3_policy(zip_path, *spaces_of("a2c-Hopper"))


@pytest.mark.parametrize("name", ["th.load", "th.jit.ScriptModule"])
def test_objects_reached_through_an_allowed_module_are_refused(name):
    """Protocol 4 resolves dotted names attribute by attribute: SB3's policies module holds `th` (torch)."""
    module = "stable_baselines3.common.policies"
    raw = b"\x80\x04" + b"".join(b"\x8c" + bytes([len(s)]) + s.encode() for s in (module, name)) + b"\x93."
    assert callable(pickle.loads(raw))  # what the standard unpickler would hand over
    with pytest.raises(UnsafePolicyFileError, match=rf"refused to unpickle {module}\.{re.escape(name)}"):
        restricted_loads(raw, "crafted")


def test_broken_zips_give_one_clear_error(tiny_policy, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes((tiny_policy / MODEL_FILE).read_bytes()[:2000])
    with pytest.raises(PolicyFileError, match="not a readable Stable-Baselines3 model zip"):
        read_model_data(truncated)
    no_weights = tmp_path / "no_weights.zip"
    with zipfile.ZipFile(tiny_policy / MODEL_FILE) as src, zipfile.ZipFile(no_weights, "w") as dst:
        dst.writestr("data", src.read("data"))
    with pytest.raises(PolicyFileError, match=r"no policy\.pth in it"):
        read_model_data(no_weights)


@pytest.mark.usefixtures("no_code_unpickled")
def test_current_sb3_saves_load(tiny_policy):
    policy = load_sb3_policy(tiny_policy, *spaces_of("a2c-Hopper"))
    assert policy.algo == "a2c" and policy.obs_normalizer is not None and act(policy, 11).shape == (8, 3)


# --------------------------------------------------------------------------------------------------
# The Hub, served on loopback

COMMIT = hashlib.sha1(b"fake sb3 repository").hexdigest()


class FakeHub:
    """Answers huggingface_hub's ``HEAD``/``GET /{repo_id}/resolve/{revision}/{filename}`` from ``repos``.

    A file named in ``drop_after`` gets its full Content-Length but only that many bytes, then the
    connection closes (a dropped download).
    """

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[str] = []
        self.drop_after: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a silent client may hold a handler thread

            def do_HEAD(self) -> None:
                hub.answer(self, send_body=False)

            def do_GET(self) -> None:
                hub.answer(self, send_body=True)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append(f"{handler.command} {handler.path}")
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", urlparse(handler.path).path)
        files = self.repos.get(match[1]) if match else None
        content = files.get(match[2]) if files is not None else None
        handler.send_response(200 if content is not None else 404)
        handler.send_header("X-Repo-Commit", COMMIT)
        if content is None:
            handler.send_header("X-Error-Code", "EntryNotFound" if files is not None else "RepoNotFound")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
        handler.send_header("Content-Length", str(len(content)))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.end_headers()
        if send_body:
            handler.wfile.write(content[: self.drop_after.get(match[2], len(content))])
            handler.close_connection = match[2] in self.drop_after


@pytest.fixture
def hub_files(tiny_policy) -> dict[str, dict[str, bytes]]:
    """The tiny policy published the RL Zoo's way, plus one agent without a normaliser."""
    model, config = (tiny_policy / MODEL_FILE).read_bytes(), (tiny_policy / "config.yml").read_bytes()
    return {
        "sb3/a2c-Hopper-v3": {
            "a2c-Hopper-v3.zip": model,
            "config.yml": config,
            "vec_normalize.pkl": (tiny_policy / NORMALIZER_FILE).read_bytes(),
        },
        "sb3/a2c-Unnormalised-v3": {"a2c-Unnormalised-v3.zip": model, "config.yml": config},
    }


@pytest.fixture
def hub(hub_files, tmp_path, monkeypatch) -> Iterator[FakeHub]:
    """A fake Hub on loopback as $HF_ENDPOINT, downloads allowed, an empty cache, no experts folder."""
    fake = FakeHub(hub_files)
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("AAREN_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AAREN_RL_OFFLINE")
    monkeypatch.delenv("AAREN_RL_EXPERTS", raising=False)
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=10)


def test_first_load_downloads_once_into_the_cache(hub, hub_files, tmp_path):
    spaces = spaces_of("a2c-Hopper")
    policy = load_sb3_policy("a2c-Hopper", *spaces)
    folder = tmp_path / "cache" / "experts" / "a2c-Hopper"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yml", MODEL_FILE, NORMALIZER_FILE]
    assert os.listdir(folder.parent) == ["a2c-Hopper"]  # no temporary folder left beside it
    served = hub_files["sb3/a2c-Hopper-v3"]
    assert (folder / MODEL_FILE).read_bytes() == served["a2c-Hopper-v3.zip"]
    assert (folder / NORMALIZER_FILE).read_bytes() == served["vec_normalize.pkl"]
    assert any(r.startswith("GET /sb3/a2c-Hopper-v3/resolve/main/a2c-Hopper-v3.zip") for r in hub.requests)
    assert policy.name == "a2c-Hopper" and policy.obs_normalizer is not None

    seen = len(hub.requests)
    again = load_sb3_policy("a2c-Hopper", *spaces)
    assert len(hub.requests) == seen  # the second load does not touch the server
    np.testing.assert_array_equal(act(again, 11), act(policy, 11))


def test_agent_without_normaliser_is_cached_without_one(hub, tmp_path):
    folder = download_expert("a2c-Unnormalised")
    assert folder == tmp_path / "cache" / "experts" / "a2c-Unnormalised"
    assert sorted(p.name for p in folder.iterdir()) == ["config.yml", MODEL_FILE]


@pytest.mark.parametrize(
    "broken", ["truncated model", "dropped connection", "unknown agent", "normaliser that runs code"]
)
def test_broken_download_leaves_nothing_and_one_error(hub, hub_files, tmp_path, broken):
    repo = hub_files["sb3/a2c-Hopper-v3"]
    marker = tmp_path / "created"
    if broken == "truncated model":
        repo["a2c-Hopper-v3.zip"] = repo["a2c-Hopper-v3.zip"][:3000]
        error, message = DownloadError, "not a readable Stable-Baselines3 model zip.*Nothing was left"
    elif broken == "dropped connection":
        hub.drop_after["a2c-Hopper-v3.zip"] = 3000
        error, message = DownloadError, "failed.*Nothing was left"
    elif broken == "unknown agent":
        hub_files.pop("sb3/a2c-Hopper-v3")
        error, message = (
            DownloadError,
            r"(?s)sb3/a2c-Hopper-v3 failed \(RepositoryNotFoundError.*AAREN_RL_EXPERTS",
        )
    else:
        repo["vec_normalize.pkl"] = pickle.dumps(CreatesFile(marker, "os.system"))
        error, message = (
            UnsafePolicyFileError,
            rf"refused to unpickle {os.system.__module__}\.system.*Nothing was cached",
        )
    with pytest.raises(error, match=message):
        load_sb3_policy("a2c-Hopper", *spaces_of("a2c-Hopper"))
    assert os.listdir(tmp_path / "cache" / "experts") == []
    assert not marker.exists()


def test_offline_without_policies_names_both_fixes(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"set \$AAREN_RL_EXPERTS to a folder.*or allow the download"):
        load_sb3_policy("a2c-Hopper", *spaces_of("a2c-Hopper"))
    assert hub.requests == []


def test_experts_folder_takes_precedence_over_the_hub(hub, tiny_policy, monkeypatch):
    monkeypatch.setenv("AAREN_RL_EXPERTS", str(tiny_policy.parent))
    assert load_sb3_policy("a2c-Hopper", *spaces_of("a2c-Hopper")).name == "a2c-Hopper"
    with pytest.raises(FileNotFoundError, match=rf"a folder name in {re.escape(str(tiny_policy.parent))}"):
        load_sb3_policy("tqc-Hopper", *spaces_of("a2c-Hopper"))
    assert hub.requests == []
