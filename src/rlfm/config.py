"""Configs: frozen dataclasses, YAML presets, command-line flags.

Precedence is defaults < YAML (``--config file.yaml``) < command-line flags. Every stage's
``Config`` is a frozen dataclass whose fields carry a docstring (shown by ``--help``) and whose
``__post_init__`` validates values with :func:`check`, so a bad value fails at once with a
message naming the field, whichever source it came from.

**Run settings** every stage shares — device, precision, seed, the evaluation / checkpoint /
logging intervals, how many checkpoints to keep, gradient clipping — are defined once, in
:class:`Runtime` and :class:`RunSettings`, and validated once. The :func:`settings` decorator
makes a stage's ``Config`` with its own fields followed by these (flat: ``--device``,
``cfg.device``); a stage only chooses their defaults.

A renamed field keeps its old spelling for one release: a Config lists it in ``RENAMED`` and
the old flag or YAML key still works, with a note naming the new one.

The resolved config is written as YAML to ``<out>/config.yaml`` and into every checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml

from rlfm.errors import ConfigError

C = TypeVar("C")


def check(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError naming ``field`` unless ``ok``. Used in each Config's __post_init__."""
    if not ok:
        raise ConfigError(f"{field}: {message}")


# ---------------------------------------------------------------------------- run settings


@dataclass(frozen=True)
class Runtime:
    """Where and how a command computes: every command that runs a model has these."""

    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Compute precision: bf16 autocast where the hardware runs it fast (auto), or fp32."""
    seed: int = 0
    """Seed of initialisation, data order and sampling."""


@dataclass(frozen=True)
class RunSettings(Runtime):
    """Runtime plus the settings of a training run's loop: every training stage has these."""

    eval_every: int = 100
    """Evaluate every this many steps (and at the end)."""
    save_every: int = 100
    """Write a checkpoint every this many steps (and at the end)."""
    log_every: int = 10
    """Log training metrics every this many steps (and at the end)."""
    keep_checkpoints: int = 3
    """Keep only the newest this many checkpoints."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""


@dataclass(frozen=True)
class Optimisation:
    """The optimisation loop of a supervised stage: steps, batches, AdamW and its schedule."""

    steps: int = 400
    """Optimizer steps."""
    batch_size: int = 16
    """Examples per optimizer step (sequences, demonstrations, rankings, comparisons), summed
    over all processes."""
    micro_batch_size: int | None = None
    """Examples per forward/backward pass per process; below the per-process batch this is
    gradient accumulation. Default: the whole per-process batch at once."""
    lr: float | None = None
    """Peak learning rate. Default: the stage's (see its description above)."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up (then cosine decay)."""
    weight_decay: float = 0.0
    """AdamW weight decay on weight matrices."""


@dataclass(frozen=True)
class AdapterSettings:
    """How a stage adapts a pre-trained model: every weight, or a LoRA or prefix adapter."""

    adapter: Literal["full", "lora", "prefix"] = "full"
    """full: train every weight; lora: low-rank updates W₀ + (α/r)·BA of chosen layers (Hu et al.
    2021); prefix: trained key/value vectors every layer attends to (Li & Liang 2021)."""
    lora_r: int = 8
    """LoRA rank r."""
    lora_alpha: float | None = None
    """LoRA scale α (the update is multiplied by α / r). Default: 2r."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch's input."""
    lora_targets: tuple[str, ...] = ()
    """Modules to adapt (names or suffixes such as attn.c_proj, or all-linear). Default: the
    attention projections (every linear layer for reward models)."""
    prefix_tokens: int = 16
    """Prefix-tuning: trained positions per layer."""


RESUMABLE_SETTINGS = frozenset(
    {"device", "eval_every", "save_every", "log_every", "keep_checkpoints"}
)
"""Run settings that may change when a run is resumed (the rest define the run)."""


