"""Typed setting values shared by the decision configs and the PPO runs' `--set`: the one error type
for a setting that cannot run, YAML-parsed override values, and checked conversion to an annotation."""

from __future__ import annotations

import datetime
import math
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot run; the message names the key, the value and how to fix it."""


def parse_override_value(text: str, hint: Any) -> Any:
    """An override's value: `text` parsed as YAML (as written, when that is not YAML, e.g. a: b), except
    that a text key keeps a number, bool or date as written (YAML would read name=007 as 7)."""
    try:
        value = yaml.safe_load(text)
    except Exception:  # PyYAML raises more than YAMLError on odd input
        return text
    if hint is str and isinstance(value, (int, float, datetime.date)):  # bool is an int
        return text.strip()
    return value


#: The values an integer setting may take: every count, size, number of seconds and seed fits, and larger
#: ones overflow where torch and the OS take them as C integers (thread counts, timeouts).
INT_RANGE = range(-(2**31), 2**31)


def convert_value(value: Any, hint: Any, key: str, example: str) -> Any:
    """Check/convert one value against its annotation (int, float, str, bool, list[float]); `example`
    (a key=value) is the fix shown for a value of the wrong type."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(
                f"{key} = {shown(value)} ({type(value).__name__}): expected a list of {item.__name__}. "
                f"Fix: e.g. {example}"
            )
        return [convert_value(v, item, f"{key}[{i}]", example) for i, v in enumerate(value)]
    if hint in (int, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = _number(value, hint)
    if hint is str and isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
        return str(value)  # e.g. name: 2024
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"{key} = {shown(value)} ({type(value).__name__}): expected {hint.__name__}. Fix: e.g. {example}"
        )
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r} is not a finite number. Fix: set {key} to a finite value")
    if hint is int and value not in INT_RANGE:
        raise ConfigError(
            f"{key} = {shown(value)} is out of range. Fix: a whole number between {INT_RANGE.start} and "
            f"{INT_RANGE.stop - 1}, e.g. {example}"
        )
    if hint is str and ("\0" in value or value != value.encode("utf-8", "ignore").decode("utf-8")):
        raise ConfigError(
            f"{key} = {shown(value)} holds a NUL or a character that is not UTF-8. Fix: plain text, "
            f"e.g. {example}"
        )
    return value


def _number(value: int | float | str, hint: type) -> int | float | str:
    """`value` as a `hint` (int or float) where it is one: YAML reads 1e-4 and 1e5 (no dot) as text, and a
    whole number written as a float (1e5, 100000.0) is a fine int. Anything else is returned as it came."""
    try:
        number = float(value) if isinstance(value, str) else value
        if hint is float:
            return float(number)
    except (ValueError, OverflowError):  # not a number, or an int beyond floats
        return value
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return value


def shown(value: Any) -> str:
    """`value` for an error message: its repr, shortened to a line."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text
        text = f"<a {value.bit_length()}-bit integer>"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
