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
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agents.model import BACKBONES, ModelHyperparameters


class ConfigError(ValueError):
    """A config that cannot run; the message names the key, the value and how to fix it."""


@dataclass
class DataConfig:
    dataset: str = ""  # D4RL-format file path or D4RL id ("hopper-medium-v2")
    env: str = ""  # env to evaluate in; default: the dataset's metadata env_id, else the dataset id


@dataclass
class ModelConfig(ModelHyperparameters):
    max_timestep: int = 0  # timestep-embedding size; 0 = max(env time limit, longest dataset episode)


@dataclass
class TrainConfig:
    steps: int = 100_000
    batch_size: int = 64  # sequences per batch: K-windows (Transformer) or whole episodes (Aaren); under
    # torchrun the global batch, split evenly across the processes (lr and the result do not change)
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
    targets: list[float] = field(default_factory=list)  # empty = the task's DESIGN.md targets
    seed: int = 1000
    vec_mode: str = "sync"  # "sync" | "async"


@dataclass
class Config:
    name: str = ""  # run folder name; "" = <dataset>-<backbone>-s<seed>
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
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML mapping with its `base:` includes resolved (bases first, this file's keys on top)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `base` includes form a cycle: {' -> '.join(map(str, (*_seen, path)))}")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found. Fix: pass an existing YAML file, e.g. configs/quickstart.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    bases = raw.pop("base", [])
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, read_yaml(path.parent / base, (*_seen, path)))
    return _merge(merged, raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.sub=value` strings (value parsed as YAML: 500, 1e-3, true, [1, 2], text)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value. Fix: e.g. --set train.steps=500")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node[leaf] = value
    return data


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check/convert one value against its annotation (int, float, str, bool, list[float])."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list of {item.__name__}, e.g. [3600, 1800]")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. name=2024
    if hint is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} ({type(value).__name__}): expected {hint.__name__}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key {where!r}: {hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.")
        else:
            kwargs[key] = _convert(value, hint, where)
    return cls(**kwargs)


def _check(cond: bool, key: str, value: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{key} = {value!r} is impossible: {fix}")


def validate(cfg: Config) -> Config:
    """Value checks that need no data (dims against the dataset/env are checked in training)."""
    m, t, e = cfg.model, cfg.train, cfg.eval
    _check(bool(cfg.data.dataset), "data.dataset", cfg.data.dataset, "give a D4RL-format file path or id")
    _check(m.backbone in BACKBONES, "model.backbone", m.backbone, f"use one of {list(BACKBONES)}")
    for key in ("embed_dim", "num_layers", "num_heads", "ffn_mult", "context_steps"):
        _check(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), "must be >= 1")
    _check(m.embed_dim % m.num_heads == 0, "model.num_heads", m.num_heads, f"must divide model.embed_dim ({m.embed_dim})")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    _check(m.max_timestep >= 0, "model.max_timestep", m.max_timestep, "must be >= 1, or 0 for automatic")
    _check(m.return_scale > 0, "model.return_scale", m.return_scale, "must be > 0 (reference 0.001)")
    for key in ("steps", "batch_size", "log_every", "checkpoint_every", "dist_timeout"):
        _check(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "must be >= 1")
    for key in ("warmup_steps", "eval_every", "threads"):
        _check(getattr(t, key) >= 0, f"train.{key}", getattr(t, key), "must be >= 0")
    _check(t.lr > 0, "train.lr", t.lr, "must be > 0 (reference 1e-4)")
    _check(t.lr_decay in ("none", "cosine"), "train.lr_decay", t.lr_decay, "use 'none' or 'cosine'")
    _check(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    _check(t.grad_clip > 0, "train.grad_clip", t.grad_clip, "must be > 0 (reference 0.25)")
    _check(t.device == "cpu" or t.device.startswith("cuda"), "train.device", t.device, "use 'cpu' or 'cuda[:i]'")
    _check(e.episodes >= 1, "eval.episodes", e.episodes, "must be >= 1")
    _check(e.num_envs >= 1, "eval.num_envs", e.num_envs, "must be >= 1")
    _check(e.vec_mode in ("sync", "async"), "eval.vec_mode", e.vec_mode, "use 'sync' or 'async'")
    _check("/" not in cfg.name, "name", cfg.name, "a folder name without '/' (or empty for automatic)")
    return cfg


def from_dict(data: dict[str, Any]) -> Config:
    return validate(_build(Config, data, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (with `base:` includes), apply `key=value` overrides, type-check and validate."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(apply_overrides(data, overrides or []))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

