"""Model presets: the GPT-3 and LLaMA shapes from the lecture's tables, plus CPU-sized models.

Sources
-------
- GPT-3: Brown et al. 2020, "Language Models are Few-Shot Learners", Table 2.1. The models are
  GPT-2 architectures (pre-LayerNorm decoder, learned position embeddings, GELU MLP of width
  4·d_model, LM head tied to the token embedding), context 2048, vocabulary 50,257.
  Two rows of the table are not self-consistent and are corrected here: 13B prints
  d_model 5140 (we use 40 heads x d_head 128 = 5120), and XL prints 24 heads with d_model 2048
  and d_head 128 (we use 16 heads x 128 = 2048). GPT-3 also
  alternates dense and locally banded sparse attention layers; that changes no parameter count
  and is not reproduced here (every layer is dense).
- LLaMA: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models", Table 2.
  Pre-RMSNorm decoder, rotary position embeddings (no position parameters), SwiGLU MLP of width
  256·ceil((8/3·d_model)/256), untied LM head, vocabulary 32,000, context 2048.

A ``Preset`` is only a shape; ``model_config`` turns it into a Hugging Face config
(``GPT2Config`` / ``LlamaConfig``) and ``build_model`` into a randomly initialised model.
``count_parameters`` builds the model on the ``meta`` device, so even 175B costs no memory.
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from rlfm.errors import ConfigError
from rlfm.models.attention import use_fast_attention

Family = Literal["gpt2", "llama"]


@dataclass(frozen=True)
class Preset:
    """The shape of a decoder-only transformer and the training figures its table gives."""

    name: str
    """Preset name, the key in ``PRESETS``."""
    family: Family
    """Architecture: ``"gpt2"`` (LayerNorm, learned positions, GELU, tied head) or ``"llama"``."""
    n_layers: int
    """Number of transformer blocks."""
    d_model: int
    """Residual-stream width (hidden size)."""
    n_heads: int
    """Attention heads per layer (LLaMA: as many key/value heads as query heads)."""
    context: int
    """Maximum sequence length in tokens."""
    vocab_size: int
    """Vocabulary size the table assumes (a trained tokenizer may override it)."""
    intermediate_size: int | None
    """MLP hidden width for ``llama``; ``None`` for ``gpt2``, which uses 4·d_model."""
    table_params: float | None
    """Parameter count printed in the source table; ``None`` for the CPU presets."""
    lr: float
    """Peak learning rate from the table, or a value that works for the CPU presets."""
    batch_tokens: int
    """Batch size in tokens as printed in the table (0.5M -> 500,000), or a CPU-sized value."""
    source: str
    """Where the shape comes from."""

    @property
    def d_head(self) -> int:
        """Width of one attention head, d_model / n_heads."""
        return self.d_model // self.n_heads

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"preset {self.name!r}: d_model={self.d_model} is not divisible by "
                f"n_heads={self.n_heads}"
            )
        if (self.family == "llama") != (self.intermediate_size is not None):
            raise ConfigError(
                f"preset {self.name!r}: intermediate_size must be set for llama and None for gpt2"
            )


def swiglu_intermediate_size(d_model: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·d_model, rounded up to a multiple of ``multiple_of``."""
    return multiple_of * math.ceil((8 * d_model / 3) / multiple_of)


_GPT3 = "Brown et al. 2020, Table 2.1"
_LLAMA = "Touvron et al. 2023, Table 2"
_CPU = "rlfm CPU preset"


def _gpt3(
    name: str, params: float, layers: int, d: int, heads: int, batch: int, lr: float
) -> Preset:
    return Preset(name, "gpt2", layers, d, heads, 2048, 50257, None, params, lr, batch, _GPT3)


