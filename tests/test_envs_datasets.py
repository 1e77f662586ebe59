"""envs.datasets: D4RL-format read/write, episode split, samplers, qlearning view, validation errors."""

from __future__ import annotations

import collections
import importlib.util
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs import DatasetError, OfflineDataset, load_dataset, save_dataset
from envs.datasets import d4rl_filename, resolve_d4rl_path


def make_arrays(n: int = 20, obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Episodes: rows 0-4 (terminal at 4), 5-11 (timeout at 11), 12-19 trailing partial."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[4] = True
    timeouts[11] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_raw(path: Path, **arrays: np.ndarray) -> Path:
    """A hand-built HDF5 file, written with h5py directly (not through save_dataset)."""
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def load_quiet(source, **kwargs) -> OfflineDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(source, **kwargs)


# ---- d4rl reference implementations (transcribed loops of d4rl/__init__.py, the test oracle) -----


def d4rl_sequence_dataset(data: dict) -> list[dict]:
    episodes, current = [], collections.defaultdict(list)
    for i in range(data["rewards"].shape[0]):
        for k in data:
            current[k].append(data[k][i])
        if bool(data["terminals"][i]) or bool(data["timeouts"][i]):
            episodes.append({k: np.array(v) for k, v in current.items()})
            current = collections.defaultdict(list)
    return episodes


def d4rl_qlearning_dataset(data: dict, terminate_on_end: bool = False) -> dict:
    out = collections.defaultdict(list)
    for i in range(data["rewards"].shape[0] - 1):
        if (not terminate_on_end) and data["timeouts"][i]:
            continue
        out["observations"].append(data["observations"][i].astype(np.float32))
        out["next_observations"].append(data["observations"][i + 1].astype(np.float32))
        out["actions"].append(data["actions"][i].astype(np.float32))
        out["rewards"].append(data["rewards"][i].astype(np.float32))
        out["terminals"].append(bool(data["terminals"][i]))
    return {k: np.array(v) for k, v in out.items()}


# ---- round trip and episode split ----------------------------------------------------------------


def test_round_trip_keeps_arrays_metadata_and_layout(tmp_path):
    a = make_arrays()
    qpos = np.random.default_rng(1).normal(size=(20, 6))
    path = save_dataset(
        tmp_path / "d.hdf5",
        **a,
        next_observations=a["observations"] + 1,
        infos={"qpos": qpos, "qvel": qpos * 2},
        metadata={"env_id": "Hopper-v5", "behavior_policy": "tqc-Hopper", "seed": 3, "nested/flag": True},
    )
    with h5py.File(path) as f:
        assert {"observations", "actions", "next_observations", "rewards", "terminals", "timeouts"} <= set(f)
        np.testing.assert_array_equal(f["infos/qpos"][()], qpos)
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32
    with pytest.warns(UserWarning, match="dropped a trailing partial episode of 8 steps"):
        ds = load_dataset(path)
    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(ds, key), a[key])
    m = ds.metadata
    assert m["env_id"] == "Hopper-v5" and m["behavior_policy"] == "tqc-Hopper" and m["seed"] == 3
    assert m["nested/flag"] is True
    assert (m["ref_min_score"], m["ref_max_score"]) == (-20.272305, 3234.3)
    assert m["num_episodes"] == 2 and m["return_mean"] == pytest.approx((10 + 56) / 2)
    assert (ds.obs_dim, ds.act_dim, len(ds), ds.num_dropped_steps) == (3, 2, 20, 8)


def test_episode_split_matches_d4rl_sequence_dataset(tmp_path):
    a = make_arrays()
    ds = load_quiet(write_raw(tmp_path / "d.hdf5", **a))
    reference = d4rl_sequence_dataset(a)
    assert ds.num_episodes == len(reference) == 2
    np.testing.assert_array_equal(ds.episode_starts, [0, 5])
    np.testing.assert_array_equal(ds.episode_lengths, [5, 7])
    for i, ref in enumerate(reference):
        ep = ds.episode(i)
        for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
            np.testing.assert_array_equal(ep[key], ref[key])
        assert ds.episode_returns[i] == pytest.approx(ref["rewards"].sum())
        np.testing.assert_allclose(ep["returns_to_go"], np.cumsum(ref["rewards"][::-1])[::-1])
        np.testing.assert_array_equal(ep["timesteps"], np.arange(len(ref["rewards"])))
    assert np.shares_memory(ds.episode(1)["observations"], ds.observations)  # views, no copies