def check_settings(cfg: Any) -> None:
    """Validate the run settings ``cfg`` has (one validation for every stage)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    if "device" in names:
        d = cfg.device
        check(
            d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit()),
            "device",
            f"{d!r} is not one of auto, cpu, cuda, cuda:N",
        )
    for name in ("eval_every", "save_every", "log_every", "keep_checkpoints"):
        if name in names:
            check(getattr(cfg, name) >= 1, name, f"must be ≥ 1, got {getattr(cfg, name)}")
    if "max_grad_norm" in names:
        check(cfg.max_grad_norm >= 0, "max_grad_norm", f"must be ≥ 0, got {cfg.max_grad_norm}")
    for name in ("steps", "batch_size"):
        if name in names:
            check(getattr(cfg, name) >= 1, name, f"must be ≥ 1, got {getattr(cfg, name)}")
    if "micro_batch_size" in names:
        m = cfg.micro_batch_size
        check(m is None or m >= 1, "micro_batch_size", f"must be ≥ 1, got {m}")
    if "lr" in names:
        check(cfg.lr is None or cfg.lr > 0, "lr", f"must be > 0, got {cfg.lr}")
    for name in ("warmup_steps", "weight_decay"):
        if name in names:
            check(getattr(cfg, name) >= 0, name, f"must be ≥ 0, got {getattr(cfg, name)}")
    if "lora_r" in names:
        check(cfg.lora_r >= 1, "lora_r", f"must be ≥ 1, got {cfg.lora_r}")
        a = cfg.lora_alpha
        check(a is None or a > 0, "lora_alpha", f"must be > 0, got {a}")
        d = cfg.lora_dropout
        check(0 <= d < 1, "lora_dropout", f"must be in [0, 1), got {d}")
        check(cfg.prefix_tokens >= 1, "prefix_tokens", f"must be ≥ 1, got {cfg.prefix_tokens}")


def lora_alpha(cfg: Any) -> float:
    """The LoRA scale α of a config with adapter settings (2r unless given)."""
    return cfg.lora_alpha if cfg.lora_alpha is not None else 2.0 * cfg.lora_r


def _field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for a, b in zip(body, body[1:]):
            documented = isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and documented:
                docs[a.target.id] = " ".join(str(b.value.value).split())  # type: ignore[attr-defined]
    return docs


def settings(
    *groups: type, docs: dict[str, str] | None = None, **defaults: Any
) -> Callable[[type], type]:
    """Class decorator: a frozen config dataclass of the class's own fields followed by the
    fields of each settings group (:class:`Optimisation` and :class:`RunSettings` for training
    stages, :class:`Runtime` for other commands, :class:`AdapterSettings` where a model is
    adapted) with the stage's ``defaults`` (and, where a stage words one differently, its own
    ``docs``). The shared settings are validated (:func:`check_settings`) before the class's
    own ``__post_init__``."""
    import tyro

    shared = [f for g in groups for f in dataclasses.fields(g)]
    hints = {k: v for g in groups for k, v in typing.get_type_hints(g).items()}
    docs = {k: v for g in groups for k, v in _field_docs(g).items()} | (docs or {})
    unknown = set(defaults) - {f.name for f in shared}
    if unknown:
        raise TypeError(f"settings: {sorted(unknown)} are not fields of {groups}")

    def decorate(cls: type) -> type:
        annotations = dict(cls.__dict__.get("__annotations__", {}))
        for f in shared:
            if f.name in annotations:
                raise TypeError(f"{cls.__qualname__}.{f.name} is a shared setting")
            annotations[f.name] = Annotated[hints[f.name], tyro.conf.arg(help=docs.get(f.name, ""))]
            setattr(cls, f.name, defaults.get(f.name, f.default))
        cls.__annotations__ = annotations
        own_post_init = cls.__dict__.get("__post_init__")

        def __post_init__(self: Any) -> None:
            check_settings(self)
            if own_post_init is not None:
                own_post_init(self)

        cls.__post_init__ = __post_init__
        return dataclass(frozen=True)(cls)

    return decorate


def resumable_fields(cls: type) -> frozenset[str]:
    """Fields of a stage's Config that may change when a run is resumed: the shared ones in
    :data:`RESUMABLE_SETTINGS` and the stage's own ``RESUMABLE``."""
    return RESUMABLE_SETTINGS | frozenset(getattr(cls, "RESUMABLE", ())) | {"config", "out"}


# ---------------------------------------------------------------------------- renamed fields


def _renames(cls: type) -> dict[str, Any]:
    return dict(getattr(cls, "RENAMED", {}))


def renamed_values(cls: type, old: str, value: Any) -> dict[str, Any]:
    """The new field values an old field name and its value stand for."""
    new = _renames(cls)[old]
    return new(value) if callable(new) else {new: value}


def _note_renamed(old: str, new: dict[str, Any], where: str) -> None:
    names = " ".join(f"--{k.replace('_', '-')}" for k in new)
    print(
        f"note: {where}{old.replace('_', '-')} is deprecated and will be removed in the next "
        f"release; use {names}",
        file=sys.stderr,
    )


def _rename_flags(cls: type, args: list[str]) -> list[str]:
    """Command-line flags with every deprecated name replaced by its new one(s)."""
    renames = _renames(cls)
    if not renames:
        return args
    out: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, inline = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        field = name.replace("-", "_")
        if field in renames:
            if eq:
                value = inline
            else:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            new = renamed_values(cls, field, value)
            _note_renamed(field, new, "--")
            for k, v in new.items():
                out += [f"--{k.replace('_', '-')}", str(v)]
        else:
            out.append(a)
        i += 1
    return out


def _coerce(tp: Any, value: Any, field: str) -> Any:
    """Convert a YAML value to the annotated type of ``field`` (the few types configs use)."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _coerce(get_args(tp)[0], value, field)
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
        if not isinstance(value, str | os.PathLike):  # a Path from Python (rlfm.api)
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


def from_dict(
    cls: type[C], data: dict[str, Any], base: C | None = None, source: str = "", check: bool = True
) -> C:
    """Build ``cls`` from ``base`` (default: ``cls()``) with the fields in ``data`` replaced.

    Keys may use ``-`` or ``_``. Unknown keys and badly typed values raise ConfigError naming
    the key and ``source``.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    where = f" (in {source})" if source else ""
    changes = {}
    renames = _renames(cls)
    items = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in renames and name not in fields:
            new = renamed_values(cls, name, value)
            _note_renamed(name, new, f"{source}: " if source else "")
            items += list(new.items())
        else:
            items.append((name, value))
    for name, value in items:
        key = name
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
        if not check:  # values for the command line to complete: validated once, at the end
            values = _values(base) if base is not None else _defaults(cls)
            return _unchecked(cls, values | changes)
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _values(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def _unchecked(cls: type[C], values: dict[str, Any]) -> C:
    """An instance holding ``values`` without running ``__post_init__``: the command line's
    starting point, so a default that only makes sense once a flag is given (a required file,
    say) fails when the flags are in, not before."""
    obj = cls.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


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

    args = _rename_flags(cls, list(sys.argv[1:] if args is None else args))
    # `--kl-target none`: accept lower-case none/null for optional values
    args = [
        "None" if a.lower() in ("none", "null") and i > 0 and args[i - 1].startswith("--") else a
        for i, a in enumerate(args)
    ]
    path = _config_flag(args)
    if path is not None and "--help" not in args and "-h" not in args:
        default = from_dict(cls, load_yaml(path), source=path, check=False)
    else:
        default = _unchecked(cls, _defaults(cls))
    return tyro.cli(cls, args=args, default=default, prog=prog)
