"""User-facing errors.

Every error a user can cause (bad configuration, missing data, a corrupt checkpoint, a numerical
fault) is a :class:`PyroVAEError`. The CLI prints its message as one paragraph and exits with
status 2; it never shows a traceback for these.
"""


class PyroVAEError(Exception):
    """Base class for errors whose message tells the user what is wrong and what to do."""

    exit_code = 2


class ConfigError(PyroVAEError):
    """A recipe or command-line value is unknown, of the wrong type or out of range."""


class DataError(PyroVAEError):
    """A dataset is missing, corrupt, or does not fit the chosen likelihood."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run directory is missing, corrupt or does not match the configuration."""


class TrainingError(PyroVAEError):
    """Training cannot go on (for example the loss became NaN)."""
