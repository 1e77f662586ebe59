"""Exported AarenPPO policies (safetensors + JSON) act as the model did, loading one never unpickles, and a
damaged file (digests), an edited one and one with weights that are not finite are one error each;
exports of format /1 (before digests) load unverified with a warning."""

from __future__ import annotations

import base64
import json
import pathlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load, save
from stable_baselines3.common import save_util
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from torch import nn

from agents.common.digests import content_digest, file_record
from agents.ppo import export as ppo_export
from agents.ppo import policy as ppo_policy
from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import (
    EXPORT_FORMAT,
    PARAMETERS_FILE,
    UNVERIFIED_FORMAT,
    WEIGHTS_FILE,
    export_policy,
    load_exported_policy,
)
from agents.ppo.policy import AarenActorCriticPolicy
from envs.pomdp import CARTPOLE_NO_VEL, PENDULUM_NO_VEL
from envs.popgym import popgym_env_id

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(embed_dim=16, num_layers=2, num_heads=2, ffn_mult=2, net_arch=dict(pi=[16], vf=[16]))


def _trained(env_id: str, **policy_kwargs) -> AarenPPO:
    env = make_vec_env(env_id, n_envs=2, seed=0)
    model = AarenPPO(
        "MlpAarenPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=2,
        seed=0,
        policy_kwargs={**SMALL, **policy_kwargs},
    )
    return model.learn(64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[AarenPPO, Path]:
    """A trained CartPole model and its export, for the tampering tests."""
    model = _trained(CARTPOLE_NO_VEL)
    return model, export_policy(model, tmp_path_factory.mktemp("export") / "policy.zip")


@pytest.mark.parametrize(
    ("env_id", "policy_kwargs", "dtype"),
    [
        (CARTPOLE_NO_VEL, {}, torch.float32),  # Discrete actions
        (PENDULUM_NO_VEL, dict(share_memory=True, activation_fn=nn.ReLU), torch.float64),  # Box actions
        ("popgym:CountRecallEasy", {}, torch.float32),  # MultiDiscrete observations
    ],
)
def test_export_acts_like_the_model(tmp_path, env_id, policy_kwargs, dtype) -> None:
    if env_id.startswith("popgym:"):
        pytest.importorskip("popgym")
        env_id = popgym_env_id(env_id.removeprefix("popgym:"))
    model = _trained(env_id, **policy_kwargs)
    model.policy.to(dtype)
    path = export_policy(model, tmp_path / "policy.zip")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted([PARAMETERS_FILE, WEIGHTS_FILE])
    policy = load_exported_policy(path)
    assert type(policy) is AarenActorCriticPolicy and policy.dtype == dtype and not policy.training

    env = make_vec_env(env_id, n_envs=2, seed=3)
    rng = np.random.default_rng(0)
    obs, state_a, state_b, starts = env.reset(), None, None, np.ones(2, dtype=bool)
    for _ in range(60):
        act_a, state_a = model.predict(obs, state_a, starts, deterministic=True)
        act_b, state_b = policy.predict(obs, state_b, starts, deterministic=True)
        np.testing.assert_array_equal(act_a, act_b)
        for a, b in zip(state_a, state_b, strict=True):
            np.testing.assert_array_equal(a, b)
        obs, _, dones, _ = env.step(act_a)
        starts = dones | (rng.random(2) < 0.1)  # also start episodes where the env did not
    model_result, export_result = (
        evaluate_policy(p, make_vec_env(env_id, n_envs=2, seed=5), n_eval_episodes=4) for p in (model, policy)
    )
    assert model_result == export_result


def _rewrite(path: Path, edit: Callable[[dict[str, bytes]], None], reseal: bool = True) -> Path:
    """A copy of the zip at `path` with its members (name -> bytes) changed by `edit`; `reseal`: with
    policy.json's digests made to match again, as someone crafting the file would (what the parser
    then meets), else as damage leaves them."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    if reseal:
        _reseal(members)
    out = path.with_name(f"tampered-{path.name}")
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def _reseal(members: dict[str, bytes]) -> None:
    """policy.json's digests recomputed for the members as they are (where it is an object that has them)."""
    try:
        meta = json.loads(members[PARAMETERS_FILE])
    except (KeyError, ValueError):
        return
    if isinstance(meta, dict) and "digest" in meta:
        if WEIGHTS_FILE in members:
            meta["files"] = {WEIGHTS_FILE: file_record(members[WEIGHTS_FILE])}
        meta["digest"] = content_digest(meta)
        members[PARAMETERS_FILE] = json.dumps(meta).encode()


def _as_format_1(members: dict[str, bytes]) -> None:
    """policy.json as exports of format /1 wrote it: format, dtype and parameters, no digests."""
    meta = json.loads(members[PARAMETERS_FILE])
    old = {"format": UNVERIFIED_FORMAT, "dtype": meta["dtype"], "parameters": meta["parameters"]}
    members[PARAMETERS_FILE] = json.dumps(old).encode()


def _edit_json(edit: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
    def apply(members: dict[str, bytes]) -> None:
        meta = json.loads(members[PARAMETERS_FILE])
        edit(meta)
        members[PARAMETERS_FILE] = json.dumps(meta).encode()

    return apply


def _edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[dict[str, bytes]], None]:
    def apply(members: dict[str, bytes]) -> None:
        weights = load(members[WEIGHTS_FILE])
        edit(weights)
        members[WEIGHTS_FILE] = save(weights)

    return apply


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update({PARAMETERS_FILE: b"{not json"}), "policy.json is not valid JSON"),
        (lambda m: m.update({WEIGHTS_FILE: b"\x00" * 16}), "policy.safetensors is not valid safetensors"),
        (lambda m: m.pop(WEIGHTS_FILE), "is not an AarenPPO policy export"),
        (_edit_json(lambda meta: meta.update(format="other/1")), "is not of format"),
        (_edit_json(lambda meta: meta["parameters"].update(activation_fn="os.system")), "KeyError: 'os.sys"),
        (_edit_json(lambda meta: meta["parameters"].update(embed_dim="big")), "does not describe"),
        (_edit_json(lambda meta: meta["parameters"].pop("action_space")), "does not describe"),
        (_edit_json(lambda meta: meta.update(dtype="int64")), "does not describe"),
        (_edit_weights(lambda w: w.pop("value_net.weight")), r"missing \['value_net.weight'\]"),
        (_edit_weights(lambda w: w.update({"value_net.weight": torch.zeros(1, 3)})), "shape mismatch"),
        (_edit_weights(lambda w: w.update(extra=torch.zeros(1))), r"unexpected \['extra'\]"),
        (_edit_json(lambda meta: meta.update(policy_format=9)), "policy format 9 is not one this aaren-rl"),
        (
            _edit_weights(lambda w: w["value_net.bias"].fill_(float("nan"))),
            r"policy.safetensors holds weights that are not finite numbers \(value_net.bias\)",
        ),
    ],
)
def test_damaged_export_is_one_clear_error_naming_the_file(exported, edit, message) -> None:
    _, path = exported
    tampered = _rewrite(path, edit)
    with pytest.raises(ValueError, match=message) as error:
        load_exported_policy(tampered)
    assert str(tampered) in str(error.value)


