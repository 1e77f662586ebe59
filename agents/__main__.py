"""`python -m agents COMMAND ...`: the same as the installed `aaren-rl COMMAND ...` (agents.commands)."""

from agents.commands import console

console()
