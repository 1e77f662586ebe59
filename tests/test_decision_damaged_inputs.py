"""Run safety beyond checkpoint folders: a damaged or tampered DecisionPolicy zip is one CheckpointError
naming the zip and its member (verified by the checkpoint manifest); a folder that is not a run, or a run
with a damaged dataset_stats.json, is one `error:` line from scripts/evaluate.py; unknown env names and
recipe ids are user errors."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.common.cli import USER_ERROR_STATUS, user_error_message
from agents.decision.agent import DecisionAgent
from agents.decision.checkpoint import CheckpointError
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import RunDir, RunDirError, read_run_info, run_targets
from agents.decision.sb3 import DecisionPolicy
from envs.collect import parse_recipe_id
from envs.d4rl import canonical_env_id
from envs.errors import EnvNameError

ROOT = Path(__file__).resolve().parents[1]
STATS = {
    "env": "Hopper-v5",
    "score_ref": {"env_id": "Hopper-v5", "ref_min_score": -20.0, "ref_max_score": 3234},
    "eval_targets": [3600, 1800.5],
    "return_mean": 9.5,
}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def agent() -> DecisionAgent:
    torch.manual_seed(0)
    config = DecisionModelConfig(obs_dim=3, act_dim=2, embed_dim=8, max_timestep=16)
    return DecisionAgent(DecisionModel(config).eval(), target_return=120.0)


@pytest.fixture(scope="module")
def policy_zip(agent, tmp_path_factory) -> bytes:
    """The bytes of a DecisionPolicy zip of `agent`."""
    return DecisionPolicy(agent).save(tmp_path_factory.mktemp("zip") / "policy.zip").read_bytes()


def assert_loads_as(path: Path, agent: DecisionAgent) -> None:
    loaded = DecisionPolicy.load(path).agent
    assert (loaded.target_return, loaded.acting) == (agent.target_return, agent.acting)
    expected = agent.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def rezip(path: Path, **members: bytes) -> None:
    """Rewrite the zip at `path` with `members` replaced (valid zip CRCs: only the manifest can tell)."""
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**files, **members}.items():
            archive.writestr(name, data)


def flip_in_member(data: bytes, member: str) -> bytes:
    """`data` (a zip) with a byte of `member`'s stored bytes flipped near its end (tensor data)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(member)
    header = 30 + len(info.filename.encode()) + len(info.extra)  # the local file header before the data
    at = info.header_offset + header + info.compress_size - 5
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("truncate", ["policy.zip is not a DecisionPolicy file", "or a damaged one"]),
        ("flip safetensors", ["policy.zip: cannot read model.safetensors (BadZipFile: Bad CRC-32"]),
        (
            "tamper safetensors",
            ["policy.zip/model.safetensors is damaged", "digest in", "policy.zip/model.json"],
        ),
        ("garbage model.json", ["policy.zip/model.json cannot be read (", "the file is damaged"]),
        ("edit model.json", ["policy.zip/model.json was changed after it was written"]),
        ("not a zip", ["policy.zip is not a DecisionPolicy file"]),
    ],
)
def test_damaged_policy_zip_is_one_checkpoint_error(policy_zip, tmp_path, damage, fragments):
    path = tmp_path / "policy.zip"
    path.write_bytes(policy_zip)
    if damage == "truncate":
        path.write_bytes(policy_zip[: len(policy_zip) // 2])
    elif damage == "flip safetensors":
        path.write_bytes(flip_in_member(policy_zip, "model.safetensors"))
    elif damage == "tamper safetensors":
        with zipfile.ZipFile(path) as archive:
            weights = bytearray(archive.read("model.safetensors"))
        weights[-5] ^= 0x10
        rezip(path, **{"model.safetensors": bytes(weights)})
    elif damage == "garbage model.json":
        rezip(path, **{"model.json": b"\x00garbage{"})
    elif damage == "edit model.json":
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("model.json"))
        rezip(path, **{"model.json": json.dumps({**meta, "target_return": 9000.0}).encode()})
    else:
        path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError) as caught:
        DecisionPolicy.load(path)
    message = str(caught.value)
    assert tempfile.gettempdir() + "/tmp" not in message, "it names the unpacked copy, not the zip"
    for fragment in [*fragments, "Fix:"]:
        assert fragment in message, (fragment, message)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.floats(0, 1), kind=st.sampled_from(["truncate", "flip"]), bits=st.integers(1, 255))
