"""Behaviour policies: where they come from, and loading them without running code from their files.

The default behaviour policies are the RL Baselines3 Zoo's trained agents (Stable-Baselines3 /
sb3-contrib models of the MuJoCo ``-v3`` tasks), named ``<algo>-<Env>`` (e.g. ``tqc-Hopper``). A name
is looked up in, in order:

1. ``$AAREN_RL_EXPERTS`` (or an explicit ``experts`` folder): ``<algo>-<Env>/`` folders, each with
   ``model.zip`` and, where the zoo normalised observations, ``vecnormalize.pkl`` (and the zoo's
   ``config.yml``). For machines without internet: nothing is downloaded when it is set.
2. The cache, ``$AAREN_RL_CACHE/experts/<algo>-<Env>/`` (default ``~/.cache/aaren-rl``), same layout.
3. The Hugging Face Hub, where the RL Zoo publishes its agents: repository ``sb3/<algo>-<Env>-v3``
   (endpoint ``$HF_ENDPOINT``). Fetched once into a temporary folder beside the cache entry, verified,
   and renamed into place only when complete. ``$AAREN_RL_OFFLINE=1`` forbids it.

Security: SB3 saves pickles (the ``data`` entries of ``model.zip``, ``vecnormalize.pkl``), and the
standard unpickler runs whatever code a pickle names. Here they are read by a restricted unpickler
that builds only the harmless types these files hold (numpy arrays, gymnasium spaces, SB3 policy
classes and VecNormalize statistics, torch activation and optimizer classes) and refuses anything
else with :class:`UnsafePolicyFileError`. SB3's loader gets every entry it would unpickle ready-made
(``custom_objects``) and reads the weights with ``torch.load(weights_only=True)`` (SB3 >= 2.3); the
zip's torch files (``policy.pth``, ``pytorch_variables.pth``, ...) are read that way first, so one that
needs more than tensors is refused with :class:`UnsafePolicyFileError` too.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.download import OFFLINE_VAR, DownloadError, offline_mode
from envs.files import atomic_path

#: Folder of behaviour policies to use instead of the cache and the Hub (offline machines).
EXPERTS_VAR = "AAREN_RL_EXPERTS"
#: The project's cache folder (downloaded behaviour policies, `make demo`'s files).
CACHE_VAR = "AAREN_RL_CACHE"
#: Hugging Face Hub organisation of the RL Zoo's agents, and the task version they were trained on.
HUB_ORGANIZATION = "sb3"
HUB_TASK_VERSION = "v3"
#: Files of a policy folder.
MODEL_FILE = "model.zip"
NORMALIZER_FILE = "vecnormalize.pkl"
CONFIG_FILE = "config.yml"
#: Entries of an SB3 zip that ``BaseAlgorithm.load`` needs besides ``data``.
_REQUIRED_ZIP_ENTRIES = ("data", "policy.pth")
_SERIALIZED = ":serialized:"
_EXPERT_NAME = re.compile(r"^[a-z0-9]+-[A-Za-z0-9]+$")


class PolicyFileError(ValueError):
    """A behaviour-policy file that cannot be used; the message names the file (and entry) at fault."""


class UnsafePolicyFileError(PolicyFileError):
    """A policy file whose pickles need code outside the few harmless types policy files hold."""


# --------------------------------------------------------------------------------------------------
# Where policies come from


def cache_dir() -> Path:
    """The project's cache folder: ``$AAREN_RL_CACHE``, else ``~/.cache/aaren-rl``."""
    return Path(os.environ.get(CACHE_VAR, "~/.cache/aaren-rl")).expanduser()


def experts_dir() -> Path:
    """Where policy names are looked up: ``$AAREN_RL_EXPERTS``, else the download cache."""
    folder = os.environ.get(EXPERTS_VAR)
    return Path(folder).expanduser() if folder else cache_dir() / "experts"


def hub_repo_id(name: str) -> str:
    """The Hub repository of an RL Zoo agent: ``"tqc-Hopper"`` -> ``"sb3/tqc-Hopper-v3"``."""
    if not _EXPERT_NAME.match(name):
        raise PolicyFileError(f"{name!r} is not an RL Zoo agent name '<algo>-<Env>' (e.g. 'tqc-Hopper').")
    return f"{HUB_ORGANIZATION}/{name}-{HUB_TASK_VERSION}"


