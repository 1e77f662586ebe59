"""Packed whole-episode rows for the Aaren agent: the loss on a packed row is its episodes' losses run
separately, the sampler supervises every step alike and resumes from its queue, and `train.batch_steps`
resolves to the documented batch of either backbone."""

import numpy as np
import pytest
import torch
from test_envs_datasets import dataset_of_lengths  # (tests/ is on sys.path)

from agents import load_config
from agents.decision.batching import PackedSampler, batch_layout, make_batcher
from agents.decision.distributed import DistContext
from agents.decision.model import DecisionModel, DecisionModelConfig
from envs import load_dataset


def _squared_errors(model: DecisionModel, batch: dict, resets: torch.Tensor | None) -> torch.Tensor:
    pred, _ = model(
        batch["returns_to_go"], batch["observations"], batch["actions"], batch["timesteps"], resets=resets
    )
    return (pred - model.unit_actions(batch["actions"])).pow(2).mean(-1) * batch["mask"]


@pytest.mark.parametrize("step_slopes", [False, True])
def test_loss_on_a_packed_row_is_the_sum_over_its_episodes_run_alone(tiny_dataset, tmp_path, step_slopes):
    cfg = load_config(
        None, [f"data.dataset={tiny_dataset}", "train.batch_steps=120", "train.batching=packed"]
    )
    dataset = load_dataset(str(tiny_dataset))
    torch.manual_seed(0)
    config = DecisionModelConfig(
        obs_dim=11, act_dim=3, embed_dim=32, num_layers=2, dropout=0.0, step_slopes=step_slopes
    )
    model = DecisionModel(config).double().eval()
    if step_slopes:  # each episode's steps are timed from its own start
        model.step_slope.data.fill_(-0.05)
    batch = make_batcher(cfg, dataset, DistContext()).sample(np.random.default_rng(0))
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    assert int(batch["resets"].sum()) >= 4  # several episodes share the rows
    packed = _squared_errors(model, batch, batch["resets"]).sum()
    alone = 0.0
    for row, starts in enumerate(batch["resets"]):
        bounds = [*torch.nonzero(starts).flatten().tolist(), int(batch["mask"][row].sum())]
        for first, end in zip(bounds, bounds[1:], strict=False):
            episode = {
                k: batch[k][row : row + 1, first:end]
                for k in ("returns_to_go", "observations", "actions", "timesteps", "mask")
            }
            assert episode["timesteps"][0, 0] == 0
            alone = alone + _squared_errors(model, episode, None).sum()
    torch.testing.assert_close(packed, alone, rtol=1e-10, atol=0)
    unsegmented = _squared_errors(model, batch, None).sum()
    assert not torch.isclose(unsegmented, alone, rtol=1e-6)  # the resets matter: the test can fail


@pytest.mark.parametrize("kind", ["medium", "mixed"])
def test_packed_sampler_supervises_every_step_alike_with_little_padding(kind):
    """D4RL-like lengths (a medium dataset: a few hundred steps, some at the time limit; a mixed one: many
    short episodes): padding stays under 5% and the supervised steps' distribution over episode positions
    is the dataset's (total variation distance over 20 position bins)."""
    rng = np.random.default_rng(1)
    if kind == "medium":
        lengths = np.r_[np.clip(rng.normal(420, 180, 218), 80, 999).astype(int), np.full(20, 1000)]
    else:
        lengths = np.r_[rng.integers(20, 200, 600), rng.integers(200, 1000, 150), np.full(50, 1000)]
    ds = dataset_of_lengths(lengths)
    sampler, draws = PackedSampler(ds, rows=2, row_steps=1000), np.random.default_rng(0)
    bins, supervised, padding = np.linspace(0, 1000, 21), np.zeros(20), 0
    per_episode = np.zeros(len(lengths))
    for _ in range(800):
        batch = sampler.sample(draws)
        supervised += np.histogram(batch.timesteps[batch.mask], bins)[0]
        padding += int((~batch.mask).sum())
        np.add.at(per_episode, batch.episode_index[batch.resets], 1)
    dataset = np.histogram(ds.timesteps, bins)[0]
    distance = 0.5 * np.abs(supervised / supervised.sum() - dataset / dataset.sum()).sum()
    assert padding / (padding + supervised.sum()) < 0.05
    assert distance < 0.01
    assert per_episode.max() - per_episode.min() <= 2  # each episode once per pass over the data


def test_packed_sampler_resumes_from_its_state():
    ds = dataset_of_lengths(np.random.default_rng(2).integers(5, 40, 30))
    sampler, rng = PackedSampler(ds, rows=3, row_steps=40), np.random.default_rng(0)
    for _ in range(7):
        sampler.sample(rng)
    resumed = PackedSampler(ds, rows=3, row_steps=40)
    resumed.load_state_dict(sampler.state_dict())
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = rng.bit_generator.state
    for _ in range(5):
        a, b = sampler.sample(rng), resumed.sample(resumed_rng)
        assert np.array_equal(a.episode_index, b.episode_index)
    with pytest.raises(ValueError, match="episodes of this dataset"):
        resumed.load_state_dict({"queue": [30]})
    with pytest.raises(ValueError, match="longest episode"):
        PackedSampler(ds, rows=1, row_steps=int(ds.episode_lengths.max()) - 1)


@pytest.mark.parametrize(
    ("backbone", "batching", "layout"),
    [("aaren", "packed", (2, 60)), ("aaren", "stored", (6, 20)), ("transformer", "stored", (6, 20))],
)
def test_batch_steps_resolve_to_rows_of_either_backbone(tiny_dataset, backbone, batching, layout):
    options = [f"model.backbone={backbone}", f"train.batching={batching}", "train.batch_steps=120"]
    cfg = load_config(None, [f"data.dataset={tiny_dataset}", *options])
    assert batch_layout(cfg, load_dataset(str(tiny_dataset))) == layout  # the tiny data's longest episode: 60


def test_resets_need_the_aaren_backbone():
    model = DecisionModel(DecisionModelConfig(obs_dim=2, act_dim=1, backbone="transformer", embed_dim=16))
    x = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="need the Aaren backbone"):
        model(x, torch.zeros(1, 3, 2), torch.zeros(1, 3, 1), x.long(), resets=x.bool())
