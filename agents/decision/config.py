"""Experiment configs: typed dataclasses loaded from YAML, with includes and dotted overrides.

A YAML file may name `base: other.yaml` (a path relative to it, or a list of them); its keys are
deep-merged over the bases, so `configs/` holds one shared `base.yaml` and small per-task files.
`--set train.steps=500 model.backbone=transformer` style overrides are applied last (values parsed
as YAML). Every key is checked against the dataclasses below: an unknown key, a wrong type or an
impossible value raises one `ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import os
import tempfile
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agents.common.devices import check_device
from agents.common.overrides import ConfigError, convert_value, parse_override_value, shown
from agents.decision.agent import TARGET_RETURN_FIX, target_return_problem
from agents.decision.batching import ALL_BATCHINGS, check_batching
from agents.decision.model import BACKBONES, ModelHyperparameters


@dataclass
class DataConfig:
    dataset: str = field(default="", metadata={"example": "hopper-medium-v2"})  # D4RL-format file path or id
    env: str = field(default="", metadata={"example": "Hopper-v5"})  # env to evaluate in; "": the dataset's
    # metadata env_id, else the dataset id


@dataclass
class ModelConfig(ModelHyperparameters):
    max_timestep: int = 0  # timestep-embedding size; 0 = max(env time limit, longest dataset episode); 1 = no
    # timestep information (one entry for every step: acting in episodes longer than the data changes nothing)


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_steps: int = 1280  # supervised timesteps per batch, for both backbones (reference DT: 64 K-windows
    # x K = 20): the Transformer gets round(batch_steps / K) windows, the Aaren agent rows of its batching
    # (agents.decision.batching.batch_layout); under torchrun the global batch, split evenly across the processes
    batching: str = "packed"  # Aaren batches (agents.decision.batching): "packed" (rows packed with whole
    # episodes; the default: docs/design.md, Training) | "stored" (K-windows from anywhere, entering state
    # from a periodically refreshed table) | "episodes" (one whole episode a row,
    # right-padded) | "prefix" (K-windows, entering state rescanned from the episode start each step); the
    # LSTM's: "episodes" | "windows" (K-windows from an empty context); the Transformer's: "episodes", or
    # K-windows from an empty context for any other value
    state_refresh_every: int = 1000  # batching=stored: gradient steps between rescans of the stored states
    state_grid: int = 0  # batching=stored: a state stored every this many steps of each episode (0: K); a
    # window runs on from the stored state before it with the current weights, so a finer grid makes that
    # burn-in shorter (cheaper) and the entering state staler, for a table of about N / state_grid states
    lr: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    lr_decay: str = "none"  # after warm-up: "none" (constant, reference DT) | "cosine" (to 0 at `steps`)
    grad_clip: float = 0.25
    seed: int = 0
    device: str = "cpu"
    bf16: bool = False  # bfloat16 autocast for the forward pass
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_every: int = 0  # 0 = evaluate only at the end
    threads: int = 0  # torch CPU threads; 0 = torch's default
    dist_timeout: int = 1800  # torchrun: seconds a rank waits for the others before the job fails


@dataclass
class EvalConfig:
    episodes: int = 10
    num_envs: int = 5
    targets: list[float] = field(default_factory=list, metadata={"example": "[3600, 1800]"})  # empty = the
    # task's targets (docs/design.md, Decision agents)
    seed: int = 1000
    vectorization: str = (
        "sync"  # env copies stepped in this process ("sync") or in worker processes ("async")
    )


@dataclass
class Config:
    name: str = field(default="", metadata={"example": "my-run"})  # run folder name inside output_dir;
    # "" = <dataset>-<backbone>-s<seed>
    output_dir: str = "runs"  # the run directory is <output_dir>/<name>
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_name(self) -> str:
        stem = Path(self.data.dataset).name.removesuffix(".hdf5").removesuffix(".h5")
        return self.name or f"{stem}-{self.model.backbone}-s{self.train.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir).expanduser() / self.run_name


# ---- loading --------------------------------------------------------------------------------------


def _merge(base: dict, over: dict) -> dict:
    """`over` deep-merged into `base`, as a new dict: sections of `over` are copied, so that editing the
    result (as `apply_overrides` does) never edits what was passed in."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict):
            value = _merge(out[key] if isinstance(out.get(key), dict) else {}, value)
        out[key] = value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its `base:` includes resolved (bases first, this file's keys on top)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `base` includes form a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        named = f", named by `base:` in {_seen[-1]}," if _seen else ""
        fix = (
            f"correct that `base:` line (its paths are relative to {_seen[-1].parent})"
            if _seen
            else "pass an existing YAML file, e.g. configs/quickstart.yaml"
        )
        what = "is a folder, not a YAML file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {path}{named} {what}. Fix: {fix}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(
            f"config file {path} cannot be read ({exc.strerror}). Fix: make it readable (chmod u+r) or pass "
            "another file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}). Fix: pass a YAML text file, "
            "e.g. configs/quickstart.yaml"
        ) from exc
    try:
        raw = yaml.safe_load(text) or {}
    except Exception as exc:  # PyYAML raises more than YAMLError on odd input (deep nesting, huge ints)
        raise ConfigError(
            f"{path}: not valid YAML ({type(exc).__name__}: {exc}). Fix: correct it where named, keeping "
            "the layout of configs/quickstart.yaml"
        ) from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}. Fix: write one "
            "`key: value` or `section:` per line, as in configs/quickstart.yaml"
        )
    bases = raw.pop("base", [])
    names = [bases] if isinstance(bases, str) else bases
    if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
        raise ConfigError(
            f"{path}: base = {bases!r} does not name YAML files. Fix: write e.g. `base: base.yaml` (a path "
            "relative to this file) or a list of such paths, or delete the `base:` line"
        )
    merged: dict[str, Any] = {}
    for base in names:
        merged = _merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return _merge(merged, raw)


