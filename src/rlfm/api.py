"""rlfm from Python: every command of the ``rlfm`` command line as a function.

    from rlfm import api

    api.pretrain(out="runs/py/pretrain", model="tiny", steps=200)
    api.sft(model="runs/py/pretrain", out="runs/py/sft")
    metrics = api.ppo(policy="runs/py/sft", reward="runs/py/rm", out="runs/py/ppo", updates=10)

A command's function is its name with ``_`` for spaces and dashes (``rlfm reward train`` →
``api.reward_train``, ``rlfm reward train-segments`` → ``api.reward_train_segments``). It takes
the command's settings as keyword arguments named and typed exactly as the keys of its YAML
file, that is its flags without ``--`` (``max_new_tokens=48``, ``lora_targets=["c_attn"]``,
``kl_target=None``); ``config="file.yaml"`` reads such a file first, as ``--config`` does
(defaults < YAML < keyword arguments). ``help(api.ppo)`` lists them. The function builds the same
``Config`` the command line builds, runs the same function on it, and returns what that
returns: a training stage's final metrics (those of its ``summary.json``), ``reward_score`` the
rewards, ``sample`` the samples, ``merge`` the output directory. An error a user can cause
raises an :class:`rlfm.errors.RlfmError` subclass (``ConfigError``, ``DataError``,
``ModelError``, ``RunError``) with the message the command line prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from typing import Any

from rlfm.cli import COMMANDS

_NAMES = {name.replace(" ", "_").replace("-", "_"): name for name in COMMANDS}
__all__ = sorted(_NAMES)


def _config(command: str, settings: dict[str, Any]) -> Any:
    """The command's Config from keyword ``settings`` (and the YAML file ``config`` names),
    validated once, as the command line builds it."""
    from rlfm.config import from_dict, load_yaml

    module = importlib.import_module(COMMANDS[command][0])
    source = f"rlfm.api.{command.replace(' ', '_').replace('-', '_')}"
    base = None
    if settings.get("config") is not None:
        path = str(settings["config"])
        base = from_dict(module.Config, load_yaml(path), source=path, check=False)
    return from_dict(module.Config, settings, base=base, source=source)


def _call_text(name: str, settings: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in settings.items())
    return f"rlfm.api.{name}({args})"


def _function(name: str) -> Callable[..., Any]:
    command = _NAMES[name]
    module_name, fn_name, summary = COMMANDS[command]
    module = importlib.import_module(module_name)
    cls = module.Config

    def call(**settings: Any) -> Any:
        from rlfm.run import COMMAND
        from rlfm.tracking import quiet_libraries

        quiet_libraries()
        cfg = _config(command, settings)
        token = COMMAND.set(_call_text(name, settings))  # for run.json and the model cards
        try:
            return getattr(module, fn_name)(cfg)
        finally:
            COMMAND.reset(token)

    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls)  # the types, without the command line's annotations
    docs = _docs(cls)
    params = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=f.default if f.default is not dataclasses.MISSING else None,
            annotation=hints[f.name],
        )
        for f in fields
    ]
    call.__name__ = call.__qualname__ = name
    call.__module__ = __name__
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    lines = [f"{summary} (`rlfm {command}`; returns what {module_name}.{fn_name} returns)", ""]
    lines += [f"{f.name}: {docs.get(f.name, '')}" for f in fields]
    call.__doc__ = "\n".join(lines)
    return call


def _docs(cls: type) -> dict[str, str]:
    """Each field's description: its docstring, or for a shared setting the help the
    ``settings`` decorator attached."""
    from rlfm.config import _field_docs

    docs = _field_docs(cls)
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        for meta in getattr(hint, "__metadata__", ()):
            if name not in docs and getattr(meta, "help", None):
                docs[name] = meta.help
    return docs


def __getattr__(name: str) -> Callable[..., Any]:
    """``api.<command>``: made on first use (importing only that command's module)."""
    if name not in _NAMES:
        raise AttributeError(f"module 'rlfm.api' has no command {name!r}")
    fn = _function(name)
    globals()[name] = fn
    return fn


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