def _llama(name: str, params: float, d: int, heads: int, layers: int, lr: float) -> Preset:
    ffn = swiglu_intermediate_size(d)
    return Preset(name, "llama", layers, d, heads, 2048, 32000, ffn, params, lr, 4_000_000, _LLAMA)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _gpt3("gpt3-small", 125e6, 12, 768, 12, 500_000, 6.0e-4),
        _gpt3("gpt3-medium", 350e6, 24, 1024, 16, 500_000, 3.0e-4),
        _gpt3("gpt3-large", 760e6, 24, 1536, 16, 500_000, 2.5e-4),
        # The table prints n_heads = 24 for XL with d_model 2048 and d_head 128, but 24 x 128 =
        # 3072. The parameter count (1.3B) pins d_model = 2048, so we keep d_model and d_head as
        # printed and use 2048 / 128 = 16 heads (head count does not change the parameter count).
        _gpt3("gpt3-xl", 1.3e9, 24, 2048, 16, 1_000_000, 2.0e-4),
        _gpt3("gpt3-2.7b", 2.7e9, 32, 2560, 32, 1_000_000, 1.6e-4),
        _gpt3("gpt3-6.7b", 6.7e9, 32, 4096, 32, 2_000_000, 1.2e-4),
        # The table prints d_model = 5140 for 13B, but 40 heads x d_head 128 = 5120, and 5140 is
        # not divisible by 40. We use 5120 (the computed count is then 12.85B, -1.1% of 13.0B).
        _gpt3("gpt3-13b", 13.0e9, 40, 5120, 40, 2_000_000, 1.0e-4),
        _gpt3("gpt3-175b", 175.0e9, 96, 12288, 96, 3_200_000, 0.6e-4),
        _llama("llama-6.7b", 6.7e9, 4096, 32, 32, 3.0e-4),
        _llama("llama-13b", 13.0e9, 5120, 40, 40, 3.0e-4),
        _llama("llama-32.5b", 32.5e9, 6656, 52, 60, 1.5e-4),
        _llama("llama-65.2b", 65.2e9, 8192, 64, 80, 1.5e-4),
        # CPU presets: ~1M (tests, smoke runs), ~5M (the default), ~1.6M Llama (tests).
        Preset("tiny", "gpt2", 2, 128, 4, 256, 4096, None, None, 2e-3, 2048, _CPU),
        Preset("small", "gpt2", 4, 256, 4, 256, 8192, None, None, 1e-3, 4096, _CPU),
        Preset("llama-tiny", "llama", 2, 128, 4, 256, 4096, 512, None, 2e-3, 2048, _CPU),
    ]
}


