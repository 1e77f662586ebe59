"""The checkpoint format: model weights as safetensors + the model config as JSON (never pickles),
plus the trainer's state.

One checkpoint folder holds:

    model.safetensors   weights and buffers (state mean/std, action bounds)
    model.json          {"model": DecisionModelConfig, "step": 1000}
    trainer.pt          optimizer, scheduler, RNG states (read with torch.load weights_only)

The folder is written under a temporary name and renamed into place (`envs.files.atomic_path`), so
it is complete or absent. Where checkpoints live in a run and which is the latest: `agents.run_dir`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from agents.model import DecisionModel, DecisionModelConfig
from envs.files import atomic_path


def model_files(model: DecisionModel, step: int, **extra: Any) -> dict[str, bytes]:
    """What describes a trained model: its weights (model.safetensors) and its config plus `extra`
    (model.json), as file name -> bytes; a checkpoint folder and a DecisionPolicy zip both hold these."""
    weights = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"model": model.config.to_dict(), "step": step, **extra}
    return {"model.safetensors": save(weights), "model.json": json.dumps(meta, indent=2).encode()}


def write_checkpoint(
    folder: str | os.PathLike, model: DecisionModel, step: int, trainer_state: dict[str, Any]
) -> Path:
    """Write one checkpoint folder atomically (an existing one at `folder` is replaced); returns it."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, data in model_files(model, step).items():
            (tmp / name).write_bytes(data)
        torch.save(trainer_state, tmp / "trainer.pt")
    return folder


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> str:
    """How saved `weights` fail to fit a module's `expected` state dict (missing, unexpected or
    wrongly shaped entries, a few of each); "" when they fit."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: saved {list(weights[k].shape)} vs expected {list(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    return "; ".join(
        part
        for part in (
            f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
            f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
            f"shape mismatch {wrong[:4]}" if wrong else "",
        )
        if part
    )


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[DecisionModel, int]:
    """(model in eval mode, step) from a checkpoint folder; a clear error when the weights do not fit
    the architecture its model.json describes."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "model.json").read_text())
    model = DecisionModel(DecisionModelConfig(**meta["model"]))
    weights = load_file(str(checkpoint / "model.safetensors"))
    details = state_dict_mismatch(model.state_dict(), weights)
    if details:
        raise ValueError(
            f"{checkpoint / 'model.safetensors'} does not match the architecture in {checkpoint / 'model.json'} "
            f"(backbone={model.config.backbone!r}, embed_dim={model.config.embed_dim}, "
            f"num_layers={model.config.num_layers}): {details}. Fix: keep the weights with the model.json "
            "they were saved with."
        )
    model.load_state_dict(weights)
    return model.to(device).eval(), int(meta["step"])


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's trainer.pt: tensors and plain containers only (weights_only, so no pickled code runs)."""
    return torch.load(Path(checkpoint) / "trainer.pt", weights_only=True)
