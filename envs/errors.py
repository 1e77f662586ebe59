"""The error types of the environment side for input a user can fix (scripts print them as one line)."""


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, key and row at fault and a fix."""


class SettingError(ValueError):
    """A number a collection cannot run with (a count, seed or noise level); the message names the
    setting, its command-line flag and what it may be."""


class EnvNameError(ValueError):
    """An environment name or dataset recipe id that names nothing known here; the message lists what is."""


class MissingExtraError(ImportError):
    """An optional extra that the asked-for task needs is not installed; the message names the install
    command."""
