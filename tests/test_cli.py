"""The command line: every command's --help, every shipped YAML preset, deprecated flags."""

from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest
import tyro

from rlfm.cli import COMMANDS, main
from rlfm.config import _field_docs, parse

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESET_COMMANDS = {
    "pretrain": "pretrain",
    "sft": "sft",
    "reward": "reward train",
    "reward-segments": "reward train-segments",
    "ppo": "ppo",
    "control": "control ppo",
    "dt": "dt train",
    "cdt": "cdt train",
}
"""configs/<folder>/*.yaml -> the command whose Config they fill."""


def _config_class(command: str) -> type:
    module, _, _ = COMMANDS[command]
    return importlib.import_module(module).Config


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_documents_every_flag(command, capsys):
    """`rlfm <command> --help` exits 0 and shows a flag and a help line for every field (a
    positional argument: its help line and default)."""
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    cls = _config_class(command)
    hints = typing.get_type_hints(cls, include_extras=True)
    meta = {f.name: getattr(hints[f.name], "__metadata__", ()) for f in dataclasses.fields(cls)}
    flags = [name for name, m in meta.items() if tyro.conf.Suppress not in m]  # YAML only
    for name in flags:
        if tyro.conf.Positional in meta[name]:
            help_line = " ".join(_field_docs(cls)[name].split()[:3])
            assert help_line in " ".join(out.split()), (command, name)
        else:
            assert "--" + name.replace("_", "-") in out, (command, name)
    assert out.count("(default:") >= len(flags) - 1


def test_every_yaml_preset_parses_and_validates():
    """Every configs/<folder>/*.yaml fills its command's Config without an unknown key or an
    invalid value, and every folder belongs to a command."""
    folders = sorted(p for p in CONFIGS.iterdir() if p.is_dir())
    assert {p.name for p in folders} <= set(PRESET_COMMANDS), "register new preset folders"
    n = 0
    for folder in folders:
        cls = _config_class(PRESET_COMMANDS[folder.name])
        for f in sorted(folder.glob("*.yaml")):
            cfg = parse(cls, ["--config", str(f)])
            assert isinstance(cfg, cls)
            n += 1
    assert n >= 8


def test_ppo_presets_match_the_defaults():
    """configs/ppo/small.yaml is the default run written out; tiny.yaml is a shorter one."""
    cls = _config_class("ppo")
    small = parse(cls, ["--config", str(CONFIGS / "ppo" / "small.yaml")])
    assert dataclasses.replace(small, config=None) == cls()
    tiny = parse(cls, ["--config", str(CONFIGS / "ppo" / "tiny.yaml")])
    assert tiny.updates < small.updates and tiny.rollout_batch % tiny.minibatch == 0


@pytest.mark.parametrize(
    ("command", "old", "new"),
    [
        (["pretrain"], ["--sample-tokens", "7"], {"max_new_tokens": 7}),
        (["sft"], ["--sample-tokens=9"], {"max_new_tokens": 9}),
        (["ppo"], ["--eval-share", "0.2"], {"val_fraction": 0.2}),
        (["reward", "train"], ["--lora-rank", "16"], {"adapter": "lora", "lora_r": 16}),
        (["reward", "train"], ["--lora-rank", "0"], {"adapter": "full"}),
    ],
)
def test_renamed_flags_still_work_with_a_note(command, old, new, capsys):
    """An old flag spelling works for one more release and says which flag replaces it."""
    cfg = parse(_config_class(" ".join(command)), old)
    assert {k: getattr(cfg, k) for k in new} == new
    err = capsys.readouterr().err
    assert "deprecated" in err and "--" + next(iter(new)).replace("_", "-") in err


def test_renamed_yaml_keys_still_work(tmp_path, capsys):
    """A YAML preset written with an old key loads, with a note naming the file."""
    y = tmp_path / "old.yaml"
    y.write_text("eval_share: 0.25\n")
    cfg = parse(_config_class("ppo"), ["--config", str(y)])
    assert cfg.val_fraction == 0.25
    assert "old.yaml" in capsys.readouterr().err
