"""aaren-rl (agents.commands): the installed command and `python -m agents` run each script's main, so
they take its flags and print its help and error lines; configs are found by name among the shipped
ones; the wheel's package list misses no package and no C++ source."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from setuptools import find_namespace_packages
from test_cli_errors import assert_user_error, script, tiny_overrides

from agents import ConfigError, load_config
from agents.commands import COMMANDS
from agents.commands import main as aaren_rl
from agents.common.shipped import find_config, shipped_configs, shipped_dir
from agents.decision.config import read_yaml
from agents.decision.sweep import load_sweep

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
#: scripts/<file>.py -> the aaren-rl command it wraps.
SCRIPTS = {
    "train_offline": "train",
    "evaluate": "evaluate",
    "collect_dataset": "collect",
    "sweep": "sweep",
    "train_ppo": "ppo",
    "demo": "demo",
}
AAREN_RL = Path(sys.executable).with_name("aaren-rl")


def process(*argv: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ}
    )


@pytest.fixture(scope="module")
def installed() -> Path:
    """The aaren-rl command of this environment."""
    if not AAREN_RL.is_file():
        pytest.fail(f"{AAREN_RL} is missing: install the package again (pip install -e .)")
    return AAREN_RL


# ---- the same mains ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "command"), SCRIPTS.items())
def test_each_script_runs_its_commands_main(name: str, command: str) -> None:
    assert script(name).main is importlib.import_module(COMMANDS[command][0]).main


@pytest.mark.parametrize(("name", "command"), SCRIPTS.items())
def test_help_is_the_scripts_but_for_the_name(capsys, name: str, command: str) -> None:
    def help_of(run) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            run()
        assert exit_.value.code == 0
        return capsys.readouterr().out

    def usage_and_rest(text: str, prog: str) -> tuple[str, str]:
        usage, _, rest = text.partition("\n\n")
        return " ".join(usage.replace(prog, "PROG").split()), rest  # the usage line wraps by prog's length

    from_script = help_of(lambda: script(name).main(["--help"], prog=f"{name}.py"))
    from_command = help_of(lambda: aaren_rl([command, "--help"]))
    assert usage_and_rest(from_command, f"aaren-rl {command}") == usage_and_rest(from_script, f"{name}.py")


def test_one_process_each_way_gives_the_same_error_line(installed, tmp_path) -> None:
    """As a user runs them: the script, the installed command and `python -m agents` (each through
    torch.distributed's `record`), from a folder outside the checkout."""
    argv = ["--config", "quickstart", "--set", "train.stepz=3"]
    runs = {
        "train_offline.py": process(
            sys.executable, ROOT / "scripts" / "train_offline.py", *argv, cwd=tmp_path
        ),
        "aaren-rl train": process(installed, "train", *argv, cwd=tmp_path),
        "python -m agents train": process(sys.executable, "-m", "agents", "train", *argv, cwd=tmp_path),
    }
    for done in runs.values():
        assert_user_error(done.returncode, done.stderr, "unknown config key 'train.stepz': did you mean")
    assert len({done.stderr for done in runs.values()}) == 1
    usage = {
        prog: process(*cmd, cwd=tmp_path)
        for prog, cmd in {
            "evaluate.py": (sys.executable, ROOT / "scripts" / "evaluate.py"),
            "aaren-rl evaluate": (installed, "evaluate"),
        }.items()
    }
    for prog, done in usage.items():
        assert_user_error(done.returncode, done.stderr, f"--run --hub is required (see {prog} --help)")


def test_the_commands_own_usage_mistakes_are_one_line(capsys) -> None:
    assert_user_error(aaren_rl_status(capsys, []), capsys.readouterr().err, "no command: choose from train")
    status = aaren_rl_status(capsys, ["trian"])
    assert_user_error(status, capsys.readouterr().err, "unknown command 'trian': choose from train, evaluate")


def aaren_rl_status(capsys, argv: list[str]) -> int:
    capsys.readouterr()
    try:
        return aaren_rl(argv)
    except SystemExit as exc:
        return exc.code


def test_the_listing_names_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        aaren_rl(["--help"])
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)


# ---- configs by name -----------------------------------------------------------------------------


def test_the_shipped_configs_are_the_repositorys(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert shipped_dir() == ROOT / "configs"  # this checkout is installed in editable mode
    names = {
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in ROOT.glob("configs/**/*.yaml")
    }
    assert set(shipped_configs()) == names


def test_a_name_finds_the_shipped_config_and_its_includes(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no such file here
    path = shipped_dir() / "hopper-medium.yaml"
    assert find_config("hopper-medium") == find_config("hopper-medium.yaml") == path
    cfg = load_config(find_config("hopper-medium"))
    assert cfg.data.dataset == "hopper-medium-v2" and cfg.model.embed_dim == 128  # base.yaml's width
    sweep = shipped_dir() / "sweeps" / "quality-quick.yaml"
    assert find_config("quality-quick", "sweeps") == find_config("sweeps/quality-quick") == sweep
    assert load_sweep(sweep, tmp_path / "out").config == shipped_dir() / "base.yaml"


def test_a_file_in_the_current_folder_comes_first(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hopper-medium").write_text("data: {dataset: mine.hdf5}\n")
    assert load_config(find_config("hopper-medium")).data.dataset == "mine.hdf5"


def test_an_unknown_name_lists_the_shipped_ones(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config 'hoper-medium' not found: .*hopper-medium, .*quickstart"):
        find_config("hoper-medium")
    status = aaren_rl_status(capsys, ["train", "--config", "hoper-medium"])
    assert_user_error(status, capsys.readouterr().err, "'hoper-medium' not found", "aaren-rl configs")


def test_configs_lists_and_shows(capsys) -> None:
    assert aaren_rl(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "  quickstart " in listing and "  sweeps/quality-quick " in listing
    assert aaren_rl(["configs", "--show", "quickstart"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in shown and shown == read_yaml(shipped_dir() / "quickstart.yaml")


@pytest.mark.usefixtures("one_torch_thread")
def test_training_by_name_from_any_folder(capsys, monkeypatch, tmp_path, tiny_dataset) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = tiny_overrides(tiny_dataset, tmp_path / "runs", "named")
    assert aaren_rl(["train", "--config", "quickstart", "--set", *overrides, "--no-progress"]) == 0
    assert (tmp_path / "runs" / "named" / "eval" / "eval.json").is_file()


# ---- what the wheel holds ------------------------------------------------------------------------


def setuptools_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_is_in_the_wheel() -> None:
    listed = set(setuptools_config()["packages"])
    found = set(find_namespace_packages(where=str(ROOT), include=["aaren_rl*", "agents*", "envs*"]))
    missing = found - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_every_cpp_source_is_package_data() -> None:
    """The fused C++ extensions are built from their sources on first use, so each must ship."""
    data = setuptools_config()["package-data"]
    for source in [*ROOT.glob("aaren_rl/**/*.[ch]*"), *ROOT.glob("agents/**/*.[ch]*")]:
        if source.suffix not in (".cpp", ".h"):
            continue
        package = ".".join(source.parent.relative_to(ROOT).parts)
        assert any(source.match(pattern) for pattern in data.get(package, [])), (
            f"{source.relative_to(ROOT)} is not in [tool.setuptools.package-data] {package!r}"
        )
