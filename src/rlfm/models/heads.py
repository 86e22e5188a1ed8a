"""Scalar heads on a transformer: the reward model and the value model.

A **reward model** r_θ(x, y) (Stiennon et al. 2020; Ouyang et al. 2022) is a causal language
model with its vocabulary projection replaced by a linear head to one scalar, read at the last
real token of prompt + completion. The head is initialised w ~ N(0, 1/√(d_model + 1)), b = 0
(Stiennon et al. 2020, appendix C), so the initial rewards are small whatever the width. After
training the reward is normalised:

    r(x, y) = gain · (w · h_last + b) + bias

with ``gain`` and ``bias`` chosen so that completions sampled from the reference (SFT) policy
score mean 0 and standard deviation 1; both are stored with the model.

A **value model** V(x, y_{≤t}) is the same network read at every token: PPO initialises it from
the reward model (``ValueModel.from_pretrained(reward_model_dir)``).

**Inputs.** Either plain rows (one sequence each, any padding side), or *shared-prompt* rows
laid out ``[prompt | completion 1 | ... | completion K | padding]`` with ``segment_ids``
saying which part each token belongs to: an attention mask (:func:`shared_prompt_mask`) lets
each completion see the prompt and its own prefix only, and its positions restart right after
the prompt. So the K completions of a ranking and their prompt go through the network once, in
one row with no padding between them, and each completion gets exactly the hidden states (and
gradients) it would get as a separate prompt + completion sequence. Positions never pass
prompt + longest completion, so a row may be longer than the model's context.

**Where the score is read.** At the last token that is not the model's PAD token
(``config.pad_token_id``), as transformers' ``*ForSequenceClassification`` reads it (any padding
side; without a PAD token, at the last token of the attention mask). rlfm's own tokenizers have
a PAD distinct from EOS, so for its models that token is the EOS that ends every scored text;
a model whose PAD is its EOS is read at the token before the EOS, as transformers reads it.

**On disk: the standard format.** Inside rlfm the model is the causal LM's transformer (its
``base_model``, no vocabulary projection) plus ``head``, ``gain`` and ``bias``; it is saved as,
and loaded from, what ``transformers.AutoModelForSequenceClassification.from_pretrained(dir)``
loads on its own — for GPT-2, Llama, Qwen2 and every family transformers has a
sequence-classification class for::

    config.json           the backbone's config as a one-label sequence classifier
                          (architectures [...ForSequenceClassification], num_labels 1,
                          problem_type "regression", pad_token_id) plus "rlfm_head": kind,
                          gain, bias, head_bias (b) and offset
    model.safetensors     the transformer and ``score.weight`` = gain · w, stored in float64
                          (loaders cast it to the model's dtype; rlfm reads w = score / gain
                          back exactly, so a value model started from it trains as before)
    tokenizer files, README.md (the model card)

transformers' score is then ``gain · w · h_last``: rlfm's normalised reward minus the constant
``offset = gain · b + bias``, which the classifier head (it has no bias) cannot hold. So
``logits + offset`` is exactly rlfm's reward, and differences between texts (all that a
comparison, best-of-n or a group-normalised RL method such as GRPO uses) need no offset.

With LoRA the directory is a peft adapter (task ``SEQ_CLS``) onto that class: adapter_config.json
(its ``base_model_name_or_path``: the causal LM it was trained on; ``modules_to_save``:
``score``), adapter_model.safetensors (the LoRA weights and ``score.weight``), ``rlfm_head.json``
(what a full model's config holds under "rlfm_head") and the tokenizer::

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1,
                                                              pad_token_id=tok.pad_token_id)
    model = peft.PeftModel.from_pretrained(base, adapter_dir)

:meth:`ScalarHeadModel.from_pretrained` loads those, any one-label sequence classifier made
elsewhere (its score as the head, gain 1, bias 0) or a peft ``SEQ_CLS`` LoRA adapter onto one,
and rlfm's earlier format (a causal LM or adapter plus ``head.safetensors`` / ``head.json``),
saying it is the old one (:attr:`ScalarHeadModel.load_note`).

Also here: :class:`StepRewardMLP`, the small r̂(o, a) network for preferences over trajectory
segments (Christiano et al. 2017).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from rlfm.errors import ModelError
from rlfm.models import attention
from rlfm.models.adapters import (
    adapter_base_path,
    add_lora,
    fit_vocabulary,
    load_model,
    merge_adapter,
    resize_embeddings,
    tokenizer_size,
)
from rlfm.models.loading import load_sequence_classifier, read_json_object
from rlfm.models.tokenizer import ensure_pad_token, has_tokenizer, load_tokenizer

HEAD_META = "rlfm_head"
"""The key of ``config.json`` that holds a full model's head bookkeeping."""
HEAD_FILE = "rlfm_head.json"
"""The same bookkeeping in an adapter directory (which has no config.json of its own)."""
OLD_HEAD_WEIGHTS = "head.safetensors"
OLD_HEAD_CONFIG = "head.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SCORE = "score"
"""The name of the classifier layer in transformers' sequence-classification models."""