def test_column_shaped_rewards_and_terminals_accepted(tmp_path):
    a = make_arrays()
    path = write_raw(
        tmp_path / "col.hdf5",
        **{**a, "rewards": a["rewards"][:, None], "terminals": a["terminals"][:, None].astype(np.float32)},
    )
    ds = load_quiet(path)
    assert ds.rewards.shape == (20,) and ds.terminals.dtype == bool
    np.testing.assert_array_equal(ds.episode_lengths, [5, 7])


def test_no_trailing_partial_means_no_warning(tmp_path):
    a = make_arrays()
    a["timeouts"][-1] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = load_dataset(write_raw(tmp_path / "d.hdf5", **a))
    assert ds.num_episodes == 3 and ds.num_dropped_steps == 0


@pytest.mark.parametrize("terminate_on_end", [False, True])
def test_qlearning_view_equals_d4rl(tmp_path, terminate_on_end):
    a = make_arrays(n=40, seed=2)
    a["terminals"][[7, 30]] = True
    a["timeouts"][[15, 30, 38]] = True  # 30: both flags (d4rl skips it as a timeout)
    ds = load_quiet(write_raw(tmp_path / "q.hdf5", **a))
    got = ds.qlearning_view(terminate_on_end=terminate_on_end)
    ref = d4rl_qlearning_dataset(a, terminate_on_end=terminate_on_end)
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)


