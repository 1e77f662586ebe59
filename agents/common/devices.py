"""The device setting of both trainers (offline `train.device`, PPO `ppo.device`): refused at the boundary
when torch cannot run there, so a run never falls back to another device than its config.yaml names."""

from __future__ import annotations

import torch

from agents.common.overrides import ConfigError, shown


def check_device(device: str, key: str) -> None:
    """`device` (setting `key`) must be a CPU or CUDA device torch has here (asks about CUDA only for
    CUDA devices); one ConfigError naming the setting and the fix otherwise."""
    fix = "use 'cpu', 'cuda' or 'cuda:<i>'"
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"{key} = {shown(device)} is not a device ({exc}). Fix: {fix}") from exc
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key} = {shown(device)} is impossible: {fix}")
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{key} = {device!r}, but this torch ({torch.__version__}) finds no CUDA GPU. Fix: "
            f"--set {key}=cpu, or run on a machine with an NVIDIA GPU and a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(
            f"{key} = {shown(device)} is impossible: this machine has {count} CUDA device(s): use 'cuda' or "
            f"'cuda:<i>' with i < {count}"
        )
