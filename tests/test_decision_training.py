"""Training runs: kill-and-resume equality, config errors, checkpoint/architecture checks, load_agent."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import agents
from agents import ConfigError, DecisionAgent, evaluate_run, load_agent, load_config, train
from agents.decision.checkpoint import CheckpointError
from agents.decision.model import DecisionModel, DecisionModelConfig
from agents.decision.run_dir import RunDir, latest_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny batches: 1 thread is fastest


def tiny_config(dataset: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.dataset={dataset}",
            f"output_dir={out}",
            "model.embed_dim=16",
            "model.num_layers=1",
            "model.context_steps=5",
            "train.batch_steps=180",
            "train.steps=8",
            "train.warmup_steps=3",
            "train.log_every=2",
            "train.checkpoint_every=4",
            "train.lr=1e-3",
            "eval.episodes=1",
            "eval.num_envs=1",
            "eval.targets=[100]",
            *extra,
        ],
    )


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_killed_and_resumed_run_ends_with_the_same_weights(tiny_dataset, tmp_path, backbone):
    full = train(
        tiny_config(tiny_dataset, tmp_path, "name=full", f"model.backbone={backbone}"), progress=False
    )
    cfg = tiny_config(tiny_dataset, tmp_path, "name=killed", f"model.backbone={backbone}")
    killed = train(cfg, progress=False, stop_after=6)  # dies 2 steps after the step-4 checkpoint
    assert json.loads((latest_checkpoint(killed) / "model.json").read_text())["step"] == 4
    train(resume=killed, progress=False)
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    steps = [
        r["step"]
        for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert steps == [2, 4, 6, 8]  # the killed session's step-6 line was dropped and rewritten once
    for name in ("config.yaml", "dataset_stats.json", "curve.png"):
        assert (killed / name).is_file()
    assert list((killed / "tb").iterdir())


def test_load_agent_acts_and_rejects_mismatched_architecture(tiny_dataset, tmp_path):
    run = train(tiny_config(tiny_dataset, tmp_path, "name=p"), progress=False)
    agent = load_agent(run, target_return=50.0)
    assert isinstance(agent, DecisionAgent) and agent.acting == "recurrent"
    with pytest.warns(DeprecationWarning, match="load_agent"):  # the old name still works
        assert isinstance(agents.load_policy(run, target_return=50.0), DecisionAgent)
    actions, state = agent.act(np.zeros((2, 11), dtype=np.float32))
    assert actions.shape == (2, 3) and np.all(np.abs(actions) <= 1)
    meta_path = latest_checkpoint(run) / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["num_layers"] = 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"model.json was changed after .* intact checkpoint, .*step_0000004"
    ):
        load_agent(run)  # the digest catches the edit
    for key in ("files", "digest"):  # a checkpoint from before the digests: loaded unverified, still checked
        del meta[key]
    meta_path.write_text(json.dumps(meta))
    with (
        pytest.warns(UserWarning, match="loading it unverified"),
        pytest.raises(CheckpointError, match="does not match the architecture"),
    ):
        load_agent(run)


def saved_run(run_dir: Path, targets: list[float]) -> Path:
    """A run directory holding an untrained Hopper-sized model and the given evaluation targets."""
    RunDir(run_dir).save_checkpoint(
        DecisionModel(DecisionModelConfig(obs_dim=11, act_dim=3, embed_dim=16)), 1, {}
    )
    stats = {"env": "Hopper-v5", "score_ref": "Hopper-v5", "eval_targets": targets, "return_mean": 0.0}
    (run_dir / "dataset_stats.json").write_text(json.dumps(stats))
    return run_dir


def test_evaluate_run_without_targets_is_a_clear_error(tmp_path):
    run = saved_run(tmp_path / "run", targets=[])
    for targets in (None, []):
        with pytest.raises(ValueError, match=r"no target return .* lists no eval_targets. Fix: pass targets"):
            evaluate_run(run, targets=targets, progress=False)


def test_evaluate_run_reports_the_acting_path_asked_for(tmp_path):
    run = saved_run(tmp_path / "run", targets=[100.0])
    report = evaluate_run(run, episodes=1, num_envs=1, targets=[10.0, 20.0], acting="window", progress=False)
    assert report["acting"] == "window" and [r["target_return"] for r in report["results"]] == [10.0, 20.0]
    assert evaluate_run(run, episodes=1, num_envs=1, progress=False)["acting"] == "recurrent"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stepz=3", "unknown config key 'train.stepz': did you mean train.steps"),
        ("train.steps=many", "train.steps = 'many'"),
        ("train.lr=-1", "train.lr = -1.0 is impossible"),
        ("model.backbone=mamba", "model.backbone = 'mamba' is impossible: use one of"),
        ("model.num_heads=3", "must divide model.embed_dim"),
        ("eval.targets=[a]", "eval.targets[0]"),
        ("eval.vec_mode=async", "'eval.vec_mode' is now called 'eval.vectorization'"),
        ("train.batch_size=64", "'train.batch_size' is now called 'train.batch_steps'.*64 x 20 = 1280"),
    ],
)
def test_bad_config_values_raise_one_clear_error(tiny_dataset, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(tiny_dataset, tmp_path, override)


def test_dataset_that_does_not_fit_the_env_is_a_config_error(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, "data.env=HalfCheetah-v5")
    with pytest.raises(ConfigError, match="data.env = 'HalfCheetah-v5'"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # nothing was started
    with pytest.raises(ConfigError, match="cannot be loaded"):
        train(tiny_config(tmp_path / "missing.hdf5", tmp_path), progress=False)


def test_existing_run_directory_needs_resume(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path, "name=once", "train.steps=4")
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, progress=False)


def test_resume_refuses_what_changes_the_run_and_takes_what_does_not(tiny_dataset, tmp_path):
    """A resume may train longer, elsewhere, and report or evaluate differently; new data, a new seed or
    a new model would leave the checkpoint's weights and normalisation describing another run."""
    run = train(tiny_config(tiny_dataset, tmp_path, "name=r", "train.steps=4"), progress=False)
    config_before = (run / "config.yaml").read_text()
    other = shutil.copy(tiny_dataset, tmp_path / "other.hdf5")
    for change in (f"data.dataset={other}", "train.seed=1", "model.embed_dim=32", "train.batching=stored"):
        with pytest.raises(ConfigError, match=r"would change what the run is .* Fix: drop those overrides"):
            train(resume=run, overrides=[change], progress=False)
    with pytest.raises(ConfigError, match="train.steps = 3 is below step 4"):
        train(resume=run, overrides=["train.steps=3"], progress=False)
    assert (run / "config.yaml").read_text() == config_before  # nothing rewritten
    train(
        resume=run,
        overrides=["train.steps=6", "train.lr=5e-4", "train.log_every=1", "eval.episodes=2"],
        progress=False,
    )
    assert json.loads((latest_checkpoint(run) / "model.json").read_text())["step"] == 6


