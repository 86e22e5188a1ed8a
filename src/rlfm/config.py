"""Configs: frozen dataclasses, YAML presets, command-line flags.

Precedence is defaults < YAML (``--config file.yaml``) < command-line flags. Every stage's
``Config`` is a frozen dataclass whose fields carry a docstring (shown by ``--help``) and whose
``__post_init__`` validates values with :func:`check`, so a bad value fails at once with a
message naming the field, whichever source it came from.

The resolved config is written as YAML to ``<out>/config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from rlfm.errors import ConfigError

C = TypeVar("C")


def check(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError naming ``field`` unless ``ok``. Used in each Config's __post_init__."""
    if not ok:
        raise ConfigError(f"{field}: {message}")


def _coerce(tp: Any, value: Any, field: str) -> Any:
    """Convert a YAML value to the annotated type of ``field`` (the few types configs use)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, field)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{field}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{field}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{field}: expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, field) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{field}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, field) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{field}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{field}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{field}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{field}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{field}: expected a path, got {value!r}")
        return Path(value)
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config: {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping of field: value")
    return data


def from_dict(cls: type[C], data: dict[str, Any], base: C | None = None, source: str = "") -> C:
    """Build ``cls`` from ``base`` (default: ``cls()``) with the fields in ``data`` replaced.

    Keys may use ``-`` or ``_``. Unknown keys and badly typed values raise ConfigError naming
    the key and ``source``.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    where = f" (in {source})" if source else ""
    changes = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            import difflib

            close = difflib.get_close_matches(name, sorted(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: unknown field{where}{hint}")
        try:
            changes[name] = _coerce(hints[name], value, name)
        except ConfigError as e:
            raise ConfigError(f"{e}{where}") from None
    try:
        return dataclasses.replace(base if base is not None else cls(), **changes)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able values (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v

    return plain(cfg)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    tmp.replace(path)


def _config_flag(args: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``args`` (``--config x`` or ``--config=x``), if any."""
    for i, a in enumerate(args):
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def parse(cls: type[C], args: Sequence[str] | None = None, prog: str | None = None) -> C:
    """Parse a stage config: defaults < ``--config`` YAML < flags. ``--help`` documents fields."""
    import tyro

    args = list(sys.argv[1:] if args is None else args)
    # `--kl-target none`: accept lower-case none/null for optional values
    args = [
        "None" if a.lower() in ("none", "null") and i > 0 and args[i - 1].startswith("--") else a
        for i, a in enumerate(args)
    ]
    default = cls()
    path = _config_flag(args)
    if path is not None and "--help" not in args and "-h" not in args:
        default = from_dict(cls, load_yaml(path), default, source=path)
    return tyro.cli(cls, args=args, default=default, prog=prog)
