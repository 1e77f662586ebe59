"""batching=episodes: whole episodes from step 0, one per row, right-padded, drawn in proportion to their
length, round(batch_steps / mean length) of them (the Aaren agent's batches before packing)."""

import json

import numpy as np
import pytest
import torch
from test_decision_distributed import ROOT, max_difference, settings, train_cli  # (tests/ is on sys.path)
from test_decision_training import tiny_config, weights

from agents import ConfigError, load_config, train
from agents.decision.batching import (
    BATCHINGS,
    EpisodesBatcher,
    batch_layout,
    batcher_type,
    check_batch_splits,
    make_batcher,
)
from agents.decision.distributed import DistContext
from agents.decision.model import DecisionModel, DecisionModelConfig, action_loss
from envs import load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
# The tiny dataset's episodes: drawn in proportion to length, 40.25 steps on average; the longest 60.
LENGTHS = [40, 25, 60, 10, 35, 30]


def episodes_config(tiny_dataset, tmp_path, *extra):
    return tiny_config(tiny_dataset, tmp_path, "train.batching=episodes", *extra)


@pytest.mark.parametrize(("batch_steps", "rows"), [(180, 4), (140, 3), (10, 1), (1000, 25)])
def test_rows_hold_batch_steps_on_average(tiny_dataset, tmp_path, batch_steps, rows):
    cfg = episodes_config(tiny_dataset, tmp_path, f"train.batch_steps={batch_steps}")
    dataset = load_dataset(str(tiny_dataset))
    assert "episodes" in BATCHINGS and batcher_type(cfg) is EpisodesBatcher
    assert batch_layout(cfg, dataset) == (rows, max(LENGTHS))  # round(batch_steps / 40.25), at least one


def test_batches_are_whole_episodes_drawn_in_proportion_to_their_length(tiny_dataset, tmp_path):
    dataset = load_dataset(str(tiny_dataset))
    batcher = make_batcher(episodes_config(tiny_dataset, tmp_path), dataset, DistContext())
    rng, reference = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(4):
        batch = batcher.sample(rng)
        lengths = dataset.episode_lengths
        drawn = reference.choice(dataset.num_episodes, size=4, p=lengths / lengths.sum())
        longest = int(lengths[drawn].max())
        assert batch["mask"].shape == (4, longest)  # padded to the batch's longest episode only
        assert batch["num_real"] == int(lengths[drawn].sum())
        for row, episode in enumerate(drawn):
            start, length = dataset.episode_starts[episode], lengths[episode]
            mask = batch["mask"][row]
            assert mask[:length].all() and not mask[length:].any()  # from step 0, padded at the right
            assert torch.equal(batch["timesteps"][row, :length], torch.arange(length))
            torch.testing.assert_close(
                batch["observations"][row, :length],
                torch.as_tensor(dataset.observations[start : start + length]),
                rtol=0,
                atol=0,
            )
            assert not batch["observations"][row, length:].any()


def test_every_dataset_step_is_equally_likely(tiny_dataset, tmp_path):
    dataset = load_dataset(str(tiny_dataset))
    batcher = make_batcher(
        episodes_config(tiny_dataset, tmp_path, "train.batch_steps=1000"), dataset, DistContext()
    )
    rng = np.random.default_rng(0)
    episodes = np.concatenate([batcher.draw(rng).episode_index for _ in range(400)])  # 12,000 draws
    share = np.bincount(episodes, minlength=6) / len(episodes)
    np.testing.assert_allclose(share, np.array(LENGTHS) / sum(LENGTHS), atol=0.01)  # episodes by length


def test_rank_shares_are_padded_to_their_own_longest_episode(tiny_dataset, tmp_path):
    cfg = episodes_config(tiny_dataset, tmp_path, "train.batch_steps=240")  # 6 episodes a batch
    dataset = load_dataset(str(tiny_dataset))

    def draw(rank: int, world_size: int) -> dict:
        return make_batcher(cfg, dataset, DistContext(rank, world_size)).sample(np.random.default_rng(1))

    whole, shares = draw(0, 1), [draw(r, 3) for r in range(3)]
    assert all(s["num_real"] == whole["num_real"] == int(whole["mask"].sum()) for s in shares)
    rows = 0
    for share in shares:
        mine = slice(rows, rows + 2)
        rows += 2
        assert share["mask"].shape[1] == int(whole["mask"][mine].sum(1).max())  # its own longest
        for key in ("observations", "actions", "returns_to_go", "timesteps", "mask"):
            steps = share[key].shape[1]
            assert torch.equal(share[key], whole[key][mine, :steps])
            assert not whole[key][mine, steps:].any()  # what the share leaves out is padding


def test_the_loss_is_each_episode_trained_alone(tiny_dataset, tmp_path):
    dataset = load_dataset(str(tiny_dataset))
    batcher = make_batcher(episodes_config(tiny_dataset, tmp_path), dataset, DistContext())
    batch = batcher.sample(np.random.default_rng(2))
    torch.manual_seed(0)
    model = DecisionModel(DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=16, num_layers=2))
    model = model.double().eval()
    batch = {k: v.double() if torch.is_floating_point(v) else v for k, v in batch.items() if k != "num_real"}
    batch["num_real"] = int(batch["mask"].sum())
    with torch.no_grad():
        together, alone = action_loss(model, batch), 0.0
        for row in range(len(batch["mask"])):
            length = int(batch["mask"][row].sum())
            one = {k: v[row : row + 1, :length] for k, v in batch.items() if k != "num_real"}
            alone += float(action_loss(model, {**one, "num_real": 1}))  # the sum of its steps' errors
    assert float(together) == pytest.approx(alone / batch["num_real"], rel=0, abs=1e-10)


def test_a_resumed_run_ends_with_the_uninterrupted_weights(tiny_dataset, tmp_path):
    cfg = episodes_config(tiny_dataset, tmp_path, "model.dropout=0.1")
    full = train(cfg, progress=False)
    killed = train(
        episodes_config(tiny_dataset, tmp_path, "model.dropout=0.1", "name=killed"),
        progress=False,
        stop_after=5,
    )
    train(resume=killed, progress=False)
    before, after = weights(full), weights(killed)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_a_batch_that_does_not_split_names_a_batch_steps_that_does(tiny_dataset, tmp_path):
    dataset = load_dataset(str(tiny_dataset))
    cfg = episodes_config(tiny_dataset, tmp_path)  # 4 episodes a batch
    with pytest.raises(ConfigError, match="4 episodes of at most 60 steps, which does not split") as error:
        check_batch_splits(cfg, dataset, 3)
    fix = str(error.value).split("Fix: ")[1].split(",")[0]
    assert fix == "train.batch_steps=242"  # 6 x 40.25
    check_batch_splits(episodes_config(tiny_dataset, tmp_path, fix), dataset, 3)  # 6 episodes: splits


@pytest.mark.timeout(120)
def test_two_processes_train_the_one_process_weights(tiny_dataset, tmp_path):
    config = str(ROOT / "configs/quickstart.yaml")
    common = settings(tiny_dataset, tmp_path, "", "train.batching=episodes", "train.batch_steps=240")
    train_cli("--config", config, "--set", *common, "name=two")
    one = train(load_config(config, [*common, "name=one"]), progress=False)
    assert max_difference(one, tmp_path / "two") < 1e-5  # each rank's rows padded to their own longest
    stats = json.loads((tmp_path / "two" / "dataset_stats.json").read_text())
    assert stats["batch"] == {"batch_steps": 240, "rows": 6, "row_steps": 60}
    assert stats["distributed"]["per_rank_rows"] == 3