def test_shipped_configs_load(tmp_path):
    names = [
        f"{t}-{d}"
        for t in ("hopper", "halfcheetah", "walker2d")
        for d in ("medium", "medium-expert", "expert", "mixed")
    ] + ["quickstart"]
    for name in names:  # 3 tasks x 4 datasets x 2 backbones (an override), plus the quickstart
        for backbone in ("aaren", "transformer"):
            cfg = load_config(CONFIGS / f"{name}.yaml", [f"model.backbone={backbone}"])
            assert cfg.data.dataset and cfg.model.backbone == backbone and backbone in cfg.run_name
    assert load_config(CONFIGS / "hopper-medium.yaml").train.lr == 1e-4  # from base.yaml
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_scripts_train_resume_and_evaluate(tiny_dataset, tmp_path, capsys):
    import importlib.util

    def script(name):
        spec = importlib.util.spec_from_file_location(name, CONFIGS.parent / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main

    train_main, evaluate_main = script("train_offline"), script("evaluate")
    common = [
        "--set",
        f"data.dataset={tiny_dataset}",
        f"output_dir={tmp_path}",
        "name=cli",
        "model.embed_dim=16",
        "model.num_layers=1",
        "train.batch_steps=120",
        "train.log_every=1",
        "eval.episodes=1",
        "eval.num_envs=1",
        "eval.targets=[50]",
        "--no-progress",
    ]
    assert (
        train_main(
            ["--config", str(CONFIGS / "quickstart.yaml"), *common[:-1], "train.steps=2", "--no-progress"]
        )
        == 0
    )
    assert train_main(["--resume", str(tmp_path / "cli"), "--set", "train.steps=3", "--no-progress"]) == 0
    assert json.loads((latest_checkpoint(tmp_path / "cli") / "model.json").read_text())["step"] == 3
    assert train_main(["--config", str(CONFIGS / "quickstart.yaml"), "--set", "train.lr=fast"]) == 2
    assert "error: train.lr = 'fast'" in capsys.readouterr().err
    assert (
        evaluate_main(
            ["--run", str(tmp_path / "cli"), "--episodes", "2", "--envs", "2", "--target", "10", "20"]
        )
        == 0
    )
    report = json.loads((tmp_path / "cli" / "eval" / "eval.json").read_text())
    assert [r["target_return"] for r in report["results"]] == [10.0, 20.0]
    assert report["acting"] == "recurrent" and (tmp_path / "cli" / "eval" / "eval.png").is_file()


@pytest.mark.parametrize("backbone", ["aaren", "transformer"])
def test_bf16_autocast_training_runs(tiny_dataset, tmp_path, backbone):
    run = train(
        tiny_config(tiny_dataset, tmp_path, "train.bf16=true", "train.steps=2", f"model.backbone={backbone}"),
        progress=False,
    )
    assert (run / "curve.png").is_file()


def test_lr_schedule_warmup_then_constant_or_cosine():
    from agents.decision.training import lr_schedule

    const, cosine = lr_schedule(4, 20), lr_schedule(4, 20, "cosine")
    assert [const(s) for s in (0, 3, 4, 19)] == [0.25, 1.0, 1.0, 1.0]
    assert [cosine(s) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]
    assert cosine(12) == pytest.approx(0.5) and cosine(20) == pytest.approx(0.0)
