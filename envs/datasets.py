"""D4RL-format offline datasets: read, validate, split into episodes, sample, write.

The on-disk layout is D4RL's (one HDF5 file, flat arrays over all transitions): ``observations``
(N, obs_dim), ``actions`` (N, act_dim), ``rewards`` (N,) or (N, 1), ``terminals`` and ``timeouts``
(N,) bool, optionally ``next_observations``, ``infos/qpos``, ``infos/qvel`` and ``metadata/*``.
Actions of a Discrete or MultiDiscrete env are integers, (N,) or (N, k); in memory they are int64
(N, 1) or (N, k), and ``check_actions`` checks them against the env's action space.
Episodes are contiguous row ranges ending where ``terminals or timeouts`` is true, exactly as
d4rl's ``sequence_dataset`` splits them.

In memory, :class:`OfflineDataset` keeps those flat arrays (no per-step Python objects) plus a few
per-row and per-episode index arrays, so memory stays close to the raw arrays' size; batches of
sub-sequences, of whole episodes, or of given episodes packed end to end into rows of a fixed length
(``pack_episodes``, for models that can restart their sequence inside a row) are gathered with one
fancy-indexing call. Which rows and episodes make a training batch is the trainer's choice.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from envs.d4rl import fill_metadata, fill_reference_scores, is_published, parse_dataset_id
from envs.download import DownloadError, d4rl_base_url, offline_mode
from envs.download import download as download_file
from envs.errors import DatasetError
from envs.files import atomic_path
from envs.make import make_env
from envs.scores import normalized_score

#: Keys every dataset must have (D4RL v2 layout).
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
#: Floor on ``state_std`` so constant observation entries do not divide by zero.
STATE_STD_FLOOR = 1e-6
_COLLECT_HINT = "make one with `python scripts/collect_dataset.py <task>-<recipe>-v2` (see --help)"
_CHUNK = 1 << 16  # rows per chunk for memory-bounded passes over large arrays
#: Values farther than this many stds from their column's mean are its extreme values (`check_state_scales`).
EXTREME_Z = 3.0
#: How many times the std of a column's other values its std may be before `check_state_scales` warns.
MAX_SQUEEZE = 10.0


# --------------------------------------------------------------------------------------------------
# Locating files


def d4rl_dataset_dir() -> Path:
    """Where D4RL files live: ``$D4RL_DATASET_DIR``, else ``~/.d4rl/datasets`` (d4rl's own default)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", "~/.d4rl/datasets")).expanduser()


def d4rl_filename(dataset_id: str) -> str:
    """File name D4RL uses for a gym-mujoco dataset id: ``hopper-medium-replay-v2`` -> ``hopper_medium_replay-v2.hdf5``."""
    env, dataset, version = parse_dataset_id(dataset_id)
    return f"{env}_{dataset.replace('-', '_')}-{version}.hdf5"


def resolve_d4rl_path(dataset_id: str, *, download: bool = True, base_url: str | None = None) -> Path:
    """The local file for a D4RL dataset id, downloaded and cached on first use when D4RL publishes it.

    Looks in ``$D4RL_DATASET_DIR`` (else ``~/.d4rl/datasets``). A missing file that D4RL publishes
    (gym-mujoco v2: hopper/halfcheetah/walker2d/ant x random/medium/medium-replay/medium-expert/
    expert/full-replay) is fetched from ``base_url`` (default ``$AAREN_RL_D4RL_URL``, else D4RL's
    site) and verified before it lands, unless ``download=False`` or ``$AAREN_RL_OFFLINE=1``.
    Otherwise a :class:`DatasetError` says where it looked and how to get the file.
    """
    path = d4rl_dataset_dir() / d4rl_filename(dataset_id)
    if path.is_file():
        return path
    task, dataset, version = parse_dataset_id(dataset_id)
    where = (
        f"looked for {path} ($D4RL_DATASET_DIR={os.environ.get('D4RL_DATASET_DIR', '<unset>')}, "
        "default ~/.d4rl/datasets)"
    )
    if not is_published(task, dataset, version):
        raise DatasetError(
            f"D4RL dataset {dataset_id!r} not found: {where}; D4RL does not publish it. "
            f"Fix: place a D4RL-format file {path.name} there, or {_COLLECT_HINT}."
        )
    url = f"{d4rl_base_url(base_url)}/{path.name}"
    by_hand = (
        f"fetch {url} by hand into {path.parent} (e.g. `curl -fL -o {path} {url}`), or point "
        f"$D4RL_DATASET_DIR at a folder holding {path.name}"
    )
    if not download or offline_mode():
        why = "download=False" if not download else "$AAREN_RL_OFFLINE is set"
        raise DatasetError(
            f"D4RL dataset {dataset_id!r} not found: {where}, and downloading is off ({why}). "
            f"Fix: {by_hand}, allow the download, or {_COLLECT_HINT}."
        )

    def validate(part: Path) -> None:
        try:
            load_dataset(part, env=task)
        except DatasetError as exc:
            raise DatasetError(
                f"{url}: the downloaded file is not a usable D4RL {task} dataset ({exc})"
            ) from exc

    try:
        return download_file(url, path, validate=validate)
    except DownloadError as exc:
        raise DownloadError(f"D4RL dataset {dataset_id!r} ({where}): {exc} Or {by_hand}.") from exc


# --------------------------------------------------------------------------------------------------
# The dataset


@dataclass(repr=False)
class SequenceBatch:
    """A batch of B sub-sequences of one length L, zero-padded past each one's end (``mask`` False there).

    ``start_step`` is each sequence's index within its episode (0 for whole episodes), so a model
    that needs the state entering a window can rebuild it from rows ``episode_starts[e] ..`` before.
    """

    observations: np.ndarray  # (B, L, obs_dim) float32
    actions: np.ndarray  # (B, L, act_dim) float32, or int64 (discrete actions)
    rewards: np.ndarray  # (B, L) float32
    returns_to_go: np.ndarray  # (B, L) float32, undiscounted sum of rewards from that step to episode end
    timesteps: np.ndarray  # (B, L) int64, index within the episode
    terminals: np.ndarray  # (B, L) bool
    mask: np.ndarray  # (B, L) bool, True on real steps
    episode_index: np.ndarray  # (B,) int64
    start_step: np.ndarray  # (B,) int64

    def as_dict(self) -> dict[str, np.ndarray]:
        """The fields as a dict (e.g. for ``{k: torch.as_tensor(v) for k, v in batch.as_dict().items()}``)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        return f"SequenceBatch(batch={self.mask.shape[0]}, length={self.mask.shape[1]}, steps={int(self.mask.sum())})"


@dataclass(repr=False)
class PackedBatch(SequenceBatch):
    """Rows of whole episodes laid end to end from their first step, zero-padded at the row's end.

    Here ``episode_index`` is per step (B, L), -1 on padding, and ``start_step`` is all zeros (every
    episode starts at its step 0); ``timesteps`` and ``returns_to_go`` restart with each episode.
    """

    resets: np.ndarray  # (B, L) bool, True on each episode's first step


@dataclass(repr=False, eq=False)
class OfflineDataset:
    """An offline RL dataset in flat D4RL layout with an episode index. Build it with :func:`load_dataset`.

    Row arrays cover all N rows as stored. Episodes are rows ``episode_starts[i] : episode_starts[i] +
    episode_lengths[i]``; they tile rows ``0 .. episode_ends[-1]``. Rows after that are a trailing
    partial episode (``num_dropped_steps`` of them): no sampler returns them; only ``qlearning_view``
    uses them, as d4rl's ``qlearning_dataset`` does.
    """

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32, or int64 (discrete actions: act_dim = their components)
    rewards: np.ndarray  # (N,) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "<arrays>"
    # Derived in __post_init__:
    episode_starts: np.ndarray = field(init=False)  # (E,) int64
    episode_lengths: np.ndarray = field(init=False)  # (E,) int64
    episode_returns: np.ndarray = field(init=False)  # (E,) float64
    returns_to_go: np.ndarray = field(init=False)  # (N,) float32
    timesteps: np.ndarray = field(init=False)  # (N,) int64
    state_mean: np.ndarray = field(init=False)  # (obs_dim,) float32, over episode rows
    state_std: np.ndarray = field(init=False)  # (obs_dim,) float32, floored at STATE_STD_FLOOR
    num_dropped_steps: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.rewards)
        ends = np.flatnonzero(self.terminals | self.timeouts) + 1
        if len(ends) == 0:
            raise DatasetError(
                f"{self.source}: no complete episode in {n} rows (no row has terminals or timeouts set). "
                "Fix: set timeouts (time limit / cut) or terminals on the last step of each episode."
            )
        self.episode_starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        self.episode_lengths = (ends - self.episode_starts).astype(np.int64)
        used = int(ends[-1])
        self.num_dropped_steps = n - used
        if self.num_dropped_steps:
            warnings.warn(
                f"{self.source}: dropped a trailing partial episode of {self.num_dropped_steps} steps "
                f"(rows {used}..{n - 1} have neither terminals nor timeouts), like d4rl's sequence_dataset.",
                stacklevel=3,
            )
        # Segments = episodes plus the trailing partial one, so per-row arrays cover all N rows.
        seg_starts = self.episode_starts if used == n else np.append(self.episode_starts, used)
        seg_lengths = np.diff(np.append(seg_starts, n))
        csum = np.cumsum(self.rewards, dtype=np.float64)
        seg_totals = csum[seg_starts + seg_lengths - 1]
        seg_before = np.concatenate([[0.0], seg_totals[:-1]])
        self.episode_returns = (seg_totals - seg_before)[: len(ends)]
        # returns_to_go[t] = (cumsum at segment end) - (cumsum at t) + r_t: one float64 cumsum, no loop.
        rtg = np.repeat(seg_totals, seg_lengths)
        rtg -= csum
        rtg += self.rewards
        self.returns_to_go = rtg.astype(np.float32)
        self.timesteps = np.arange(n, dtype=np.int64) - np.repeat(seg_starts, seg_lengths)
        self.state_mean, self.state_std = _mean_std(self.observations[:used])

    # ---- sizes ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def episode_ends(self) -> np.ndarray:
        """One past the last row of each episode."""
        return self.episode_starts + self.episode_lengths

    def __repr__(self) -> str:
        return (
            f"OfflineDataset({self.source!r}, rows={len(self)}, episodes={self.num_episodes}, "
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, env_id={self.metadata.get('env_id')!r})"
        )

    # ---- access ---------------------------------------------------------------------------------

    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i`` as views (no copies) of the row arrays."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} episodes")
        s = slice(int(self.episode_starts[i]), int(self.episode_starts[i] + self.episode_lengths[i]))
        return {
            "observations": self.observations[s],
            "actions": self.actions[s],
            "rewards": self.rewards[s],
            "terminals": self.terminals[s],
            "timeouts": self.timeouts[s],
            "returns_to_go": self.returns_to_go[s],
            "timesteps": self.timesteps[s],
        }

    def gather(self, rows: np.ndarray, length: int) -> SequenceBatch:
        """Sub-sequences of ``length`` steps starting at the given rows, each cut at its episode's end.

        The core of every sampler: one fancy-indexing gather per array, no Python loop over steps.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ends = self.episode_ends
        ep = np.searchsorted(ends, rows, side="right")
        if rows.size and (rows.min() < 0 or ep.max() >= self.num_episodes):
            raise IndexError(f"rows must lie in complete episodes, i.e. in [0, {int(ends[-1])})")
        idx = rows[:, None] + np.arange(length, dtype=np.int64)
        mask = idx < ends[ep][:, None]
        np.minimum(idx, (ends[ep] - 1)[:, None], out=idx)
        return SequenceBatch(
            **self._steps_at(idx, mask),
            mask=mask,
            episode_index=ep,
            start_step=rows - self.episode_starts[ep],
        )

    def _steps_at(self, idx: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """The per-step arrays at flat rows ``idx``, zero where ``mask`` is False (padding)."""
        names = ("observations", "actions", "rewards", "returns_to_go", "timesteps", "terminals")
        out = {name: getattr(self, name)[idx] for name in names}
        for array in out.values():
            array[~mask] = 0
        return out

    def sample_windows(self, rng: np.random.Generator, batch_size: int, length: int) -> SequenceBatch:
        """``batch_size`` windows of ``length`` steps from uniformly drawn episode rows (so episodes are
        drawn in proportion to their length, as Decision Transformer does), padded past episode ends."""
        return self.gather(rng.integers(0, int(self.episode_ends[-1]), size=batch_size), length)

    def get_episodes(self, indices: np.ndarray, max_length: int | None = None) -> SequenceBatch:
        """Whole episodes from their first step, padded to ``max_length`` (default: the longest of them).

        Episodes longer than ``max_length`` are cut to their first ``max_length`` steps.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        length = int(self.episode_lengths[indices].max()) if max_length is None else max_length
        return self.gather(self.episode_starts[indices], length)

    def sample_episodes(
        self, rng: np.random.Generator, batch_size: int, max_length: int | None = None
    ) -> SequenceBatch:
        """``batch_size`` whole episodes drawn uniformly (with replacement), from step 0, padded."""
        return self.get_episodes(rng.integers(0, self.num_episodes, size=batch_size), max_length)

    def pack_episodes(self, rows: Sequence[Sequence[int]], row_steps: int) -> PackedBatch:
        """Rows of ``row_steps`` steps holding the given episodes (indices per row) end to end, each from
        its first step; an episode reaching past the row's end is cut there (it keeps its beginning)."""
        episodes = np.array([e for row in rows for e in row], dtype=np.int64)
        row_of = np.repeat(np.arange(len(rows)), [len(row) for row in rows])
        lengths = self.episode_lengths[episodes]
        offsets = np.cumsum(lengths) - lengths  # each episode's first step in the flat concatenation
        first_in_row = np.zeros(len(rows), dtype=np.int64)
        if len(episodes):
            first_in_row[row_of[::-1]] = offsets[::-1]  # the smallest offset of each row
        columns = offsets - first_in_row[row_of]  # each episode's first column in its row
        step = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
        column = np.repeat(columns, lengths) + step
        kept = column < row_steps
        token_row, column = np.repeat(row_of, lengths)[kept], column[kept]
        idx = np.zeros((len(rows), row_steps), dtype=np.int64)
        idx[token_row, column] = (np.repeat(self.episode_starts[episodes], lengths) + step)[kept]
        mask = np.zeros(idx.shape, dtype=bool)
        mask[token_row, column] = True
        episode_index = np.full(idx.shape, -1, dtype=np.int64)
        episode_index[token_row, column] = np.repeat(episodes, lengths)[kept]
        resets = np.zeros(idx.shape, dtype=bool)
        starts = columns < row_steps
        resets[row_of[starts], columns[starts]] = True
        return PackedBatch(
            **self._steps_at(idx, mask),
            mask=mask,
            episode_index=episode_index,
            start_step=np.zeros(len(rows), dtype=np.int64),
            resets=resets,
        )

    def qlearning_view(self, terminate_on_end: bool = False) -> dict[str, np.ndarray]:
        """Transitions exactly as d4rl's ``qlearning_dataset``: next observation = ``observations[i+1]``.

        Rows ``i < N-1`` are kept except timeout rows (``terminate_on_end=False``, d4rl's default);
        ``terminals`` is the stored flag (d4rl never sets it on timeouts, even with terminate_on_end).
        """
        keep = np.ones(len(self) - 1, dtype=bool) if terminate_on_end else ~self.timeouts[:-1]
        idx = np.flatnonzero(keep)
        return {
            "observations": self.observations[idx],
            "actions": self.actions[idx],
            "next_observations": self.observations[idx + 1],
            "rewards": self.rewards[idx],
            "terminals": self.terminals[idx],
        }

    def normalized_score(self, returns: float | np.ndarray) -> float | np.ndarray:
        """D4RL-normalised score x100 using this dataset's reference scores (metadata, else its env id)."""
        return normalized_score(self, returns)


def _mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and std in float64, two chunked passes (no full-size temporary)."""
    total = np.zeros(x.shape[1])
    for i in range(0, len(x), _CHUNK):
        total += x[i : i + _CHUNK].sum(0, dtype=np.float64)
    mean = total / len(x)
    sq = np.zeros(x.shape[1])
    for i in range(0, len(x), _CHUNK):
        sq += np.square(x[i : i + _CHUNK] - mean).sum(0)
    std = np.sqrt(sq / len(x))
    return mean.astype(np.float32), np.maximum(std, STATE_STD_FLOOR).astype(np.float32)


def check_state_scales(dataset: OfflineDataset, stacklevel: int = 2) -> None:
    """Warn about observation columns whose std (what states are normalised by) is mostly a few extreme
    values, such as one corrupt 1e30: it is then over MAX_SQUEEZE times the std of the column's other
    values, so normalising squeezes those towards one value and a model can barely tell them apart.

    A warning rather than an error: a rare large value can be real (an impact, a reset) and no threshold
    tells it from a corrupt one, while every loader of data (training, collection checks, SB3 users)
    passes here. The warning names the column, its most extreme value and that value's row, so the data
    can be checked before a long run.
    """
    x = dataset.observations[: int(dataset.episode_ends[-1])]
    mean, std = dataset.state_mean, dataset.state_std
    reach = EXTREME_Z * std
    count, total, sq = np.zeros(len(mean)), np.zeros(len(mean)), np.zeros(len(mean))
    for i in range(0, len(x), _CHUNK):  # the other values' mean, then their std around it (sums in float64)
        chunk = x[i : i + _CHUNK]
        others = np.abs(chunk - mean) <= reach
        count += others.sum(0)
        total += np.where(others, chunk, 0).sum(0, dtype=np.float64)
    others_mean = (total / np.maximum(count, 1)).astype(np.float32)
    for i in range(0, len(x), _CHUNK):
        chunk = x[i : i + _CHUNK]
        deviation = np.where(np.abs(chunk - mean) <= reach, chunk - others_mean, 0)
        sq += np.square(deviation, dtype=np.float64).sum(0)
    others_std = np.sqrt(sq / np.maximum(count, 1))
    squeezed = np.flatnonzero((others_std > STATE_STD_FLOOR) & (std > MAX_SQUEEZE * others_std))
    if squeezed.size:
        j = int(squeezed[0])
        row = int(np.abs(x[:, j] - mean[j]).argmax())
        also = f" (and columns {squeezed[1:].tolist()})" if squeezed.size > 1 else ""
        warnings.warn(
            f"{dataset.source}: observation column {j}{also} has std {std[j]:.3g}, "
            f"{std[j] / others_std[j]:.3g} times the std of its values within {EXTREME_Z:g} stds of its mean, "
            f"because of extreme values such as {x[row, j]:.3g} at row {row}: normalising states by it "
            "squeezes the column's other values together. Fix: check those rows, and repair them or drop "
            "their episodes before loading if they are not real",
            stacklevel=stacklevel,
        )


# --------------------------------------------------------------------------------------------------
# Loading


def load_dataset(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    env: str | gym.Env | None = None,
    download: bool = True,
    base_url: str | None = None,
) -> OfflineDataset:
    """Load and validate an offline dataset.

    ``source`` is a path to a D4RL-format HDF5 file; a D4RL id (``"hopper-medium-v2"``, looked up by
    :func:`resolve_d4rl_path`); a dict like the d4rl package's ``env.get_dataset()``; or
    ``"minari:<dataset_id>"`` for a local Minari dataset (needs the ``minari`` extra).
    ``env`` (a name for :func:`envs.make_env` or an env) checks that observation and action sizes fit
    the environment the dataset will be evaluated in. A D4RL id whose file is missing is downloaded
    once and cached (``download=False`` or ``$AAREN_RL_OFFLINE=1`` forbid it; ``base_url`` or
    ``$AAREN_RL_D4RL_URL`` point at a mirror), and so is a Minari dataset (needs ``minari[hf]``).
    Any problem raises one :class:`DatasetError`.
    """
    if isinstance(source, Mapping):
        label = "<dict>"
        arrays, metadata = _from_mapping(source, label)
    else:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if text.startswith("minari:"):
            label = text
            arrays, metadata = _read_minari(text.removeprefix("minari:"), download and not offline_mode())
        elif path.suffix in (".hdf5", ".h5") or path.exists() or os.sep in text:
            label = str(path)
            arrays, metadata = _read_hdf5(path)
        else:
            path = resolve_d4rl_path(text, download=download, base_url=base_url)
            label = str(path)
            arrays, metadata = _read_hdf5(path)
            metadata.setdefault("dataset_id", text)
    fill_metadata(metadata, label)
    dataset = OfflineDataset(**arrays, metadata=metadata, source=label)
    if env is not None:
        _check_env_fit(dataset, env)
    check_state_scales(dataset, stacklevel=3)
    return dataset


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if path.is_dir():
        inside = ", ".join(p.name for p in sorted(path.glob("*.hdf5"))[:3])
        raise DatasetError(
            f"{path} is a folder, not a dataset file. Fix: give the path of a D4RL-format HDF5 file"
            + (f" (this folder holds {inside})" if inside else f", or {_COLLECT_HINT}")
            + "."
        )
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found. Fix: check the path, or {_COLLECT_HINT}.")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise DatasetError(
                    f"{path}: missing key {missing[0]!r} (has: {sorted(f.keys())}). Fix: a D4RL-format file "
                    f"needs {list(REQUIRED_KEYS)}; regenerate it with scripts/collect_dataset.py or add the key."
                )
            raw = {}
            for key in REQUIRED_KEYS:
                ds = f[key]
                if not isinstance(ds, h5py.Dataset):
                    raise DatasetError(f"{path}: {key!r} is a group, not an array.")
                float_key = key in ("observations", "rewards") or (key == "actions" and not _integers(ds))
                raw[key] = ds.astype(np.float32)[()] if float_key and ds.dtype != np.float32 else ds[()]
            metadata = _read_metadata(f["metadata"]) if isinstance(f.get("metadata"), h5py.Group) else {}
    except OSError as exc:
        raise DatasetError(
            f"{path}: not a readable HDF5 file ({exc}). Fix: the file is not HDF5 or was cut short "
            f"(interrupted download or write); fetch it again or {_COLLECT_HINT}."
        ) from exc
    return _check_arrays(raw, str(path)), metadata


def _read_metadata(group: h5py.Group) -> dict[str, Any]:
    """Scalar and string entries of ``metadata/`` (nested names joined by "/"); array entries are skipped."""
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset) or obj.size != 1:
            return
        value = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        if isinstance(value, np.generic):
            value = value.item()
        out[name] = value.decode() if isinstance(value, bytes) else value

    group.visititems(visit)
    return out


def _from_mapping(data: Mapping[str, Any], label: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise DatasetError(
            f"{label}: missing key {missing[0]!r} (has: {sorted(data)}). Fix: pass a dict like d4rl's "
            f"env.get_dataset() with {list(REQUIRED_KEYS)}."
        )
    metadata = {k.removeprefix("metadata/"): v for k, v in data.items() if k.startswith("metadata/")}
    if isinstance(data.get("metadata"), Mapping):
        metadata.update(data["metadata"])
    return _check_arrays({k: np.asarray(data[k]) for k in REQUIRED_KEYS}, label), metadata


def _read_minari(dataset_id: str, download: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A Minari dataset flattened to D4RL layout (one Python step per episode, not per step).

    With ``download``, Minari fetches a dataset that is not local (needs ``minari[hf]``).
    """
    try:
        import minari
    except ImportError as exc:
        raise DatasetError(
            f"minari:{dataset_id}: Minari is not installed. Fix: pip install 'aaren-rl[minari]' "
            "(or pip install 'minari[hdf5,hf]')."
        ) from exc
    try:
        ds = minari.load_dataset(dataset_id, download=download)
    except Exception as exc:  # minari raises several types for a missing/unreadable local dataset
        how = (
            "downloading needs network access and minari[hf] (pip install 'minari[hdf5,hf]')"
            if download
            else "downloading is off (download=False or $AAREN_RL_OFFLINE); run `minari download <id>` first"
        )
        raise DatasetError(
            f"minari:{dataset_id}: cannot load the Minari dataset ({exc}). Fix: check `minari list local` "
            f"and $MINARI_DATASETS_PATH; {how}."
        ) from exc
    parts: dict[str, list[np.ndarray]] = {k: [] for k in REQUIRED_KEYS}
    for episode in ds.iterate_episodes():
        if not isinstance(episode.observations, np.ndarray):
            raise DatasetError(
                f"minari:{dataset_id}: dict/tuple observations are not supported (flat Box only)."
            )
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool)
        if len(timeouts) and not (terminals[-1] or timeouts[-1]):
            timeouts = timeouts.copy()
            timeouts[-1] = True  # a stored Minari episode is complete: mark its cut as a timeout
        parts["observations"].append(np.asarray(episode.observations[:-1], dtype=np.float32))
        actions = np.asarray(episode.actions)
        actions = actions.astype(np.int64 if _integers(actions) else np.float32)
        parts["actions"].append(actions.reshape(len(terminals), -1))
        parts["rewards"].append(np.asarray(episode.rewards, dtype=np.float32))
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise DatasetError(f"minari:{dataset_id}: the dataset has no episodes.")
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    meta = dict(ds.storage.metadata)
    metadata: dict[str, Any] = {"dataset_id": dataset_id}
    env_id = getattr(getattr(ds, "env_spec", None), "id", None)
    if env_id:
        metadata["env_id"] = env_id
    for key in ("ref_min_score", "ref_max_score", "algorithm_name"):
        if meta.get(key) is not None:
            metadata[key] = meta[key]
    return _check_arrays(arrays, f"minari:{dataset_id}"), metadata


# --------------------------------------------------------------------------------------------------
# Validation


def _integers(array: np.ndarray | h5py.Dataset) -> bool:
    """Whether an array holds integers (discrete actions); bools are not."""
    return np.issubdtype(array.dtype, np.integer)


def _check_arrays(raw: Mapping[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
    """Shapes, lengths, finiteness; returns float32/bool arrays, and int64 integer actions as (N, k)
    (no copy when already right)."""
    obs, actions = raw["observations"], raw["actions"]
    n = len(obs)
    if n == 0:
        raise DatasetError(
            f"{label}: empty dataset (0 rows in 'observations'). Fix: collect some data first."
        )
    if obs.ndim != 2:
        raise DatasetError(f"{label}: 'observations' must be 2-D (N, obs_dim), got shape {obs.shape}.")
    if _integers(actions) and actions.ndim == 1:  # one Discrete action per row
        actions = actions.reshape(-1, 1)
    if actions.ndim != 2:
        raise DatasetError(
            f"{label}: 'actions' must be 2-D (N, act_dim), got shape {actions.shape}; integer (discrete) "
            "actions may be (N,)."
        )
    out: dict[str, np.ndarray] = {}
    for key in REQUIRED_KEYS:
        a = actions if key == "actions" else raw[key]
        if key in ("rewards", "terminals", "timeouts"):
            if a.ndim == 2 and a.shape[1] == 1:
                a = a.reshape(-1)
            if a.ndim != 1:
                raise DatasetError(f"{label}: {key!r} must have shape (N,) or (N, 1), got {a.shape}.")
        if len(a) != n:
            raise DatasetError(
                f"{label}: {key!r} has {len(a)} rows but 'observations' has {n}. "
                "Fix: every per-step array must have one row per transition (the file may be corrupt)."
            )
        if key in ("terminals", "timeouts"):
            out[key] = a if a.dtype == bool else a != 0
        elif _integers(a):  # integer actions: finite by type
            out[key] = a if a.dtype == np.int64 else a.astype(np.int64)
        else:
            a = a if a.dtype == np.float32 else a.astype(np.float32)
            bad = _first_nonfinite_row(a)
            if bad is not None:
                raise DatasetError(
                    f"{label}: {key!r} has a NaN or inf value at row {bad} (first one). "
                    "Fix: regenerate the data, or drop the episodes containing those rows before loading."
                )
            out[key] = a
    return out


def _first_nonfinite_row(a: np.ndarray) -> int | None:
    for i in range(0, len(a), _CHUNK):
        finite = np.isfinite(a[i : i + _CHUNK])
        if not finite.all():
            rows = finite.reshape(len(finite), -1).all(1)
            return i + int(np.argmin(rows))
    return None


def _check_env_fit(dataset: OfflineDataset, env: str | gym.Env) -> None:
    if isinstance(env, str):
        name, made = env, make_env(env)
        obs_space, act_space = made.observation_space, made.action_space
        made.close()
    else:
        name = getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
        obs_space, act_space = env.observation_space, env.action_space
    shape = getattr(obs_space, "shape", None)
    if shape is None or len(shape) != 1 or shape[0] != dataset.obs_dim:
        raise DatasetError(
            f"{dataset.source}: observations have {dataset.obs_dim} entries per row but env {name!r} has "
            f"observation space {obs_space}. Fix: {_use_its_env(dataset)}."
        )
    check_actions(dataset, act_space, name)


def _use_its_env(dataset: OfflineDataset) -> str:
    return (
        f"evaluate in the env the data was collected in (metadata env_id={dataset.metadata.get('env_id')!r}) "
        "or load the matching dataset"
    )


def check_actions(dataset: OfflineDataset, space: gym.Space, env: str) -> None:
    """That the dataset's actions are actions of `space`, the action space of env `env`: a Box's floats,
    as many per row as it has entries; a Discrete space's integers, one per row, or a MultiDiscrete
    space's, one per component, each within its range. One DatasetError names the file, what differs and
    the fix, and for a value the first row holding one."""
    actions, source = dataset.actions, dataset.source
    if isinstance(space, gym.spaces.Box):
        if _integers(actions):
            raise DatasetError(
                f"{source}: 'actions' are integers but env {env!r} has the continuous action space {space}. "
                f"Fix: {_use_its_env(dataset)}."
            )
        if space.shape != (dataset.act_dim,):
            raise DatasetError(
                f"{source}: actions have {dataset.act_dim} entries per row but env {env!r} has action space "
                f"{space}. Fix: {_use_its_env(dataset)}."
            )
        return
    if isinstance(space, gym.spaces.Discrete):
        first, sizes = np.array([space.start]), np.array([space.n])
    elif isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        first, sizes = space.start, space.nvec
    else:
        raise DatasetError(
            f"{source}: env {env!r} has the action space {space}, but datasets hold actions of Box, Discrete "
            "and one-dimensional MultiDiscrete spaces only. Fix: use an env with one of those."
        )
    as_integers = (
        "store them as integers, e.g. actions.astype(np.int64), of shape (N,) for Discrete, (N, k) for "
        "MultiDiscrete"
    )
    if not _integers(actions):
        fractional = np.flatnonzero((actions != np.round(actions)).any(1))
        where = (
            f"the first not a whole number at row {fractional[0]}: {actions[fractional[0]].tolist()}"
            if fractional.size
            else "all whole numbers"
        )
        raise DatasetError(
            f"{source}: 'actions' are {actions.dtype} numbers ({where}) but env {env!r} has the action space "
            f"{space}, whose actions are integers. Fix: {as_integers}."
        )
    if dataset.act_dim != len(sizes):
        raise DatasetError(
            f"{source}: actions have {dataset.act_dim} entries per row but env {env!r} has the action space "
            f"{space}, of {len(sizes)}. Fix: {_use_its_env(dataset)}."
        )
    outside = ((actions < first) | (actions >= first + sizes)).any(1)
    if outside.any():
        row = int(outside.argmax())
        raise DatasetError(
            f"{source}: row {row} holds the action {actions[row].tolist()}, outside env {env!r}'s action "
            f"space {space} (the first such row). Fix: repair or drop its episode, or "
            f"{_use_its_env(dataset)}."
        )


# --------------------------------------------------------------------------------------------------
# Writing


def episode_return_stats(
    rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray
) -> dict[str, float | int]:
    """num_episodes and return mean/std/min/max and mean length over complete episodes."""
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    ends = (
        np.flatnonzero((np.asarray(terminals).reshape(-1) != 0) | (np.asarray(timeouts).reshape(-1) != 0)) + 1
    )
    if len(ends) == 0:
        return {"num_episodes": 0}
    csum = np.concatenate([[0.0], np.cumsum(rewards)])
    returns = csum[ends] - csum[np.concatenate([[0], ends[:-1]])]
    lengths = np.diff(np.concatenate([[0], ends]))
    return {
        "num_episodes": len(ends),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "return_min": float(returns.min()),
        "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
    }


def save_dataset(
    path: str | os.PathLike,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    *,
    next_observations: np.ndarray | None = None,
    infos: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> Path:
    """Write a D4RL-format HDF5 file atomically (temp file in the same folder, then ``os.replace``).

    ``infos`` holds extra per-row arrays such as ``qpos``/``qvel`` (stored as ``infos/<key>``).
    ``metadata`` values (str, int, float, bool or arrays; "/" in a key makes a subgroup) go to
    ``metadata/*`` together with episode-return stats and, when ``metadata["env_id"]`` names a D4RL
    task, its reference scores. No timestamps are written: equal inputs give byte-identical files.
    """
    path = Path(path)
    arrays = _check_arrays(
        {
            "observations": np.asarray(observations),
            "actions": np.asarray(actions),
            "rewards": np.asarray(rewards),
            "terminals": np.asarray(terminals),
            "timeouts": np.asarray(timeouts),
        },
        str(path),
    )
    if np.ndim(actions) == 1:  # Discrete actions keep their (N,) layout
        arrays["actions"] = arrays["actions"].reshape(-1)
    n = len(arrays["rewards"])
    extra = {"next_observations": next_observations} if next_observations is not None else {}
    extra.update({f"infos/{k}": v for k, v in (infos or {}).items()})
    for key, value in extra.items():
        if len(value) != n:
            raise DatasetError(f"{path}: {key!r} has {len(value)} rows but 'observations' has {n}.")
    meta = dict(metadata or {})
    meta.update(episode_return_stats(arrays["rewards"], arrays["terminals"], arrays["timeouts"]))
    fill_reference_scores(meta)

    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=False) as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression=compression)
        if next_observations is not None:
            f.create_dataset(
                "next_observations",
                data=np.asarray(next_observations, dtype=np.float32),
                compression=compression,
            )
        for key, value in (infos or {}).items():
            f.create_dataset(f"infos/{key}", data=np.asarray(value), compression=compression)
        for key, value in sorted(meta.items()):
            f.create_dataset(f"metadata/{key}", data=_metadata_value(key, value))
    return path


def _metadata_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return np.array(value, dtype=h5py.string_dtype())
    if isinstance(value, (bool, int, float, np.generic, np.ndarray)):
        return np.asarray(value)
    raise TypeError(f"metadata[{key!r}] = {value!r}: use str, int, float, bool or a numpy array.")
