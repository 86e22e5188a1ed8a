"""Checkpoints: atomic writes, pruning, and resolving run directories to models."""

import pytest
import torch

from rlfm import checkpoint
from rlfm.engine import Engine
from rlfm.errors import ModelError
from rlfm.models.presets import build_model, model_config


@pytest.fixture
def tiny():
    return build_model(model_config("tiny", vocab_size=64, context=16), seed=0)


def _save(tmp_path, step, model, keep=3):
    engine = Engine.create("cpu", "fp32")
    opt = torch.optim.AdamW(model.parameters())
    return checkpoint.save_checkpoint(
        tmp_path,
        step,
        engine=engine,
        model=model,
        tokenizer=None,
        config={"x": 1},
        trainer_state={"optimizer": opt.state_dict(), "data": {"epoch": 0, "cursor": step}},
        keep=keep,
    )


def test_keeps_newest_n(tmp_path, tiny):
    """Only the newest `keep` checkpoints remain, ordered by step number (not by name)."""
    for step in (5, 10, 50, 100):
        _save(tmp_path, step, tiny, keep=2)
    assert [p.name for p in checkpoint.checkpoints(tmp_path)] == ["step_50", "step_100"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_100"


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, tiny, monkeypatch):
    """A crash while writing step 20 leaves step 10 complete and no step_20 directory."""
    good = _save(tmp_path, 10, tiny)
    before = {p.name: p.read_bytes() for p in good.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(tiny), "save_pretrained", boom)
    with pytest.raises(OSError):
        _save(tmp_path, 20, tiny)
    assert checkpoint.latest_checkpoint(tmp_path) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not (tmp_path / "checkpoints" / "step_20").exists()


def test_state_round_trip_restores_rng(tmp_path, tiny):
    """Trainer state reads back, and the RNG continues where it was saved."""
    torch.manual_seed(123)
    ckpt = _save(tmp_path, 7, tiny)
    expected = torch.rand(3)
    torch.manual_seed(999)
    state = checkpoint.load_trainer_state(ckpt, Engine.create("cpu", "fp32"))
    assert state["step"] == 7 and state["data"]["cursor"] == 7
    assert torch.equal(torch.rand(3), expected)


def test_resolve_model_dir(tmp_path, tiny):
    """A run dir resolves to its newest checkpoint; a model dir to itself; others fail clearly."""
    ckpt = _save(tmp_path, 3, tiny)
    assert checkpoint.resolve_model_dir(tmp_path) == ckpt
    assert checkpoint.resolve_model_dir(ckpt) == ckpt
    with pytest.raises(ModelError, match="does not exist"):
        checkpoint.resolve_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="empty.*no config.json"):
        checkpoint.resolve_model_dir(tmp_path / "empty")
