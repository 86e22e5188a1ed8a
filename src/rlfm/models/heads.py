"""Scalar heads on a causal-LM backbone: the reward model and the value model.

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

**Directory layout** (``save_pretrained`` / ``from_pretrained``)::

    config.json, model.safetensors    the backbone causal LM (save_pretrained), or with LoRA
    adapter_config.json, ...          its PEFT adapter, whose base_model_name_or_path names the
                                      backbone it was trained on (loaded recursively)
    head.safetensors                  the head: weight (1, d_model), bias (1,)
    head.json                         kind ("reward"/"value"), hidden size, gain, bias

Also here: :class:`StepRewardMLP`, the small r̂(o, a) network for preferences over trajectory
segments (Christiano et al. 2017).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from rlfm.errors import ModelError
from rlfm.models.adapters import adapter_base_path, add_lora, fit_vocabulary, load_model
from rlfm.models.tokenizer import ensure_pad_token, load_tokenizer

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
ADAPTER_CONFIG = "adapter_config.json"


# ---------------------------------------------------------------------------- backbones


def load_backbone(path: str | Path) -> nn.Module:
    """The causal LM in ``path``: a Hugging Face model directory, or a PEFT adapter directory
    whose base is loaded first and the adapter merged in (models/adapters.py)."""
    return load_model(path, merge=True)


def load_model_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (for an adapter without one: its base's), with a PAD
    token distinct from EOS."""
    path = Path(path)
    try:
        tok = load_tokenizer(path)
    except ModelError:
        if not (path / ADAPTER_CONFIG).is_file():
            raise
        return load_model_tokenizer(adapter_base_path(path))
    ensure_pad_token(tok)
    return tok


def _body(backbone: nn.Module) -> nn.Module:
    """The transformer inside a causal LM (inside a PEFT wrapper): hidden states, no LM head."""
    lm = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return lm.base_model


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
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
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


# ---------------------------------------------------------------------------- the head models


class ScalarHeadModel(nn.Module):
    """A causal-LM backbone with a linear head to one scalar per token (see module docstring).

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
        super().__init__()
        self.backbone = backbone
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
        fuse_gelu(backbone)
        lm = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        out, inp = lm.get_output_embeddings(), lm.get_input_embeddings()
        if out is not None and out.weight is not inp.weight:
            out.weight.requires_grad_(False)  # the untied LM head is never used: no DDP grad

    # ------------------------------------------------------------------ properties
    @property
    def hidden_size(self) -> int:
        lm = self.backbone.get_base_model() if self.is_lora else self.backbone
        return int(lm.get_input_embeddings().weight.shape[1])

    @property
    def is_lora(self) -> bool:
        """True when the backbone carries a (trainable) PEFT adapter."""
        return hasattr(self.backbone, "get_base_model")

    @property
    def config(self) -> PretrainedConfig:
        """The backbone's Hugging Face config."""
        lm = self.backbone.get_base_model() if self.is_lora else self.backbone
        return lm.config

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
        body = _body(self.backbone)
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
        elif impl != "sdpa":
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
    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Write the backbone (or its adapter), ``head.safetensors`` and ``head.json``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        save_file(
            {
                "weight": self.head.weight.detach().float().cpu().contiguous(),
                "bias": self.head.bias.detach().float().cpu().contiguous(),
            },
            str(directory / HEAD_WEIGHTS),
        )
        meta = {
            "kind": self.kind,
            "hidden_size": self.hidden_size,
            "gain": float(self.gain),
            "bias": float(self.bias),
            "lora": self.is_lora,
        }
        (directory / HEAD_CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

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
        if lora_rank > 0:
            lm = add_lora(
                lm,
                r=lora_rank,
                alpha=lora_alpha or 2.0 * lora_rank,
                dropout=lora_dropout,
                targets=lora_targets,
                base_path=path,
            )
        return cls(lm, seed=seed, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, trainable: bool = False) -> ScalarHeadModel:
        """Load a model written by :meth:`save_pretrained` (a reward model or a value model:
        PPO's value model starts from the reward model). ``trainable`` keeps a LoRA adapter
        trainable (to resume training); otherwise it is merged into the weights."""
        path = Path(path)
        meta_file, weights = path / HEAD_CONFIG, path / HEAD_WEIGHTS
        if not meta_file.is_file() or not weights.is_file():
            raise ModelError(
                f"{str(path)!r} holds no reward/value model (no {HEAD_CONFIG} and "
                f"{HEAD_WEIGHTS}); train one with `rlfm reward train`"
            )
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            from safetensors.torch import load_file

            state = load_file(str(weights))
        except Exception as e:  # damaged files: json, safetensors
            raise ModelError(f"cannot read the head in {str(path)!r}: {e}") from e
        if meta.get("lora") and trainable:
            from peft import PeftModel

            lm = PeftModel.from_pretrained(
                load_backbone(adapter_base_path(path)), path, is_trainable=True
            )
        else:
            lm = load_backbone(path)
        head = nn.Linear(state["weight"].shape[1], 1)
        with torch.no_grad():
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])
        try:
            tokenizer = load_model_tokenizer(path)
        except ModelError:
            tokenizer = None
        return cls(
            lm,
            head=head,
            gain=float(meta.get("gain", 1.0)),
            bias=float(meta.get("bias", 0.0)),
            tokenizer=tokenizer,
        )


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
        """Rewards, float32 (or wider): (B,) at each row's last real token, or (N,) at the
        (row, column) pairs of ``read_index`` (N, 2) — the last token (EOS) of each completion
        of a shared-prompt batch. Other arguments as :meth:`ScalarHeadModel.hidden_states`."""
        values = self.token_values(
            input_ids, attention_mask, segment_ids, position_ids, raw=raw
        )  # (B, T)
        if read_index is not None:
            return values[read_index[:, 0], read_index[:, 1]]
        last = last_real_index(attention_mask)
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
        """Rewards of ``texts`` (completions of ``prompts``, or whole texts). -> (N,) on CPU.

        Each text is encoded as in training: the prompt's tokens (a lone BOS/EOS when empty),
        then the text's tokens and EOS; ``max_length`` keeps the last tokens of long inputs.
        """
        if self.tokenizer is None:
            raise ModelError("this model has no tokenizer; load it with from_pretrained")
        tok = self.tokenizer
        prompts = list(prompts) if prompts is not None else [""] * len(texts)
        assert len(prompts) == len(texts), "one prompt per text"
        limit = max_length or int(getattr(self.config, "max_position_embeddings", 1024))
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
            ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
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
