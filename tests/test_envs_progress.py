"""envs.progress: a live bar on a terminal, whole plain lines in a log (no carriage returns)."""

from __future__ import annotations

import io

import pytest

import envs.progress
from envs import collect_dataset
from envs.progress import LogLines, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_of(bar_run) -> list[str]:
    log = io.StringIO()
    bar_run(log)
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text  # no redrawing, no cursor moves
    return text.splitlines()


def test_a_terminal_gets_the_live_bar() -> None:
    terminal = Terminal()
    bar = progress_bar(total=3, desc="t", file=terminal)
    bar.update(3)
    bar.close()
    assert not isinstance(bar, LogLines) and "\r" in terminal.getvalue()


def test_a_log_gets_a_start_line_and_the_final_count() -> None:
    def run(log: io.StringIO) -> None:
        with progress_bar(total=100, desc="train", unit="step", file=log) as bar:
            for i in range(100):
                bar.update(1)
                bar.set_postfix(loss=i)  # refreshes: rate-limited like updates

    lines = lines_of(run)
    assert len(lines) == 2, lines
    assert lines[0].startswith("train:   0%") and "0/100" in lines[0]
    assert lines[1].startswith("train: 100%") and "100/100" in lines[1] and "loss=99" in lines[1]


def test_a_log_gets_a_line_every_log_seconds(monkeypatch) -> None:
    clock = iter(range(0, 10_000, 10))  # each reading 10 s after the previous one
    monkeypatch.setattr(envs.progress.time, "monotonic", lambda: next(clock))

    def run(log: io.StringIO) -> None:
        with progress_bar(total=9, desc="x", file=log, mininterval=0) as bar:
            for _ in range(9):
                bar.update(1)

    lines = lines_of(run)  # start at 0 s, then every third update (30 s), the last count already shown
    assert [line.split("|")[2].split()[0] for line in lines] == ["0/9", "3/9", "6/9", "9/9"]


def test_a_bar_that_does_not_stay_leaves_no_final_line() -> None:
    def run(log: io.StringIO) -> None:
        with progress_bar(total=5, desc="eval", leave=False, file=log) as bar:
            bar.update(5)

    assert [line.split(":")[0] for line in lines_of(run)] == ["eval"]  # the start line only


def test_a_disabled_bar_writes_nothing() -> None:
    def run(log: io.StringIO) -> None:
        with progress_bar(total=5, disable=True, file=log) as bar:
            bar.update(5)

    assert lines_of(run) == []


@pytest.mark.usefixtures("one_torch_thread")
def test_collection_logs_whole_lines(tmp_path, capsys) -> None:
    """A call site: collecting with progress on, stderr captured (not a terminal)."""
    collect_dataset("Hopper-v5", "random", tmp_path / "d.hdf5", 50, seed=0)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("Hopper-v5 random: 100%") and "50/50" in err.splitlines()[-1]


@pytest.mark.usefixtures("one_torch_thread")
def test_ppo_training_logs_whole_lines(tmp_path, capsys) -> None:
    """A call site in agents: AarenPPO's run, whose SB3 rich bar would stay silent in a log until the end."""
    from agents.ppo.train import PPORun, train_ppo

    train_ppo(PPORun.of_task("RememberCue", steps=256, eval_episodes=1), tmp_path / "run")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("AarenPPO:")]
    assert lines[0].startswith("AarenPPO:   0%") and "256/256" in lines[-1]


@pytest.mark.usefixtures("one_torch_thread")
def test_offline_training_logs_whole_lines(tmp_path, capsys, tiny_dataset) -> None:
    """Call sites in agents: training's bar with the evaluation bars nested in it."""
    from test_cli_errors import tiny_overrides

    from agents import load_config, train
    from agents.common.shipped import find_config

    train(load_config(find_config("quickstart"), tiny_overrides(tiny_dataset, tmp_path, "r")))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    assert [line for line in err.splitlines() if line.startswith("train r: 100%")]
