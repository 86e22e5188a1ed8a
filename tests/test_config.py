"""Configs: precedence defaults < YAML < flags, validation naming the field, round trip."""

import subprocess
import sys

import pytest

from rlfm.config import from_dict, load_yaml, parse, save_yaml
from rlfm.errors import ConfigError
from rlfm.stages.pretrain import Config


def test_precedence_defaults_yaml_flags(tmp_path):
    """A YAML value replaces the default; a flag replaces the YAML value."""
    y = tmp_path / "c.yaml"
    y.write_text("steps: 7\nlr: 0.002\nbatch-size: 4\n")
    cfg = parse(Config, ["--config", str(y), "--steps", "9"])
    assert cfg.steps == 9  # flag wins
    assert cfg.lr == 0.002  # from YAML
    assert cfg.batch_size == 4  # YAML key with a dash
    assert cfg.warmup_steps == Config().warmup_steps  # default


def test_round_trip(tmp_path):
    """A saved config reads back equal."""
    cfg = Config(steps=11, prompts=("a", "b"), context=64)
    save_yaml(cfg, tmp_path / "config.yaml")
    assert from_dict(Config, load_yaml(tmp_path / "config.yaml")) == cfg


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    """A misspelt key is reported with the file and a suggestion."""
    y = tmp_path / "bad.yaml"
    y.write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match=r"stpes.*bad.yaml.*steps"):
        parse(Config, ["--config", str(y)])


def test_bad_yaml_value_names_field(tmp_path):
    """A value of the wrong type in YAML names the field and the file."""
    y = tmp_path / "bad.yaml"
    y.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"steps.*integer.*bad.yaml"):
        parse(Config, ["--config", str(y)])


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [("lr", -1.0, "lr: must be > 0"), ("steps", 0, "steps"), ("val_fraction", 1.5, "val_fraction")],
)
def test_invalid_values_fail_at_once(field, value, pattern):
    """Invalid values raise at construction with the field's name."""
    with pytest.raises(ConfigError, match=pattern):
        Config(**{field: value})


def test_unknown_preset_and_missing_data():
    """An unknown preset lists the presets; a missing --data path is named."""
    with pytest.raises(ConfigError, match=r"model: 'gpt5'.*gpt3-small"):
        Config(model="gpt5")
    with pytest.raises(ConfigError, match="data: /no/such/file does not exist"):
        Config(data="/no/such/file")


def test_cli_reports_error_without_traceback():
    """`rlfm pretrain --lr -1` exits 2 with a one-line message naming lr."""
    r = subprocess.run(
        [sys.executable, "-m", "rlfm", "pretrain", "--lr", "-1"], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "lr: must be > 0" in r.stderr
    assert "Traceback" not in r.stderr


def test_shipped_yaml_presets_are_valid():
    """Every configs/pretrain/*.yaml parses; tiny.yaml writes at least three checkpoints."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs" / "pretrain"
    files = sorted(root.glob("*.yaml"))
    assert files
    for f in files:
        parse(Config, ["--config", str(f)])
    tiny = parse(Config, ["--config", str(root / "tiny.yaml")])
    assert tiny.model == "tiny" and tiny.steps // tiny.save_every >= 3