def test_dict_source_like_d4rl_get_dataset():
    a = make_arrays()
    data = {
        **a,
        "rewards": a["rewards"][:, None],
        "metadata/algorithm": "SAC",
        "infos/qpos": np.zeros((20, 6)),
    }
    ds = load_quiet(data)
    assert ds.metadata["algorithm"] == "SAC" and ds.num_episodes == 2


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=1, max_size=60), st.integers(1, 12))
def test_split_returns_to_go_and_windows_match_naive_loops(flags, length):
    """Property: episodes partition the rows up to the last flag; rtg/timesteps/gather equal Python loops."""
    n = len(flags)
    flags = np.array(flags)
    terminals, timeouts = (flags == 1) | (flags == 3), flags >= 2
    if not (terminals | timeouts).any():
        timeouts[-1] = True
    rng = np.random.default_rng(n)
    data = {
        "observations": rng.normal(size=(n, 2)).astype(np.float32),
        "actions": rng.normal(size=(n, 1)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    ds = load_quiet(data)
    episodes = d4rl_sequence_dataset(data)
    assert ds.num_episodes == len(episodes)
    assert ds.episode_lengths.sum() + ds.num_dropped_steps == n
    batch = ds.get_episodes(np.arange(ds.num_episodes), max_length=length)
    for i, ep in enumerate(episodes):
        rtg = np.cumsum(ep["rewards"][::-1].astype(np.float64))[::-1]
        np.testing.assert_allclose(ds.episode(i)["returns_to_go"], rtg, rtol=1e-5, atol=1e-5)
        k = min(length, len(ep["rewards"]))
        assert batch.mask[i].sum() == k and batch.mask[i, :k].all()
        np.testing.assert_array_equal(batch.observations[i, :k], ep["observations"][:k])
        np.testing.assert_array_equal(batch.actions[i, :k], ep["actions"][:k])
        np.testing.assert_allclose(batch.returns_to_go[i, :k], rtg[:k], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(batch.timesteps[i, :k], np.arange(k))
        assert not batch.observations[i, k:].any() and not batch.rewards[i, k:].any()


def test_sample_windows_are_cut_at_episode_end_and_padded():
    a = make_arrays()
    a["timeouts"][-1] = True  # episodes [0,5) [5,12) [12,20)
    ds = load_quiet(a)
    batch = ds.sample_windows(np.random.default_rng(0), batch_size=256, length=6)
    assert batch.observations.shape == (256, 6, 3) and batch.mask.shape == (256, 6)
    starts = ds.episode_starts[batch.episode_index] + batch.start_step
    for b in range(256):
        end = ds.episode_starts[batch.episode_index[b]] + ds.episode_lengths[batch.episode_index[b]]
        rows = np.arange(starts[b], min(starts[b] + 6, end))
        assert batch.mask[b].sum() == len(rows)
        np.testing.assert_array_equal(batch.observations[b, : len(rows)], ds.observations[rows])
        np.testing.assert_array_equal(batch.timesteps[b, : len(rows)], ds.timesteps[rows])
    # rows are drawn uniformly, so every row of every episode shows up as a start
    assert set(starts.tolist()) == set(range(20))
    whole = ds.sample_episodes(np.random.default_rng(1), batch_size=8)
    assert (whole.start_step == 0).all() and whole.mask.shape[1] == ds.episode_lengths.max()
    assert set(whole.as_dict()) >= {"observations", "returns_to_go", "mask", "timesteps"}


def test_state_mean_std_over_episode_rows_with_floor(tmp_path):
    a = make_arrays()
    a["observations"][:, 2] = 5.0  # constant entry
    ds = load_quiet(a)
    used = a["observations"][:12]
    np.testing.assert_allclose(ds.state_mean, used.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.state_std[:2], used.std(0)[:2], rtol=1e-5)
    assert ds.state_std[2] == pytest.approx(1e-6)


def whole_episodes(n: int = 200) -> dict[str, np.ndarray]:
    """`make_arrays` with every row in a complete episode."""
    a = make_arrays(n)
    a["timeouts"][-1] = True
    return a


def test_an_extreme_observation_is_warned_about():
    """One corrupt value makes a column's std; normalising by it would squeeze its other values to one."""
    a = whole_episodes()
    a["observations"][37, 2] = 1e30
    with pytest.warns(UserWarning) as warned:
        ds = load_dataset(a)
    (warning,) = warned
    assert re.fullmatch(
        r"<dict>: observation column 2 has std 7\.\d+e\+28, 7\.\d+e\+28 times the std of its values within 3 "
        r"stds of its mean, because of extreme values such as 1e\+30 at row 37: normalising states by it "
        r"squeezes the column's other values together\. Fix: check those rows, .*",
        str(warning.message),
    )
    assert warning.filename == __file__  # it points at the caller of load_dataset
    assert ds.state_std[2] > 1e28  # loaded all the same: a warning, not an error


@pytest.mark.parametrize("column", ["heavy tails", "rare spikes on a constant", "large values", "constant"])
def test_observations_without_extreme_values_load_silently(column):
    a = whole_episodes()
    rng = np.random.default_rng(1)
    values = {
        "heavy tails": rng.standard_t(3, size=200),
        "rare spikes on a constant": np.where(np.arange(200) % 70 == 3, 30.0, 0.0),
        "large values": 1e6 + rng.normal(size=200),
        "constant": np.full(200, 5.0),
    }[column]
    a["observations"][:, 1] = values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(a)


def test_save_is_deterministic_and_atomic(tmp_path, monkeypatch):
    a = make_arrays()
    p1 = save_dataset(tmp_path / "a.hdf5", **a, metadata={"env_id": "hopper", "seed": 0})
    p2 = save_dataset(tmp_path / "b.hdf5", **a, metadata={"env_id": "hopper", "seed": 0})
    assert p1.read_bytes() == p2.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a write interrupted half way

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(tmp_path / "c.hdf5", **a)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(p1, **a)  # replacing an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5", "b.hdf5"]  # no temp file, no half file
    assert p1.read_bytes() == p2.read_bytes()


# ---- locating files -------------------------------------------------------------------------------


def test_d4rl_id_resolution(tmp_path, monkeypatch):
    assert d4rl_filename("hopper-medium-v2") == "hopper_medium-v2.hdf5"
    assert d4rl_filename("halfcheetah-medium-replay-v2") == "halfcheetah_medium_replay-v2.hdf5"
    assert d4rl_filename("walker2d-medium-expert") == "walker2d_medium_expert-v2.hdf5"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("hopper-medium-v2")
    msg = str(err.value)
    assert str(tmp_path / "hopper_medium-v2.hdf5") in msg and "collect_dataset.py" in msg
    write_raw(tmp_path / "hopper_medium-v2.hdf5", **make_arrays(obs_dim=11, act_dim=3))
    assert resolve_d4rl_path("hopper-medium-v2") == tmp_path / "hopper_medium-v2.hdf5"
    ds = load_quiet("hopper-medium-v2", env="hopper-medium-v2")
    assert ds.metadata["env_id"] == "Hopper-v5" and ds.metadata["dataset_id"] == "hopper-medium-v2"
    assert ds.normalized_score(3234.3) == pytest.approx(100.0)


@pytest.mark.skipif(importlib.util.find_spec("minari") is not None, reason="minari is installed")
def test_minari_source_without_minari_says_how_to_install():
    with pytest.raises(DatasetError, match=r"pip install 'aaren-rl\[minari\]'"):
        load_dataset("minari:mujoco/hopper/medium-v0")


# ---- broken inputs ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.hdf5: dataset file not found.*collect_dataset\.py"):
        load_dataset(tmp_path / "nope.hdf5")


def test_not_hdf5_and_truncated(tmp_path):
    (tmp_path / "text.hdf5").write_text("hello")
    with pytest.raises(DatasetError, match=r"text\.hdf5: not a readable HDF5 file.*cut short"):
        load_dataset(tmp_path / "text.hdf5")
    good = save_dataset(tmp_path / "good.hdf5", **make_arrays(n=2000))
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"cut\.hdf5: not a readable HDF5 file"):
        load_dataset(cut)


def test_missing_key(tmp_path):
    a = make_arrays()
    del a["timeouts"]
    with pytest.raises(DatasetError, match=r"m\.hdf5: missing key 'timeouts' \(has: \['actions'"):
        load_dataset(write_raw(tmp_path / "m.hdf5", **a))
    with pytest.raises(DatasetError, match=r"<dict>: missing key 'timeouts'"):
        load_dataset(a)


def test_mismatched_lengths(tmp_path):
    a = make_arrays()
    a["actions"] = a["actions"][:-1]
    with pytest.raises(DatasetError, match=r"l\.hdf5: 'actions' has 19 rows but 'observations' has 20"):
        load_dataset(write_raw(tmp_path / "l.hdf5", **a))


@pytest.mark.parametrize(
    ("key", "bad"), [("observations", np.nan), ("rewards", np.inf), ("actions", -np.inf)]
)
def test_nan_and_inf_name_key_and_first_row(tmp_path, key, bad):
    a = make_arrays()
    a[key][[13, 17]] = bad
    with pytest.raises(
        DatasetError, match=rf"n\.hdf5: '{key}' has a NaN or inf value at row 13 \(first one\)"
    ):
        load_dataset(write_raw(tmp_path / "n.hdf5", **a))


def test_dims_that_do_not_fit_the_env(tmp_path):
    path = write_raw(tmp_path / "h.hdf5", **make_arrays(obs_dim=11, act_dim=2))
    with pytest.raises(
        DatasetError, match=r"actions have 2 entries per row but env 'hopper' has action space"
    ):
        load_quiet(path, env="hopper")
    path = write_raw(tmp_path / "w.hdf5", **make_arrays(obs_dim=17, act_dim=6))
    with pytest.raises(DatasetError, match=r"observations have 17 entries per row but env 'Hopper-v5'"):
        load_quiet(path, env="Hopper-v5")
    assert load_quiet(path, env="walker2d-medium-v2").obs_dim == 17


def test_empty_and_flagless_datasets(tmp_path):
    empty = {k: v[:0] for k, v in make_arrays().items()}
    with pytest.raises(DatasetError, match=r"e\.hdf5: empty dataset"):
        load_dataset(write_raw(tmp_path / "e.hdf5", **empty))
    flagless = make_arrays()
    flagless["terminals"][:] = False
    flagless["timeouts"][:] = False
    with pytest.raises(DatasetError, match=r"no complete episode in 20 rows"):
        load_dataset(flagless)


def test_save_rejects_bad_arrays(tmp_path):
    a = make_arrays()
    a["rewards"] = a["rewards"][:5]
    with pytest.raises(DatasetError, match="'rewards' has 5 rows"):
        save_dataset(tmp_path / "x.hdf5", **a)
    assert not any(tmp_path.iterdir())


def dataset_of_lengths(lengths: np.ndarray) -> OfflineDataset:
    """Episodes of the given lengths whose observation is (episode, step) and whose reward is 1."""
    n = int(lengths.sum())
    timeouts = np.zeros(n, dtype=bool)
    timeouts[np.cumsum(lengths) - 1] = True
    episode = np.repeat(np.arange(len(lengths)), lengths)
    step = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    observations = np.stack([episode, step], 1).astype(np.float32)
    return OfflineDataset(
        observations, np.zeros((n, 1), np.float32), np.ones(n, np.float32), np.zeros(n, bool), timeouts
    )


def test_packed_rows_hold_whole_episodes_from_their_first_step():
    ds = dataset_of_lengths(np.array([5, 3, 7, 2, 4]))
    batch = ds.pack_episodes([[1, 3, 0], [2, 4]], row_steps=9)
    assert batch.observations[0, :, 0].tolist() == [1, 1, 1, 3, 3, 0, 0, 0, 0]  # episode 0 cut: its beginning
    assert batch.timesteps[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    rtg = batch.returns_to_go[1].tolist()
    assert rtg == [7, 6, 5, 4, 3, 2, 1, 4, 3]  # of the whole episode, also where it is cut
    assert np.flatnonzero(batch.resets[0]).tolist() == [0, 3, 5] and np.flatnonzero(
        batch.resets[1]
    ).tolist() == [0, 7]
    assert batch.mask.all() and batch.episode_index[0].tolist() == [1] * 3 + [3] * 2 + [0] * 4
    short = ds.pack_episodes([[3]], row_steps=4)
    assert short.mask[0].tolist() == [True, True, False, False] and (short.observations[0, 2:] == 0).all()
    assert short.episode_index[0, 2:].tolist() == [-1, -1]
