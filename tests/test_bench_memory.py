"""bench_memory.py at tiny sizes: every variant through the acting, T-Maze and POPGym sections (rows,
summaries and files), resuming (finished runs are read back, not trained again), and the Transformer
whose context is the whole episode: trained on whole episodes from their first step, acting through its
KV cache."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from aaren_rl import KVCache
from agents.common.overrides import ConfigError
from agents.decision.agent import StepWindow
from agents.decision.batching import EpisodesBatcher, WindowBatcher, make_batcher
from agents.decision.distributed import DistContext
from agents.decision.run_dir import load_agent
from benchmarks import bench_memory
from benchmarks.bench_memory import VARIANTS, Settings
from envs import load_dataset

pytest.importorskip("popgym")
# POPGym's CountRecall returns one info dict object at every step (gymnasium's checker warns of it).
pytestmark = pytest.mark.filterwarnings("ignore:.*share an object")

TINY = Settings(
    checkpoints=(1, 4, 9),
    kv_max_step=4,
    min_reps=2,
    max_reps=3,
    budget_s=0.001,
    embed_dim=16,
    num_layers=1,
    train_embed_dim=16,
    train_layers=1,
    train_threads=1,
    train_lengths=(3, 5),
    eval_lengths=(5, 9),
    seeds=(0,),
    transitions=400,
    steps=2,
    batch_steps=64,
    eval_episodes=2,
    popgym_tasks=("popgym-repeatfirst-easy",),
    popgym_transitions=408,  # 8 episodes of 51 steps
    popgym_steps=2,
)
TASK = "popgym-repeatfirst-easy"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Every section run once at TINY sizes: (the results, the folder holding memory.* and work/)."""
    folder = tmp_path_factory.mktemp("memory")
    return bench_memory.run(TINY, "cpu", folder / "memory", folder / "work"), folder


def test_acting_section_times_every_variant_at_its_checkpoints(tmp_path):
    results = bench_memory.run(TINY, "cpu", tmp_path / "memory", work=None)
    saved = json.loads((tmp_path / "memory.json").read_text())
    assert (tmp_path / "memory.png").stat().st_size > 0
    assert {"machine", "settings", "acting", "acting_summary"} <= set(saved)
    assert not {"tmaze", "popgym", "statistics"} & set(saved)
    steps = {v: [r["step"] for r in saved["acting"] if r["agent"] == v] for v in VARIANTS}
    assert steps == {
        "aaren": [1, 4, 9],
        "transformer": [1, 4, 9],
        "transformer-episode": [1, 4],
        "lstm": [1, 4, 9],
    }
    assert all(r["step_seconds"] > 0 for r in saved["acting"])
    growth = results["acting_summary"]["growth"]
    assert growth["aaren"]["state_bytes"] == growth["lstm"]["state_bytes"] == 1.0  # constant-size states
    assert growth["transformer"]["state_bytes"] == 1.0  # a window of K steps
    assert growth["transformer-episode"]["state_bytes"] > 1.0  # the KV cache grows every step
    assert growth["transformer-episode"]["to_step"] == 4
    assert set(results["acting_summary"]["transformer-episode_over_aaren"]) == {"1", "4"}
    assert set(results["acting_summary"]["lstm_over_aaren"]) == {"1", "4", "9"}
    assert set(results["acting_summary"]["goal_aaren_flat"]) == {"goal", "value", "met"}


def test_every_section_writes_its_schema_for_every_variant(finished):
    results, folder = finished
    saved = json.loads((folder / "memory.json").read_text())
    assert saved == json.loads(json.dumps(results)) and (folder / "memory.png").stat().st_size > 0
    assert {"machine", "settings", "acting", "acting_summary", "statistics", "tmaze", "popgym"} <= set(saved)

    tmaze = saved["tmaze"]
    assert [(r["task"], r["variant"], r["seed"]) for r in tmaze["runs"]] == [
        ("tmaze", v, 0) for v in VARIANTS
    ]
    for record in tmaze["runs"]:
        assert set(record["success"]) == set(record["wins_at_target_0"]) == {"5", "9"}
        assert all(0.0 <= v <= 1.0 for key in ("success", "wins_at_target_0") for v in record[key].values())
        assert record["train_seconds"] > 0 and record["train_seconds_per_step"] == record["train_seconds"] / 2
    assert set(tmaze["summary"]) == set(VARIANTS)
    row = tmaze["summary"]["lstm"]["9"]
    assert set(row) == {"success", "wins_at_target_0"} and row["success"]["values"] == [
        tmaze["runs"][3]["success"]["9"]
    ]
    seconds = tmaze["train_seconds_per_step"]
    assert (
        seconds["baseline"] == "transformer-episode"
        and seconds["over_baseline"]["transformer-episode"] == 1.0
    )
    assert seconds["median"]["aaren"] == tmaze["runs"][0]["train_seconds_per_step"]

    popgym = saved["popgym"]
    assert list(popgym) == [TASK]
    section = popgym[TASK]
    assert [(r["task"], r["variant"]) for r in section["runs"]] == [(TASK, v) for v in VARIANTS]
    assert all(r["target"] == 1.0 and -1.0 - 1e-6 <= r["return"] <= 1.0 + 1e-6 for r in section["runs"])
    assert {v: row["values"] for v, row in section["summary"].items()} == {
        r["variant"]: [r["return"]] for r in section["runs"]
    }
    top = max(row["mean"] for row in section["summary"].values())
    best = [v for v, row in section["summary"].items() if row["mean"] == top]
    assert section["best"] == {"variants": best, "interval_above_the_others": None}  # one seed: no interval