def test_fuzzed_policy_zip_gives_only_checkpoint_errors(agent, policy_zip, where, kind, bits):
    """A truncated or bit-flipped zip either loads exactly the saved policy or is a CheckpointError."""
    at = min(int(where * len(policy_zip)), len(policy_zip) - 1)
    if kind == "truncate":
        data = policy_zip[:at]
    else:
        data = policy_zip[:at] + bytes([policy_zip[at] ^ bits]) + policy_zip[at + 1 :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.zip"
        path.write_bytes(data)
        try:
            assert_loads_as(path, agent)
        except CheckpointError as exc:
            assert str(path) in str(exc) and "Fix:" in str(exc)


def test_an_intact_zip_and_a_zip_lacking_a_member(agent, policy_zip, tmp_path):
    path = tmp_path / "policy.zip"
    path.write_bytes(policy_zip)
    assert_loads_as(path, agent)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.json", "{}")
    with pytest.raises(
        CheckpointError, match=r"policy\.zip is not a DecisionPolicy file.*lacks model\.safetensors"
    ):
        DecisionPolicy.load(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_zip_without_digests_whose_weights_are_not_finite_is_refused(policy_zip, tmp_path, value):
    """Digest fields removed, a zip loads unverified (with a warning), but weights that are not finite
    are still refused: the policy would act on NaN."""
    path = tmp_path / "policy.zip"
    path.write_bytes(policy_zip)
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("model.json"))
        weights = safetensors.torch.load(archive.read("model.safetensors"))
    del meta["files"], meta["digest"]
    weights["predict_action.bias"][1] = value
    rezip(
        path,
        **{"model.json": json.dumps(meta).encode(), "model.safetensors": safetensors.torch.save(weights)},
    )
    with pytest.raises(CheckpointError) as caught, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        DecisionPolicy.load(path)
    assert any("loading it unverified" in str(w.message) for w in warned)
    assert str(caught.value).startswith(
        f"{path}/model.safetensors holds NaN or infinite values in ['predict_action.bias']"
    )
    assert "Fix: save the policy again" in str(caught.value)


# ---- run directories: dataset_stats.json -------------------------------------------------------------


def evaluate(capsys: pytest.CaptureFixture[str], run: Path) -> str:
    """scripts/evaluate.py --run `run`: asserts exit status 2 with one `error:` line, and returns it."""
    spec = importlib.util.spec_from_file_location("evaluate_script", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    status = module.main(["--run", str(run), "--episodes", "1", "--envs", "1"])
    err = capsys.readouterr().err
    assert status == USER_ERROR_STATUS and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Fix:" in lines[0], err
    return lines[0]


def test_evaluating_a_folder_that_is_not_a_run(capsys, tmp_path):
    line = evaluate(capsys, tmp_path)
    assert f"{tmp_path} is not a run directory: {tmp_path / 'dataset_stats.json'} is missing" in line
    assert "scripts/train_offline.py" in line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not JSON"),
        (b"\xff\xfe\x00", "is not JSON"),
        ("[1, 2]", "holds no JSON object"),
        *[(json.dumps({k: v for k, v in STATS.items() if k != key}), f"lacks '{key}'") for key in STATS],
        (json.dumps({**STATS, "env": 3}), "holds env = 3"),
        (json.dumps({**STATS, "score_ref": [1, 2]}), "holds score_ref = [1, 2]"),
        (
            json.dumps({**STATS, "score_ref": {"ref_min_score": "x"}}),
            "holds score_ref = {'ref_min_score': 'x'}",
        ),
        (json.dumps({**STATS, "eval_targets": "3600"}), "holds eval_targets = '3600'"),
        (json.dumps({**STATS, "eval_targets": [True]}), "holds eval_targets = [True]"),
        (json.dumps({**STATS, "return_mean": None}), "holds return_mean = None"),
    ],
)
def test_a_damaged_dataset_stats_is_one_error_line(capsys, tmp_path, content, problem):
    stats = RunDir(tmp_path).dataset_stats
    stats.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = evaluate(capsys, tmp_path)
    assert f"{stats} is damaged: it {problem}" in line, line
    assert f"--resume {tmp_path} rewrites it" in line


def test_an_intact_dataset_stats_is_read_as_written(tmp_path):
    RunDir(tmp_path).dataset_stats.write_text(json.dumps({**STATS, "score_ref": None, "extra": 1}))
    assert read_run_info(tmp_path) == {**STATS, "score_ref": None, "extra": 1}
    assert run_targets(tmp_path) == [3600.0, 1800.5]


def test_a_run_without_targets_needs_one_given(agent, tmp_path):
    run = RunDir(tmp_path)
    run.save_checkpoint(agent.model, step=1, trainer_state={})
    run.dataset_stats.write_text(json.dumps({**STATS, "eval_targets": []}))
    with pytest.raises(RunDirError, match=rf"{re.escape(str(run.dataset_stats))} lists no eval_targets.*Fix"):
        DecisionPolicy.load(tmp_path)
    assert DecisionPolicy.load(tmp_path, target_return=5.0).agent.target_return == 5.0


# ---- names of environments and recipes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "name", "fragment"),
    [
        (canonical_env_id, "nosuchenv-medium-v2", "Unknown environment 'nosuchenv-medium-v2'"),
        (parse_recipe_id, "hopper-nosuchrecipe-v2", "'hopper-nosuchrecipe-v2' is not '<task>-<recipe>[-vK]'"),
        (parse_recipe_id, "x", "'x' is not '<task>-<recipe>[-vK]'"),
    ],
)
def test_unknown_names_are_user_errors(check, name, fragment):
    with pytest.raises(EnvNameError) as caught:
        check(name)
    line = user_error_message(caught.value)
    assert line is not None and line.startswith("error: ") and fragment in line