def _flip_weight_bytes(members: dict[str, bytes]) -> None:
    """Flip the high bits of a float's top byte near the end of the weights (the values become huge)."""
    data = bytearray(members[WEIGHTS_FILE])
    data[-2] ^= 0x7E
    members[WEIGHTS_FILE] = bytes(data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_flip_weight_bytes, "policy.safetensors is damaged: its bytes do not match the sha256 digest in"),
        (
            lambda m: m.update({WEIGHTS_FILE: m[WEIGHTS_FILE][:-7]}),
            r"policy.safetensors is truncated: \d+ of",
        ),
        (_edit_json(lambda meta: meta["parameters"].update(embed_dim=32)), "policy.json was changed after"),
        (_edit_json(lambda meta: meta.pop("files")), "policy.json was changed after it was exported"),
    ],
)
def test_damage_and_edits_are_refused_by_the_digests(exported, edit, message) -> None:
    """What the digests catch: bit flips that still parse (weights of 1e37, no error before digests), a
    truncated member, an edited policy.json."""
    _, path = exported
    tampered = _rewrite(path, edit, reseal=False)
    with pytest.raises(ValueError, match=message) as error:
        load_exported_policy(tampered)
    assert str(tampered) in str(error.value) and "Fix: export the policy again" in str(error.value)


