"""The T-Maze configs and a tiny end-to-end run: oracle data over two corridor lengths, Aaren-DT trained on
packed whole episodes with discrete actions, evaluated in one length with success rates as scores."""

from __future__ import annotations

import json

import pytest

from agents.common.shipped import find_config
from agents.decision.config import load_config
from agents.decision.training import train
from benchmarks import tmaze_attention
from envs import collect_recipe, make_env
from envs.collect import parse_recipe_id
from envs.tmaze import parse_tmaze_name


@pytest.mark.parametrize("name", ["tmaze-100", "tmaze-1000"])
def test_configs_train_aaren_on_packed_whole_episodes_and_evaluate_in_one_named_length(name):
    cfg = load_config(find_config(name))
    assert cfg.model.backbone == "aaren" and cfg.train.batching == "packed" and cfg.model.return_scale == 1.0
    assert cfg.model.max_timestep == 1  # no timestep information: longer corridors act like trained ones
    assert parse_recipe_id(cfg.data.dataset)[0] == "tmaze"
    (length,) = parse_tmaze_name(cfg.data.env).lengths
    assert length == max(parse_tmaze_name(cfg.data.dataset).lengths) == int(name.split("-")[1])
    assert make_env(cfg.data.env).unwrapped.corridor_length == length


def test_tiny_run_end_to_end(tmp_path):
    data = collect_recipe("tmaze-4-8-oracle-v0", tmp_path / "t.hdf5", 3000, num_envs=2, progress=False)
    overrides = [
        f"data.dataset={data.path}",
        "data.env=tmaze-8",
        f"output_dir={tmp_path}",
        "name=run",
        "model.embed_dim=16",
        "model.num_layers=1",
        "train.steps=4",
        "train.batch_steps=200",
        "train.warmup_steps=1",
        "train.checkpoint_every=4",
        "train.eval_every=0",
        "train.threads=1",
        "eval.episodes=4",
        "eval.num_envs=2",
    ]
    train(load_config(find_config("tmaze-100"), overrides), progress=False)
    report = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    assert report["env"] == "tmaze-8"
    assert [r["target_return"] for r in report["results"]] == [1.0, 0.0]  # the task's targets
    for result in report["results"]:
        assert set(result["returns"]) <= {0.0, 1.0}
        assert result["score_mean"] == pytest.approx(100 * result["return_mean"])  # success rate x 100

    # The cue's attention at the junction, per layer and head: ten times the corridor, about a tenth of the
    # weight (4 training steps leave the step slopes near 0: dilution as without them).
    assert tmaze_attention.main([str(tmp_path / "run"), "--lengths", "8", "80"]) == 0
    attention = json.loads((tmp_path / "run" / "tmaze_attention.json").read_text())
    assert len(attention["step_slopes"]) == 4 and max(map(abs, attention["step_slopes"])) < 0.01
    rows = attention["junctions"]
    assert [(r["length"], r["cue"]) for r in rows] == [(8, 1.0), (8, -1.0), (80, 1.0), (80, -1.0)]
    for short, long in zip(rows[:2], rows[2:], strict=True):
        near, far = (r["layers"][0]["cue_weight"] for r in (short, long))
        assert all(f < n / 5 for n, f in zip(near, far, strict=True))
