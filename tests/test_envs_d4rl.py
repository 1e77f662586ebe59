"""envs.d4rl: the D4RL task table, the one id parser and the metadata filler."""

from __future__ import annotations

import pytest

from envs import DatasetError
from envs.d4rl import (
    PUBLISHED_DATASETS,
    TASKS,
    eval_targets,
    fill_metadata,
    is_published,
    parse_dataset_id,
    reference_scores,
    task_of,
)
from envs.popgym import OFFLINE_TASKS, offline_name


def test_table_is_consistent():
    popgym = [offline_name(name) for name in OFFLINE_TASKS]
    assert sorted(TASKS) == sorted(["ant", "halfcheetah", "hopper", "tmaze", "walker2d", *popgym])
    assert [name for name, task in TASKS.items() if not task.published] == ["tmaze", *popgym]
    for name, task in TASKS.items():
        assert task.name == name
        if task.published:
            assert task.gym_id.lower().startswith(name) and task.gym_id.endswith("-v5")
        assert task.ref_max > task.ref_min
        assert set(task.policies) <= {"weak", "medium", "expert"}
        assert list(task.targets) == sorted(task.targets, reverse=True)  # the main target first
    assert TASKS["ant"].policies == {} and TASKS["ant"].targets == ()


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("hopper-medium-v2", "hopper"),
        ("Hopper-v5", "hopper"),
        ("walker2d_medium-v2", "walker2d"),
        (" HalfCheetah ", "halfcheetah"),
        ("ant", "ant"),
        ("antmaze-umaze-v0", None),
        ("Pendulum-v1", None),
    ],
)
def test_task_of_reads_the_first_token(name, task):
    found = task_of(name)
    assert (found.name if found else None) == task


@pytest.mark.parametrize(
    ("dataset_id", "parts"),
    [
        ("hopper-medium-v2", ("hopper", "medium", "v2")),
        ("halfcheetah-medium-replay-v2", ("halfcheetah", "medium-replay", "v2")),
        ("walker2d-medium-expert", ("walker2d", "medium-expert", "v2")),
        ("Hopper-Mixed-V1", ("hopper", "mixed", "v1")),
        ("maze2d-umaze-v1", ("maze2d", "umaze", "v1")),  # other families parse; the table is not consulted
    ],
)
def test_parse_dataset_id(dataset_id, parts):
    assert parse_dataset_id(dataset_id) == parts


@pytest.mark.parametrize("bad", ["hopper", "hopper_medium-v2", "hopper--medium", ""])
def test_parse_dataset_id_rejects_non_ids(bad):
    with pytest.raises(DatasetError, match="is not a D4RL dataset id.*hopper-medium-v2"):
        parse_dataset_id(bad)


def test_published_datasets():
    assert is_published("hopper", "medium-replay", "v2")
    d4rl = ["ant", "halfcheetah", "hopper", "walker2d"]
    assert all(is_published(task, dataset, "v2") for task in d4rl for dataset in PUBLISHED_DATASETS)
    assert not is_published("hopper", "medium", "v1")
    assert not is_published("hopper", "mixed", "v2")
    assert not is_published("maze2d", "umaze", "v2")


def test_reference_scores_and_targets_by_any_name():
    assert reference_scores("hopper-medium-v2") == reference_scores("Hopper-v5") == (-20.272305, 3234.3)
    assert reference_scores("Pendulum-v1") is None
    assert eval_targets("walker2d_medium-v2") == (5000.0, 2500.0)
    assert eval_targets("halfcheetah") == (12000.0, 6000.0)
    assert eval_targets("ant-medium-v2") is None and eval_targets("Pendulum-v1") is None


def test_fill_metadata_infers_env_id_and_reference_scores():
    from_id = {"dataset_id": "walker2d-medium-v2"}
    fill_metadata(from_id, "/data/whatever.hdf5")
    assert from_id["env_id"] == "Walker2d-v5"
    assert (from_id["ref_min_score"], from_id["ref_max_score"]) == (1.629008, 4592.3)

    from_file = {}
    fill_metadata(from_file, "/data/hopper_medium-v2.hdf5")
    assert from_file["env_id"] == "Hopper-v5" and from_file["ref_max_score"] == 3234.3

    stored = {"env_id": "Hopper-v5", "ref_min_score": 0.0, "ref_max_score": 1.0}
    fill_metadata(stored, "/data/walker2d_medium-v2.hdf5")
    assert stored == {"env_id": "Hopper-v5", "ref_min_score": 0.0, "ref_max_score": 1.0}

    other = {"env_id": "Pendulum-v1"}
    fill_metadata(other, "/data/hopper_medium-v2.hdf5")
    assert other == {"env_id": "Pendulum-v1"}
    unnamed = {}
    fill_metadata(unnamed, "<dict>")
    assert unnamed == {}
