"""Share a trained AarenPPO policy without pickles: safetensors weights + JSON constructor parameters.

SB3's `model.save` zip stores some entries (spaces, schedules, classes) with cloudpickle, so loading
a crafted zip with `AarenPPO.load` runs its code: load such zips only from sources you trust. To hand
a policy to others, export it instead:

    export_policy(model, "policy.zip")                    # an AarenPPO or its policy
    policy = load_exported_policy("policy.zip")           # an AarenActorCriticPolicy, in eval mode
    actions, state = policy.predict(obs, state, episode_start, deterministic=True)
    mean, std = evaluate_policy(policy, env)              # acts exactly as the exported model

The zip holds policy.safetensors (weights and buffers) and policy.json: the export format, the
format of the policy's options (`agents.ppo.policy.POLICY_FORMAT`), the weights' dtype, the policy's
constructor parameters as data (spaces by their bounds and sizes, classes by name from fixed tables)
and sha256 digests of the weights and of itself (`agents.common.digests`), so loading parses only
JSON and safetensors, and a damaged or edited file is one error. Exports of format /1 (no digests)
still load, unverified, with a warning, their weights checked to be finite. An export acts; it holds
no optimizer state, so it cannot continue training (keep the SB3 zip for that).
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load, save
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN
from torch import nn

from agents.common.digests import content_digest, file_record, record_problem
from agents.common.weights import nonfinite_entries, state_dict_mismatch
from agents.hub import local_or_hub
from agents.ppo.algorithm import AarenPPO
from agents.ppo.policy import FORMAT_KEY, POLICY_FORMAT, AarenActorCriticPolicy, options_as_saved
from envs.files import atomic_path

EXPORT_FORMAT = "aaren-ppo-policy/2"
#: Exports from before digests and policy formats were recorded (their options are of policy format 0).
UNVERIFIED_FORMAT = "aaren-ppo-policy/1"
WEIGHTS_FILE = "policy.safetensors"
PARAMETERS_FILE = "policy.json"
ACTIVATIONS: dict[str, type[nn.Module]] = {name: getattr(nn, name) for name in nn.modules.activation.__all__}
FEATURES_EXTRACTORS: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (FlattenExtractor, NatureCNN)}
DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "float16", "bfloat16")}
TRAINING_ONLY = ("lr_schedule", "optimizer_class", "optimizer_kwargs")  # not exported: an export only acts


def _space_data(space: spaces.Space, key: str) -> dict[str, Any]:
    """An SB3 space (Box, Discrete, MultiDiscrete, MultiBinary) as JSON data (bounds exactly, as lists)."""
    if isinstance(space, spaces.Box):
        bounds = {"low": space.low.tolist(), "high": space.high.tolist()}
        return {"type": "Box", **bounds, "shape": list(space.shape), "dtype": space.dtype.name}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        sizes = {"nvec": space.nvec.tolist(), "start": space.start.tolist()}
        return {"type": "MultiDiscrete", **sizes, "dtype": space.dtype.name}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "shape": list(space.shape)}
    raise ValueError(
        f"{key} {space} cannot be exported: only Box, Discrete, MultiDiscrete and MultiBinary spaces are "
        "written as data. Fix: use one of them, or share the SB3 zip of model.save, and only with people "
        "who trust you"
    )


def _space(data: dict[str, Any]) -> spaces.Space:
    if data["type"] == "Box":
        dtype = np.dtype(data["dtype"])
        low, high = (np.asarray(data[bound], dtype=dtype) for bound in ("low", "high"))
        return spaces.Box(low, high, tuple(data["shape"]), dtype)
    if data["type"] == "Discrete":
        return spaces.Discrete(data["n"], start=data["start"])
    if data["type"] == "MultiDiscrete":
        dtype = np.dtype(data["dtype"])
        nvec, start = (np.asarray(data[key], dtype=dtype) for key in ("nvec", "start"))
        return spaces.MultiDiscrete(nvec, dtype=dtype, start=start)
    if data["type"] == "MultiBinary":
        return spaces.MultiBinary(data["shape"])
    raise ValueError(f"unknown space type {data['type']!r}")


def _class_name(cls: type, table: dict[str, type[nn.Module]], key: str) -> str:
    name = getattr(cls, "__name__", "")
    if table.get(name) is not cls:
        raise ValueError(f"{key}={cls!r} cannot be exported as data. Fix: use one of {sorted(table)}")
    return name


def policy_parameters(policy: AarenActorCriticPolicy) -> dict[str, Any]:
    """The policy's constructor parameters (less the optimizer's) as JSON data; a ValueError naming
    any that cannot be written as data."""
    params = policy._get_constructor_parameters()
    for key in TRAINING_ONLY:
        params.pop(key)
    params["observation_space"] = _space_data(policy.observation_space, "observation_space")
    params["action_space"] = _space_data(policy.action_space, "action_space")
    params["activation_fn"] = _class_name(policy.activation_fn, ACTIVATIONS, "activation_fn")
    params["features_extractor_class"] = _class_name(
        policy.features_extractor_class, FEATURES_EXTRACTORS, "features_extractor_class"
    )
    for key, value in params.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{key}={value!r} cannot be exported as JSON data ({exc}). Fix: give it as plain numbers, "
                "strings, lists and dicts when making the policy"
            ) from exc
    return params


def export_policy(model: AarenPPO | AarenActorCriticPolicy, path: str | os.PathLike) -> Path:
    """Write the policy of `model` as one zip (atomically): policy.safetensors + policy.json."""
    policy = model.policy if isinstance(model, AarenPPO) else model
    if type(policy) is not AarenActorCriticPolicy:
        raise ValueError(
            f"export_policy takes an AarenPPO or an AarenActorCriticPolicy, not {type(policy).__name__}"
        )
    weights = save({k: v.detach().to("cpu", copy=True).contiguous() for k, v in policy.state_dict().items()})
    meta = {
        "format": EXPORT_FORMAT,
        FORMAT_KEY: POLICY_FORMAT,
        "dtype": str(policy.dtype).removeprefix("torch."),
        "parameters": policy_parameters(policy),
        "files": {WEIGHTS_FILE: file_record(weights)},
    }
    meta["digest"] = content_digest(meta)
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr(PARAMETERS_FILE, json.dumps(meta, indent=2))
        archive.writestr(WEIGHTS_FILE, weights)
    return path


def _damaged(path: Path, member: str, problem: str) -> ValueError:
    return ValueError(f"{path}: {member} {problem}. Fix: export the policy again from its model")


def _read_export(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(policy.json, weights) of an export; a ValueError naming the file for anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found. Fix: pass a file written by export_policy")
    members = {WEIGHTS_FILE, PARAMETERS_FILE}
    try:
        with zipfile.ZipFile(path) as archive:
            found = {name: archive.read(name) for name in members & set(archive.namelist())}
    except zipfile.BadZipFile:
        found = {}
    if set(found) != members:
        raise ValueError(
            f"{path} is not an AarenPPO policy export (a zip holding {WEIGHTS_FILE} and {PARAMETERS_FILE}). "
            "Fix: pass a file written by agents.ppo.export.export_policy. A zip of model.save is SB3's "
            "format, whose pickled entries run code when loaded: open it with AarenPPO.load only if you "
            "trust its source, then export it."
        )
    try:
        meta = json.loads(found[PARAMETERS_FILE])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, PARAMETERS_FILE, f"is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (EXPORT_FORMAT, UNVERIFIED_FORMAT):
        raise _damaged(path, PARAMETERS_FILE, f"is not of format {EXPORT_FORMAT!r}")
    if meta["format"] == UNVERIFIED_FORMAT:
        warnings.warn(
            f"{path} was exported before exports carried sha256 digests: loading it unverified (export the "
            "policy again to have it verified)",
            stacklevel=3,
        )
    else:
        _verify(path, meta, found[WEIGHTS_FILE])
    try:
        weights = load(found[WEIGHTS_FILE])
    except SafetensorError as exc:
        raise _damaged(path, WEIGHTS_FILE, f"is not valid safetensors ({exc})") from exc
    return meta, weights


def _verify(path: Path, meta: dict[str, Any], weights: bytes) -> None:
    """Check policy.json against its own digest and the weights against the digest it records."""
    if meta.get("digest") != content_digest(meta) or not isinstance(meta.get("files"), dict):
        problem = "was changed after it was exported (its content does not match its sha256 digest)"
        raise _damaged(path, PARAMETERS_FILE, problem)
    record = meta["files"].get(WEIGHTS_FILE)
    if not isinstance(record, dict):
        raise _damaged(path, PARAMETERS_FILE, f"records no digest for {WEIGHTS_FILE}")
    problem = record_problem(weights, record, f"{path}/{PARAMETERS_FILE}")
    if problem is not None:
        raise _damaged(path, WEIGHTS_FILE, f"is {problem}")


def load_exported_policy(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> AarenActorCriticPolicy:
    """The policy of an export (eval mode, on `device`), rebuilt from JSON and safetensors only; its
    `predict` and `evaluate_policy` act exactly as the exported model's. A damaged or tampered file
    is one ValueError naming it. `path` may also be the id of a Hub repository written by aaren-rl push
    (user/name; `agents.hub`: downloaded into the cache and verified)."""
    path = local_or_hub(path, "ppo")
    meta, weights = _read_export(path)
    try:
        params = options_as_saved(meta["parameters"], meta.get(FORMAT_KEY, 0))
        params["observation_space"] = _space(params["observation_space"])
        params["action_space"] = _space(params["action_space"])
        params["activation_fn"] = ACTIVATIONS[params["activation_fn"]]
        params["features_extractor_class"] = FEATURES_EXTRACTORS[params["features_extractor_class"]]
        dtype = DTYPES[meta["dtype"]]
        policy = AarenActorCriticPolicy(**params, lr_schedule=BasePolicy._dummy_schedule)
    except (KeyError, TypeError, ValueError, AssertionError, RuntimeError) as exc:
        problem = f"does not describe an AarenActorCriticPolicy ({type(exc).__name__}: {exc})"
        raise _damaged(path, PARAMETERS_FILE, problem) from exc
    mismatch = state_dict_mismatch(policy.state_dict(), weights)
    if mismatch:
        raise ValueError(
            f"{path}: {WEIGHTS_FILE} does not fit the policy {PARAMETERS_FILE} describes: {mismatch}. "
            "Fix: keep the weights with the policy.json they were exported with"
        )
    not_finite = nonfinite_entries(weights)
    if not_finite:
        raise _damaged(
            path, WEIGHTS_FILE, f"holds weights that are not finite numbers ({', '.join(not_finite[:4])})"
        )
    policy.to(dtype).load_state_dict(weights)
    policy.to(device).set_training_mode(False)
    return policy
