"""Benchmark provenance and where results go: the commit and whether the code behind a result had
uncommitted changes; canonical runs write the tracked file only from committed code, others write variants."""

from __future__ import annotations

import pytest
from scratch_git import CODE, scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

from benchmarks import common

CLAIM = common.Claim("core", {"n": 3})


def test_code_dirty_sees_the_code_and_not_the_results(tmp_path, monkeypatch) -> None:
    repo = scratch_checkout(tmp_path, monkeypatch)
    assert common._git_commit()["code_dirty"] is False
    (repo / "benchmarks/results/new.json").write_text("{}\n")  # a result being written
    assert common._git_commit()["code_dirty"] is False
    (repo / CODE).write_text("2\n")
    info = common._git_commit()
    assert info["code_dirty"] is True and len(info["commit"]) == 40
    monkeypatch.setattr(common, "REPO", tmp_path / "missing")
    assert common._git_commit() == {"commit": None, "code_dirty": None}


def test_configs_are_code(tmp_path, monkeypatch) -> None:
    repo = scratch_checkout(tmp_path, monkeypatch)
    (repo / "configs").mkdir()
    (repo / "configs" / "base.yaml").write_text("train: {}\n")
    assert common._git_commit()["code_dirty"] is True


def test_canonical_settings_write_the_claims_name_from_a_clean_checkout(tmp_path, monkeypatch) -> None:
    scratch_checkout(tmp_path / "repo", monkeypatch)
    out = tmp_path / "out"
    assert common.output_stem(CLAIM, {"n": 3}, "cpu", "core_other", out) == out / "core"


@pytest.mark.parametrize(
    ("settings", "device"), [({"n": 4}, "cpu"), ({"n": 3}, "cuda")], ids=["other-settings", "other-device"]
)
def test_other_runs_write_variants_whatever_the_checkout(tmp_path, monkeypatch, settings, device) -> None:
    monkeypatch.setattr(common, "REPO", tmp_path / "missing")  # no git at all: variants need none
    out = tmp_path / "out"
    assert common.output_stem(CLAIM, settings, device, "core_n4", out) == out / "variants" / "core_n4"


def test_dirty_checkout_refuses_a_canonical_result_unless_allowed(tmp_path, monkeypatch) -> None:
    scratch_checkout(tmp_path / "repo", monkeypatch, dirty=True)
    out = tmp_path / "out"
    with pytest.raises(common.ProvenanceError, match=r"core\.json .* uncommitted changes .* --allow-dirty"):
        common.output_stem(CLAIM, {"n": 3}, "cpu", "core", out)
    assert common.output_stem(CLAIM, {"n": 3}, "cpu", "core", out, allow_dirty=True) == out / "core"
    assert common.machine_info("cpu")["code_dirty"] is True  # what the JSON of that run records


def test_unknown_commit_refuses_a_canonical_result_unless_allowed(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(common, "REPO", tmp_path / "missing")
    with pytest.raises(common.ProvenanceError, match="commit is unknown"):
        common.output_stem(CLAIM, {"n": 3}, "cpu", "core", tmp_path)
    assert common.output_stem(CLAIM, {"n": 3}, "cpu", "core", tmp_path, allow_dirty=True) == tmp_path / "core"


def test_refusal_is_a_user_error(tmp_path, monkeypatch) -> None:
    from agents.common.cli import user_error_message

    monkeypatch.setattr(common, "REPO", tmp_path / "missing")
    with pytest.raises(common.ProvenanceError) as refused:
        common.output_stem(CLAIM, {"n": 3}, "cpu", "core", tmp_path)
    assert user_error_message(refused.value).startswith("error: ")  # scripts: one line, exit 2
