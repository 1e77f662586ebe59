"""benchmarks/bench_ppo.py on tiny budgets: all three algorithms run and write the JSON and the PNG,
finished runs are recorded and skipped on a second start, other settings are refused, POPGym tasks run
by name (in worker processes too), and MMER follows its definition (no timing or return checks)."""

import json
import sys

import numpy as np
import pytest
from scratch_git import CODE, scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

from agents.decision.config import ConfigError
from benchmarks import bench_ppo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**changes) -> "bench_ppo.Settings":
    return bench_ppo.Settings(**{"steps": {"RememberCue": 256}, "seeds": (0,), "eval_episodes": 2, **changes})


def test_bench_ppo_tiny_run(tmp_path) -> None:
    bench_ppo.run(tiny(), tmp_path, "tiny", work=tmp_path / "work")
    results = json.loads((tmp_path / "tiny.json").read_text())
    assert (tmp_path / "tiny.png").stat().st_size > 0
    assert [r["algo"] for r in results["runs"]] == ["aaren", "lstm", "mlp"]
    summary = results["summary"]["RememberCue"]
    assert {"speedup_wall_vs_lstm", "return_fraction_of_lstm", "random_return"} <= set(summary)
    assert results["machine"]["num_threads"] == 1
    assert all(0.0 <= r["mmer"] <= 1.0 and 0.0 <= r["mmer_rollout"] <= 1.0 for r in results["runs"])
    assert set(results["goal"]) == {"aaren"} and results["goal"]["aaren"]["tasks"] == 1
    table = bench_ppo.format_table(results)
    assert "| RememberCue |" in table and "goal" in table


def test_finished_runs_are_skipped_and_other_settings_refused(tmp_path, monkeypatch) -> None:
    settings, work = tiny(algos=("mlp",), seeds=(0, 1)), tmp_path / "work"
    calls = []
    real_run_one = bench_ppo.run_one
    monkeypatch.setattr(bench_ppo, "run_one", lambda spec, s: calls.append(spec.key) or real_run_one(spec, s))
    bench_ppo.run(settings, tmp_path, "resume", work=work)
    assert calls == [("RememberCue", "mlp", 0), ("RememberCue", "mlp", 1)]
    record = work / "resume.jsonl"
    lines = record.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["settings"] == bench_ppo.fingerprint(settings)

    # A torn last line (an interrupted append) and a lost run: only that run is trained again.
    record.write_text("\n".join(lines[:2]) + '\n{"task": "Remem')
    calls.clear()
    results = bench_ppo.run(settings, tmp_path, "resume", work=work)
    assert calls == [("RememberCue", "mlp", 1)]
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    assert len(record.read_text().splitlines()) == 3

    calls.clear()
    bench_ppo.run(settings, tmp_path, "resume", work=work)
    assert calls == []
    with pytest.raises(ConfigError, match=r"differing: settings\.steps\).*another --work folder"):
        bench_ppo.run(
            tiny(algos=("mlp",), seeds=(0, 1), steps={"RememberCue": 512}), tmp_path, "resume", work=work
        )


def test_max_mean_returns_on_a_fake_callback_sequence() -> None:
    class Model:
        num_timesteps = 0

    monitor = bench_ppo.RunMonitor()
    monitor.init_callback(Model())
    episodes = [[], [1.0], [{"r": 5.0}, {"r": 3.0}], [], [{"r": -2.0}]]  # per rollout; [1.0]: no episode
    for rollout in episodes:
        monitor.on_rollout_start()
        for item in rollout:
            info = {"episode": item} if isinstance(item, dict) else {"other": item}
            monitor.update_locals({"infos": [info, {}]})
            monitor.on_step()
        monitor.on_rollout_end()
    assert monitor.rollout_returns == [[], [], [5.0, 3.0], [], [-2.0]]
    assert bench_ppo.max_mean_returns(monitor.rollout_returns) == {"mmer": 4.0, "mmer_rollout": 4.0}
    # The window holds the last `window` episodes across rollouts; the per-rollout mean only its own.
    rollouts = [[0.0, 0.0], [1.0], [0.5, 0.5, 0.5], [-1.0]]
    mmer = bench_ppo.max_mean_returns(rollouts, window=3)
    assert mmer["mmer_rollout"] == 1.0
    assert mmer["mmer"] == pytest.approx(
        max(np.mean([0, 0]), np.mean([0, 0, 1]), 0.5, np.mean([0.5, 0.5, -1]))
    )
    assert bench_ppo.max_mean_returns([[], []]) == {"mmer": None, "mmer_rollout": None}


def test_goal_verdict_needs_every_task_within_spread_and_the_speedup() -> None:
    def row(mmer: float, std: float, wall: float) -> dict:
        return {"mmer_mean": mmer, "mmer_seed_std": std, "wall_s_mean": wall, "train_s_mean": wall / 2}

    entry = bench_ppo.compare(row(0.5, 0.1, 10.0), row(0.55, 0.02, 20.0), floor=0.0, best=1.0)
    assert entry["goal_return_reached"] and entry["return_diff"] == pytest.approx(-0.05)
    assert entry["return_diff_normalized"] == pytest.approx(-0.05) and entry["speedup_wall_vs_lstm"] == 2.0
    ahead = bench_ppo.compare(row(0.7, 0.0, 10.0), row(0.5, 0.0, 20.0), floor=-1.0, best=0.7)
    verdict = bench_ppo.goal_verdict({"A": entry, "B": ahead})
    assert verdict["met"] and verdict["return_diff_normalized_mean"] == pytest.approx((-0.05 + 0.2 / 1.7) / 2)
    behind = bench_ppo.compare(row(0.3, 0.05, 5.0), row(0.5, 0.05, 20.0), floor=0.0, best=0.5)
    assert not behind["goal_return_reached"]
    assert not bench_ppo.goal_verdict({"A": entry, "B": ahead, "C": behind})["met"]
    slow = bench_ppo.compare(row(0.7, 0.0, 15.0), row(0.5, 0.0, 20.0), floor=0.0, best=0.7)
    assert not bench_ppo.goal_verdict({"A": slow})["met"]


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown AarenPPO variant"):
        tiny(variants=("nope",))
    with pytest.raises(ConfigError, match="unknown task"):
        tiny(steps={"Pong": 10})


