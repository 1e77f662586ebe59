"""agents.hub: `aaren-rl push` uploads only files that load without code, loading by repository id
verifies every file and never unpickles, and whatever a user can fix is one clear error; against a
Hub served on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from test_cli_errors import assert_user_error, tiny_overrides

from agents import DecisionPolicy, evaluate_run, load_config, train
from agents.commands import main as aaren_rl
from agents.common.shipped import find_config
from agents.decision.sb3 import RewardToPolicyVecEnv
from agents.hub import MANIFEST, POLICY, HubError, download_agent, hub_cache, push
from agents.ppo.export import load_exported_policy
from agents.ppo.train import PPORun, train_ppo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DECISION_FILES = {
    "policy.zip",
    "config.yaml",
    "eval.json",
    "dataset_stats.json",
    "curve.png",
    "README.md",
    MANIFEST,
}


class FakeHub:
    """The Hub endpoints huggingface_hub uses to create a repository, commit files (each one inline:
    'regular' upload mode) and download them (`resolve`, by branch or commit); every commit is kept."""

    def __init__(self) -> None:
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # repo -> [(commit, files)]
        self.forbidden: set[str] = set()  # repositories whose files are refused (403)
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def do_HEAD(self) -> None:
                hub.resolve(self, send_body=False)

            def do_GET(self) -> None:
                hub.resolve(self, send_body=True)

            def do_POST(self) -> None:
                hub.post(self)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def commit(self, repo: str, files: dict[str, bytes]) -> str:
        """Add a commit holding the previous one's files updated by `files`; its id."""
        history = self.repos[repo]
        sha = hashlib.sha1(f"{repo} {len(history)}".encode()).hexdigest()
        history.append((sha, {**(history[-1][1] if history else {}), **files}))
        return sha

    def files(self, repo: str) -> dict[str, bytes]:
        return self.repos[repo][-1][1]

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str) -> None:
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        if body and handler.command != "HEAD":
            handler.wfile.write(body)

    def post(self, handler: BaseHTTPRequestHandler) -> None:
        self.requests.append(f"POST {handler.path}")
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        path = urlparse(handler.path).path
        if path == "/api/repos/create":
            data = json.loads(body)
            repo = f"{data['organization']}/{data['name']}"
            answer = json.dumps({"url": f"{self.url}/{repo}"}).encode()
            if repo in self.repos:  # the Hub answers 409 with the repository's URL
                return self.reply(handler, 409, answer)
            self.repos[repo] = []
            return self.reply(handler, 200, answer)
        if path == "/api/validate-yaml":
            return self.reply(handler, 200, b"{}")
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/[^/]+", path)
        if match is None or match[1] not in self.repos:
            return self.reply(handler, 404, b"{}", **{"X-Error-Code": "RepoNotFound"})
        if match[2] == "preupload":
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                for f in json.loads(body)["files"]
            ]
            return self.reply(handler, 200, json.dumps({"files": files}).encode())
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        added = {
            item["value"]["path"]: base64.b64decode(item["value"]["content"])
            for item in items
            if item["key"] == "file"
        }
        sha = self.commit(match[1], added)
        answer = {"commitUrl": f"{self.url}/{match[1]}/commit/{sha}", "commitOid": sha}
        return self.reply(handler, 200, json.dumps(answer).encode())

    def resolve(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append(f"{handler.command} {handler.path}")
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlparse(handler.path).path)
        if match and match[1] in self.forbidden:
            return self.reply(handler, 403)
        history = self.repos.get(match[1]) if match else None
        if not history:
            return self.reply(handler, 404, **{"X-Error-Code": "RepoNotFound"})
        found = [(sha, files) for sha, files in history if match[2] in (sha, "main")]
        if not found:
            return self.reply(handler, 404, **{"X-Error-Code": "RevisionNotFound"})
        sha, files = found[-1]
        content = files.get(match[3])
        if content is None:
            return self.reply(handler, 404, **{"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
        etag = f'"{hashlib.sha256(content).hexdigest()}"'
        self.reply(handler, 200, content, **{"X-Repo-Commit": sha, "ETag": etag})


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[FakeHub]:
    """A fake Hub on loopback as $HF_ENDPOINT, network allowed, an empty cache."""
    fake = FakeHub()
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_loopback")
    monkeypatch.setenv("AAREN_RL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AAREN_RL_OFFLINE")
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def decision_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step decision run with its final evaluation and learning curve."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(find_config("quickstart"), tiny_overrides(tiny_dataset, out, "tiny"))
    return train(cfg, progress=False)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("ppo") / "run"
    return train_ppo(PPORun.of_task("RememberCue", steps=256, eval_episodes=1), run_dir, progress=False)


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything unpickles."""

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def observations(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Hopper-sized observations with the previous reward appended (`RewardToPolicyVecEnv`), and starts."""
    return np.random.default_rng(0).normal(size=(n, 12)), np.ones(n, dtype=bool)


def push_cli(capsys, run_dir: Path, repo: str) -> tuple[int, str]:
    capsys.readouterr()
    status = aaren_rl(["push", str(run_dir), "--repo", repo])
    return status, capsys.readouterr().err


# ---- a decision agent, round trip ------------------------------------------------------------------


def test_push_uploads_only_safe_files_and_the_agent_comes_back_acting_the_same(
    hub, decision_run, capsys, no_unpickling
):
    status, err = push_cli(capsys, decision_run, "user/agent")
    assert status == 0, err
    files = hub.files("user/agent")
    assert set(files) == DECISION_FILES  # no trainer.pt, metrics, TensorBoard events or lock
    manifest = json.loads(files[MANIFEST])
    assert manifest["kind"] == "decision" and manifest["step"] == 2
    assert set(manifest["files"]) == DECISION_FILES - {MANIFEST}
    card = files["README.md"].decode()
    assert "Hopper-v5" in card and "| 50 |" in card  # the task and the score at target 50
    assert 'DecisionPolicy.from_hub("user/agent")' in card and "library_name: aaren-rl" in card
    local, shared = DecisionPolicy.load(decision_run), DecisionPolicy.from_hub("user/agent")
    obs, starts = observations()
    local_state = shared_state = None
    for _ in range(3):  # recurrent acting: the states carry on
        a, local_state = local.predict(obs, local_state, starts)
        b, shared_state = shared.predict(obs, shared_state, starts)
        np.testing.assert_array_equal(a, b)
        starts = np.zeros_like(starts)
    assert shared.agent.target_return == local.agent.target_return


def test_evaluate_hub_scores_as_the_run(hub, decision_run, tmp_path, capsys):
    push(decision_run, "user/agent")
    out = tmp_path / "hub-eval"
    status = aaren_rl(
        ["evaluate", "--hub", "user/agent", "--episodes", "1", "--envs", "1", "--out", str(out)]
    )
    assert status == 0, capsys.readouterr().err
    report = json.loads((out / "eval.json").read_text())
    assert report["hub"] == "user/agent" and report["step"] == 2 and (out / "eval.png").is_file()
    local = evaluate_run(decision_run, episodes=1, num_envs=1, out_dir=tmp_path / "local", progress=False)
    assert [r["returns"] for r in report["results"]] == [r["returns"] for r in local["results"]]


def test_a_loaded_agent_is_read_from_the_cache_offline(hub, decision_run, monkeypatch):
    push(decision_run, "user/agent")
    online = DecisionPolicy.from_hub("user/agent")
    seen = len(hub.requests)
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    offline = DecisionPolicy.from_hub("user/agent")
    assert len(hub.requests) == seen
    obs, starts = observations()
    np.testing.assert_array_equal(offline.predict(obs, None, starts)[0], online.predict(obs, None, starts)[0])


def test_evaluating_through_sb3_works_with_a_hub_agent(hub, decision_run):
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    push(decision_run, "user/agent")
    env = RewardToPolicyVecEnv(make_vec_env("Hopper-v5", n_envs=1, seed=0))
    mean, _ = evaluate_policy(DecisionPolicy.from_hub("user/agent"), env, n_eval_episodes=1)
    assert np.isfinite(mean)


# ---- an AarenPPO policy ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_unpickling")
def test_an_aarenppo_export_round_trips(hub, ppo_run):
    push(ppo_run, "user/ppo")
    files = hub.files("user/ppo")
    assert set(files) == {POLICY, "config.yaml", "eval.json", "README.md", MANIFEST}  # not model.zip
    assert "RememberCue" in files["README.md"].decode()
    local, shared = load_exported_policy(ppo_run / POLICY), load_exported_policy("user/ppo")
    obs = np.stack([local.observation_space.sample() for _ in range(3)])
    starts = np.ones(3, dtype=bool)
    np.testing.assert_array_equal(
        shared.predict(obs, episode_start=starts, deterministic=True)[0],
        local.predict(obs, episode_start=starts, deterministic=True)[0],
    )
    for name, weight in shared.state_dict().items():
        assert torch.equal(weight, local.state_dict()[name]), name


def test_a_repository_of_the_other_kind_names_its_loader(hub, ppo_run):
    push(ppo_run, "user/ppo")
    with pytest.raises(
        HubError,
        match=r"user/ppo holds an AarenPPO policy .*Fix: load it with agents.ppo.load_exported_policy",
    ):
        DecisionPolicy.from_hub("user/ppo")


# ---- one clear error for each thing a user can fix -------------------------------------------------


def test_offline_without_the_agent_in_the_cache(hub, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    with pytest.raises(
        HubError, match=r"not in the cache .* downloads are off \(\$AAREN_RL_OFFLINE is set\)"
    ):
        DecisionPolicy.from_hub("user/agent")
    status = aaren_rl(["evaluate", "--hub", "user/agent", "--out", str(tmp_path / "e")])
    assert_user_error(status, capsys.readouterr().err, "user/agent", "AAREN_RL_OFFLINE", "Fix:")
    assert hub.requests == []


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        ("user/missing", r"there is no repository user/missing on http://127\.0\.0\.1:\d+ .* Fix:"),
        ("user/plain", r"user/plain is not an aaren-rl agent: it has no aaren-rl\.json\. Fix:"),
        ("user/two--dashes", r"'user/two--dashes' is not a Hub repository id .* Fix: give it as user/name"),
        ("user/secret", r"cannot download aaren-rl\.json .*\(HfHubHTTPError: 403 Forbidden.*hf auth login"),
    ],
)
def test_a_bad_repository_is_one_error(hub, repo, message):
    hub.repos["user/plain"] = []
    hub.commit("user/plain", {"README.md": b"# not an agent\n"})
    hub.forbidden.add("user/secret")
    with pytest.raises(HubError, match=message):
        DecisionPolicy.from_hub(repo)


def test_a_damaged_download_is_refused_and_not_kept(hub, decision_run):
    push(decision_run, "user/agent")
    files = hub.files("user/agent")
    files[POLICY] = files[POLICY][:-10]  # the repository serves a cut file under the same manifest
    with pytest.raises(HubError, match=r"user/agent/policy\.zip as downloaded is truncated: .* removed"):
        DecisionPolicy.from_hub("user/agent")
    assert not [p for p in hub_cache().rglob(POLICY)]
    push(decision_run, "user/agent")  # pushed again: a new commit with an intact file
    DecisionPolicy.from_hub("user/agent")


def test_an_edited_manifest_is_refused(hub, decision_run):
    push(decision_run, "user/agent")
    manifest = json.loads(hub.files("user/agent")[MANIFEST])
    manifest["files"][POLICY]["bytes"] += 1
    hub.commit("user/agent", {MANIFEST: json.dumps(manifest).encode()})
    with pytest.raises(HubError, match=r"aaren-rl\.json was changed after it was written"):
        download_agent("user/agent")


def test_push_refuses_what_is_not_a_finished_run(hub, decision_run, tmp_path, capsys, monkeypatch):
    assert_user_error(*push_cli(capsys, tmp_path, "user/x"), f"{tmp_path} holds no trained agent", "Fix:")
    unevaluated = tmp_path / "run"
    shutil.copytree(decision_run, unevaluated)
    shutil.rmtree(unevaluated / "eval")
    status, err = push_cli(capsys, unevaluated, "user/x")
    assert_user_error(status, err, "eval.json is missing", f"aaren-rl evaluate --run {unevaluated}")
    assert_user_error(*push_cli(capsys, decision_run, "no-slash"), "'no-slash' is not a Hub repository id")
    monkeypatch.setenv("AAREN_RL_OFFLINE", "1")
    assert_user_error(*push_cli(capsys, decision_run, "user/x"), "AAREN_RL_OFFLINE is set")
    assert hub.repos == {}


def test_push_to_an_unreachable_hub_is_one_error(decision_run, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_TOKEN", "hf_loopback")
    monkeypatch.delenv("AAREN_RL_OFFLINE")
    assert_user_error(*push_cli(capsys, decision_run, "user/x"), "cannot reach http://127.0.0.1:9", "Fix:")
