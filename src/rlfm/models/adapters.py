"""Parameter-efficient fine-tuning through `peft`: LoRA and prefix-tuning, merging, loading.

**LoRA** (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): a frozen weight
W₀ (d_out × d_in) of a chosen projection gets a trainable low-rank update,

    h = W₀ x + (α / r) · B A x,      A: r × d_in (random),  B: d_out × r (zeros)

so before training the model computes exactly what the base model computes, and only
r · (d_in + d_out) numbers per projection are trained. Default targets: the attention
projections (GPT-2's fused ``c_attn`` and ``attn.c_proj``; ``q_proj``, ``k_proj``, ``v_proj``,
``o_proj`` in Llama-like models); the paper adapts W_q and W_v. ``merge_adapter`` folds
``W = W₀ + (α / r) B A`` into a plain model.

**Prefix-tuning** (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation"): every layer attends to ``num_tokens`` trained key/value vectors placed before the
sequence, as if a learned prompt had been read; the model's weights stay frozen. Deviation from
the paper: the prefix is trained directly (peft's ``prefix_projection=False``), without the
paper's reparametrising MLP. Token positions start after the prefix (position ``n + t``), as
peft computes them.

**The reference policy** of RL fine-tuning is the same model with its adapter switched off:
:func:`disabled_adapter` (no second copy of the weights in memory).

**On disk**, a PEFT model is an *adapter directory*: ``adapter_config.json`` (which names the
base model directory, stored as an absolute path) and ``adapter_model.safetensors``, plus the
tokenizer. :func:`load_model` loads either kind of directory: a plain Hugging Face model, or the
base named by an adapter with the adapter applied. When fine-tuning added a PAD token to the
base's vocabulary, the base's embeddings are grown the same deterministic way on load
(:func:`resize_embeddings`: new rows = the mean of the old ones), so base + adapter computes the
same numbers in the training run and after loading.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from rlfm.errors import ConfigError, ModelError
from rlfm.models.loading import load_causal_lm

AdapterKind = Literal["full", "lora", "prefix"]
ADAPTER_CONFIG = "adapter_config.json"


_ATTENTION_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Mistral, Qwen2, Gemma, ...
    ("c_attn", "attn.c_proj"),  # GPT-2 (fused q, k, v; Conv1D layers)
    ("query_key_value", "attention.dense"),  # GPT-NeoX, Pythia
)


def _quiet_peft() -> None:
    """Hide two warnings peft 0.21 triggers in transformers 5 on every call: it passes the prefix
    as `past_key_values` (still taken, renamed `cache`) and asks `is_gradient_checkpointing`."""
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated.*")


def _inner(model: nn.Module) -> nn.Module:
    """The peft model inside a PrefixDecoder, or the model inside DDP (or the model itself;
    the stages unwrap DDP with ``Engine.unwrap``, this module keeps clear of the engine)."""
    if isinstance(model, PrefixDecoder):
        return model.peft_model
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def is_peft_model(model: nn.Module) -> bool:
    """True when ``model`` (possibly DDP-wrapped) carries a peft adapter."""
    from peft import PeftModel

    return isinstance(_inner(model), PeftModel)


def base_model_of(model: nn.Module) -> PreTrainedModel:
    """The Hugging Face model underneath DDP and peft wrappers (LoRA layers stay inside it)."""
    inner = _inner(model)
    return inner.get_base_model() if is_peft_model(inner) else inner


def default_lora_targets(model: nn.Module) -> list[str]:
    """The attention projections of ``model`` by module name (see the module docstring)."""
    names = [n for n, _ in model.named_modules()]
    for group in _ATTENTION_TARGETS:
        if all(any(n == t or n.endswith("." + t) for n in names) for t in group):
            return list(group)
    raise ModelError(
        f"{type(model).__name__}: no attention projections with a known name "
        f"({', '.join(t for g in _ATTENTION_TARGETS for t in g)}); name the modules to adapt "
        "with --lora-targets (or 'all-linear')"
    )


def add_lora(
    model: PreTrainedModel,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.05,
    targets: Sequence[str] = (),
    base_path: str | Path | None = None,
) -> nn.Module:
    """``model`` with LoRA adapters on ``targets`` (default: its attention projections).

    ``targets`` are module names or suffixes (``"attn.c_proj"``), or ``("all-linear",)``.
    ``base_path`` is recorded (absolute) in the adapter's config, so a saved adapter finds its
    base. Only the adapter's A and B matrices are trainable. ``model`` may also be a
    transformer without an LM head (a reward model's body, models/heads.py).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    _quiet_peft()
    if r < 1:
        raise ConfigError(f"lora_r: must be ≥ 1, got {r}")
    chosen: Any = list(targets) or default_lora_targets(model)
    if chosen == ["all-linear"]:
        chosen = "all-linear"
    else:
        names = [n for n, _ in model.named_modules()]
        missing = [t for t in chosen if not any(n == t or n.endswith("." + t) for n in names)]
        if missing:
            raise ConfigError(
                f"lora_targets: {type(model).__name__} has no module named {', '.join(missing)}"
            )
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())  # GPT-2 stores W^T
    causal = model.get_output_embeddings() is not None  # a causal LM, not a bare transformer
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else None,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=chosen,
        fan_in_fan_out=conv1d,
    )
    peft_model = get_peft_model(model, config)
    _record_base(peft_model, base_path)
    return peft_model


