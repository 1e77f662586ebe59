"""Bad configs are one ConfigError naming the key or file, the value and the fix, before any work."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

from agents import ConfigError, load_config, train
from agents.decision.config import writable_run_dir

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def config(*overrides: str):
    return load_config(None, ["data.dataset=hopper-medium-v2", *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=.inf", "train.lr = inf is not a finite number. Fix: set train.lr to a finite value"),
        ("train.lr=nan", "train.lr = nan is not a finite number"),
        ("train.grad_clip=-.inf", "train.grad_clip = -inf is not a finite number"),
        ("model.return_scale=.inf", "model.return_scale = inf is not a finite number"),
        ("model.dropout=.nan", "model.dropout = nan is not a finite number"),
        ("eval.targets=[100, .inf]", "eval.targets[1] = inf is not a finite number"),
        ("data.env=", "data.env is empty. Fix: give it a value, e.g. data.env=Hopper-v5, or leave data.env"),
        ("train.steps=", "train.steps is empty. Fix: give it a value, e.g. train.steps=100000"),
        ("eval.targets=", "eval.targets is empty. Fix: give it a value, e.g. eval.targets=[3600, 1800]"),
        ("train.device=cuda:abc", "train.device = 'cuda:abc' is not a device ("),
        ("train.device=gpu", "train.device = 'gpu' is not a device"),
        ("train.device=meta", "train.device = 'meta' is impossible: use 'cpu', 'cuda' or 'cuda:<i>'"),
        ("name=..", "name = '..' is impossible: a folder name inside output_dir"),
        ("name=.", "name = '.' is impossible"),
        ("name=../x", "name = '../x' is impossible"),
        ("name=a/b", "name = 'a/b' is impossible"),
        ("name=a\\b", "name = 'a\\\\b' is impossible"),
    ],
)
def test_bad_value_is_one_config_error(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config(override)


def test_step_slopes_need_the_aaren_backbone() -> None:
    message = "model.step_slopes = True is impossible: slopes on the scores are Aaren's, not model.backbone"
    fix = "Fix: --set model.step_slopes=false"
    with pytest.raises(ConfigError, match=re.escape(message)):
        config("model.backbone=lstm", "model.step_slopes=true")
    with pytest.raises(ConfigError, match=re.escape(fix)):
        config("model.backbone=lstm", "model.step_slopes=true")


def test_cuda_device_is_checked_against_this_torch(monkeypatch) -> None:
    def no_cuda_question() -> bool:
        raise AssertionError("a CPU config must not ask about CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda_question)
    assert config("train.device=cpu").train.device == "cpu"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    no_gpu = r"train.device = 'cuda', but this torch .* finds no CUDA GPU\. Fix: --set train.device=cpu"
    with pytest.raises(ConfigError, match=no_gpu):
        config("train.device=cuda")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert config("train.device=cuda").train.device == "cuda"
    assert config("train.device=cuda:1").train.device == "cuda:1"
    with pytest.raises(ConfigError, match=r"train.device = 'cuda:2' is impossible: this machine has 2 CUDA"):
        config("train.device=cuda:2")


@pytest.mark.parametrize("base", ["base:", "base: [base.yaml, 3]", "base: ''", "base: {a: 1}"])
def test_bad_base_names_the_file(tmp_path, base: str) -> None:
    (tmp_path / "base.yaml").write_text("train:\n  steps: 5\n")
    path = tmp_path / "task.yaml"
    path.write_text(f"{base}\ndata:\n  dataset: hopper-medium-v2\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: base = .* does not name YAML files"):
        load_config(path)
    path.write_text("base: [base.yaml]\ndata:\n  dataset: hopper-medium-v2\n")
    assert load_config(path).train.steps == 5


@pytest.mark.parametrize("missing", ["nothere.yaml", "."])
def test_a_base_that_is_no_file_names_the_config_naming_it(tmp_path, missing: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "middle.yaml").write_text(f"base: {missing}\n")
    path = tmp_path / "task.yaml"
    path.write_text("base: sub/middle.yaml\n")
    what = "not found" if missing != "." else "is a folder, not a YAML file"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    sub = (tmp_path / "sub").resolve()
    assert str(caught.value) == (
        f"config file {(sub / missing).resolve()}, named by `base:` in {sub / 'middle.yaml'}, {what}. Fix: "
        f"correct that `base:` line (its paths are relative to {sub})"
    )


def test_output_dir_that_cannot_be_created_is_a_config_error(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = config(f"output_dir={blocker / 'runs'}", "name=run")
    message = rf"output_dir = '{re.escape(str(blocker / 'runs'))}'.*{re.escape(str(blocker))} is a file"
    with pytest.raises(ConfigError, match=message):
        train(cfg, progress=False)  # checked before the (missing) dataset is read
    new = tmp_path / "new" / "runs"
    assert writable_run_dir(config(f"output_dir={new}", "name=run")) == new / "run"
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # the check leaves nothing behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_dir_is_a_config_error(tmp_path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=r"output_dir = .*locked' .* is not writable"):
        writable_run_dir(config(f"output_dir={locked}", "name=run"))


def test_script_exits_2_with_the_message(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("train_offline", SCRIPTS / "train_offline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "task.yaml"
    path.write_text("data:\n  dataset: hopper-medium-v2\n")
    assert module.main(["--config", str(path), "--set", "model.return_scale=.inf"]) == 2
    assert "model.return_scale = inf is not a finite number" in capsys.readouterr().err


def test_apply_overrides_leaves_its_input_alone():
    from agents.decision.config import apply_overrides

    data = {"train": {"steps": 4}}
    assert apply_overrides(data, ["train.steps=6"]) == {"train": {"steps": 6}}
    assert data == {"train": {"steps": 4}}  # a resume compares the saved config with the overridden one