#: Keys that may differ from a run being resumed or reused: where and how fast it runs, not what it computes.
NOT_COMPARED_ON_RESUME = ("name", "output_dir", "train.device", "train.threads")


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The dotted keys that two nested configs both set to different values, less NOT_COMPARED_ON_RESUME:
    what makes a kept run another run than the one asked for."""
    old, new = flat_keys(before), flat_keys(now)
    return sorted(k for k in old.keys() & new.keys() if k not in NOT_COMPARED_ON_RESUME and old[k] != new[k])


def flat_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: value}, the keys `--set` names."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (value parsed as YAML: 500, 1e-3, true, [1, 2], text; a text key such
    as `name` takes a number or date as written, e.g. name=007)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, text = item.partition("=")
        path = key.strip().split(".")
        if not sep or not all(part.strip() for part in path):
            raise ConfigError(
                f"override {item!r} is not key=value with a dotted key. Fix: e.g. --set train.steps=500"
            )
        node = data
        *parents, leaf = path
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(
                    f"override {item!r}: {where} is a value, not a section. Fix: set {where}=<value>, "
                    "or name a key inside a section (e.g. train.steps)"
                )
        node[leaf] = parse_override_value(text, _annotation(path))
    return data


def _annotation(path: list[str]) -> Any:
    """The type of the config key at dotted `path` (None for an unknown key)."""
    hint: Any = Config
    for part in path:
        if not dataclasses.is_dataclass(hint):
            return None
        hint = typing.get_type_hints(hint).get(part)
    return hint


def _example(spec: dataclasses.Field) -> Any:
    """What to show as a value of `spec` in a fix: its documented example, else its default."""
    return spec.metadata.get("example", _default(spec))


def _default(spec: dataclasses.Field) -> Any:
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def _empty_value_message(key: str, spec: dataclasses.Field) -> str:
    """For `key=` or `key:` with nothing after it: what to put there."""
    return (
        f"{key} is empty. Fix: give it a value, e.g. {key}={_example(spec)}, or leave {key} out to keep "
        f"its default ({_default(spec)!r})"
    )


#: Keys that were renamed: old dotted name -> (new one, how its values change); an old key is an error
#: naming the new one.
RENAMED_KEYS = {
    "eval.vec_mode": ("eval.vectorization", "same values"),
    "train.batch_size": (
        "train.batch_steps",
        "it counts supervised timesteps per batch for both backbones, not sequences: "
        "batch_size K-windows x K steps, e.g. 64 x 20 = 1280",
    ),
}


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        first = fields(cls)[0]
        raise ConfigError(
            f"{prefix.rstrip('.') or 'the config'} = {shown(data)} is not a mapping of keys. Fix: set the "
            f"keys inside it, e.g. {prefix}{first.name}={_example(first)}"
        )
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if where in RENAMED_KEYS:
            new, values = RENAMED_KEYS[where]
            raise ConfigError(
                f"config key {where!r} is now called {new!r}. Fix: write {new} instead of {where} ({values})"
            )
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key {where!r}: {hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.")
        elif value is None:
            raise ConfigError(_empty_value_message(where, known[key]))
        else:
            kwargs[key] = convert_value(value, hint, where, f"{where}={_example(known[key])}")
    return cls(**kwargs)


def _check(cond: bool, key: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {shown(value)} is impossible: {fix}")


def validate(cfg: Config) -> Config:
    """Value checks that need no data (dims against the dataset/env are checked in training)."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check(bool(cfg.data.dataset), "data.dataset", cfg.data.dataset, "give a D4RL-format file path or id")
    _check(m.backbone in BACKBONES, "model.backbone", m.backbone, f"use one of {list(BACKBONES)}")
    for key in ("embed_dim", "num_layers", "num_heads", "ffn_mult", "context_steps"):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "must be >= 1")
    _check(
        m.embed_dim % m.num_heads == 0,
        "model.num_heads",
        m.num_heads,
        f"must divide model.embed_dim ({m.embed_dim})",
    )
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    _check(m.max_timestep >= 0, "model.max_timestep", m.max_timestep, "must be >= 1, or 0 for automatic")
    _check(m.return_scale > 0, "model.return_scale", m.return_scale, "must be > 0 (reference 0.001)")
    _check(
        not m.step_slopes or m.backbone == "aaren",
        "model.step_slopes",
        m.step_slopes,
        f"slopes on the scores are Aaren's, not model.backbone = {m.backbone}'s (the T-Maze and POPGym "
        "configs switch them on). Fix: --set model.step_slopes=false",
    )
    for key in (
        "steps",
        "batch_steps",
        "log_every",
        "checkpoint_every",
        "dist_timeout",
        "state_refresh_every",
    ):
        _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "must be >= 1")
    _check(t.batching in ALL_BATCHINGS, "train.batching", t.batching, f"use one of {list(ALL_BATCHINGS)}")
    check_batching(cfg)
    for key in ("warmup_steps", "eval_every", "threads", "state_grid"):
        _check(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), "must be >= 0")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0 (reference 1e-4)")
    _check(t.lr_decay in ("none", "cosine"), "train.lr_decay", t.lr_decay, "use 'none' or 'cosine'")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _check(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "must be > 0 (reference 0.25)")
    check_device(t.device, "train.device")
    _check(t.seed >= 0, "train.seed", t.seed, "must be >= 0")
    _check(e.seed >= 0, "eval.seed", e.seed, "must be >= 0")
    for i, target in enumerate(e.targets):
        problem = target_return_problem(target)
        _check(problem is None, f"eval.targets[{i}]", target, f"{problem}. Fix: {TARGET_RETURN_FIX}")
    _check(e.episodes >= 1, "eval.episodes", e.episodes, "must be >= 1")
    _check(e.num_envs >= 1, "eval.num_envs", e.num_envs, "must be >= 1")
    _check(
        e.vectorization in ("sync", "async"), "eval.vectorization", e.vectorization, "use 'sync' or 'async'"
    )
    plain_name = cfg.name not in (".", "..") and not any(sep in cfg.name for sep in ("/", "\\", "\0"))
    _check(
        plain_name, "name", cfg.name, "a folder name inside output_dir, without '/', '\\' or '..' (or empty)"
    )
    return cfg


def writable_run_dir(cfg: Config) -> Path:
    """The run directory of a new run, once it is clear (leaving nothing behind) that it can be created
    and written; a ConfigError naming output_dir otherwise."""
    run_dir = cfg.run_dir
    existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
    problem = _no_new_folders(existing) if existing.is_dir() else "is a file, not a folder"
    if problem:
        raise ConfigError(
            f"output_dir = {cfg.output_dir!r}: the run directory {run_dir} cannot be created, as {existing} "
            f"{problem}. Fix: --set output_dir=<a folder you can write>"
        )
    return run_dir


def _no_new_folders(folder: Path) -> str:
    """Why no folder can be made in `folder` ("" when one can), found by making and removing one:
    permissions do not tell everything (root in /proc, a read-only mount)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".writable-", dir=folder))
    except OSError as exc:
        denied = exc.errno in (errno.EACCES, errno.EPERM)
        return "is not writable" if denied else f"refuses new folders ({exc.strerror})"
    return ""


def from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (with `base:` includes), apply `key=value` overrides, type-check and validate."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