def test_finished_runs_are_read_back_and_a_new_seed_trains(finished, monkeypatch):
    results, folder = finished
    work = folder / "work"
    assert sorted(p.name for p in (work / "done").iterdir()) == sorted(
        f"{task}-{v}-s0.json" for task in ("tmaze", TASK) for v in VARIANTS
    )

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench_memory, "train", no_training)
    monkeypatch.setattr(bench_memory, "collect_recipe", no_training)
    assert bench_memory.bench_tmaze(TINY, work)["runs"] == results["tmaze"]["runs"]
    assert bench_memory.bench_popgym(TINY, work)[TASK]["runs"] == results["popgym"][TASK]["runs"]
    with pytest.raises(AssertionError, match="trained again"):  # a new seed does train
        bench_memory.bench_tmaze(dataclasses.replace(TINY, seeds=(0, 1)), work)


def test_runs_kept_with_other_settings_are_refused_not_mixed_in(finished, tmp_path):
    """A changed preset or config meets the finished record, or else the run directory, that the old one
    left: one ConfigError naming it and the setting, before any training."""
    _, folder = finished
    longer = dataclasses.replace(TINY, steps=3)
    record = "tmaze-aaren-s0.json was made with other settings (train.steps was 2, now 3"
    with pytest.raises(ConfigError, match=re.escape(record)):
        bench_memory.bench_tmaze(longer, folder / "work")
    work = shutil.copytree(folder / "work", tmp_path / "work")
    (work / "done" / "tmaze-aaren-s0.json").unlink()  # an interrupted run: its directory only
    run = "tmaze-aaren-s0/config.yaml was made with other settings (train.steps was 2, now 3"
    with pytest.raises(ConfigError, match=re.escape(run)):
        bench_memory.bench_tmaze(longer, work)


def test_a_preset_trains_only_its_variants(finished, tmp_path):
    """`trained` (the --cpu preset leaves out transformer-episode): the T-Maze section runs, summarises and
    compares training seconds (with the K = 20 Transformer as the baseline) over those variants only, here
    read back from the finished runs; without POPGym tasks there is no POPGym section."""
    _, folder = finished
    settings = dataclasses.replace(TINY, trained=("aaren", "transformer", "lstm"), popgym_tasks=())
    results = bench_memory.run(settings, "cpu", tmp_path / "memory", folder / "work")
    assert "popgym" not in results and (tmp_path / "memory.png").stat().st_size > 0
    tmaze = results["tmaze"]
    assert [r["variant"] for r in tmaze["runs"]] == list(settings.trained) == list(tmaze["summary"])
    seconds = tmaze["train_seconds_per_step"]
    assert seconds["baseline"] == "transformer" and list(seconds["over_baseline"]) == list(settings.trained)
    cpu = bench_memory.CPU
    assert "transformer-episode" not in cpu.trained and set(cpu.popgym_tasks) < set(
        bench_memory.FULL.popgym_tasks
    )
    alone = dataclasses.replace(TINY, trained=("aaren",), popgym_tasks=())  # as --cpu-long
    results = bench_memory.run(alone, "cpu", tmp_path / "alone", folder / "work")
    seconds = results["tmaze"]["train_seconds_per_step"]
    assert (
        seconds["baseline"] is None
        and seconds["over_baseline"] == {}
        and list(seconds["median"]) == ["aaren"]
    )
    bench_memory.report(results)  # prints without a speed comparison
    long = bench_memory.CPU_LONG
    assert (
        long.train_lengths == bench_memory.FULL.train_lengths
        and long.eval_lengths == bench_memory.FULL.eval_lengths
    )


