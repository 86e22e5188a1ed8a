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
