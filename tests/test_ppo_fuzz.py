"""Fuzzing what AarenPPO and collection read from users, as tests/test_decision_config_fuzz.py and
tests/test_decision_run_safety*.py do for offline runs: whatever `--set` overrides a PPO run is given, it is a run
that builds and trains or one ConfigError; whatever damage an export or a behaviour-policy folder has, it
loads as written or is one error of the project's (ValueError naming the export, PolicyFileError), never
another exception, and a loaded export holds finite weights."""

from __future__ import annotations

import io
import json
import tempfile
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from stable_baselines3 import A2C
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from test_decision_config_fuzz import EXTREMES, PUNCTUATION, VALUES

from agents.common.overrides import ConfigError
from agents.ppo import train as ppo_train
from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import (
    PARAMETERS_FILE,
    UNVERIFIED_FORMAT,
    WEIGHTS_FILE,
    export_policy,
    load_exported_policy,
)
from agents.ppo.policy import AarenActorCriticPolicy
from agents.ppo.train import PPORun, settable_options
from envs.experts import MODEL_FILE, NORMALIZER_FILE, PolicyFileError, load_sb3_policy
from envs.pomdp import CARTPOLE_NO_VEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

#: Every option --set takes, and near misses.
OPTIONS = [f"ppo.{name}" for name in settable_options(AarenPPO, ppo_train._SET_BY_RUN)] + [
    f"policy.{name}" for name in settable_options(AarenActorCriticPolicy, ppo_train._SET_BY_POLICY)
]
NEAR_MISSES = ["ppo.seed", "ppo.env", "policy.env", "ppo", "policy.", "ppo.n_epoch", "train.lr", "x.y"]
junk = st.lists(st.one_of(st.sampled_from(VALUES + PUNCTUATION), st.text(max_size=5)), max_size=6).map(
    "".join
)
overrides = st.lists(
    st.one_of(
        st.builds(
            "{}={}".format, st.sampled_from(OPTIONS + NEAR_MISSES), st.sampled_from(VALUES + EXTREMES) | junk
        ),
        junk,
    ),
    max_size=5,
)
#: Values of each type of option, small enough to build and train quickly: in range and out of it, and of
#: other types now and then.
TYPED_VALUES = {
    bool: ["true", "false"],
    int: ["-2", "-1", "0", "1", "2", "3"],
    float: ["-1", "0", "1e-9", "0.5", "1", "1.5"],
    str: ["auto", "cpu", "cuda:0", "x"],
    type(None): ["null", "-1", "0", "0.5", "x", "[]", "[0]", "[4]", "{}", "{pi: [4], vf: []}", "{lr: 1}"],
}
DEFAULTS = {
    **{f"ppo.{k}": v for k, v in settable_options(AarenPPO, ppo_train._SET_BY_RUN).items()},
    **{
        f"policy.{k}": v
        for k, v in settable_options(AarenActorCriticPolicy, ppo_train._SET_BY_POLICY).items()
    },
}
typed_override = st.sampled_from(sorted(DEFAULTS)).flatmap(
    lambda key: st.sampled_from(TYPED_VALUES[type(DEFAULTS[key])]).map(f"{key}={{}}".format)
)
any_override = st.builds(
    "{}={}".format, st.sampled_from(OPTIONS), st.sampled_from(sum(TYPED_VALUES.values(), []))
)
#: A short rollout and update, whatever else is set.
QUICK = ["ppo.n_steps=8", "ppo.n_epochs=2"]


