"""LoRA and prefix-tuning through peft: identity at initialisation, only adapter weights train,
merging, the disabled adapter as the reference model, saving and loading base + adapter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlfm.errors import ModelError
from rlfm.models import adapters
from rlfm.models.presets import build_model, model_config
from rlfm.models.tokenizer import save_tokenizer, train_bpe_tokenizer
from rlfm.rollout import sample

VOCAB = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and far more steadily on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(preset: str = "tiny", seed: int = 0):
    return build_model(model_config(preset, vocab_size=VOCAB, context=64), seed=seed).eval()


def _tokens(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # one right-padded row
    return ids, mask


def _logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _train(model, steps: int = 5, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps of next-token loss on fixed tokens; the losses."""
    ids, mask = _tokens(2)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_lora_with_zero_b_equals_base(preset):
    """Before training (B = 0) the LoRA model's logits are bit-for-bit the base model's."""
    ids, mask = _tokens()
    base = _logits(_model(preset), ids, mask)
    lora = adapters.add_lora(_model(preset)).eval()
    assert torch.equal(_logits(lora, ids, mask), base)


def test_lora_trains_only_adapter_weights():
    """After training, every LoRA B changed and every base weight is byte-identical."""
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = adapters.add_lora(model, dropout=0.0)
    losses = _train(lora)
    assert losses[-1] < losses[0]
    changed_b = 0
    for name, p in lora.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            changed_b += "lora_B" in name and bool(p.abs().sum() > 0)
        else:
            assert not p.requires_grad
    assert changed_b == 4  # c_attn and attn.c_proj in 2 layers
    base = adapters.base_model_of(lora)
    for key, value in before.items():
        peft_key = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        state = base.state_dict()
        got = state[peft_key] if peft_key in state else state[key]
        assert torch.equal(got, value), key  # bitwise: the optimizer never touched it


def test_trainable_share_tiny_and_gpt3_small():
    """Default LoRA (r = 8 on the attention projections) trains a few percent of the tiny
    preset (2048 tokens, context 128: 12,288 of ~0.68M ≈ 1.8%) and well under 1% of GPT-3
    Small (12 × (768·8 + 8·2304 + 2·768·8) = 442,368 of ~125.7M ≈ 0.35%, built on the meta
    device: nothing allocated)."""
    tiny = adapters.add_lora(build_model(model_config("tiny", vocab_size=2048, context=128)))
    trainable, total = adapters.trainable_parameters(tiny)
    assert trainable == 2 * (128 * 8 + 8 * 384 + 128 * 8 + 8 * 128)
    assert 0.01 < trainable / total < 0.05
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        small = AutoModelForCausalLM.from_config(model_config("gpt3-small"))
        small = adapters.add_lora(small)
    trainable, total = adapters.trainable_parameters(small)
    assert trainable == 442_368
    assert all(p.device.type == "meta" for p in small.parameters())
    assert trainable / total < 0.005


def test_prefix_tuning_trains_and_changes_output():
    """Prefix-tuning trains only the prefix; the loss falls, the output differs from the base,
    and with the adapter disabled the model is the base model again."""
    ids, mask = _tokens()
    base = _logits(_model(), ids, mask)
    prefix = adapters.add_prefix(_model(), num_tokens=4)
    assert adapters.prefix_tokens(prefix) == 4
    trainable, _ = adapters.trainable_parameters(prefix)
    assert trainable == 4 * 2 * 2 * 128  # tokens × layers × (key, value) × width
    losses = _train(prefix, steps=8, lr=3e-2)
    assert losses[-1] < losses[0] - 0.05
    assert (_logits(prefix, ids, mask) - base).abs().max() > 1e-2
    with adapters.disabled_adapter(prefix):
        assert torch.equal(_logits(prefix, ids, mask), base)
    with pytest.raises(ModelError, match="cannot be merged"):
        adapters.merge_adapter(prefix)


def test_disabled_lora_is_the_base_model():
    """A trained LoRA model inside disabled_adapter gives the base logits exactly; a plain
    model has no adapter to disable."""
    ids, mask = _tokens()
    base = _logits(_model(), ids, mask)
    lora = adapters.add_lora(_model(), dropout=0.0)
    _train(lora)
    assert not torch.equal(_logits(lora, ids, mask), base)
    with adapters.disabled_adapter(lora):
        assert torch.equal(_logits(lora, ids, mask), base)
    assert not torch.equal(_logits(lora, ids, mask), base)  # enabled again afterwards
    with pytest.raises(ModelError, match="no adapter"), adapters.disabled_adapter(_model()):
        pass


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_merge_equals_base_plus_adapter(preset):
    """The merged plain model computes the logits of base + trained adapter (fp32 rounding)."""
    ids, mask = _tokens()
    lora = adapters.add_lora(_model(preset), dropout=0.0)
    _train(lora)
    expected = _logits(lora, ids, mask)
    merged = adapters.merge_adapter(lora)
    assert not adapters.is_peft_model(merged)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, ids, mask), expected, atol=2e-5, rtol=1e-5)