# ---------------------------------------------------------------------------- backbones


def load_backbone(path: str | Path) -> nn.Module:
    """The causal LM in ``path``: a Hugging Face model directory, or a PEFT adapter directory
    whose base is loaded first and the adapter merged in (models/adapters.py)."""
    return load_model(path, merge=True)


def load_model_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (for an adapter without one: its base's), with a PAD
    token distinct from EOS."""
    tok = own_tokenizer(path)
    ensure_pad_token(tok)
    return tok


def own_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (for an adapter without one: its base's), as saved: a
    reward model made elsewhere is read with its own PAD (or none)."""
    path = Path(path)
    try:
        return load_tokenizer(path)
    except ModelError:
        if not (path / ADAPTER_CONFIG).is_file():
            raise
        return own_tokenizer(adapter_base_path(path))


def _body(model: nn.Module) -> nn.Module:
    """The transformer of a causal LM (no vocabulary projection); a transformer or a peft
    model as it is."""
    if hasattr(model, "get_base_model") or model.get_output_embeddings() is None:
        return model
    return model.base_model


def head_format(path: str | Path) -> str | None:
    """How the directory ``path`` holds a reward or value model: ``"full"`` (a sequence
    classifier), ``"adapter"`` (a peft SEQ_CLS adapter onto one), ``"old"`` (rlfm's earlier
    head.safetensors + head.json), or None when it holds none (a causal LM, say)."""
    path = Path(path)
    if (path / OLD_HEAD_CONFIG).is_file() and (path / OLD_HEAD_WEIGHTS).is_file():
        return "old"
    if (path / ADAPTER_CONFIG).is_file():
        task = read_json_object(path / ADAPTER_CONFIG).get("task_type")
        return "adapter" if task == "SEQ_CLS" else None
    if (path / "config.json").is_file():
        architectures = read_json_object(path / "config.json").get("architectures") or []
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            return "full"
    return None


def shared_prompt_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Attention mask of rows laid out as [prompt | completion 1 | ... | completion K | pad].

    ``segment_ids`` (B, T): 0 for prompt tokens, i ≥ 1 for completion i, −1 for padding. Token q
    may attend to token k ≤ q of its own segment or of the prompt, so each completion sees the
    prompt and its own prefix — exactly what it sees as a separate prompt + completion
    sequence — and nothing of the other completions. Padding attends to itself only (no row is
    empty, so no NaN). -> (B, 1, T, T) bool, True = may attend.
    """
    B, T = segment_ids.shape
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    causal = attention.causal_mask(T, None, segment_ids.device)
    allowed = causal & ((k == q) | (k == 0)) & (q >= 0) & (k >= 0)
    allowed |= torch.eye(T, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]


def fuse_gelu(model: nn.Module) -> int:
    """Compute GPT-2's ``gelu_new`` with PyTorch's fused ``gelu(approximate="tanh")`` kernel.

    Both are 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))); the fused kernel is one pass over
    memory instead of eight (about 3× faster forward + backward on a CPU, equal to 3e-7). The
    saved config is unchanged. Returns the number of modules swapped."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for module in model.modules():
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swapped += 1
    return swapped


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (N, T) 0/1 mask (left or right padding). -> (N,)."""
    N, T = mask.shape
    return (T - 1) - mask.flip(-1).long().argmax(-1)


def score_index(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int | None
) -> torch.Tensor:
    """Where each row's score is read: its last token that is not ``pad_token_id`` (as
    transformers' sequence classifiers read it), within the attention mask; a row with no such
    token (or ``pad_token_id`` None) at its last real token. (N, T) -> (N,)."""
    if pad_token_id is None:
        return last_real_index(attention_mask)
    scored = attention_mask.bool() & (input_ids != pad_token_id)
    return torch.where(scored.any(-1), last_real_index(scored), last_real_index(attention_mask))


# ---------------------------------------------------------------------------- the head models


class ScalarHeadModel(nn.Module):
    """A transformer with a linear head to one scalar per token (see the module docstring).

    Subclasses choose what ``forward`` returns: :class:`RewardModel` the scalar at the last
    real token, :class:`ValueModel` the scalar at every token.
    """

    kind: ClassVar[str] = "scalar"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        head: nn.Linear | None = None,
        gain: float = 1.0,
        bias: float = 0.0,
        seed: int | None = None,
        tokenizer: Any | None = None,
    ) -> None:
        """``backbone``: a causal LM (its transformer is kept, the vocabulary projection
        dropped), a transformer, or a peft model on a transformer."""
        super().__init__()
        self.backbone = _body(backbone)
        d = self.hidden_size
        if head is None:
            head = nn.Linear(d, 1)
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                nn.init.normal_(head.weight, std=1.0 / math.sqrt(d + 1))
            nn.init.zeros_(head.bias)
        if tuple(head.weight.shape) != (1, d):
            raise ModelError(f"head weight {tuple(head.weight.shape)} does not fit width {d}")
        self.head = head
        self.register_buffer("gain", torch.tensor(float(gain)))
        self.register_buffer("bias", torch.tensor(float(bias)))
        self.tokenizer = tokenizer
        self.load_note: str | None = None  # set when loaded from rlfm's earlier format
        fuse_gelu(self.backbone)

    # ------------------------------------------------------------------ properties
    @property
    def body(self) -> nn.Module:
        """The transformer (its LoRA layers inside, active unless disabled)."""
        return self.backbone.get_base_model() if self.is_lora else self.backbone

    @property
    def hidden_size(self) -> int:
        return int(self.body.get_input_embeddings().weight.shape[1])

    @property
    def is_lora(self) -> bool:
        """True when the backbone carries a (trainable) PEFT adapter."""
        return hasattr(self.backbone, "get_base_model")

    @property
    def config(self) -> PretrainedConfig:
        """The backbone's Hugging Face config."""
        return self.body.config

    # ------------------------------------------------------------------ computation
    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states. (B, T) -> (B, T, d).

        Without ``segment_ids``: each row is one sequence (any padding side; positions count
        its real tokens). With them: each row is a prompt followed by several completions
        (:func:`shared_prompt_mask`), and ``position_ids`` restart after the prompt for each
        completion.
        """
        B, T = input_ids.shape  # rows, tokens
        assert attention_mask.shape == (B, T), f"attention_mask {tuple(attention_mask.shape)}"
        body = self.body
        if segment_ids is None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
            return out.last_hidden_state
        assert segment_ids.shape == (B, T) and position_ids is not None
        mask = shared_prompt_mask(segment_ids)  # (B, 1, T, T) True = may attend
        impl = getattr(self.config, "_attn_implementation", "eager")
        if impl == "eager":  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(
                ~mask, torch.finfo(torch.float32).min
            )
        elif impl not in ("sdpa", attention.NAME):
            raise ModelError(
                f"shared-prompt batches need 'sdpa' or 'eager' attention, the model uses {impl!r}"
            )
        out = body(input_ids=input_ids, attention_mask=mask, position_ids=position_ids)
        return out.last_hidden_state

    def token_values(self, *args: Any, raw: bool = False, **kwargs: Any) -> torch.Tensor:
        """The head at every token, normalised (``raw=False``) or not. -> (N, C), float32 or
        wider.

        Arguments as :meth:`hidden_states`. Computed in float32 even under bf16 autocast (an
        element-wise product and sum, which autocast leaves in float32).
        """
        h = self.hidden_states(*args, **kwargs)
        dtype = torch.promote_types(h.dtype, torch.float32)  # float32 at least (float64 stays)
        w, b = self.head.weight[0].to(dtype), self.head.bias[0].to(dtype)
        values = (h.to(dtype) * w).sum(-1) + b
        return values if raw else self.gain * values + self.bias

    def set_normalisation(self, gain: float, bias: float) -> None:
        """Store the normalisation r = gain · raw + bias."""
        self.gain.fill_(float(gain))
        self.bias.fill_(float(bias))

    # ------------------------------------------------------------------ files
    def head_meta(self) -> dict[str, Any]:
        """What the standard format keeps beside ``score.weight = gain · w`` (module docstring):
        the kind, the normalisation, the head's bias b and offset = gain · b + bias."""
        gain, bias, b = float(self.gain), float(self.bias), float(self.head.bias.detach())
        return {"kind": self.kind, "gain": gain, "bias": bias, "head_bias": b,
                "offset": gain * b + bias}  # fmt: skip

    def _score_weight(self) -> torch.Tensor:
        """gain · w in float64: w comes back exactly as score / gain."""
        return self.head.weight.detach().double().cpu() * float(self.gain)

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write the standard format (module docstring): a one-label
        ``AutoModelForSequenceClassification`` directory, or with LoRA a peft adapter onto one.
        The tokenizer is saved by the caller."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.is_lora:
            self._save_adapter(directory)
        else:
            self._save_full(directory)

    def _save_full(self, directory: Path) -> None:
        config = copy.deepcopy(self.config)
        config.num_labels = 1
        config.id2label, config.label2id = {0: self.kind}, {self.kind: 0}
        config.problem_type = "regression"  # a scalar: pipelines apply no sigmoid or softmax
        setattr(config, HEAD_META, self.head_meta())
        classifier = sequence_classifier_class(config)
        with torch.device("meta"):  # the wrapper only: its transformer is ours, not a copy
            model = classifier(config)
        setattr(model, classifier.base_model_prefix, self.body)
        _set_score(model, self._score_weight())
        left = [n for n, p in model.named_parameters() if p.is_meta]
        if left:
            raise ModelError(f"{classifier.__name__}: cannot save {', '.join(left[:3])}")
        model.save_pretrained(directory)

    def _save_adapter(self, directory: Path) -> None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        prefix = sequence_classifier_class(self.config).base_model_prefix
        lora = get_peft_model_state_dict(self.backbone)  # base_model.model.<transformer path>
        tensors = {
            k.replace("base_model.model.", f"base_model.model.{prefix}.", 1): v.detach().cpu()
            for k, v in lora.items()
        }
        tensors[f"base_model.model.{SCORE}.weight"] = self._score_weight()
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(directory / ADAPTER_WEIGHTS),
            metadata={"format": "pt"},
        )
        config = copy.deepcopy(self.backbone.peft_config["default"])
        config.task_type, config.modules_to_save, config.inference_mode = "SEQ_CLS", [SCORE], True
        config.save_pretrained(str(directory))
        text = json.dumps(self.head_meta(), indent=2) + "\n"
        (directory / HEAD_FILE).write_text(text, encoding="utf-8")

    @classmethod
    def from_backbone(
        cls,
        path: str | Path,
        *,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        lora_targets: tuple[str, ...] = ("all-linear",),
        seed: int | None = 0,
    ) -> ScalarHeadModel:
        """A new model on the causal LM in ``path`` (HF directory or adapter directory): full
        fine-tuning (``lora_rank=0``) or a new LoRA adapter of that rank on ``lora_targets``
        (every linear layer by default; Hu et al. 2021; the head is always trained in full)."""
        path = Path(path)
        tokenizer = load_model_tokenizer(path)
        lm = load_backbone(path)
        fit_vocabulary(lm, tokenizer)
        lm.config.pad_token_id = tokenizer.pad_token_id
        body = _body(lm)
        if lora_rank > 0:
            body = add_lora(
                body,
                r=lora_rank,
                alpha=lora_alpha or 2.0 * lora_rank,
                dropout=lora_dropout,
                targets=lora_targets,
                base_path=path,
            )
        return cls(body, seed=seed, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, trainable: bool = False) -> ScalarHeadModel:
        """Load a reward or value model (PPO's value model starts from the reward model): the
        standard format, any one-label sequence classifier (or peft SEQ_CLS LoRA adapter onto
        one) made elsewhere, or rlfm's earlier format. ``trainable`` keeps a LoRA adapter
        trainable (to resume training); otherwise it is merged into the weights."""
        path = Path(path)
        kind = head_format(path)
        if kind is None:
            raise ModelError(
                f"{str(path)!r} holds no reward/value model (neither a one-label "
                "AutoModelForSequenceClassification directory nor a peft adapter onto one); "
                "train one with `rlfm reward train`"
            )
        note = None
        if kind == "full":
            classifier = load_sequence_classifier(path)
            backbone = getattr(classifier, classifier.base_model_prefix)
            score = _score_layer(classifier)
            meta = getattr(classifier.config, HEAD_META, None)
            if meta:  # rlfm's: w = score / gain, b as stored
                weight = _stored_score(path)
                head = _head(score.weight if weight is None else weight, meta)
            else:  # made elsewhere: the score as it is
                head = _head(score.weight, None, score.bias)
            del classifier
        else:
            if kind == "old":
                meta, head = _old_head(path)
                note = (
                    f"{path} is in rlfm's earlier reward-model format (head.safetensors, "
                    "head.json), which only rlfm reads; it loads as before. Saving the loaded "
                    "model (save_pretrained) writes the standard AutoModelForSequenceClassification "
                    "format"
                )
            else:
                meta = read_json_object(path / HEAD_FILE) if (path / HEAD_FILE).is_file() else None
                head = _head(_adapter_score(path), meta)
            lora = (
                read_json_object(path / ADAPTER_CONFIG)
                if (path / ADAPTER_CONFIG).is_file()
                else None
            )
            if lora is not None:
                backbone = _load_lora(path, trainable)
            else:  # an old full model: a causal LM directory
                backbone = load_backbone(path)
        model = cls(
            backbone,
            head=head,
            gain=float(meta.get("gain", 1.0)) if meta else 1.0,
            bias=float(meta.get("bias", 0.0)) if meta else 0.0,
            tokenizer=tokenizer_of(path),
        )
        model.load_note = note
        return model