@FUZZ
@given(items=overrides)
def test_random_overrides_are_a_run_or_one_config_error(items: list[str]) -> None:
    """A run the overrides give can be written as config.yaml."""
    try:
        run = PPORun.of_task("RememberCue", items)
    except ConfigError as exc:
        assert str(exc)
        return
    yaml.safe_dump(run.to_dict(), sort_keys=False)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    items=st.lists(typed_override, min_size=1, max_size=4) | st.lists(any_override, min_size=1, max_size=2)
)
def test_random_settings_build_and_train_or_are_one_config_error(items: list[str]) -> None:
    """Settings that pass the checks build a model that trains (one rollout and one update), so no
    impossible value reaches SB3's training loop."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model = ppo_train._build(PPORun.of_task("RememberCue", [*QUICK, *items], steps=1), Path(tmp))
        except ConfigError as exc:
            assert str(exc)
            return
        model.learn(1)
        model.env.close()


# --- exports ------------------------------------------------------------------------------------------


def mutate(data: bytes, where: float, kind: str, garbage: bytes) -> bytes:
    """`data` truncated at `where` (a fraction of its length), a byte there flipped, or `garbage` written
    over the bytes there."""
    at = min(int(where * len(data)), max(len(data) - 1, 0))
    if kind == "truncate":
        return data[:at]
    if kind == "flip" and data:
        return data[:at] + bytes([data[at] ^ (garbage[0] or 1)]) + data[at + 1 :]
    return data[:at] + garbage + data[at + len(garbage) :]


def with_member(zip_bytes: bytes, member: str, content: bytes) -> bytes:
    """The zip `zip_bytes` with `member` holding `content` (the zip's own CRCs right)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, content if name == member else src.read(name))
    return out.getvalue()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """A small policy's weights and its export, as exported now and as format /1 wrote it."""
    env = make_vec_env(CARTPOLE_NO_VEL, n_envs=2, seed=0)
    policy_kwargs = dict(embed_dim=8, num_heads=2, net_arch=[8])
    model = AarenPPO("MlpAarenPolicy", env, n_steps=16, batch_size=16, seed=0, policy_kwargs=policy_kwargs)
    current = export_policy(model, tmp_path_factory.mktemp("export") / "policy.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(current)) as archive:
        meta = json.loads(archive.read(PARAMETERS_FILE))
    old = {"format": UNVERIFIED_FORMAT, "dtype": meta["dtype"], "parameters": meta["parameters"]}
    weights = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    return weights, {
        "current": current,
        "format /1": with_member(current, PARAMETERS_FILE, json.dumps(old).encode()),
    }


@FUZZ
@given(
    version=st.sampled_from(["current", "format /1"]),
    member=st.sampled_from([None, WEIGHTS_FILE, PARAMETERS_FILE]),
    where=st.floats(0, 1),
    kind=st.sampled_from(["truncate", "flip", "garbage"]),
    garbage=st.binary(min_size=1, max_size=16),
)
def test_fuzzed_exports_load_as_exported_or_are_one_error(exports, version, member, where, kind, garbage):
    """The zip's bytes or a member's (valid CRCs) damaged: an export of the current format loads exactly
    what was exported or is a ValueError naming it; one of format /1 (no digests) may load other weights,
    but finite ones."""
    weights, files = exports
    data = files[version]
    if member is None:
        data = mutate(data, where, kind, garbage)
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = with_member(data, member, mutate(archive.read(member), where, kind, garbage))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # format /1's warning that it loads unverified
        path = Path(tmp) / "policy.zip"
        path.write_bytes(data)
        try:
            policy = load_exported_policy(path)
        except ValueError as exc:
            assert str(path) in str(exc) and "Fix:" in str(exc), exc
            return
    loaded = policy.state_dict()
    assert all(torch.isfinite(value).all() for value in loaded.values())
    if version == "current":
        for name, value in weights.items():
            torch.testing.assert_close(loaded[name], value, rtol=0, atol=0, msg=name)


# --- behaviour-policy folders -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_folder(tmp_path_factory) -> Path:
    """A small A2C policy for Hopper-v5 with a VecNormalize, as a behaviour-policy folder."""
    folder = tmp_path_factory.mktemp("fuzz") / "a2c-Hopper"
    folder.mkdir()
    venv = DummyVecEnv([lambda: gym.make("Hopper-v5")])
    A2C("MlpPolicy", venv, policy_kwargs={"net_arch": [8]}, device="cpu", seed=0).save(folder / MODEL_FILE)
    VecNormalize(venv).save(str(folder / NORMALIZER_FILE))
    venv.close()
    return folder


HOPPER = gym.spaces.Box(-np.inf, np.inf, (11,), np.float64), gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ZIP_ENTRIES = ["data", "policy.pth", "pytorch_variables.pth", "policy.optimizer.pth"]


@FUZZ
@given(
    target=st.sampled_from([MODEL_FILE, NORMALIZER_FILE, *ZIP_ENTRIES]),
    where=st.floats(0, 1),
    kind=st.sampled_from(["truncate", "flip", "garbage"]),
    garbage=st.binary(min_size=1, max_size=16),
)
@example(target=NORMALIZER_FILE, where=0.9334389990831113, kind="garbage", garbage=b"\xc8")  # broke a clip
def test_fuzzed_policy_folders_load_or_are_one_policy_file_error(policy_folder, target, where, kind, garbage):
    """model.zip, vecnormalize.pkl or an entry of the zip (valid CRCs) damaged: the policy loads and acts,
    or is one PolicyFileError."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / policy_folder.name
        folder.mkdir()
        for name in (MODEL_FILE, NORMALIZER_FILE):
            (folder / name).write_bytes((policy_folder / name).read_bytes())
        if target in ZIP_ENTRIES:
            data = (folder / MODEL_FILE).read_bytes()
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                entry = archive.read(target)
            (folder / MODEL_FILE).write_bytes(with_member(data, target, mutate(entry, where, kind, garbage)))
        else:
            (folder / target).write_bytes(mutate((folder / target).read_bytes(), where, kind, garbage))
        try:
            policy = load_sb3_policy(folder, *HOPPER)
        except PolicyFileError as exc:
            assert str(exc)
            return
        obs = np.zeros((2, 11))
        assert policy.act(obs, np.zeros(2, dtype=int), np.ones(2, dtype=bool)).shape == (2, 3)