def test_save_and_load_base_plus_adapter(tmp_path):
    """A saved adapter holds only adapter weights and the absolute base path; load_model
    rebuilds base + adapter with the same logits, and merge=True gives a plain model."""
    base_dir = tmp_path / "base"
    _model().save_pretrained(base_dir)
    lora = adapters.add_lora(adapters.load_model(base_dir), dropout=0.0, base_path=base_dir)
    _train(lora)
    ids, mask = _tokens()
    expected = _logits(lora, ids, mask)
    lora.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    loaded = adapters.load_model(tmp_path / "adapter").eval()
    assert adapters.is_peft_model(loaded)
    torch.testing.assert_close(_logits(loaded, ids, mask), expected)
    merged = adapters.load_model(tmp_path / "adapter", merge=True).eval()
    torch.testing.assert_close(_logits(merged, ids, mask), expected, atol=2e-5, rtol=1e-5)


def test_grown_vocabulary_is_rebuilt_identically(tmp_path):
    """When fine-tuning grew the vocabulary (a PAD was added), loading the adapter grows the
    base the same way (new rows = mean of old rows), so logits match exactly."""
    base_dir = tmp_path / "base"
    _model().save_pretrained(base_dir)
    tok = train_bpe_tokenizer(["romeo juliet " * 50], VOCAB)
    tok.add_special_tokens({"additional_special_tokens": [f"<x{i}>" for i in range(40)]})
    assert len(tok) > VOCAB
    model = adapters.load_model(base_dir)
    adapters.resize_embeddings(model, len(tok))
    emb = model.get_input_embeddings().weight
    assert torch.equal(emb[VOCAB], emb[:VOCAB].mean(0))
    lora = adapters.add_lora(model, dropout=0.0, base_path=base_dir)
    _train(lora)
    with pytest.warns(UserWarning, match="save_embedding_layers"):  # peft keeps the new rows too
        lora.save_pretrained(tmp_path / "adapter")
    save_tokenizer(tok, tmp_path / "adapter")
    ids, mask = _tokens()
    loaded = adapters.load_model(tmp_path / "adapter").eval()
    assert torch.equal(_logits(loaded, ids, mask), _logits(lora, ids, mask))


def test_missing_base_is_a_clear_error(tmp_path):
    """An adapter whose base directory is gone: ModelError naming the base."""
    base_dir = tmp_path / "base"
    _model().save_pretrained(base_dir)
    adapters.add_lora(adapters.load_model(base_dir), base_path=base_dir).save_pretrained(
        tmp_path / "adapter"
    )
    import shutil

    shutil.rmtree(base_dir)
    with pytest.raises(ModelError, match="base model .*base.* not a local directory"):
        adapters.load_model(tmp_path / "adapter")


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_sampling_model_decodes_like_the_full_forward(kind):
    """Greedy KV-cache sampling through sampling_model gives, for every generated token, the
    argmax of the adapted model's full (uncached) forward on the same tokens."""
    add = {"lora": adapters.add_lora, "prefix": adapters.add_prefix}[kind]
    model = add(_model(), **({"num_tokens": 4} if kind == "prefix" else {}))
    _train(model, steps=3)
    ids = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    out = sample(
        adapters.sampling_model(model),
        ids,
        mask,
        max_new_tokens=5,
        eos_token_id=0,
        pad_token_id=1,
        temperature=0,
    )
    full = torch.cat([ids, out.response_ids], dim=1)
    logits = _logits(model, full, torch.ones_like(full))
    greedy = logits[:, ids.shape[1] - 1 : -1].argmax(-1)
    real = out.response_mask.bool()
    assert torch.equal(greedy[real], out.response_ids[real])


def test_unknown_lora_target_is_a_config_error():
    """A --lora-targets name the model does not have is named in the error."""
    from rlfm.errors import ConfigError

    with pytest.raises(ConfigError, match="no module named q_proj"):
        adapters.add_lora(_model(), targets=("q_proj",))
