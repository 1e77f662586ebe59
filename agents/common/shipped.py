"""The configs shipped with the package, found by name: `aaren-rl train --config hopper-medium`.

The repository's `configs/` folder is installed as the package `aaren_rl_configs` (pyproject.toml maps
one to the other), so an installed wheel holds the same files at a place `importlib` knows; nothing
here reads files relative to a checkout. A config file given by path is used as it is; a name that is
no file in the current folder is looked up among the shipped ones (`quickstart`, `hopper-medium.yaml`,
`sweeps/quality-quick`), whose `base:` includes resolve among them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from agents.common.overrides import ConfigError

#: The package holding the shipped configs (the repository's configs/ folder).
PACKAGE = "aaren_rl_configs"
#: The folder of the shipped sweep files, inside the shipped configs.
SWEEPS = "sweeps"


def shipped_dir() -> Path:
    """The folder of the shipped configs; a ConfigError when aaren-rl was installed without them."""
    try:
        package = importlib.import_module(PACKAGE)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the shipped configs (package {PACKAGE}) are not installed. Fix: install aaren-rl again "
            "(pip install aaren-rl, or pip install -e . in a checkout), or pass a config file by path"
        ) from exc
    return Path(package.__file__).parent


def shipped_configs() -> dict[str, Path]:
    """Every shipped config by name: training configs by file stem (`hopper-medium`), sweep files as
    `sweeps/<stem>`."""
    root = shipped_dir()
    files = [*sorted(root.glob("*.yaml")), *sorted((root / SWEEPS).glob("*.yaml"))]
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in files}


def summary(path: Path) -> str:
    """A config's first comment line (what each shipped file starts with), without the `#`."""
    first = path.read_text(encoding="utf-8").splitlines()[:1]
    return first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""


def find_config(spec: str, folder: str = "") -> Path:
    """The config file `spec` names: the file at that path when there is one, else the shipped config
    of that name (with or without `.yaml`; looked for in `folder` first, e.g. `sweeps`); a ConfigError
    listing the shipped names when neither exists."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    root = shipped_dir()
    name = spec if spec.endswith(".yaml") else f"{spec}.yaml"
    for candidate in (root / folder / name, root / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {spec!r} not found: no such file ({path.absolute()}) and no shipped config of that name. "
        f"Fix: pass a YAML file, or a shipped config by name: {', '.join(shipped_configs())} "
        "(aaren-rl configs lists them)"
    )