def test_transformer_episode_trains_on_whole_episodes_from_their_first_step(finished):
    _, folder = finished
    task = bench_memory.tmaze_task(TINY, folder / "work")
    dataset = load_dataset(str(task.data))
    assert task.longest == dataset.episode_lengths.max() > TINY.train_lengths[-1]
    for variant, kind in (("transformer-episode", EpisodesBatcher), ("transformer", WindowBatcher)):
        cfg = bench_memory.run_config(task, variant, 0, TINY, folder / "other", "cpu")
        assert cfg.model.backbone == "transformer" and type(make_batcher(cfg, dataset, DistContext())) is kind
    assert cfg.model.context_steps == 20
    cfg = bench_memory.run_config(task, "transformer-episode", 0, TINY, folder / "other", "cpu")
    assert cfg.model.context_steps == task.longest
    batch = make_batcher(cfg, dataset, DistContext()).sample(np.random.default_rng(0))
    timesteps, mask = batch["timesteps"].numpy(), batch["mask"].numpy().astype(bool)
    assert len(timesteps) > 1 and (timesteps[:, 0] == 0).all()  # every row starts an episode
    lengths = mask.sum(1)
    assert set(lengths) <= set(dataset.episode_lengths)  # whole episodes, right-padded
    assert all(mask[i, :n].all() and (timesteps[i, :n] == np.arange(n)).all() for i, n in enumerate(lengths))


def test_each_variant_acts_as_it_trained(finished):
    _, folder = finished
    memory = {}
    for variant in VARIANTS:
        run_dir = folder / "work" / "runs" / f"tmaze-{variant}-s0"
        agent = load_agent(run_dir, 1.0)  # as bench_memory.eval_returns loads it
        _, first = agent.act(np.zeros((1, 3), np.float32))
        _, second = agent.act(np.zeros((1, 3), np.float32), first, None, np.zeros(1, np.float32))
        memory[variant] = (agent.acting, type(second.memory), first.nbytes < second.nbytes)
    assert memory["transformer-episode"] == ("recurrent", KVCache, True)  # the cache over the whole episode
    assert memory["transformer"] == ("window", StepWindow, False)
    assert memory["aaren"][:1] == memory["lstm"][:1] == ("recurrent",)
    assert not memory["aaren"][2] and not memory["lstm"][2]


def test_summaries_give_an_iqm_interval_from_three_seeds_on():
    runs = [
        {
            "variant": v,
            "seed": s,
            "success": {"5": 0.5 + 0.1 * s, "9": 0.5},
            "wins_at_target_0": {"5": 0, "9": 0},
        }
        for v in VARIANTS
        for s in range(3)
    ]
    row = bench_memory.tmaze_summary(runs, TINY)["aaren"]["5"]["success"]
    assert row["values"] == [0.5, 0.6, 0.7] and row["mean"] == pytest.approx(0.6)
    assert row["iqm"]["low"] <= row["iqm"]["point"] <= row["iqm"]["high"]
    assert "iqm" not in bench_memory.over_seeds([0.5, 0.6])

    summary = {
        v: bench_memory.over_seeds([0.1 * j, 0.1 * j + 0.01, 0.1 * j + 0.02]) for j, v in enumerate(VARIANTS)
    }
    assert bench_memory.best_variants(summary) == {"variants": ["lstm"], "interval_above_the_others": True}
    summary["aaren"] = bench_memory.over_seeds([0.0, 0.0, 0.35])  # reaches into the best's interval
    assert bench_memory.best_variants(summary) == {"variants": ["lstm"], "interval_above_the_others": False}
    summary["aaren"] = summary["lstm"]  # a tie
    assert bench_memory.best_variants(summary) == {
        "variants": ["aaren", "lstm"],
        "interval_above_the_others": False,
    }


@pytest.mark.parametrize(
    ("argv", "seeds", "stem"),
    [
        (["--cpu"], (0, 1, 2), "memory_cpu"),  # the canonical --cpu result
        (["--cpu", "--seeds", "2", "0"], (2, 0), "variants/memory_cpu"),  # a share of it: a variant
        (["--cpu", "--acting-only"], (0, 1, 2), "variants/memory_acting"),  # claims nothing
    ],
)
def test_the_command_line_picks_the_preset_seeds_and_where_results_go(
    monkeypatch, tmp_path, argv, seeds, stem
):
    calls = []
    monkeypatch.setattr(
        bench_memory, "run", lambda settings, device, out, work: calls.append((settings, out))
    )
    monkeypatch.setattr(bench_memory, "report", lambda results: None)
    assert bench_memory.main([*argv, "--out", str(tmp_path), "--allow-dirty"]) == 0
    ((settings, out),) = calls
    assert settings == dataclasses.replace(bench_memory.CPU, seeds=seeds)
    assert out == tmp_path / stem


def test_processes_sharing_a_work_folder_collect_the_same_dataset(finished, tmp_path, monkeypatch):
    """--seeds processes may both collect a missing dataset: the same file either way, so the one that
    finishes last replaces the other's instead of failing on it."""
    _, folder = finished
    other = bench_memory.tmaze_dataset(TINY, folder / "work")  # the other process's
    collect = bench_memory.collect_recipe

    def racing(recipe, path, *args, **kwargs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the other process finished first")
        return collect(recipe, path, *args, **kwargs)

    monkeypatch.setattr(bench_memory, "collect_recipe", racing)
    mine = bench_memory.tmaze_dataset(TINY, tmp_path)
    first, second = load_dataset(str(other)), load_dataset(str(mine))
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
