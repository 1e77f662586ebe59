"""K-windows for the Aaren agent (train.batching = stored | prefix): the entering states are exact, stale
stored states are measured, every mode trains, bad settings are one ConfigError, and resuming a stored-state
run ends with the uninterrupted run's weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from test_decision_training import tiny_config as training_config  # (tests/ is on sys.path)

from agents import ConfigError, load_config, train
from agents.decision.batching import WindowBatcher, batch_tensors, make_batcher
from agents.decision.distributed import DistContext
from agents.decision.entering import PrefixStates, StoredStates, empty_states, scan_steps, scanning, state_gap
from agents.decision.model import DecisionModel, DecisionModelConfig, action_loss
from agents.decision.run_dir import latest_checkpoint
from envs import OfflineDataset, load_dataset
from envs.datasets import SequenceBatch

K = 5


def float64_model(seed: int = 0, step_slope: float | None = None) -> DecisionModel:
    """A small Hopper-sized model in float64 with dropout (entering states must switch it off), with a
    step slope if given."""
    torch.manual_seed(seed)
    config = DecisionModelConfig(
        obs_dim=11, act_dim=3, embed_dim=32, num_layers=2, dropout=0.1, step_slopes=step_slope is not None
    )
    model = DecisionModel(config).double().train()
    if step_slope is not None:
        model.step_slope.data.fill_(step_slope)
    return model


def whole_episode_predictions(model: DecisionModel, dataset: OfflineDataset, windows: SequenceBatch) -> list:
    """Each window's predictions taken from its whole episode's forward from step 0 (dropout off)."""
    model.eval()
    out = []
    with torch.no_grad():
        for episode, start, mask in zip(windows.episode_index, windows.start_step, windows.mask, strict=True):
            steps = dataset.get_episodes([episode])
            pred, _ = model(
                *(torch.as_tensor(a) for a in (steps.returns_to_go, steps.observations, steps.actions)),
                torch.as_tensor(steps.timesteps),
            )
            out.append(pred[0, start : start + int(mask.sum())])
    model.train()
    return out


def window_predictions(model: DecisionModel, windows: SequenceBatch, state) -> list:
    model.eval()
    with torch.no_grad():
        batch = batch_tensors(windows, slice(None), torch.device("cpu"))
        pred, _ = model(
            batch["returns_to_go"], batch["observations"], batch["actions"], batch["timesteps"], state
        )
    model.train()
    return [p[: int(m.sum())] for p, m in zip(pred, windows.mask, strict=True)]


@pytest.mark.parametrize(
    ("kind", "grid", "step_slope"),
    [
        ("stored", K, None),
        ("stored", 7, None),
        ("prefix", None, None),
        ("stored", 7, -0.05),
        ("prefix", None, 0.05),
    ],
)
def test_windows_predict_what_the_whole_episode_predicts(tiny_dataset, kind, grid, step_slope):
    dataset = load_dataset(str(tiny_dataset))
    model = float64_model(step_slope=step_slope)
    if kind == "stored":
        states = StoredStates(model, dataset, grid)
        states.refresh(0)
    else:
        states = PrefixStates(model, dataset)
    starts, ends = dataset.episode_starts, dataset.episode_ends
    drawn = np.random.default_rng(1).integers(0, ends[-1], 16)
    windows = dataset.gather(np.concatenate([starts, ends - 2, starts + 9, drawn]), K)  # cut at episode ends
    entering = states(windows.episode_index, windows.start_step)
    assert model.training  # the scans switched dropout off and back on
    reference = whole_episode_predictions(model, dataset, windows)
    for got, want in zip(window_predictions(model, windows, entering), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)
    empty = model.init_state(len(windows.mask), dtype=torch.float64)
    cold = window_predictions(model, windows, empty)
    late = windows.start_step > 0
    assert all(
        not torch.allclose(c, r, atol=1e-6) for c, r, x in zip(cold, reference, late, strict=True) if x
    )


def test_stored_states_are_exact_after_a_refresh_and_stale_after_updates(tiny_dataset):
    dataset = load_dataset(str(tiny_dataset))
    model = float64_model()
    stored, exact = StoredStates(model, dataset, K), PrefixStates(model, dataset)
    stored.refresh(0)
    windows = dataset.sample_windows(np.random.default_rng(2), 24, K)

    def gap() -> dict[str, float]:
        args = (windows.episode_index, windows.start_step)
        return state_gap(stored(*args), exact(*args), windows.start_step)

    assert all(value < 1e-12 for value in gap().values())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        batch = batch_tensors(windows, slice(None), torch.device("cpu"), stored)
        optimizer.zero_grad()
        action_loss(model, batch).backward()
        optimizer.step()
    stale = gap()
    assert stale["readout_gap"] > 1e-5 and stale["log_norm_gap"] > 1e-6
    stored.refresh(3)
    assert all(value < 1e-12 for value in gap().values())


def test_a_scan_past_its_episode_is_refused(tiny_dataset):
    dataset = load_dataset(str(tiny_dataset))
    model = float64_model()
    last = int(dataset.episode_ends[0]) - 1  # the first episode's last step
    state = empty_states(model, 1)
    with scanning(model):
        assert scan_steps(model, dataset, np.array([last]), np.array([1]), state).u.sum() > 0
        with pytest.raises(ValueError, match="end by that episode's end"):
            scan_steps(model, dataset, np.array([last]), np.array([2]), state)


def tiny_config(dataset: Path, out: Path, *extra: str):
    """test_decision_training's tiny run (K = 5), the stored states refreshed every 3 steps."""
    return training_config(dataset, out, "train.state_refresh_every=3", "train.threads=1", *extra)


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("batching", ["packed", "stored", "prefix"])
def test_each_batching_trains(tiny_dataset, tmp_path, batching):
    run = train(tiny_config(tiny_dataset, tmp_path, f"train.batching={batching}"), progress=False)
    rows = metric_rows(run)
    losses = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6, 8] and all(np.isfinite(r["train/loss"]) for r in losses)
    seconds = [r["train/seconds"] for r in losses]
    assert seconds == sorted(seconds) and seconds[0] > 0
    stale = [r for r in rows if "state/readout_gap" in r]
    if batching != "stored":
        assert not stale
        return
    assert [r["step"] for r in stale] == [3, 6] and all(r["state/age"] == 3 for r in stale)
    assert all(r["state/readout_gap"] > 0 and np.isfinite(r["state/loss_stale"]) for r in stale)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.batching=window"],
            "train.batching = 'window' is impossible: use one of ['packed', 'episodes', 'stored', 'prefix', "
            "'windows']",
        ),
        (["train.state_refresh_every=0"], "train.state_refresh_every = 0 is impossible: must be >= 1"),
        (["train.state_grid=-1"], "train.state_grid = -1 is impossible: must be >= 0"),
    ],
)
def test_bad_batching_settings_are_one_config_error(tiny_dataset, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(tiny_dataset, tmp_path, *overrides)


def test_packed_is_the_default_and_the_transformer_ignores_batching(tiny_dataset, tmp_path):
    assert tiny_config(tiny_dataset, tmp_path).train.batching == "packed"  # the batching sweep's choice
    cfg = tiny_config(tiny_dataset, tmp_path, "model.backbone=transformer", "train.batching=prefix")
    # the Transformer's windows start from an empty context: no entering states, whatever the model
    batcher = make_batcher(cfg, load_dataset(str(tiny_dataset)), DistContext())
    assert type(batcher) is WindowBatcher and batcher.entering is None


@pytest.mark.parametrize(("setting", "grid"), [([], K), (["train.state_grid=2"], 2)])
def test_the_stored_table_holds_a_state_every_state_grid_steps_default_k(
    tiny_dataset, tmp_path, setting, grid
):
    """Default: every K-th step; a finer grid gives the same exact entering states right after a refresh,
    from shorter burn-ins."""
    cfg = tiny_config(tiny_dataset, tmp_path, "train.batching=stored", f"model.context_steps={K}", *setting)
    dataset = load_dataset(str(tiny_dataset))
    model = float64_model()
    batcher = make_batcher(cfg, dataset, DistContext(), model)
    assert batcher.entering.grid == grid
    batcher.entering.refresh(0)
    windows = dataset.sample_windows(np.random.default_rng(2), 24, K)
    args = (windows.episode_index, windows.start_step)
    gap = state_gap(batcher.entering(*args), PrefixStates(model, dataset)(*args), windows.start_step)
    assert all(value < 1e-12 for value in gap.values())


def weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def test_killed_and_resumed_stored_run_ends_with_the_same_weights(tiny_dataset, tmp_path, monkeypatch):
    full = train(tiny_config(tiny_dataset, tmp_path, "name=full", "train.batching=stored"), progress=False)
    for name in ("killed", "rebuilt_from_the_checkpoint"):
        cfg = tiny_config(tiny_dataset, tmp_path, f"name={name}", "train.batching=stored")
        train(cfg, progress=False, stop_after=6)  # dies after checkpoint 4; the last refresh was at step 3
    killed, other = tmp_path / "killed", tmp_path / "rebuilt_from_the_checkpoint"
    train(resume=killed, progress=False)
    a, b = weights(full), weights(killed)
    assert all(np.array_equal(a[key], b[key]) for key in a)
    stale = [r["step"] for r in metric_rows(killed) if "state/readout_gap" in r]
    assert stale == [3, 6]  # the killed session's step-6 row was dropped and measured again once
    # The control: rebuilding the table from the checkpoint's weights (step 4), not the refresh's (step 3),
    # trains other weights, so the saved refresh weights are what makes the resumed run equal.
    monkeypatch.setattr(
        StoredStates, "load_state_dict", lambda self, state: self.refresh(state["refreshed_at"])
    )
    train(resume=other, progress=False)
    c = weights(other)
    assert not all(np.array_equal(a[key], c[key]) for key in a)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_processes_train_the_one_process_weights_on_stored_states(
    tiny_dataset, tmp_path, one_torch_thread
):
    from test_decision_distributed import ROOT, max_difference, settings, train_cli

    common = settings(tiny_dataset, tmp_path, "", "train.batching=stored", "train.state_refresh_every=2")
    train_cli("--config", str(ROOT / "configs/quickstart.yaml"), "--set", *common, "name=two")
    one = train(load_config(ROOT / "configs/quickstart.yaml", [*common, "name=one"]), progress=False)
    assert max_difference(one, tmp_path / "two") < 1e-5  # each rank trains its share of the windows
    stale = [[r for r in metric_rows(run) if "state/readout_gap" in r] for run in (one, tmp_path / "two")]
    assert [r["step"] for r in stale[1]] == [r["step"] for r in stale[0]] == [2, 4, 6]
