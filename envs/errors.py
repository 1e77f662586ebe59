"""The one error type of the environment side's data handling."""


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, key and row at fault and a fix."""
