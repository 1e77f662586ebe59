"""Checkpoints: model weights as safetensors + the model config as JSON (never pickles).

Layout inside a run directory:

    checkpoints/step_0001000/model.safetensors   weights and buffers (state mean/std, action bounds)
    checkpoints/step_0001000/model.json          {"model": DecisionModelConfig, "step": 1000}
    checkpoints/step_0001000/trainer.pt          optimizer, scheduler, RNG states (torch.load weights_only)
    checkpoints/latest                           name of the newest complete checkpoint

A checkpoint folder is written under a temporary name and renamed into place, then `latest` is
replaced atomically, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from agents.model import DecisionModel, DecisionModelConfig

KEEP_CHECKPOINTS = 2


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def model_files(model: DecisionModel, step: int, **extra: Any) -> dict[str, bytes]:
    """What describes a trained model: its weights (model.safetensors) and its config plus `extra`
    (model.json), as file name -> bytes; a checkpoint folder and a DecisionPolicy zip both hold these."""
    weights = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"model": model.config.to_dict(), "step": step, **extra}
    return {"model.safetensors": save(weights), "model.json": json.dumps(meta, indent=2).encode()}


def save_checkpoint(run_dir: Path, model: DecisionModel, step: int, trainer_state: dict[str, Any]) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, and drop all but the newest few."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp_{final.name}_{secrets.token_hex(4)}"
    tmp.mkdir()
    for name, data in model_files(model, step).items():
        (tmp / name).write_bytes(data)
    torch.save(trainer_state, tmp / "trainer.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", final.name)
    for old in sorted(root.glob("step_*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The newest complete checkpoint folder of a run, or FileNotFoundError saying what is missing."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {run_dir}: {pointer} is missing. Fix: pass a run directory written by "
            "scripts/train_offline.py that got at least to its first checkpoint."
        )
    return root / pointer.read_text().strip()


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[DecisionModel, int]:
    """(model in eval mode, step) from a checkpoint folder; a clear error when the weights do not fit
    the architecture its model.json describes."""
    checkpoint = Path(checkpoint)
    meta = json.loads((checkpoint / "model.json").read_text())
    model = DecisionModel(DecisionModelConfig(**meta["model"]))
    weights = load_file(str(checkpoint / "model.safetensors"))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f"{k}: checkpoint {list(weights[k].shape)} vs config {list(v.shape)}"
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            part for part in (
                f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
                f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}" if unexpected else "",
                f"shape mismatch {wrong[:4]}" if wrong else "",
            ) if part
        )
        raise ValueError(
            f"{checkpoint / 'model.safetensors'} does not match the architecture in {checkpoint / 'model.json'} "
            f"(backbone={model.config.backbone!r}, embed_dim={model.config.embed_dim}, "
            f"num_layers={model.config.num_layers}): {details}. Fix: keep the weights with the model.json "
            "they were saved with."
        )
    model.load_state_dict(weights)
    return model.to(device).eval(), int(meta["step"])


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / "trainer.pt", weights_only=True)
