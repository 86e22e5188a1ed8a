"""Model cards: the ``README.md`` of every model directory rlfm writes.

Every checkpoint (written by checkpoint.py for every stage, rewritten with the final metrics when
the run finishes) and every ``rlfm merge`` output carries one, in the Hugging Face convention: a
YAML front matter, then text::

    ---
    library_name: transformers          transformers, peft (an adapter) or rlfm (its own format)
    base_model: runs/demo/sft           the model it was trained from, as given (a local path)
    pipeline_tag: text-generation       text-generation, text-classification (reward and value
                                        models) or reinforcement-learning
    tags: [rlfm, ppo, rlhf]
    ---
    # <what it is>
    the stage and what it does, base model, data, the command that made it, the rlfm
    version; the settings that differ from the stage's defaults; the metrics (final once the
    run has finished); how to load it.

The card is documentation: it is not in a checkpoint's manifest, so rewriting it never makes a
checkpoint look damaged.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from rlfm import __version__

CARD = "README.md"

_TAGS = {
    "pretrain": ["pretraining"],
    "sft": ["sft"],
    "reward train": ["reward-model", "rlhf"],
    "ppo": ["ppo", "rlhf"],
    "merge": ["lora", "merged"],
    "reward train-segments": ["reward-model", "preference-learning"],
    "control ppo": ["ppo", "gymnasium"],
    "control prefs": ["preference-learning", "gymnasium"],
    "dt train": ["decision-transformer", "offline-rl"],
    "cdt train": ["decision-transformer", "offline-rl", "safe-rl"],
}
_DATA_FIELDS = ("data", "val_data", "prompts", "dataset", "env")
"""Settings that name what a stage trains on (``prompts``: when it is a file, as in PPO)."""
_NOT_SETTINGS = {"config", "out", "device"}


def _kind(directory: Path) -> tuple[str, str]:
    """(library_name, pipeline_tag) of what ``directory`` holds."""
    from rlfm.models.heads import head_format

    head = head_format(directory)
    if (directory / "adapter_config.json").is_file():
        return "peft", "text-classification" if head else "text-generation"
    config = directory / "config.json"
    if config.is_file() and "architectures" in config.read_text(encoding="utf-8"):
        return "transformers", "text-classification" if head else "text-generation"
    return "rlfm", "reinforcement-learning"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value)) or "(none)"
    return "none" if value is None else str(value)


def _data_fields(cfg: Any) -> dict[str, Any]:
    """The settings of ``cfg`` that name its data, and their values (None: not given)."""
    out = {}
    for name in _DATA_FIELDS:
        value = getattr(cfg, name, None)
        if name == "prompts" and not isinstance(value, Path | type(None)):
            continue  # e.g. pre-training's sample prompts: a setting, not data
        if hasattr(cfg, name):
            out[name] = value
    return out


def _changed_settings(cfg: Any, base: str | None) -> dict[str, Any]:
    """The fields of a stage's config whose value differs from the stage's default (but for
    the data and the base model, which the card names apart)."""
    skip = _NOT_SETTINGS | set(_data_fields(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in skip or (base is not None and str(value) == base):
            continue
        default = f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if default is dataclasses.MISSING or value != default:
            out[f.name] = value
    return out


def base_model_of(cfg: Any) -> str | None:
    """The model a stage starts from, as given: its ``policy`` or ``model`` when that names a
    directory (a preset name such as ``tiny`` means training from scratch)."""
    for name in ("policy", "model"):
        value = getattr(cfg, name, None)
        if value is not None and Path(value).is_dir():
            return str(value)
    return None


def data_of(cfg: Any) -> str:
    """What a stage trained on, from its config."""
    given = [f"{name} `{_show(value)}`" for name, value in _data_fields(cfg).items() if value]
    return "; ".join(given) if given else "the built-in default task"


def _usage(directory: Path, library: str, tag: str) -> list[str]:
    if tag == "text-generation":
        note = " (with peft installed: it loads the base model the adapter names)"
        return [
            f"Loads with transformers{note if library == 'peft' else ''}:",
            "",
            "```python",
            "from transformers import pipeline",
            "",
            f'generate = pipeline("text-generation", model="{directory}")',
            "```",
        ]
    if tag == "text-classification":
        from rlfm.models.heads import HEAD_FILE

        if library == "peft":
            load = [
                "import json, torch",
                "from peft import PeftModel",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                f'tok = AutoTokenizer.from_pretrained("{directory}")',
                "base = AutoModelForSequenceClassification.from_pretrained(",
                "    BASE_MODEL, num_labels=1, pad_token_id=tok.pad_token_id",
                ")",
                f'model = PeftModel.from_pretrained(base, "{directory}")',
                f'offset = json.load(open("{directory}/{HEAD_FILE}"))["offset"]',
            ]
        else:
            load = [
                "import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                f'tok = AutoTokenizer.from_pretrained("{directory}")',
                f'model = AutoModelForSequenceClassification.from_pretrained("{directory}")',
                'offset = model.config.rlfm_head["offset"]',
            ]
        return [
            "A one-label `AutoModelForSequenceClassification`"
            + (
                " (a peft LoRA adapter onto one; BASE_MODEL is `base_model`)"
                if library == "peft"
                else ""
            )
            + ". Its output plus `offset` is rlfm's normalised reward (mean 0, standard "
            "deviation 1 on the reference policy's samples); differences between texts need no "
            "offset. rlfm reads a reply as the prompt's tokens (a lone BOS when there is no "
            "prompt), the reply's tokens and EOS, and the score at that EOS:",
            "",
            "```python",
            *load,
            "",
            "def reward(prompt: str, reply: str) -> float:",
            "    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id",
            "    ids = tok(prompt, add_special_tokens=False).input_ids if prompt else [start]",
            "    ids += tok(reply, add_special_tokens=False).input_ids + [tok.eos_token_id]",
            "    with torch.no_grad():",
            "        return float(model(torch.tensor([ids])).logits[0, 0]) + offset",
            "```",
        ]
    return [f"rlfm's own format: load it with rlfm (`--model {directory}`)."]


def _title(directory: Path) -> str:
    if directory.parent.name == "checkpoints":  # <out>/checkpoints/step_N
        return f"{directory.parent.parent.name} ({directory.name.replace('_', ' ')})"
    return directory.name


def card_text(
    directory: str | Path,
    *,
    shown_as: str | Path | None = None,
    stage: str,
    cfg: Any,
    command: str,
    metrics: dict[str, Any] | None,
    final: bool,
    base_model: str | None = None,
    data: str | None = None,
) -> str:
    """The model card of the model in ``directory``, which the card calls ``shown_as`` (where
    it will be: a checkpoint is written under a temporary name). ``metrics``: the final
    metrics when ``final``."""
    library, tag = _kind(Path(directory))
    directory = Path(shown_as if shown_as is not None else directory)
    base = base_model if base_model is not None else base_model_of(cfg)
    tags = ["rlfm", *_TAGS.get(stage, [])]
    adapter = getattr(cfg, "adapter", None)
    if adapter in ("lora", "prefix"):
        tags.append({"lora": "lora", "prefix": "prefix-tuning"}[adapter])
    front: dict[str, Any] = {"library_name": library}
    if base:
        front["base_model"] = base
    front |= {"pipeline_tag": tag, "tags": tags}
    what = {"text-generation": "A language model", "text-classification": "A reward model"}
    doc = (type(cfg).__doc__ or "").strip().splitlines()
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {_title(directory)}",
        "",
        f"{what.get(tag, 'A model')} made by `rlfm {stage}`" + (f": {doc[0]}" if doc else "."),
        "",
        f"- **Base model:** `{base}`" if base else "- **Base model:** none (trained from scratch)",
        f"- **Data:** {data if data is not None else data_of(cfg)}",
        f"- **Command:** `{command}`",
        f"- **rlfm version:** {__version__}",
        "",
        "## Settings",
        "",
    ]
    changed = _changed_settings(cfg, base)
    if changed:
        lines += ["Those that differ from the stage's defaults (all of them: `config.yaml`):", ""]
        lines += ["| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_show(v)} |" for k, v in changed.items()]
    else:
        lines.append("The stage's defaults (all of them: `config.yaml`).")
    lines += ["", "## Metrics", ""]
    shown = {k: v for k, v in (metrics or {}).items() if isinstance(v, int | float | str)}
    if not final:
        lines.append("The run had not finished when this was written: see its `metrics.jsonl`.")
    elif shown:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_show(v)} |" for k, v in shown.items()]
    else:
        lines.append("None reported.")
    lines += ["", "## Use", "", *_usage(directory, library, tag), ""]
    return "\n".join(lines)


def write_model_card(directory: str | Path, **fields: Any) -> Path:
    """Write ``directory/README.md`` (:func:`card_text` of ``fields``); returns its path."""
    path = Path(directory) / CARD
    path.write_text(card_text(directory, **fields), encoding="utf-8")
    return path