def add_prefix(
    model: PreTrainedModel, *, num_tokens: int = 16, base_path: str | Path | None = None
) -> nn.Module:
    """``model`` with ``num_tokens`` trained prefix key/value vectors per layer (peft)."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    _quiet_peft()
    if num_tokens < 1:
        raise ConfigError(f"prefix_tokens: must be ≥ 1, got {num_tokens}")
    config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_tokens, prefix_projection=False
    )
    peft_model = get_peft_model(model, config)
    _record_base(peft_model, base_path)
    return peft_model


def _record_base(peft_model: nn.Module, base_path: str | Path | None) -> None:
    if base_path is not None:
        for cfg in peft_model.peft_config.values():
            cfg.base_model_name_or_path = str(Path(base_path).resolve())


def prefix_tokens(model: nn.Module) -> int:
    """How many prefix positions ``model`` puts before every sequence (0 without prefix-tuning)."""
    inner = _inner(model)
    if not is_peft_model(inner):
        return 0
    cfg = inner.active_peft_config
    return int(cfg.num_virtual_tokens) if cfg.is_prompt_learning else 0


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, tied weights counted once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


@contextlib.contextmanager
def disabled_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes what its base model computes (the reference
    policy of RL fine-tuning). Raises ModelError for a model without an adapter: its reference
    must be a separate copy."""
    inner = _inner(model)
    if not is_peft_model(inner):
        raise ModelError(
            f"{type(inner).__name__} has no adapter to disable; the reference policy of a "
            "fully fine-tuned model is a separate frozen copy"
        )
    with inner.disable_adapter():
        yield model


def merge_adapter(model: nn.Module) -> PreTrainedModel:
    """A plain model with the LoRA update folded into the weights: W = W₀ + (α/r)·B A."""
    inner = _inner(model)
    if not is_peft_model(inner):
        raise ModelError(f"{type(inner).__name__} has no adapter to merge")
    kind = str(getattr(inner.active_peft_config.peft_type, "value", "")).lower()
    if inner.active_peft_config.is_prompt_learning:
        raise ModelError(
            f"a {kind} adapter adds trained key/value vectors, not weight updates, so it cannot "
            "be merged into the weights; load base + adapter instead"
        )
    return inner.merge_and_unload()


def fit_vocabulary(
    model: nn.Module, tokenizer: Any, *, allow_resize: bool = False, what: str = "model"
) -> str | None:
    """Make sure every token id of ``tokenizer`` has an embedding row in ``model``.

    A model whose vocabulary is at least the tokenizer's is left as it is. The PAD token rlfm
    adds to a tokenizer without one (``ensure_pad_token``) gets a new row (the mean of the
    others); any other shortfall is a ModelError unless ``allow_resize``. Returns a note saying
    what was grown, or None."""
    model = base_model_of(model)
    size, n = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    if n <= size:
        return None
    if n - size > getattr(tokenizer, "rlfm_added_tokens", 0) and not allow_resize:
        raise ModelError(
            f"{what}: its tokenizer has {n:,} tokens but the model's vocabulary holds {size:,}; "
            "use the tokenizer the model was trained with, or ask for the embeddings to be "
            "grown (--resize-embeddings, where the command has it: the new rows start untrained)"
        )
    resize_embeddings(model, n)
    return f"grew the {what}'s embeddings from {size:,} to {n:,} rows for the tokenizer"