def _hub_files(name: str) -> tuple[tuple[str, str, bool], ...]:
    """(file in the Hub repository, file in the policy folder, required) for an RL Zoo agent.

    The Hub names are the ones the RL Zoo publishes and reads back (``rl_zoo3.load_from_hub``); the
    normaliser exists only for agents trained with observation normalisation.
    """
    return (
        (f"{name}-{HUB_TASK_VERSION}.zip", MODEL_FILE, True),
        ("config.yml", CONFIG_FILE, True),
        ("vec_normalize.pkl", NORMALIZER_FILE, False),
    )


def resolve_policy_path(spec: str | os.PathLike, experts: Path | None = None) -> Path:
    """``model.zip`` for a zip path, a folder holding one, or a policy name such as ``"tqc-Hopper"``.

    A name is looked up in ``experts`` (else ``$AAREN_RL_EXPERTS``); with neither, in the cache,
    downloading it from the Hub on first use (see the module docstring).
    """
    path = Path(spec).expanduser()
    local = experts or (experts_dir() if os.environ.get(EXPERTS_VAR) else None)
    if not path.exists() and not path.is_absolute():
        if local is not None:
            path = local / path
        elif _EXPERT_NAME.match(str(spec)):
            path = download_expert(str(spec))
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        where = (
            f"a folder name in {local}" if local else "an RL Zoo agent name '<algo>-<Env>' (e.g. tqc-Hopper)"
        )
        raise FileNotFoundError(
            f"Behaviour policy {str(spec)!r} not found (looked for {path}). Give an SB3 model zip, a folder "
            f"holding {MODEL_FILE}, or {where}."
        )
    return path