def test_an_export_records_its_formats_and_digests(exported) -> None:
    _, path = exported
    with zipfile.ZipFile(path) as archive:
        meta, weights = json.loads(archive.read(PARAMETERS_FILE)), archive.read(WEIGHTS_FILE)
    assert meta["format"] == EXPORT_FORMAT and meta["policy_format"] == ppo_policy.POLICY_FORMAT
    assert meta["files"] == {WEIGHTS_FILE: file_record(weights)} and meta["digest"] == content_digest(meta)


def test_an_export_of_format_1_loads_unverified_with_a_warning(exported) -> None:
    """Exports written before digests act as the model; weights that are not finite are still refused."""
    model, path = exported
    old = _rewrite(path, _as_format_1, reseal=False)
    with pytest.warns(UserWarning, match=rf"{old} was exported before exports carried sha256 digests"):
        policy = load_exported_policy(old)
    for name, weight in policy.state_dict().items():
        assert torch.equal(weight, model.policy.state_dict()[name]), name
    infinite = _rewrite(old, _edit_weights(lambda w: w["action_net.weight"][0].fill_(float("inf"))))
    with (
        pytest.warns(UserWarning, match="unverified"),
        pytest.raises(ValueError, match=r"not finite numbers \(action_net.weight\)"),
    ):
        load_exported_policy(infinite)


def test_not_an_export_and_missing_file(tmp_path) -> None:
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="not an AarenPPO policy export"):
        load_exported_policy(text)
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        load_exported_policy(tmp_path / "missing.zip")


class _CreateFileWhenUnpickled:
    """Unpickling this object creates the file `marker`: what a crafted SB3 zip can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_sb3_zip_with_code_is_refused_without_unpickling(exported, tmp_path) -> None:
    model, _ = exported
    sb3_zip = tmp_path / "sb3.zip"
    model.save(sb3_zip)
    marker = tmp_path / "code-ran"

    def plant_payload(members: dict[str, bytes]) -> None:
        data = json.loads(members["data"])
        payload = base64.b64encode(cloudpickle.dumps(_CreateFileWhenUnpickled(marker))).decode()
        data["observation_space"] = {":type:": "<class 'object'>", ":serialized:": payload}
        members["data"] = json.dumps(data).encode()

    crafted = _rewrite(sb3_zip, plant_payload)
    with pytest.raises(ValueError, match="not an AarenPPO policy export.*AarenPPO.load only if you trust"):
        load_exported_policy(crafted)
    assert not marker.exists()
    save_util.load_from_zip_file(crafted)  # what AarenPPO.load reads first: SB3 unpickles the entry
    assert marker.exists()


def test_parameters_that_are_not_data_are_refused(tmp_path) -> None:
    class Custom(nn.Tanh):
        pass

    box = spaces.Box(-1.0, 1.0, shape=(3,))
    cases = [
        (dict(action_space=spaces.Discrete(2), activation_fn=Custom), "activation_fn=.*Custom"),
        (dict(action_space=spaces.Discrete(2), net_arch=[np.int64(8)]), "net_arch"),
    ]
    for kwargs, message in cases:
        policy = AarenActorCriticPolicy(box, lr_schedule=lambda _: 1e-3, embed_dim=8, num_heads=2, **kwargs)
        with pytest.raises(ValueError, match=message):
            export_policy(policy, tmp_path / "policy.zip")
        assert not (tmp_path / "policy.zip").exists()
    with pytest.raises(ValueError, match="observation_space Tuple.* cannot be exported"):  # not an SB3 space
        ppo_export._space_data(spaces.Tuple([spaces.Discrete(2)]), "observation_space")


@pytest.mark.parametrize(
    "space",
    [
        spaces.MultiDiscrete([2, 3], start=[1, -1]),
        spaces.MultiDiscrete([[2, 4], [3, 5]], dtype=np.int32),
        spaces.MultiBinary([2, 3]),
        spaces.Discrete(5, start=-2),
        spaces.Box(np.array([-1.0, 0.0]), np.array([1.0, np.inf]), dtype=np.float64),
    ],
)
def test_spaces_round_trip_through_json(space) -> None:
    data = json.loads(json.dumps(ppo_export._space_data(space, "observation_space")))
    assert ppo_export._space(data) == space