def test_seeds_option_runs_seeds_from_0_beyond_the_presets(tmp_path, monkeypatch) -> None:
    chosen = {}

    def fake_run(settings, out, name, work, jobs):
        chosen.update(seeds=settings.seeds, out=out, name=name)
        raise SystemExit(0)  # stop before any run or table

    monkeypatch.setattr(bench_ppo, "run", fake_run)
    args = ["--preset", "popgym", "--no-acting", "--tasks", "CountRecallEasy", "--work", str(tmp_path)]
    with pytest.raises(SystemExit):
        bench_ppo.main([*args, "--seeds", "7", "--out", str(tmp_path)])
    assert chosen == {
        "seeds": tuple(range(7)),
        "out": tmp_path / "variants",  # a subset of the preset: a variant
        "name": "ppo_popgym_CountRecallEasy_7seed",
    }
    with pytest.raises(SystemExit) as refused:
        bench_ppo.main([*args, "--seeds", "0"])
    assert refused.value.code == 2


def test_the_popgym_claim_is_written_only_from_committed_code(tmp_path, monkeypatch, capsys) -> None:
    chosen = {}

    def fake_run(settings, out, name, work, jobs):
        chosen.update(out=out, name=name)
        return {"total_wall_s": 0.0}

    def no_acting(*args):
        raise AssertionError("the acting section ran")

    monkeypatch.setattr(bench_ppo, "run", fake_run)
    monkeypatch.setattr(bench_ppo, "format_table", lambda results: "")
    monkeypatch.setattr(bench_ppo, "run_acting", no_acting)
    args = ["--preset", "popgym", "--seeds", "5", "--work", str(tmp_path), "--out", str(tmp_path / "out")]
    repo = scratch_checkout(tmp_path / "repo", monkeypatch, dirty=True)
    assert bench_ppo.main([*args, "--no-acting"]) == 2  # the preset's own seeds: the claim
    assert bench_ppo.main(["--acting-only", "--out", str(tmp_path / "out")]) == 2
    assert "uncommitted changes" in capsys.readouterr().err and not chosen
    (repo / CODE).write_text("1\n")  # back to the committed text
    assert bench_ppo.main([*args, "--no-acting"]) == 0
    assert chosen == {"out": tmp_path / "out", "name": "ppo_popgym"}


def test_variants_are_rows_of_their_own(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(bench_ppo.VARIANTS, "twoheads", {"num_heads": 2})
    specs = bench_ppo.run_specs(tiny(variants=("default", "twoheads")))
    assert [s.label for s in specs] == ["aaren", "aaren:twoheads", "lstm", "mlp"]
    model = bench_ppo.make_model("aaren", bench_ppo.TASKS["RememberCue"], 0, "twoheads")
    assert model.policy_kwargs["num_heads"] == 2
    model.env.close()


def test_popgym_tasks_by_name(tmp_path) -> None:
    pytest.importorskip("popgym")
    settings = bench_ppo.Settings(steps={"AutoencodeEasy": 512}, seeds=(0,), algos=("mlp",), eval_episodes=1)
    results = bench_ppo.run(settings, tmp_path, "popgym", work=tmp_path / "work")
    (run,) = results["runs"]
    assert run["task"] == "AutoencodeEasy" and run["env_steps"] == 512 and -1.0 <= run["return_mean"] <= 1.0
    assert -1.0 <= results["summary"]["AutoencodeEasy"]["random_return"] <= 1.0


def test_popgym_preset_without_popgym_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "popgym", None)  # `import popgym...` now raises ImportError
    monkeypatch.setitem(sys.modules, "popgym.envs", None)
    args = ["--preset", "popgym", "--no-acting", "--tasks", "RepeatPreviousEasy", "--seeds", "1"]
    assert bench_ppo.main([*args, "--work", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: POPGym tasks need") and err.endswith("pip install -e .[popgym]")
    assert "\n" not in err


@pytest.mark.slow  # two fresh worker processes import torch and Stable-Baselines3
def test_jobs_run_in_worker_processes(tmp_path) -> None:
    pytest.importorskip("popgym")
    settings = bench_ppo.Settings(
        steps={"AutoencodeEasy": 512, "RepeatPreviousEasy": 512}, seeds=(0,), algos=("mlp",), eval_episodes=1
    )
    results = bench_ppo.run(settings, tmp_path, "popgym", work=tmp_path / "work", jobs=2)
    assert [r["task"] for r in results["runs"]] == ["AutoencodeEasy", "RepeatPreviousEasy"]
    assert all(r["jobs"] == 2 and -1.0 <= r["return_mean"] <= 1.0 for r in results["runs"])
    assert results["runs_done"] == results["runs_planned"] == 2
