"""Packed whole-episode rows for the Aaren agent: the loss on a packed row is its episodes' losses run
separately, and `train.batch_steps` resolves to the documented batch of either backbone."""

import numpy as np
import pytest
import torch

from agents import load_config
from agents.decision.distributed import DistContext
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.training import batch_layout, packed_sampler, sample_batch
from envs import load_dataset


def _squared_errors(model: DecisionModel, batch: dict, resets: torch.Tensor | None) -> torch.Tensor:
    pred, _ = model(
        batch["returns_to_go"], batch["observations"], batch["actions"], batch["timesteps"], resets=resets
    )
    return (pred - model.unit_actions(batch["actions"])).pow(2).mean(-1) * batch["mask"]


def test_loss_on_a_packed_row_is_the_sum_over_its_episodes_run_alone(tiny_dataset, tmp_path):
    cfg = load_config(
        None, [f"data.dataset={tiny_dataset}", "train.batch_steps=120", "train.batching=packed"]
    )
    dataset = load_dataset(str(tiny_dataset))
    torch.manual_seed(0)
    model = DecisionModel(DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=32, num_layers=2, dropout=0.0))
    model = model.double().eval()
    sampler = packed_sampler(cfg, dataset)
    batch = sample_batch(cfg, dataset, np.random.default_rng(0), torch.device("cpu"), DistContext(), sampler)
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
