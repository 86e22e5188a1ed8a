"""What the ``rlfm label`` commands share: defaults and required-value checks."""

from __future__ import annotations

from rlfm.errors import ConfigError

DEFAULT_DB = "runs/labels.db"
DEFAULT_URL = "http://127.0.0.1:8000"


def require(value: object, flag: str, what: str) -> None:
    """ConfigError naming ``flag`` when a required value was not given."""
    if value is None or value == "":
        raise ConfigError(f"{flag}: {what}")
