"""The checkpoint format: model weights as safetensors + the model config as JSON (never pickles),
plus the trainer's state, each file verified by its sha256 digest when it is read.

One checkpoint folder holds:

    model.safetensors   weights and buffers (state mean/std, action bounds)
    trainer.pt          optimizer, scheduler, RNG states (read with torch.load weights_only)
    model.json          {"model": DecisionModelConfig, "step": 1000,
                         "files": {name: {"sha256": ..., "bytes": ...}} for the two files above,
                         "digest": sha256 of model.json's own content (everything but "digest")}

model.json is written last and vouches for the rest: a truncated, bit-flipped, edited or missing file
is one `CheckpointError` naming it and what is wrong, never a parser's traceback or silently wrong
weights. A DecisionPolicy zip (`agents.decision.sb3`) holds the same model.safetensors and model.json (listing
only the weights). Checkpoints written before the digests existed (model.json with neither "files"
nor "digest") still load, unverified, with a warning.

The folder is written under a temporary name and renamed into place (`envs.files.atomic_path`), so
it is complete or absent. Where checkpoints live in a run and which is the latest: `agents.decision.run_dir`.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load, save

from agents.common.digests import content_digest, file_record, record_problem
from agents.common.weights import nonfinite_entries, state_dict_mismatch
from agents.decision.model import DecisionModel, DecisionModelConfig
from envs.files import atomic_path

T = TypeVar("T")

#: What to do about a damaged checkpoint file, wherever it is found.
USE_ANOTHER = (
    "use another checkpoint of the run: scripts/train_offline.py --resume continues from the newest intact "
    "one by itself, and evaluation names it"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, damaged, edited, or not fitting its config.

    `problem` names the file and what is wrong, `fix` what to do; the message is both.
    """

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem}. Fix: {fix}" if fix else problem)
        self.problem, self.fix = problem, fix


def model_files(
    model: DecisionModel, step: int, *, trainer_state: dict[str, Any] | None = None, **extra: Any
) -> dict[str, bytes]:
    """What describes a trained model, as file name -> bytes in writing order: its weights
    (model.safetensors), with `trainer_state` also trainer.pt, and last model.json (config, step,
    `extra`, and the digests of the others and of itself). A checkpoint folder and a DecisionPolicy
    zip both hold these."""
    weights = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    files = {"model.safetensors": save(weights)}
    if trainer_state is not None:
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        files["trainer.pt"] = buffer.getvalue()
    meta = {"model": model.config.to_dict(), "step": step, **extra}
    meta["files"] = {name: file_record(data) for name, data in files.items()}
    meta["digest"] = content_digest(meta)
    return {**files, "model.json": json.dumps(meta, indent=2).encode()}


def write_checkpoint(
    folder: str | os.PathLike, model: DecisionModel, step: int, trainer_state: dict[str, Any]
) -> Path:
    """Write one checkpoint folder atomically (an existing one at `folder` is replaced); returns it.
    Each file reaches the disk (fsync) before the folder is renamed into place."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name, data in model_files(model, step, trainer_state=trainer_state).items():
            _write_synced(tmp / name, data)
    return folder


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and wait until it is on the disk."""
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class InMemory:
    """A checkpoint's files held in memory (the members of a DecisionPolicy zip): `folder / name` is how
    errors name a file (`policy.zip/model.json`), `files[name]` its bytes."""

    def __init__(self, folder: Path, files: Mapping[str, bytes]):
        self.folder, self.files = folder, files


Source = str | os.PathLike | InMemory


def _folder(checkpoint: Source) -> Path:
    return checkpoint.folder if isinstance(checkpoint, InMemory) else Path(checkpoint)


def read_meta(checkpoint: Source) -> dict[str, Any]:
    """A checkpoint's model.json, checked against its own digest (a pre-digest one with a warning)."""
    path = _folder(checkpoint) / "model.json"
    meta = _parse(path, json.loads, _read(checkpoint, "model.json"))
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds no JSON object: the file is damaged", USE_ANOTHER)
    if "files" not in meta and "digest" not in meta:
        warnings.warn(
            f"{path} was written before checkpoints carried sha256 digests: loading it unverified "
            "(the run's next checkpoint is verified)",
            stacklevel=2,
        )
    elif meta.get("digest") != content_digest(meta) or not isinstance(meta.get("files"), dict):
        raise CheckpointError(
            f"{path} was changed after it was written (its content does not match its sha256 digest)",
            USE_ANOTHER,
        )
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{path} lacks the model config or the step of a checkpoint", USE_ANOTHER)
    return meta


