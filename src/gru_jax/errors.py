"""Exception types raised by gru_jax.

Every error a user can cause derives from `InputError`; the command-line tools print its message as a
single line and exit with status 2. `RunError` covers runs that started correctly and then failed
(a diverging loss, a checkpoint that cannot be written); those exit with status 1.
"""


class GruJaxError(Exception):
    """Base class for errors raised by gru_jax."""


class InputError(GruJaxError):
    """An input file, option or value is invalid; the message names it and the fix."""


class ArchiveError(InputError):
    """A sentiment archive cannot be read or does not have the DLStudio layout."""


class EmbeddingsError(InputError):
    """A word-vector file cannot be read or does not fit the data or the model."""


class ConfigError(InputError):
    """A configuration value or command-line option is invalid."""


class CheckpointError(InputError):
    """A checkpoint is missing, incomplete, or does not match what it is used for."""


class RunError(GruJaxError):
    """A run that started with valid input failed."""


class DivergedError(RunError):
    """The training loss became NaN or infinite."""