def download_expert(name: str) -> Path:
    """The cache folder of RL Zoo agent ``name``, downloaded from the Hub and verified on first use."""
    repo_id = hub_repo_id(name)
    dest = cache_dir() / "experts" / name
    if (dest / MODEL_FILE).is_file():
        return dest
    if offline_mode():
        raise FileNotFoundError(
            f"Behaviour policy {name!r} is not on this machine (looked in {dest}) and downloads are off "
            f"(${OFFLINE_VAR} is set). Fix: set ${EXPERTS_VAR} to a folder of policies "
            f"({name}/{MODEL_FILE}, ...), or allow the download (unset ${OFFLINE_VAR}) to fetch {repo_id} "
            "from the Hugging Face Hub."
        )
    endpoint = hub_endpoint()
    source = f"{endpoint}/{repo_id}"
    try:
        with atomic_path(dest) as part:
            part.mkdir(parents=True, exist_ok=True)
            _fetch_hub_files(name, part, endpoint)
            check_policy_folder(part)
    except UnsafePolicyFileError as exc:
        raise UnsafePolicyFileError(f"{source}: {exc} Nothing was cached.") from exc
    except Exception as exc:  # HTTP, connection and verification errors alike: one message, nothing cached
        raise DownloadError(
            f"Downloading behaviour policy {name!r} from {source} failed ({type(exc).__name__}: {exc}). "
            f"Nothing was left in {dest.parent}. Fix: check the network and $HF_ENDPOINT, or set "
            f"${EXPERTS_VAR} to a folder of policies."
        ) from exc
    return dest


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` read now (huggingface_hub reads it once, at import), else the public Hub."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _fetch_hub_files(name: str, folder: Path, endpoint: str) -> None:
    """Download the agent's files with huggingface_hub (progress bars) into ``folder``, renamed to our layout."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    repo_id, staging = hub_repo_id(name), folder / ".hub"
    for remote, local, required in _hub_files(name):
        try:
            fetched = hf_hub_download(repo_id, remote, local_dir=staging, endpoint=endpoint)
        except RemoteEntryNotFoundError:
            if required:
                raise
            continue
        os.replace(fetched, folder / local)
    shutil.rmtree(staging)


def check_policy_folder(folder: Path) -> None:
    """Raise :class:`PolicyFileError` unless ``folder`` holds a usable policy.

    ``model.zip`` must be a complete SB3 zip (``data`` and ``policy.pth``, CRCs right) whose pickled
    entries all pass the restricted unpickler; ``vecnormalize.pkl``, if present, must too, and
    ``config.yml``, if present, must be text.
    """
    zip_path = folder / MODEL_FILE
    decode_serialized_entries(zip_path, read_model_data(zip_path), replaced=_REPLACED_ENTRIES)
    check_torch_entries(zip_path)
    if (folder / NORMALIZER_FILE).is_file():
        load_normalizer(folder / NORMALIZER_FILE)
    if (folder / CONFIG_FILE).is_file():
        try:
            (folder / CONFIG_FILE).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyFileError(f"{folder / CONFIG_FILE}: not a text file ({exc}).") from exc


# --------------------------------------------------------------------------------------------------
# Reading policy files without running code from them

#: numpy's internal package, ``numpy.core`` before numpy 2 and ``numpy._core`` since; pickles name either.
_NUMPY_CORE = "numpy._core" if hasattr(np, "_core") else "numpy.core"
_ANY_NUMPY_CORE = re.compile(r"^numpy\._?core(?=\.|$)")
#: Globals a policy pickle may name, besides the classes admitted by :func:`_is_admitted_class`:
#: numpy array / dtype / scalar / random-generator reconstruction, containers, gymnasium spaces, the
#: VecNormalize statistics and SB3's train-frequency tuple.
_ALLOWED_GLOBALS = frozenset(
    [(f"{_NUMPY_CORE}.multiarray", "_reconstruct"), (f"{_NUMPY_CORE}.multiarray", "scalar")]
    + [(f"{_NUMPY_CORE}.numeric", "_frombuffer"), ("numpy", "dtype"), ("numpy", "ndarray")]
    + [("numpy.random._pickle", f"__{kind}_ctor") for kind in ("randomstate", "generator", "bit_generator")]
    + [(f"numpy.random._{name.lower()}", name) for name in ("MT19937", "PCG64", "Philox", "SFC64")]
    + [("numpy.random._pcg64", "PCG64DXSM"), ("numpy.random.bit_generator", "SeedSequence")]
    + [("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence")]
    + [("collections", "OrderedDict"), ("collections", "deque")]
    + [
        (f"gymnasium.spaces.{module}", name)
        for module, name in (
            ("box", "Box"),
            ("discrete", "Discrete"),
            ("multi_discrete", "MultiDiscrete"),
            ("multi_binary", "MultiBinary"),
            ("dict", "Dict"),
            ("tuple", "Tuple"),
        )
    ]
    + [
        ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"),
        ("stable_baselines3.common.running_mean_std", "RunningMeanStd"),
        ("stable_baselines3.common.type_aliases", "TrainFreq"),
        ("stable_baselines3.common.type_aliases", "TrainFrequencyUnit"),
    ]
)
#: Packages whose classes a pickle may name when they are policies, buffers, torch modules or optimizers.
_CLASS_PACKAGES = ("stable_baselines3.", "sb3_contrib.", "torch.nn.modules.", "torch.optim.")
_OLD_GYM = re.compile(r"^gym(?=\.|$)")  # pickles of the old gym package name gymnasium's classes


def _is_admitted_class(module: str, found: Any) -> bool:
    """A class (never a function) defined in ``module`` that SB3 saves by reference: policies, feature
    extractors and activations (torch modules), optimizers, replay buffers."""
    import torch
    from stable_baselines3.common.buffers import BaseBuffer

    return (
        isinstance(found, type)
        and found.__module__ == module
        and issubclass(found, (torch.nn.Module, torch.optim.Optimizer, BaseBuffer))
    )


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only the allowed globals; old ``gym`` names resolve to gymnasium's, numpy's internal
    package to the installed numpy's."""

    def __init__(self, file: io.BytesIO, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        module = _ANY_NUMPY_CORE.sub(_NUMPY_CORE, _OLD_GYM.sub("gymnasium", module))
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        # Importing these packages' modules runs only their own code; dotted names could reach other objects.
        if module.startswith(_CLASS_PACKAGES) and "." not in name:
            found = super().find_class(module, name)
            if _is_admitted_class(module, found):
                return found
        raise UnsafePolicyFileError(
            f"{self.source}: refused to unpickle {module}.{name}: a behaviour-policy file needs only numpy "
            "arrays, gymnasium spaces, SB3 policy classes and VecNormalize statistics, and unpickling "
            "anything else could run code from the file. Use the RL Zoo's policies, or re-save yours with "
            "current Stable-Baselines3."
        )


def restricted_loads(raw: bytes, source: str) -> Any:
    """Unpickle ``raw`` with the restricted unpickler; ``source`` names the file (and entry) in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(raw), source).load()
    except PolicyFileError:
        raise
    except Exception as exc:  # truncated or malformed pickles fail in many ways: one clear error
        raise PolicyFileError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc}).") from exc


def load_normalizer(path: Path) -> Any:
    """The ``VecNormalize`` statistics in ``path``, read with the restricted unpickler."""
    from stable_baselines3.common.vec_env import VecNormalize

    normalizer = restricted_loads(path.read_bytes(), str(path))
    if not isinstance(normalizer, VecNormalize):
        raise PolicyFileError(f"{path}: holds a {type(normalizer).__name__}, not SB3's VecNormalize.")
    problem = _normalizer_problem(normalizer)
    if problem:
        raise PolicyFileError(f"{path}: {problem}; the file is damaged. Fix: download or copy it again.")
    return normalizer


def _normalizer_problem(normalizer: Any) -> str | None:
    """What makes unpickled VecNormalize statistics unusable (a damaged file can still unpickle): a mean,
    variance, clip or epsilon that is not a finite float32, a negative variance or clip."""
    float32_max = float(np.finfo(np.float32).max)
    values = {
        "obs_rms.mean": getattr(getattr(normalizer, "obs_rms", None), "mean", None),
        "obs_rms.var": getattr(getattr(normalizer, "obs_rms", None), "var", None),
        "clip_obs": getattr(normalizer, "clip_obs", None),
        "epsilon": getattr(normalizer, "epsilon", None),
    }
    for name, value in values.items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name} is not numbers"
        if array.size == 0 or not np.all(np.abs(array) <= float32_max):  # also catches NaN
            return f"{name} holds values that are not finite float32 numbers"
        if name != "obs_rms.mean" and np.any(array < 0):
            return f"{name} is negative"
    return None


def read_model_data(zip_path: Path) -> dict[str, Any]:
    """The ``data`` JSON of an SB3 zip, after checking that the zip is complete and has the weights."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            missing = [entry for entry in _REQUIRED_ZIP_ENTRIES if entry not in archive.namelist()]
            corrupted = archive.testzip()
            data = json.loads(archive.read("data")) if not missing else None
    except (zipfile.BadZipFile, EOFError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PolicyFileError(f"{zip_path}: not a readable Stable-Baselines3 model zip ({exc}).") from exc
    if missing:
        raise PolicyFileError(
            f"{zip_path}: not a Stable-Baselines3 model zip (no {', '.join(missing)} in it)."
        )
    if corrupted is not None:
        raise PolicyFileError(f"{zip_path}: entry {corrupted!r} is corrupted (CRC mismatch).")
    if not isinstance(data, dict):
        raise PolicyFileError(f"{zip_path}: its 'data' entry is not a JSON object.")
    return data


def check_torch_entries(zip_path: Path) -> None:
    """Read each torch file of an SB3 zip (``policy.pth``, ``pytorch_variables.pth``, ...) as SB3's loader
    will, with torch's weights-only unpickler: :class:`UnsafePolicyFileError` for one that needs more
    than tensors, :class:`PolicyFileError` for one torch cannot read. Call after :func:`read_model_data`."""
    import torch

    with zipfile.ZipFile(zip_path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist() if name.endswith(".pth")}
    for name, raw in entries.items():
        source = f"{zip_path} (entry {name!r})"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's notes on unusual pickle protocols
                torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafePolicyFileError(
                f"{source}: refused to unpickle it ({_torch_reason(exc)}): a policy's torch files need only "
                "tensors, and unpickling anything else could run code from the file. Use the RL Zoo's "
                "policies, or re-save yours with current Stable-Baselines3."
            ) from None
        except Exception as exc:  # truncated or malformed torch files fail in many ways: one clear error
            raise PolicyFileError(f"{source}: not a readable torch file ({_torch_reason(exc)}).") from exc


def _torch_reason(exc: Exception) -> str:
    """The line of torch's (long) error message that says what is wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])[:200]


def _zero_schedule(_: float) -> float:
    return 0.0


#: Saved entries acting never uses, replaced by constants: the training schedules (pickled code) and
#: ARS's flat weight vector (pickled for torch's unrestricted unpickler; ARS rebuilds it from the
#: policy's parameters when loading).
_TRAINING_ONLY_ENTRIES: dict[str, Any] = {
    "learning_rate": 0.0,
    "lr_schedule": _zero_schedule,
    "clip_range": _zero_schedule,
    "delta_std_schedule": _zero_schedule,
    "exploration_schedule": _zero_schedule,
    "weights": None,
}
#: Entries never unpickled from the file: the spaces come from the env, the rest are constants.
_REPLACED_ENTRIES = frozenset({"observation_space", "action_space", *_TRAINING_ONLY_ENTRIES})


def decode_serialized_entries(
    zip_path: Path, data: dict[str, Any], replaced: Collection[str]
) -> dict[str, Any]:
    """Every pickled entry of ``data`` not in ``replaced``, read with the restricted unpickler."""
    decoded = {}
    for key, item in data.items():
        if key in replaced or not (isinstance(item, dict) and _SERIALIZED in item):
            continue
        source = f"{zip_path} (data entry {key!r})"
        try:
            raw = base64.b64decode(item[_SERIALIZED], validate=True)
        except (ValueError, TypeError) as exc:
            raise PolicyFileError(f"{source}: not base64 ({exc}).") from exc
        decoded[key] = restricted_loads(raw, source)
    return decoded


def model_custom_objects(
    zip_path: Path, data: dict[str, Any], observation_space: gym.Space, action_space: gym.Space
) -> dict[str, Any]:
    """SB3's ``custom_objects`` for this zip: a value for every entry its loader would unpickle.

    The spaces are the env's (old zips pickle ``gym`` ones), the training-only entries constants, the
    rest (policy class and kwargs, rollout state, ...) decoded by the restricted unpickler.
    """
    fixed = {"observation_space": observation_space, "action_space": action_space, **_TRAINING_ONLY_ENTRIES}
    return {**fixed, **decode_serialized_entries(zip_path, data, replaced=fixed)}


# --------------------------------------------------------------------------------------------------
# Behaviour policies


class RandomPolicy:
    """Uniform actions in a Box or Discrete action space, from its own seeded generator."""

    name = "random"
    algo = "random"

    def __init__(
        self, action_space: gym.spaces.Box | gym.spaces.Discrete, seed: int | list[int] | None = None
    ):
        self.space = action_space
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, episode_steps: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        space = self.space
        if isinstance(space, gym.spaces.Discrete):
            return space.start + self.rng.integers(space.n, size=len(obs))
        return self.rng.uniform(space.low, space.high, size=(len(obs), *space.shape)).astype(space.dtype)


class PredictPolicy:
    """Any SB3-style ``predict`` policy (SB3 models, agents' policies), with its recurrent state kept.

    ``obs_normalizer`` (a VecNormalize loaded for prediction) and ``time_feature_max_steps`` (append
    sb3-contrib's TimeFeatureWrapper feature ``1 - t / max_steps``) rebuild the observation the model
    was trained on from the raw one; the raw observation is what gets recorded.
    """

    def __init__(
        self,
        model: Any,
        *,
        name: str,
        algo: str,
        deterministic: bool = True,
        obs_normalizer: Any = None,
        time_feature_max_steps: int | None = None,
    ):
        self.model, self.name, self.algo = model, name, algo
        self.deterministic = deterministic
        self.obs_normalizer = obs_normalizer
        self.time_feature_max_steps = time_feature_max_steps
        self.state: Any = None

    def act(self, obs: np.ndarray, episode_steps: np.ndarray, episode_start: np.ndarray) -> np.ndarray:
        x = obs
        if self.time_feature_max_steps:
            feature = 1.0 - episode_steps / self.time_feature_max_steps
            x = np.concatenate([x, feature[:, None].astype(x.dtype)], axis=1)
        if self.obs_normalizer is not None:
            x = self.obs_normalizer.normalize_obs(x)
        actions, self.state = self.model.predict(
            x, state=self.state, episode_start=episode_start, deterministic=self.deterministic
        )
        return np.asarray(actions)


def detect_algo(model_zip: str | os.PathLike) -> str:
    """The SB3 algorithm of a saved model, from its ``data`` JSON (policy class module and saved keys)."""
    return _algo_of(read_model_data(Path(model_zip)), model_zip)


def _algo_of(data: dict[str, Any], model_zip: str | os.PathLike) -> str:
    module = data.get("policy_class", {}).get("__module__", "")
    for key, algo in (("tqc", "tqc"), ("ars", "ars"), (".sac.", "sac"), (".td3.", "td3"), (".dqn.", "dqn")):
        if key in module:
            return algo
    if "recurrent" in module:
        raise PolicyFileError(f"{model_zip}: recurrent policies are not supported for collection.")
    if "cg_damping" in data:
        return "trpo"
    if "clip_range" in data:
        return "ppo"
    if "gae_lambda" in data:
        return "a2c"
    raise PolicyFileError(f"{model_zip}: cannot tell the algorithm (policy module {module!r}); pass algo=.")


def _algo_class(algo: str) -> type:
    import sb3_contrib
    import stable_baselines3 as sb3

    classes = {
        "a2c": sb3.A2C,
        "ppo": sb3.PPO,
        "sac": sb3.SAC,
        "td3": sb3.TD3,
        "ddpg": sb3.DDPG,
        "dqn": sb3.DQN,
        "tqc": sb3_contrib.TQC,
        "trpo": sb3_contrib.TRPO,
        "ars": sb3_contrib.ARS,
    }
    if algo.lower() not in classes:
        raise PolicyFileError(f"Unknown algorithm {algo!r}; known: {sorted(classes)}")
    return classes[algo.lower()]


def load_sb3_policy(
    spec: str | os.PathLike,
    observation_space: gym.spaces.Box,
    action_space: gym.spaces.Space,
    *,
    algo: str | None = None,
    deterministic: bool = True,
    time_feature: bool | None = None,
    experts: Path | None = None,
) -> PredictPolicy:
    """Load an SB3 behaviour policy for the given env spaces, without running code from its files.

    ``spec``: see :func:`resolve_policy_path`. A ``vecnormalize.pkl`` beside the zip normalises what
    the model sees. ``time_feature`` (default: detected from the zoo's ``config.yml`` or the
    normaliser's size) appends TimeFeatureWrapper's feature (max_steps 1000). A file that needs code
    to unpickle raises :class:`UnsafePolicyFileError`.
    """
    zip_path = resolve_policy_path(spec, experts)
    folder = zip_path.parent
    data = read_model_data(zip_path)
    check_torch_entries(zip_path)
    algo = algo or _algo_of(data, zip_path)
    normalizer = load_normalizer(folder / NORMALIZER_FILE) if (folder / NORMALIZER_FILE).is_file() else None
    obs_dim = observation_space.shape[0]
    if time_feature is None:
        config = folder / CONFIG_FILE
        time_feature = (config.is_file() and "TimeFeatureWrapper" in config.read_text()) or (
            normalizer is not None and normalizer.obs_rms.mean.shape == (obs_dim + 1,)
        )
    model_obs_dim = obs_dim + int(time_feature)
    if normalizer is not None and normalizer.obs_rms.mean.shape != (model_obs_dim,):
        raise PolicyFileError(
            f"{folder / NORMALIZER_FILE} normalises {normalizer.obs_rms.mean.shape[0]}-dim observations but "
            f"the env gives {obs_dim}{' + 1 time feature' if time_feature else ''}: wrong task for this policy?"
        )
    model_space = gym.spaces.Box(-np.inf, np.inf, (model_obs_dim,), np.float32)
    custom_objects = model_custom_objects(zip_path, data, model_space, action_space)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old-version notices from SB3's loader
        try:
            model = _algo_class(algo).load(zip_path, device="cpu", custom_objects=custom_objects)
        except RuntimeError as exc:  # torch size mismatch: the policy was trained on another task
            raise PolicyFileError(
                f"{zip_path} does not fit observations of size {model_obs_dim}: {exc}"
            ) from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # a damaged entry that still parses
            raise PolicyFileError(
                f"{zip_path}: Stable-Baselines3 cannot load it ({type(exc).__name__}: {exc}): the file is "
                "damaged. Fix: use an intact copy of the policy"
            ) from exc
    name = folder.name if zip_path.name == MODEL_FILE else zip_path.stem
    return PredictPolicy(
        model,
        name=name,
        algo=algo,
        deterministic=deterministic,
        obs_normalizer=normalizer,
        time_feature_max_steps=1000 if time_feature else None,
    )
