"""The experiment configs shipped with aaren-rl, installed as the package `aaren_rl_configs` (pyproject.toml):
YAML files that `agents.common.shipped` finds by name. No code."""