def sequence_classifier_class(config: PretrainedConfig) -> type:
    """transformers' sequence-classification class of a model config (GPT2For..., LlamaFor...)."""
    from transformers import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        raise ModelError(
            f"transformers has no sequence-classification class for {config.model_type!r} "
            "models, so a reward model on one cannot be saved in the standard format"
        ) from None


def _score_layer(model: nn.Module) -> nn.Linear:
    """The classifier layer of a transformers sequence classifier (``score`` in the causal-LM
    families; found by shape in others)."""
    layer = getattr(model, SCORE, None)
    if isinstance(layer, nn.Linear):
        return layer
    found = [
        m
        for n, m in model.named_children()
        if n != model.base_model_prefix and isinstance(m, nn.Linear) and m.out_features == 1
    ]
    if len(found) != 1:
        raise ModelError(f"{type(model).__name__}: cannot tell which layer is its score head")
    return found[0]


def _set_score(model: nn.Module, weight: torch.Tensor) -> None:
    """Replace the classifier's score layer by one with ``weight`` (and a zero bias in a
    family whose classifier has one)."""
    old = _score_layer(model)
    name = next(n for n, m in model.named_children() if m is old)
    layer = nn.Linear(weight.shape[1], 1, bias=old.bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if layer.bias is not None:
            layer.bias.zero_()
    setattr(model, name, layer)


def _head(
    score: torch.Tensor, meta: dict[str, Any] | None, bias: torch.Tensor | None = None
) -> nn.Linear:
    """rlfm's head (w, b) from a score layer's weight: with rlfm's bookkeeping ``meta``,
    w = score / gain (exact when the score is the float64 rlfm writes) and b as stored;
    without (a model made elsewhere), the score and its ``bias`` (or 0) as they are."""
    gain = float(meta.get("gain", 1.0)) if meta else 1.0
    head = nn.Linear(score.shape[-1], 1)
    with torch.no_grad():
        head.weight.copy_((score.detach().double() / gain).float().reshape(1, -1))
        b = float(meta.get("head_bias", 0.0)) if meta else 0.0
        head.bias.fill_(b)
        if meta is None and bias is not None:
            head.bias.copy_(bias.detach().float().reshape(1))
    return head


def _safetensors_file(path: Path, name: str) -> Path | None:
    """The safetensors file of ``path`` holding the tensor ``name`` (sharded or not)."""
    single = path / "model.safetensors"
    if single.is_file():
        return single
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shard = read_json_object(index).get("weight_map", {}).get(name)
        return path / shard if shard else None
    return None


def _stored_score(path: Path) -> torch.Tensor | None:
    """``score.weight`` as stored (float64 when rlfm wrote it, so w = score / gain is exact),
    or None when no safetensors file holds it."""
    from safetensors import safe_open

    name = f"{SCORE}.weight"
    file = _safetensors_file(path, name)
    if file is None:
        return None
    with safe_open(str(file), "pt") as f:
        return f.get_tensor(name) if name in list(f.keys()) else None


def _adapter_score(path: Path) -> torch.Tensor:
    """The score weight a peft SEQ_CLS adapter saves (its ``modules_to_save``)."""
    from safetensors.torch import load_file

    file = path / ADAPTER_WEIGHTS
    state = load_file(str(file)) if file.is_file() else _load_bin(path / "adapter_model.bin")
    for key, value in state.items():
        if key.endswith(f".{SCORE}.weight") or key.endswith(f".{SCORE}.modules_to_save.weight"):
            return value
    raise ModelError(
        f"{path}: the adapter holds no trained {SCORE} layer (modules_to_save); it is not a "
        "reward model"
    )


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ModelError(f"{file.parent}: no {ADAPTER_WEIGHTS}")
    return torch.load(file, map_location="cpu", weights_only=True)


def _old_head(path: Path) -> tuple[dict[str, Any], nn.Linear]:
    """rlfm's earlier head files: head.json (gain, bias) and head.safetensors (w, b)."""
    from safetensors.torch import load_file

    meta = read_json_object(path / OLD_HEAD_CONFIG)
    try:
        state = load_file(str(path / OLD_HEAD_WEIGHTS))
    except Exception as e:  # a damaged safetensors file raises several kinds
        raise ModelError(f"cannot read the head in {str(path)!r}: {e}") from e
    meta = {"gain": float(meta.get("gain", 1.0)), "bias": float(meta.get("bias", 0.0))}
    return meta, _head(state["weight"], None, state["bias"])


def _load_lora(path: Path, trainable: bool) -> nn.Module:
    """The transformer of the base an adapter directory names, with its LoRA layers (merged
    unless ``trainable``). Its weights are keyed by the classifier's or causal LM's module
    paths (the same transformer prefix); the transformer alone has them without it."""
    from peft import (
        LoraConfig,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )
    from safetensors.torch import load_file

    config = read_json_object(path / ADAPTER_CONFIG)
    if config.get("peft_type") != "LORA":
        raise ModelError(
            f"{path}: a reward model's adapter must be LoRA, not {config.get('peft_type')}"
        )
    lm = load_model(adapter_base_path(path), merge=True)
    vocab = tokenizer_size(path)
    if vocab is not None:
        resize_embeddings(lm, vocab)
    body = _body(lm)
    prefix = lm.base_model_prefix
    lora = LoraConfig.from_pretrained(str(path))
    lora.task_type, lora.modules_to_save, lora.inference_mode = None, None, not trainable
    if not isinstance(lora.target_modules, str):
        lora.target_modules = {t.removeprefix(f"{prefix}.") for t in lora.target_modules}
    model = get_peft_model(body, lora)
    file = path / ADAPTER_WEIGHTS
    state = load_file(str(file)) if file.is_file() else _load_bin(path / "adapter_model.bin")
    state = {
        k.replace(f"base_model.model.{prefix}.", "base_model.model.", 1): v
        for k, v in state.items()
        if "lora_" in k
    }
    expected = set(get_peft_model_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(
            f"the adapter in {path} does not fit its base model's transformer (missing "
            f"{missing[:2]}, unexpected {unexpected[:2]})"
        )
    set_peft_model_state_dict(model, state)
    if not trainable:
        return merge_adapter(model)
    return model


def same_token_ids(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """True when token ids mean the same to both tokenizers (same vocabulary and EOS): a
    reward model with tokenizer ``a`` then reads a policy's samples of ``b`` as they are;
    otherwise it scores their decoded text (:meth:`RewardModel.score`)."""
    return a.eos_token_id == b.eos_token_id and a.get_vocab() == b.get_vocab()


def tokenizer_of(path: str | Path) -> PreTrainedTokenizerBase | None:
    """:func:`own_tokenizer`, or None when ``path`` (and an adapter's base) holds no tokenizer
    files."""
    path = Path(path)
    if has_tokenizer(path):
        return load_tokenizer(path)
    if (path / ADAPTER_CONFIG).is_file():
        return tokenizer_of(adapter_base_path(path))
    return None


class RewardModel(ScalarHeadModel):
    """r_θ(x, y): one scalar per sequence, read at its last real token."""

    kind: ClassVar[str] = "reward"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        read_index: torch.Tensor | None = None,
        raw: bool = False,
    ) -> torch.Tensor:
        """Rewards, float32 (or wider): (B,) at each row's last real token (:func:`score_index`),
        or (N,) at the (row, column) pairs of ``read_index`` (N, 2) — the last token (EOS) of
        each completion of a shared-prompt batch. Other arguments as
        :meth:`ScalarHeadModel.hidden_states`."""
        values = self.token_values(
            input_ids, attention_mask, segment_ids, position_ids, raw=raw
        )  # (B, T)
        if read_index is not None:
            return values[read_index[:, 0], read_index[:, 1]]
        last = score_index(input_ids, attention_mask, self.config.pad_token_id)
        return values[torch.arange(values.shape[0], device=values.device), last]

    @torch.no_grad()
    def score(
        self,
        texts: Sequence[str],
        prompts: Sequence[str] | None = None,
        *,
        batch_size: int = 16,
        max_length: int | None = None,
        raw: bool = False,
    ) -> torch.Tensor:
        """Rewards of ``texts`` (completions of ``prompts``, or whole texts), read with the
        model's own tokenizer. -> (N,) on CPU.

        Each text is encoded as in training: the prompt's tokens (a lone BOS/EOS when empty),
        then the text's tokens and EOS; ``max_length`` keeps the last tokens of long inputs.
        """
        if self.tokenizer is None:
            raise ModelError("this model has no tokenizer; load it with from_pretrained")
        tok = self.tokenizer
        prompts = list(prompts) if prompts is not None else [""] * len(texts)
        assert len(prompts) == len(texts), "one prompt per text"
        limit = max_length or int(getattr(self.config, "max_position_embeddings", 1024))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = self.head.weight.device
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            seqs = [
                encode_sequence(tok, p, t, limit)
                for p, t in zip(prompts[i : i + batch_size], texts[i : i + batch_size])
            ]
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for j, s in enumerate(seqs):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            out.append(self(ids.to(device), mask.to(device), raw=raw).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)


class ValueModel(ScalarHeadModel):
    """V(x, y_≤t): one scalar per token (PPO's critic, initialised from a reward model)."""

    kind: ClassVar[str] = "value"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        raw: bool = False,
    ) -> torch.Tensor:
        """Values (B, T), float32 or wider, at every token (padding included: mask it)."""
        return self.token_values(input_ids, attention_mask, segment_ids, position_ids, raw=raw)


def encode_sequence(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, max_length: int
) -> list[int]:
    """Token ids of prompt + completion + EOS, as a reward model reads them: an empty prompt is
    a lone BOS (EOS when there is none), as in ``rollout.encode_prompts``; over ``max_length``
    the first tokens are dropped (the reward is read at the end)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [start]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    return (p + c + [tokenizer.eos_token_id])[-max_length:]


# ---------------------------------------------------------------------------- segments


class StepRewardMLP(nn.Module):
    """r̂(o, a): a small MLP reward of one environment step (Christiano et al. 2017).

    Inputs are normalised with stored statistics (``input_mean``, ``input_std``) of the
    concatenated [observation, action] features; a segment's reward is Σ_t r̂(o_t, a_t).
    """

    def __init__(self, n_features: int, hidden: int = 64, layers: int = 2) -> None:
        super().__init__()
        dims = [n_features] + [hidden] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*mods)
        self.register_buffer("input_mean", torch.zeros(n_features))
        self.register_buffer("input_std", torch.ones(n_features))
        self.n_features, self.hidden, self.layers = n_features, hidden, layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-step rewards. (..., F) -> (...)."""
        assert features.shape[-1] == self.n_features, f"features {tuple(features.shape)}"
        x = (features.float() - self.input_mean) / self.input_std
        return self.net(x).squeeze(-1)

    def segment_return(self, segments: torch.Tensor) -> torch.Tensor:
        """Σ_t r̂(o_t, a_t) over each segment. (N, L, F) -> (N,)."""
        return self(segments).sum(-1)

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write ``model.safetensors`` and ``config.json`` (sizes)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()},
            str(directory / "model.safetensors"),
        )
        meta = {
            "kind": "step_reward_mlp",
            "n_features": self.n_features,
            "hidden": self.hidden,
            "layers": self.layers,
        }
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> StepRewardMLP:
        from safetensors.torch import load_file

        directory = Path(directory)
        try:
            meta = json.loads((directory / "config.json").read_text(encoding="utf-8"))
            state = load_file(str(directory / "model.safetensors"))
        except Exception as e:
            raise ModelError(f"cannot load a step-reward MLP from {str(directory)!r}: {e}") from e
        model = cls(int(meta["n_features"]), int(meta["hidden"]), int(meta["layers"]))
        model.load_state_dict(state)
        return model
