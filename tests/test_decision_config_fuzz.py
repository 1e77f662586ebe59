"""Fuzzing the config loader: whatever a config file or a --set override holds (YAML-ish text, random bytes,
random mappings, random key=value strings), load_config returns a valid Config or raises one ConfigError,
never another exception; and a Config it returns survives being written and read back unchanged."""

from __future__ import annotations

import dataclasses
import datetime
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.decision.config import Config, ConfigError, dump_config, load_config

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Section and key names of the config (and near misses), the parts dotted keys are made of.
NAMES = [
    "data", "dataset", "env", "model", "backbone", "embed_dim", "num_heads", "dropout", "max_timestep",
    "train", "steps", "lr", "seed", "device", "threads", "bf16", "dist_timeout", "eval", "targets",
    "episodes", "vectorization", "vec_mode", "name", "output_dir", "base", "stepz", "x",
]  # fmt: skip

#: Values worth trying: YAML's special scalars, tags, anchors, extremes, and what torch and paths refuse.
VALUES = [
    "", "~", "null", "true", "yes", "0", "-1", "1", "7", "2147483648", "1e5", "1.5", "1e400", "-1e30", ".inf",
    "-.inf", ".nan", "nan", "0x1f", "0b101", "1:30", "2024-01-01", "[]", "[1, 2]", "[.nan]", "{}", "{a: 1}",
    "aaren", "transformer", "cpu", "cuda", "cuda:7", "meta", "sync", "..", "a/b", "hopper-medium-v2",
    "!!int 1.5", "!!float x", "!!binary YQ==", "!!timestamp x", "!!python/object:os.system x", "&a [*a]",
    "'quoted'", '"\\0"', "\x00", "\t", "|\n  text", "# comment", "<<: {a: 1}", "? [a]\n: 1",
]  # fmt: skip

#: Rare values that broke parsers: nesting deep enough to exhaust a recursive parser, an int past Python's
#: int-to-text digit limit, and an int whose repr is past it.
EXTREMES = ["[" * 600, "9" * 4400, "0x" + "f" * 3700]
PUNCTUATION = [":", ": ", "\n", "\n  ", "- ", "[", "]", "{", "}", ", ", "=", ".", "'", '"', "&a ", "*a", "! "]


def config_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config (data.dataset, train.steps, ...)."""
    keys = []
    for spec in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[spec.name]
        keys += (
            config_keys(hint, f"{prefix}{spec.name}.")
            if dataclasses.is_dataclass(hint)
            else [prefix + spec.name]
        )
    return keys


KEYS = config_keys()
junk = st.lists(
    st.one_of(st.sampled_from(NAMES + VALUES + PUNCTUATION), st.text(max_size=5)), max_size=8
).map("".join)
values = st.one_of(st.sampled_from(VALUES + EXTREMES), junk)
keys = st.one_of(
    st.sampled_from(KEYS), st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(".".join)
)
indents = st.sampled_from(["", "  ", "    "])
yaml_lines = st.one_of(
    st.builds("{}{}: {}".format, indents, st.sampled_from(NAMES), values),  # key: value
    st.builds("{}{}:".format, indents, st.sampled_from(NAMES)),  # section:
    st.builds("{}- {}".format, indents, values),  # list item
    junk,
)
yaml_like_text = st.lists(yaml_lines, max_size=10).map("\n".join)
overrides = st.lists(st.one_of(st.builds("{}={}".format, keys, values), junk), max_size=5)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.dates(),
    st.sampled_from(VALUES),
)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner, max_size=4),
    max_leaves=12,
)
mappings = st.dictionaries(st.sampled_from(NAMES), nested, max_size=5) | st.fixed_dictionaries(
    {"data": st.fixed_dictionaries({"dataset": st.sampled_from(["hopper-medium-v2", "x.hdf5"])})},
    optional={
        section: st.dictionaries(st.sampled_from(NAMES), scalars, max_size=4)
        for section in ("model", "train", "eval")
    },
)
VALID = ["data.dataset=hopper-medium-v2"]


def load_or_refuse(path: Path | None, items: list[str], scratch: Path) -> None:
    """Load; a ConfigError is a fine answer, any other exception fails the test. A loaded Config must be
    written (to `scratch`) and read back unchanged: what a run's config.yaml and --resume rely on."""
    try:
        cfg = load_config(path, items)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, Config)
    again = scratch / "again.yaml"
    again.write_text(dump_config(cfg), encoding="utf-8")
    assert load_config(again) == cfg


@FUZZ
@given(text=yaml_like_text, items=overrides)
def test_yaml_like_files_and_overrides(tmp_path: Path, text: str, items: list[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    load_or_refuse(path, items, tmp_path)
    load_or_refuse(path, [*VALID, *items], tmp_path)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_as_a_config_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    load_or_refuse(path, VALID, tmp_path)


@FUZZ
@given(mapping=mappings, items=overrides)
def test_random_mappings_as_a_config_file(tmp_path: Path, mapping: dict, items: list[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True), encoding="utf-8")
    load_or_refuse(path, items, tmp_path)


@FUZZ
@given(items=overrides)
def test_random_overrides_alone(tmp_path: Path, items: list[str]) -> None:
    (tmp_path / "config.yaml").write_text("", encoding="utf-8")
    load_or_refuse(tmp_path / "config.yaml", [*VALID, *items], tmp_path)
    load_or_refuse(None, [*VALID, *items], tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (EXTREMES[0], "not valid YAML (RecursionError"),
        ("train:\n  steps: " + EXTREMES[1], "not valid YAML (ValueError: Exceeds the limit"),
        ("- 1\n- 2\n", "the top level must be a mapping of keys, got list"),
        ("train: 5\n", "train = 5 is not a mapping of keys. Fix: set the keys inside it, e.g. train.steps="),
        ("train:\n  steps: " + EXTREMES[2], "train.steps = <a 14800-bit integer> is out of range"),
        ("name: 2024-01-01\ndata: {dataset: d}\n", None),
    ],
)
def test_odd_files_named_cases(tmp_path: Path, text: str, message: str | None) -> None:
    """Cases the fuzzing above must be able to reach, pinned: each was a traceback before."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    if message is None:
        assert load_config(path).name == str(datetime.date(2024, 1, 1))
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(path)


def test_binary_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"config.yaml is not UTF-8 text \(invalid start byte at byte 0\)"):
        load_config(path)