def read_verified(checkpoint: Source, name: str, meta: Mapping[str, Any]) -> bytes:
    """The bytes of file `name` of a checkpoint, once they match the size and sha256 its model.json
    (`meta`, from `read_meta`) records; a pre-digest checkpoint's files are read unverified."""
    path = _folder(checkpoint) / name
    data = _read(checkpoint, name)
    if "files" not in meta:
        return data
    record = meta["files"].get(name)
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: {path.parent / 'model.json'} records no digest for it", USE_ANOTHER)
    problem = record_problem(data, record, str(path.parent / "model.json"))
    if problem is not None:
        raise CheckpointError(f"{path} is {problem}", USE_ANOTHER)
    return data


def verify_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Check that a checkpoint folder's files are all there and unchanged; CheckpointError otherwise."""
    meta = read_meta(checkpoint)
    for name in ("model.safetensors", "trainer.pt"):
        read_verified(checkpoint, name, meta)


def _read(checkpoint: Source, name: str) -> bytes:
    """The bytes of file `name` of a checkpoint; CheckpointError when it is missing or unreadable."""
    path = _folder(checkpoint) / name
    if isinstance(checkpoint, InMemory):
        if name not in checkpoint.files:
            raise CheckpointError(f"{path} is missing", USE_ANOTHER)
        return checkpoint.files[name]
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing", USE_ANOTHER) from None
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc})", USE_ANOTHER) from exc


def _parse(path: Path, parse: Callable[[bytes], T], data: bytes) -> T:
    """`parse(data)`, any failure of the parser being a CheckpointError naming `path`."""
    try:
        return parse(data)
    except Exception as exc:  # parsers of damaged files raise all kinds of errors
        raise CheckpointError(
            f"{path} cannot be read ({type(exc).__name__}: {exc}): the file is damaged", USE_ANOTHER
        ) from exc


def load_model(checkpoint: Source, device: str | torch.device = "cpu") -> tuple[DecisionModel, int]:
    """(model in eval mode, step) from a checkpoint folder (or a DecisionPolicy zip's members,
    `InMemory`), its files verified; a CheckpointError when they are damaged or the weights do not fit
    the architecture its model.json describes."""
    meta = read_meta(checkpoint)
    weights_path, meta_path = _folder(checkpoint) / "model.safetensors", _folder(checkpoint) / "model.json"
    weights = _parse(weights_path, load, read_verified(checkpoint, "model.safetensors", meta))
    try:
        model = DecisionModel(DecisionModelConfig(**meta["model"]))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{meta_path} describes no buildable model ({exc})", USE_ANOTHER) from exc
    details = state_dict_mismatch(model.state_dict(), weights)
    if details:
        raise CheckpointError(
            f"{weights_path} does not match the architecture in {meta_path} "
            f"(backbone={model.config.backbone!r}, embed_dim={model.config.embed_dim}, "
            f"num_layers={model.config.num_layers}): {details}",
            "keep the weights with the model.json they were saved with",
        )
    nonfinite = nonfinite_entries(weights)
    if nonfinite:
        more = " ..." if len(nonfinite) > 4 else ""
        raise CheckpointError(
            f"{weights_path} holds NaN or infinite values in {nonfinite[:4]}{more}: a model with them predicts "
            "nothing usable",
            USE_ANOTHER,
        )
    model.load_state_dict(weights)
    return model.to(device).eval(), meta["step"]


def load_trainer_state(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's trainer.pt, verified: tensors and plain containers only (weights_only, so no
    pickled code runs). Anything else is refused without torch's message, which advises loading the
    file unsafely."""
    checkpoint = Path(checkpoint)
    data = read_verified(checkpoint, "trainer.pt", read_meta(checkpoint))
    try:
        state = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as exc:  # a damaged or planted file: unpickling raises all kinds of errors
        found = re.search(r"GLOBAL (\S+)", str(exc))
        raise CheckpointError(
            f"{checkpoint / 'trainer.pt'} is not a trainer state of tensors and plain containers "
            f"({type(exc).__name__}{f' naming {found.group(1)}' if found else ''}): it is damaged, or holds "
            "objects whose loading could run code, which is never done",
            USE_ANOTHER,
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint / 'trainer.pt'} holds no trainer state", USE_ANOTHER)
    return state
