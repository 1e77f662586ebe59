"""Train AarenPPO on one task of `agents.ppo.tasks` into a run directory (`scripts/train_ppo.py`).

The run directory gets config.yaml (what ran: the task, its PPO and policy settings after overrides),
tb/ (TensorBoard), model.zip (`AarenPPO.load`), policy.zip (`agents.ppo.export`: safetensors + JSON,
loads without unpickling) and eval.json (the final deterministic return on fresh envs, the MMER over
training, the seconds of collection and training). Every file is written atomically, model.zip last;
a directory that holds it (a finished run) is refused, not overwritten. The run holds the directory's
one-writer lock (.lock, `agents.common.run_lock`) throughout, so a second process training the same
directory is refused too, and a killed run starts again in place.

Overridden settings are checked where they are given (`PPORun.override`): their type, the range of each
numeric option (`OPTION_BOUNDS`) and the device, one `ConfigError` each.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback

from agents.common.devices import check_device
from agents.common.overrides import ConfigError, convert_value, parse_override_value, shown
from agents.common.run_lock import run_lock
from agents.ppo.algorithm import AarenPPO
from agents.ppo.export import export_policy
from agents.ppo.policy import AarenActorCriticPolicy
from agents.ppo.tasks import (
    AAREN_KWARGS,
    POLICY_KWARGS,
    POPGYM_STEPS,
    RunMonitor,
    final_returns,
    make_env,
    max_mean_returns,
    task_named,
)
from envs.files import atomic_path, remove_temporaries, torch_threads, write_atomic
from envs.progress import progress_bar

#: Arguments the run sets itself, so not options to override.
_SET_BY_RUN = {
    "self",
    "policy",
    "env",
    "seed",
    "policy_kwargs",
    "tensorboard_log",
    "verbose",
    "_init_setup_model",
}
_SET_BY_POLICY = {"self", "observation_space", "action_space", "lr_schedule"}


@dataclass(frozen=True)
class Bounds:
    """The numbers an option may be: from `low` to `high`, each end included unless said otherwise."""

    low: float
    high: float = math.inf
    low_included: bool = True
    high_included: bool = True

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.low_included else value > self.low
        below = value <= self.high if self.high_included else value < self.high
        return above and below

    def __str__(self) -> str:
        low = f"{'>=' if self.low_included else '>'} {self.low:g}"
        if self.high == math.inf:
            return low
        return f"{low} and {'<=' if self.high_included else '<'} {self.high:g}"


POSITIVE = Bounds(0, low_included=False)
#: The range of each numeric option of AarenPPO and its policy: SB3 and the policy would fail deep inside
#: training (n_epochs=0 ends in an UnboundLocalError), or train on nonsense, outside it. Options that
#: may be null (off) take null too.
OPTION_BOUNDS = {
    "ppo.learning_rate": POSITIVE,
    "ppo.n_steps": Bounds(1),
    "ppo.batch_size": Bounds(1),
    "ppo.n_epochs": Bounds(1),
    "ppo.gamma": Bounds(0, 1),
    "ppo.gae_lambda": Bounds(0, 1),
    "ppo.clip_range": POSITIVE,
    "ppo.clip_range_vf": POSITIVE,
    "ppo.ent_coef": Bounds(0),
    "ppo.vf_coef": Bounds(0),
    "ppo.max_grad_norm": POSITIVE,
    "ppo.sde_sample_freq": Bounds(-1),
    "ppo.target_kl": POSITIVE,
    "ppo.stats_window_size": Bounds(1),
    "policy.embed_dim": Bounds(1),
    "policy.num_layers": Bounds(1),
    "policy.num_heads": Bounds(1),
    "policy.ffn_mult": Bounds(1),
    "policy.dropout": Bounds(0, 1, high_included=False),
    "policy.input_lags": Bounds(0),
}


def check_option(key: str, value: Any, default: Any) -> None:
    """One ConfigError unless `value` of option `key` (whose default is `default`) is in its range, or
    is a device torch can run on here (`agents.common.devices`; SB3's "auto" too)."""
    if key == "ppo.device" and value != "auto":
        check_device(value, key)
    bounds = OPTION_BOUNDS.get(key)
    if bounds is None or (value is None and default is None):
        return
    number = type(value) is int or (isinstance(value, float) and math.isfinite(value))
    if not number or value not in bounds:
        nullable = " (or null: off)" if default is None else ""
        raise ConfigError(
            f"{key} = {shown(value)} is impossible: it must be a number {bounds}{nullable}. Fix: e.g. --set "
            f"{key}={'null' if default is None else default}"
        )


def settable_options(cls: type, excluded: set[str]) -> dict[str, Any]:
    """`cls.__init__`'s options a plain value can set (name -> default): not classes or callables."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.name not in excluded and p.kind is p.POSITIONAL_OR_KEYWORD and not callable(p.default)
    }


@dataclass
class PPORun:
    """One training run: the task, its budget and the settings after overrides."""

    task: str
    steps: int = POPGYM_STEPS
    seed: int = 0
    eval_episodes: int = 10
    ppo: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # as given, applied over the task's settings

    @classmethod
    def of_task(cls, task: str, overrides: Sequence[str] = (), **budget: int) -> PPORun:
        """The run of `task` (`task_named`) with its settings, then `section.option=value` overrides."""
        # On a CPU: these policies are small, and SB3 advises against PPO with MLPs on a GPU.
        ppo = {"device": "cpu", **task_named(task).ppo}
        run = cls(task, **budget, ppo=ppo, policy={**POLICY_KWARGS, **AAREN_KWARGS})
        for item in overrides:
            run.override(item)
        run.overrides = list(overrides)
        return run

    def override(self, item: str) -> None:
        """Apply one `ppo.<option>=<value>` or `policy.<option>=<value>` (value parsed as YAML)."""
        key, sep, text = item.partition("=")
        section, _, name = key.strip().partition(".")
        sections = {
            "ppo": (self.ppo, settable_options(AarenPPO, _SET_BY_RUN)),
            "policy": (self.policy, settable_options(AarenActorCriticPolicy, _SET_BY_POLICY)),
        }
        if not sep or section not in sections or not name:
            raise ConfigError(
                f"override {item!r} is not ppo.<option>=<value> or policy.<option>=<value>. Fix: e.g. "
                "--set ppo.learning_rate=3e-4 policy.num_heads=8"
            )
        values, options = sections[section]
        if name not in options:
            close = difflib.get_close_matches(name, options, n=1)
            hint = (
                f"did you mean {section}.{close[0]}?" if close else f"options: {', '.join(sorted(options))}"
            )
            raise ConfigError(f"unknown option {key.strip()!r}: {hint}")
        current = values.get(name, options[name])
        value = parse_override_value(text, type(current))
        if isinstance(current, (bool, int, float, str)):
            value = convert_value(value, type(current), key.strip(), f"{key.strip()}={current}")
        check_option(f"{section}.{name}", value, options[name])
        values[name] = value

    def to_dict(self) -> dict[str, Any]:
        """The run as plain data (classes by their dotted name), as config.yaml holds it."""

        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, type):
                return f"{value.__module__}.{value.__qualname__}"
            return value

        return plain(dict(vars(self)))


def _build(run: PPORun, run_dir: Path) -> AarenPPO:
    """AarenPPO with the run's settings; overridden settings SB3 or the policy refuse are one
    `ConfigError` naming the overrides."""
    env = make_env(task_named(run.task), run.seed, training=True)
    try:
        return AarenPPO(
            "MlpAarenPolicy",
            env,
            seed=run.seed,
            policy_kwargs=run.policy,
            tensorboard_log=str(run_dir / "tb"),
            **run.ppo,
        )
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:  # SB3 asserts, torch's shapes
        env.close()
        if not run.overrides:
            raise  # the table's own settings: a bug, which keeps its traceback
        raise ConfigError(
            f"AarenPPO cannot be built with the settings in {run_dir / 'config.yaml'}: {exc}. Fix: correct "
            f"the --set value this is about (given: {' '.join(run.overrides)})"
        ) from exc


class ProgressBar(BaseCallback):
    """SB3's progress bar through `envs.progress.progress_bar`: tqdm's on a terminal, plain lines
    every half minute in a log (SB3's own rich bar writes nothing there until the run ends)."""

    def _on_training_start(self) -> None:
        total = self.locals["total_timesteps"] - self.model.num_timesteps
        self.bar = progress_bar(total=total, unit="step", desc="AarenPPO")

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        self.bar.close()


def train_ppo(run: PPORun, run_dir: str | Path, progress: bool = True, threads: int = 1) -> Path:
    """Train `run` into `run_dir` (see the module docstring) and return the directory. model.zip is
    written last, so a directory holding it holds a finished run; RunLockedError while another process
    trains the directory."""
    run_dir = Path(run_dir)
    with run_lock(run_dir):
        if (run_dir / "model.zip").exists():
            raise ConfigError(
                f"{run_dir} holds a finished run already. Fix: pass another --name, or remove the directory"
            )
        remove_temporaries(run_dir)  # of a killed run's writes
        return _train(run, run_dir, progress, threads)


def _train(run: PPORun, run_dir: Path, progress: bool, threads: int) -> Path:
    """Train `run` into `run_dir`, whose lock this process holds (see the module docstring)."""
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(run.to_dict(), sort_keys=False))
    with torch_threads(threads):
        model = _build(run, run_dir)
        monitor = RunMonitor()
        start = time.perf_counter()
        callback = [monitor, ProgressBar()] if progress else monitor
        model.learn(run.steps, callback=callback, tb_log_name="AarenPPO")
        wall = time.perf_counter() - start
        model.env.close()
        export_policy(model, run_dir / "policy.zip")
        returns = final_returns(model, task_named(run.task), run.seed, run.eval_episodes)
    result = {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "episodes": len(returns),
        "mmer": max_mean_returns(monitor.rollout_returns)["mmer"],  # the benchmark's metric
        "env_steps": model.num_timesteps,
        "wall_s": wall,
        "collect_s": monitor.collect_s,
        "train_s": wall - monitor.collect_s,
    }
    write_atomic(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    with atomic_path(run_dir / "model.zip") as tmp, open(tmp, "wb") as file:
        model.save(file)
    return run_dir