def get_preset(preset: Preset | str) -> Preset:
    """Return ``preset`` itself or the preset of that name; ConfigError names the valid ones."""
    if isinstance(preset, Preset):
        return preset
    if preset in PRESETS:
        return PRESETS[preset]
    close = difflib.get_close_matches(str(preset), PRESETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown model preset {preset!r}.{hint} Valid presets: {', '.join(PRESETS)}")


def _check_positive(field: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{field} must be a positive integer, got {value!r}")


def model_config(
    preset: Preset | str,
    *,
    vocab_size: int | None = None,
    context: int | None = None,
    dropout: float = 0.0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> PretrainedConfig:
    """Hugging Face config for ``preset``: a ``GPT2Config`` or a ``LlamaConfig``.

    ``vocab_size`` and ``context`` override the preset's (use ``len(tokenizer)`` for a trained
    tokenizer). ``dropout`` sets GPT-2's residual, embedding and attention dropout, and Llama's
    attention dropout (Llama has no other dropout).
    """
    p = get_preset(preset)
    vocab_size = p.vocab_size if vocab_size is None else vocab_size
    context = p.context if context is None else context
    _check_positive("vocab_size", vocab_size)
    _check_positive("context", context)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    for field, tid in [
        ("bos_token_id", bos_token_id),
        ("eos_token_id", eos_token_id),
        ("pad_token_id", pad_token_id),
    ]:
        if tid is not None and not 0 <= tid < vocab_size:
            raise ConfigError(f"{field}={tid} is outside the vocabulary [0, {vocab_size})")
    ids = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if p.family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=context,
            n_embd=p.d_model,
            n_layer=p.n_layers,
            n_head=p.n_heads,
            n_inner=None,  # 4 * d_model
            resid_pdrop=dropout,
            embd_pdrop=dropout,
            attn_pdrop=dropout,
            tie_word_embeddings=True,
            # GPT-2's tanh-approximated GELU as one fused kernel ("gelu_new" is built from
            # several small ops): the same function to ~3e-7, ~8% faster training on a CPU
            activation_function="gelu_pytorch_tanh",
            **ids,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=context,
        hidden_size=p.d_model,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.n_layers,
        num_attention_heads=p.n_heads,
        num_key_value_heads=p.n_heads,  # no grouped-query attention in LLaMA 1
        attention_dropout=dropout,
        rms_norm_eps=1e-6,  # LLaMA's released norm_eps
        tie_word_embeddings=False,
        **ids,
    )


def _meta_model(config: PretrainedConfig) -> PreTrainedModel:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return AutoModelForCausalLM.from_config(config)


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    # parameters() yields a tied Parameter once (the LM head that *is* the token embedding).
    return list(model.parameters())


def count_parameters(config: PretrainedConfig) -> int:
    """All parameters of the causal LM ``config`` describes, tied weights counted once.

    Built on the ``meta`` device: allocates nothing, takes about a second for 175B.
    """
    return sum(p.numel() for p in _unique_parameters(_meta_model(config)))


def count_non_embedding_parameters(config: PretrainedConfig) -> int:
    """Parameters excluding embeddings, as used in FLOP estimates (Kaplan et al. 2020).

    Excluded: the weights of every ``nn.Embedding`` (token embedding, and GPT-2's learned
    position embedding). Counted: every other parameter, including all norms and biases and
    an *untied* LM head (LLaMA's). A head tied to the token embedding (GPT-2's) is the same
    tensor as the embedding and so is excluded with it. Rotary embeddings have no parameters.
    """
    model = _meta_model(config)
    embedding = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    }
    return sum(p.numel() for p in _unique_parameters(model) if id(p) not in embedding)


def build_model(config: PretrainedConfig, seed: int | None = None) -> PreTrainedModel:
    """A randomly initialised causal LM on CPU in fp32, with SDPA attention where supported
    (:func:`rlfm.models.attention.use_fast_attention`: written out where SDPA's CPU kernel is slow).

    With ``seed`` the weights are reproducible and the global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        except (ValueError, ImportError):  # this architecture has no SDPA path
            model = AutoModelForCausalLM.from_config(config)
    return use_fast_attention(model)


def human_count(n: float) -> str:
    """125_239_296 -> '125.2M', 6_738_415_616 -> '6.74B'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))


@functools.cache
def preset_parameters(name: str) -> int:
    """``count_parameters`` of a named preset at its own vocabulary and context (cached)."""
    return count_parameters(model_config(name))


def presets_table(family: Family | None = None) -> str:
    """Plain-text table of the presets (all, or one ``family``): shape and parameter counts.

    ``params`` is computed from the built model (tied weights once); ``table`` is the figure the
    source table prints and ``diff`` the relative difference.
    """
    header = [
        "name",
        "family",
        "layers",
        "d_model",
        "heads",
        "d_head",
        "context",
        "vocab",
        "params",
        "table",
        "diff",
    ]
    rows = [header]
    for p in PRESETS.values():
        if family is not None and p.family != family:
            continue
        n = preset_parameters(p.name)
        table = "-" if p.table_params is None else human_count(p.table_params)
        diff = "-" if p.table_params is None else f"{100 * (n / p.table_params - 1):+.1f}%"
        rows.append(
            [
                p.name,
                p.family,
                str(p.n_layers),
                str(p.d_model),
                str(p.n_heads),
                str(p.d_head),
                str(p.context),
                str(p.vocab_size),
                human_count(n),
                table,
                diff,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class Config:
    """``rlfm models``: list the model presets and their parameter counts."""

    family: Literal["all", "gpt2", "llama"] = "all"
    """Show only the presets of this architecture family."""


def list_presets(cfg: Config) -> None:
    """Print the presets table (the ``rlfm models`` command)."""
    print(presets_table(None if cfg.family == "all" else cfg.family))