def resize_embeddings(model: PreTrainedModel, size: int) -> None:
    """Grow the token embedding (and an untied output head) to ``size`` rows; the new rows are
    the mean of the old ones, so the result does not depend on any random state."""
    old = model.get_input_embeddings().weight.shape[0]
    if size <= old:
        return
    model.resize_token_embeddings(size, mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(0, keepdim=True)
        head = model.get_output_embeddings()
        if head is not None and head.weight is not emb:
            head.weight[old:] = head.weight[:old].mean(0, keepdim=True)
            if getattr(head, "bias", None) is not None:
                head.bias[old:] = head.bias[:old].mean()


# ---------------------------------------------------------------------------- directories


def is_adapter_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a peft ``adapter_config.json``."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_path(path: str | Path) -> Path:
    """The base model directory an adapter directory names (relative names are tried against
    the working directory, then the adapter directory)."""
    path = Path(path)
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {path / ADAPTER_CONFIG}: {e}") from e
    name = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not name:
        raise ModelError(f"{path / ADAPTER_CONFIG} does not name its base model")
    for candidate in (Path(name), path / name):
        if candidate.is_dir():
            return candidate
    raise ModelError(
        f"adapter {path} was trained on the base model {name!r}, which is not a local "
        "directory (rlfm never downloads models); put the base model there"
    )


def load_model(path: str | Path, *, trainable: bool = False, merge: bool = False) -> nn.Module:
    """The model in a local directory: a plain Hugging Face causal LM, or base + adapter.

    For an adapter directory the base is loaded from :func:`adapter_base_path` (itself possibly
    an adapter, which is then merged), grown to the adapter directory's tokenizer size when
    that is larger, and the adapter applied (``trainable``: its weights require gradients).
    ``merge`` folds a LoRA adapter into the weights and returns a plain model.
    """
    path = Path(path)
    if not is_adapter_dir(path):
        return load_causal_lm(path)
    from peft import PeftModel

    _quiet_peft()
    base = load_model(adapter_base_path(path), merge=True)
    vocab = tokenizer_size(path)
    if vocab is not None:
        resize_embeddings(base, vocab)
    try:
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"cannot apply the adapter in {path} to its base model: {e}") from e
    return merge_adapter(model) if merge else model


def tokenizer_size(path: Path) -> int | None:
    """The size of the tokenizer saved in ``path`` (None when it holds none)."""
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        return None
    from rlfm.models.tokenizer import load_tokenizer

    return len(load_tokenizer(path))


# ---------------------------------------------------------------------------- sampling


def sampling_model(model: nn.Module) -> nn.Module:
    """A module for ``rollout.sample`` (incremental decoding with a KV cache) that computes
    what ``model`` computes: the model itself, the base model with its LoRA layers active, or a
    :class:`PrefixDecoder` for prefix-tuning."""
    inner = _inner(model)
    if not is_peft_model(inner):
        return inner
    if inner.active_peft_config.is_prompt_learning:
        return PrefixDecoder(inner)
    return inner.get_base_model()  # LoRA layers are inside it and active


class PrefixDecoder(nn.Module):
    """A prefix-tuned peft model as a plain causal LM that takes a KV cache.

    peft replaces any cache passed to it with a fresh prefix, so incremental decoding cannot
    go through it. Here the first call starts the cache with the prefix and later calls extend
    it; the attention mask gets the prefix's positions prepended and position ids are shifted by
    the prefix length, as in peft's own forward. Its ``config`` is a copy of the base's whose
    ``max_position_embeddings`` leaves room for the prefix.
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.n_prefix = int(peft_model.active_peft_config.num_virtual_tokens)
        base = peft_model.get_base_model()
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        )
        self.config = copy.copy(base.config)
        self.config.max_position_embeddings = base.config.max_position_embeddings - self.n_prefix

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        use_cache: bool = True,
        logits_to_keep: int | torch.Tensor = 0,
    ) -> Any:
        base = self.peft_model.get_base_model()
        cache = cache if cache is not None else past_key_values
        if self.peft_model._adapters_disabled:  # inside disabled_adapter: the base model
            kw = {self._cache_arg: cache} if cache is not None else {}
            return base(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kw,
            )
        B = input_ids.shape[0]  # batch
        if cache is None:
            cache = self.peft_model.get_prompt(B)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix = torch.ones(B, self.n_prefix, dtype=attention_mask.dtype, device=input_ids.device)
        return base(
            input_ids=input_ids,
            attention_mask=torch.cat([prefix, attention_mask], dim=1),
            position_ids=None if position_ids is None else position_ids + self.n_prefix,
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{self._cache_arg: cache},
        )
