"""Errors a user can cause. Each message names the culprit (field, file, row, directory).

The CLI prints these without a traceback and exits with status 2; anything else is a bug.
"""


class RlfmError(Exception):
    """Base class of the errors rlfm reports to a user as a plain message."""


class ConfigError(RlfmError, ValueError):
    """A config value is invalid: the message names the field and the value."""


class DataError(RlfmError, ValueError):
    """A data file or row is unusable: the message names the file (and row) and the problem."""


class ModelError(RlfmError, ValueError):
    """A model or tokenizer directory is missing or unusable: the message names the path."""


class RunError(RlfmError, OSError):
    """A run directory cannot be used or written: the message names the path and what is
    intact (another process holds it, another stage's run, no space, no permission, ...)."""


class Interrupted(Exception):
    """A run stopped on SIGINT or SIGTERM after saving a checkpoint (or with nothing to save).

    Not an error: the CLI prints the message and exits with 128 + the signal number (130 for
    Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
