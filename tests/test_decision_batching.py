"""The batchers behind one interface: the config decides the batcher in one place, checkpoints keep the
trainer state's layout (the batcher's entries "sampler" and "stored_states" beside the optimizer's), and a
trainer state in that layout restores the batcher, so the checkpoints of earlier runs keep resuming."""

import numpy as np
import pytest
import torch
from test_decision_training import tiny_config  # (tests/ is on sys.path)

from agents import ConfigError, train
from agents.decision.batching import (
    EpisodesBatcher,
    PackedBatcher,
    PrefixBatcher,
    StoredBatcher,
    WindowBatcher,
    batch_layout,
    batcher_type,
    make_batcher,
)
from agents.decision.checkpoint import CheckpointError, load_trainer_state
from agents.decision.distributed import DistContext
from agents.decision.entering import StoredStates
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import MetricsLog, RunDir, latest_checkpoint
from envs import load_dataset, save_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(backbone: str = "aaren") -> DecisionModel:
    torch.manual_seed(0)
    return DecisionModel(
        DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=16, num_layers=1, backbone=backbone)
    )


@pytest.mark.parametrize(
    ("backbone", "batching", "kind", "extra"),
    [
        ("aaren", "packed", PackedBatcher, "resets"),
        ("aaren", "stored", StoredBatcher, "state"),
        ("aaren", "prefix", PrefixBatcher, "state"),
        ("aaren", "episodes", EpisodesBatcher, None),
        ("transformer", "packed", WindowBatcher, None),
        ("transformer", "episodes", EpisodesBatcher, None),
        ("transformer", "stored", WindowBatcher, None),
        ("transformer", "prefix", WindowBatcher, None),
    ],
)
def test_the_config_decides_the_batcher(tiny_dataset, tmp_path, backbone, batching, kind, extra):
    cfg = tiny_config(tiny_dataset, tmp_path, f"model.backbone={backbone}", f"train.batching={batching}")
    dataset = load_dataset(str(tiny_dataset))
    batcher = make_batcher(cfg, dataset, DistContext(), small_model(backbone))
    assert type(batcher) is kind and batcher_type(cfg) is kind
    # rows of the longest episode (60); whole episodes: round(180 / their length-weighted mean, 40.25)
    layouts = {PackedBatcher: (3, 60), EpisodesBatcher: (4, 60)}
    assert batcher.layout == batch_layout(cfg, dataset) == layouts.get(kind, (36, 5))
    batcher.after_step(0, MetricsLog(RunDir(tmp_path / "run"), enabled=False))  # stored: the first table
    batch = batcher.sample(np.random.default_rng(0))
    rows, row_steps = batch["mask"].shape
    assert rows == batcher.layout.rows
    assert row_steps == batcher.layout.row_steps or (kind is EpisodesBatcher and row_steps <= 60)
    assert {"resets", "state"} & batch.keys() == ({extra} if extra else set())


def test_whole_episode_batches_hold_batch_steps_on_average(tmp_path):
    """Episodes drawn in proportion to their length are longer than the mean episode: on lengths as mixed
    as hopper-mixed's (many short random episodes, few long ones) a batch counted by the plain mean held
    about 5x train.batch_steps."""
    lengths = np.array([5] * 90 + [100] * 10)
    n = int(lengths.sum())
    path, rng = tmp_path / "hopper_mixed_lengths.hdf5", np.random.default_rng(0)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[np.cumsum(lengths) - 1] = True
    observations, actions = rng.normal(size=(n, 11)), rng.uniform(-1, 1, (n, 3))
    save_dataset(path, observations, actions, np.ones(n), np.zeros(n, dtype=bool), timeouts)
    cfg = tiny_config(path, tmp_path, "train.batching=episodes", "train.batch_steps=300")
    batcher = make_batcher(cfg, load_dataset(str(path)), DistContext(), small_model())
    draws = np.random.default_rng(1)
    supervised = [batcher.draw(draws).mask.sum() for _ in range(400)]
    assert batcher.layout.rows == 4  # 300 / (sum L^2 / sum L = 70.5); by the plain mean 14.5: 21 rows
    assert np.mean(supervised) == pytest.approx(4 * 70.5, rel=0.1)


@pytest.mark.parametrize(
    ("options", "entries"),
    [
        (["train.batching=packed"], {"sampler": {"queue"}}),
        (["train.batching=stored"], {"stored_states": {"refreshed_at", "weights"}}),
        (["train.batching=prefix"], {}),
        (["train.batching=episodes"], {}),
        (["model.backbone=transformer"], {}),
    ],
)
def test_checkpoints_keep_the_trainer_state_layout(tiny_dataset, tmp_path, options, entries):
    run = train(tiny_config(tiny_dataset, tmp_path, *options), progress=False, stop_after=4)
    state = load_trainer_state(latest_checkpoint(run))
    assert list(state) == ["optimizer", "scheduler", "rng", *entries, "seconds"]
    assert all(set(state[key]) == keys for key, keys in entries.items())


def test_a_trainer_state_in_the_checkpoint_layout_restores_the_batcher(tiny_dataset, tmp_path):
    dataset = load_dataset(str(tiny_dataset))
    packed = make_batcher(
        tiny_config(tiny_dataset, tmp_path, "train.batching=packed"), dataset, DistContext()
    )
    packed.load_state_dict({"optimizer": {}, "sampler": {"queue": [5, 2, 0]}, "seconds": 1.0})
    assert packed.sampler.queue == [5, 2, 0]

    model = small_model()
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1)  # trained on since the refresh
    cfg = tiny_config(tiny_dataset, tmp_path, "train.batching=stored")
    stored = make_batcher(cfg, dataset, DistContext(), model)
    stored.load_state_dict({"stored_states": {"refreshed_at": 3, "weights": saved}, "seconds": 1.0})
    assert stored.entering.refreshed_at == 3
    then, now = small_model(), StoredStates(model, dataset, grid=5)
    then.load_state_dict(saved)
    reference = StoredStates(then, dataset, grid=5)
    reference.refresh(3)
    now.refresh(3)
    for name in ("m", "u", "w"):
        table = getattr(stored.entering.table, name)
        assert torch.equal(table, getattr(reference.table, name))  # the saved weights' table
        assert not torch.equal(table, getattr(now.table, name))  # not the current weights'

    older = make_batcher(cfg, dataset, DistContext(), model)
    older.load_state_dict({"seconds": 1.0})  # a trainer state without a stored table
    assert older.entering.table is None
    older.after_step(4, MetricsLog(RunDir(tmp_path / "run"), enabled=False))
    assert older.entering.refreshed_at == 4  # refreshed from the restored weights before the first batch


def test_a_checkpoint_without_the_batchers_state_is_one_checkpoint_error(tiny_dataset, tmp_path):
    run = train(tiny_config(tiny_dataset, tmp_path, "train.batching=stored"), progress=False, stop_after=4)
    with pytest.raises(ConfigError, match=r"train.batching='packed' would change what the run is"):
        train(resume=run, overrides=["train.batching=packed"], progress=False)  # refused before any work
    config = RunDir(run).config  # an edited config.yaml reaches the checkpoint
    config.write_text(config.read_text().replace("batching: stored", "batching: packed"))
    with pytest.raises(CheckpointError, match=r"trainer.pt does not fit this run's optimizer and sampler"):
        train(resume=run, progress=False)
    assert latest_checkpoint(run).name == "step_0000004"  # the run is left as it was
