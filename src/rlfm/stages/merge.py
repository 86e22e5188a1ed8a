"""Merging: fold a LoRA adapter into its base model's weights and save a plain HF model.

    W = W₀ + (α / r) · B A          (Hu et al. 2021, section 4.1: no inference latency)

    rlfm merge --adapter runs/demo/sft-lora --out runs/demo/sft-merged

``--adapter`` is an adapter directory written by ``rlfm sft --adapter lora`` (a checkpoint, or a
run directory: its newest checkpoint). Its base model is the directory named in
``adapter_config.json``. The result is an ordinary Hugging Face model directory
(``config.json``, ``model.safetensors``) with the adapter's tokenizer and a model card
(README.md): it loads with ``AutoModelForCausalLM.from_pretrained`` and needs neither peft nor
the base directory. A LoRA reward model (``rlfm reward train --adapter lora``) merges into a
one-label ``AutoModelForSequenceClassification`` directory (models/heads.py). Prefix-tuning
adds key/value vectors rather than weight updates, so it cannot be merged.

``--out`` must be empty or new (``--overwrite`` replaces what it holds) and may never be, hold or
lie inside the adapter or its base model: a merge never writes into its own input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlfm.checkpoint import resolve_model_dir
from rlfm.errors import ModelError
from rlfm.model_card import write_model_card
from rlfm.models import adapters, heads
from rlfm.models.tokenizer import load_tokenizer
from rlfm.run import invocation, prepare_output_dir


@dataclass(frozen=True)
class Config:
    """Fold a LoRA adapter into its base model."""

    adapter: Path = Path("runs/demo/sft")
    """An adapter directory (LoRA), an rlfm checkpoint holding one, or an rlfm run directory."""
    out: Path = Path("runs/demo/sft-merged")
    """Directory for the merged model and its tokenizer (new or empty)."""
    overwrite: bool = False
    """Replace what --out holds (never allowed when --out is the adapter or its base)."""


def run(cfg: Config) -> Path:
    """Merge and save; returns the output directory."""
    path = resolve_model_dir(cfg.adapter)
    if not adapters.is_adapter_dir(path):
        raise ModelError(
            f"adapter: {path} holds a plain model, not an adapter (nothing to merge: it can be "
            "used as it is)"
        )
    base = adapters.adapter_base_path(path)
    inputs = (Path(cfg.adapter), path, base)
    prepare_output_dir(cfg.out, overwrite=cfg.overwrite, inputs=inputs, create=False)  # before work
    tokenizer = load_tokenizer(path)
    if heads.head_format(path) is not None:  # a LoRA reward model: merged into its classifier
        merged = heads.RewardModel.from_pretrained(path)
    else:
        merged = adapters.load_model(path, merge=True)
    out = prepare_output_dir(cfg.out, overwrite=cfg.overwrite, inputs=inputs)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_model_card(
        out,
        stage="merge",
        cfg=cfg,
        command=invocation(),
        metrics=None,
        final=True,
        base_model=str(base),
        data=f"that of the adapter `{path}` (its model card)",
    )
    print(f"merged {path} into its base {base}: {out}")
    return out
