"""Reward and value heads: initialisation, reading at the last real token, the shared-prompt
forward, save/load (full and LoRA), the value model initialised from a reward model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from rlfm.data.preferences import EncodedRanking, collate_rankings
from rlfm.models.heads import RewardModel, ValueModel, last_real_index, shared_prompt_mask
from rlfm.models.presets import build_model
from rlfm.models.tokenizer import save_tokenizer, train_bpe_tokenizer

WORDS = ["romeo", "juliet", "greets", "thanks", "follows", "answers", "gold", "silver", ".", ":"]


def make_backbone_dir(root, family: str = "gpt2", width: int = 64):
    """A tiny random causal LM + BPE tokenizer saved as a Hugging Face directory."""
    import random

    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS) for _ in range(4000))
    tok = train_bpe_tokenizer([text], 300)
    ids = dict(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    if family == "gpt2":
        cfg = GPT2Config(
            vocab_size=len(tok), n_positions=64, n_embd=width, n_layer=2, n_head=2, **ids
        )
    else:
        cfg = LlamaConfig(
            vocab_size=len(tok),
            max_position_embeddings=64,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            **ids,
        )
    model = build_model(cfg, seed=0)
    path = root / f"{family}-lm"
    model.save_pretrained(path)
    save_tokenizer(tok, path)
    return path


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return make_backbone_dir(tmp_path_factory.mktemp("heads"))


def encode(tok, texts, side="right"):
    rows = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), tok.pad_token_id)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        s = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, s] = torch.tensor(r)
        mask[i, s] = 1
    return ids, mask


def test_head_initialisation_is_normal_with_std_one_over_sqrt_d_plus_one(tmp_path):
    """Head weights ~ N(0, 1/√(d+1)), bias 0: for d = 512 the sample std is within 10% of
    1/√513 = 0.04415; the same seed gives the same head."""
    path = make_backbone_dir(tmp_path, width=512)
    a = RewardModel.from_backbone(path, seed=3)
    b = RewardModel.from_backbone(path, seed=3)
    w = a.head.weight.detach()
    assert w.shape == (1, 512)
    assert math.isclose(float(w.std()), 1 / math.sqrt(513), rel_tol=0.10)
    assert abs(float(w.mean())) < 3 / math.sqrt(513 * 512)
    assert float(a.head.bias.detach()) == 0.0
    assert torch.equal(w, b.head.weight.detach())


def test_reward_is_read_at_the_last_real_token(lm_dir):
    """The same texts right-padded, left-padded and one at a time give the same rewards, and
    what sits in the padding does not matter."""
    rm = RewardModel.from_backbone(lm_dir).eval()
    tok = rm.tokenizer
    texts = ["romeo greets juliet .", "gold", "juliet thanks romeo : gold gold silver ."]
    with torch.no_grad():
        ids, mask = encode(tok, texts, "right")
        right = rm(ids, mask)
        left = rm(*encode(tok, texts, "left"))
        alone = torch.cat([rm(*encode(tok, [t])) for t in texts])
        junk = ids.masked_fill(mask == 0, 7)
        junk_r = rm(junk, mask)
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, junk_r, atol=1e-6, rtol=0)
    assert last_real_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]])).tolist() == [
        2,
        3,
        3,
    ]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_shared_prompt_rows_equal_whole_sequences(tmp_path, family):
    """A row [prompt | completion 1 | completion 2 | ...] with the shared-prompt mask gives each
    completion the reward and gradients of its own prompt + completion sequence, also in a row
    longer than the model's 64 positions (GPT-2 in float64: to 1e-9; Llama, whose RMSNorm
    computes in float32: to 1e-5)."""
    rm = RewardModel.from_backbone(make_backbone_dir(tmp_path, family)).double().eval()
    tok = rm.tokenizer
    eos = tok.eos_token_id
    prompts = [tok("romeo greets :")["input_ids"], tok("juliet :")["input_ids"]]
    comps = [[" gold .", " silver silver gold"], [" thanks", " romeo answers juliet gold .", " ."]]
    enc = [
        EncodedRanking(p, [tok(c)["input_ids"] + [eos] for c in cs], list(range(len(cs))))
        for p, cs in zip(prompts, comps)
    ]
    long = [tok(" gold" * 40)["input_ids"] + [eos], tok(" silver ." * 20)["input_ids"] + [eos]]
    enc.append(EncodedRanking(prompts[0], long, [0, 1]))  # a row longer than the 64 positions
    batch = collate_rankings(enc, tok.pad_token_id)
    params = [p for p in rm.parameters() if p.requires_grad]
    shared = rm(**batch.model_inputs())
    g_shared = torch.autograd.grad(shared.sum(), params)
    seqs = [e.prompt_ids + c for e in enc for c in e.completion_ids]
    direct = torch.cat(
        [rm(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]
    )
    g_direct = torch.autograd.grad(direct.sum(), params)
    tol = 1e-9 if family == "gpt2" else 1e-5
    assert shared.shape == (7,) and batch.input_ids.shape[1] > 64
    torch.testing.assert_close(shared, direct, atol=tol, rtol=tol)
    for a, b in zip(g_shared, g_direct):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)


def test_shared_prompt_mask_by_hand():
    """Segments [0, 0, 1, 1, 2, −1]: completion 1 sees the prompt and itself, completion 2 the
    prompt and itself (not completion 1), padding only itself."""
    m = shared_prompt_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0].int()
    assert m.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_save_and_load_full_model_keeps_scores_and_normalisation(lm_dir, tmp_path):
    """save_pretrained writes the backbone, head.safetensors and head.json (gain, bias);
    from_pretrained scores the same texts identically, normalisation included."""
    rm = RewardModel.from_backbone(lm_dir, seed=1)
    rm.set_normalisation(2.0, -0.5)
    texts = ["romeo greets juliet .", "gold gold"]
    before = rm.score(texts)
    out = tmp_path / "rm"
    rm.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    meta = json.loads((out / "head.json").read_text())
    assert meta["kind"] == "reward" and meta["gain"] == 2.0 and meta["bias"] == -0.5
    assert (out / "model.safetensors").is_file() and (out / "head.safetensors").is_file()
    again = RewardModel.from_pretrained(out)
    torch.testing.assert_close(again.score(texts), before, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.score(texts, raw=True) * 2.0 - 0.5, before, atol=1e-5, rtol=0)


def test_lora_reward_model_saves_an_adapter_and_reloads(lm_dir, tmp_path):
    """With lora_rank > 0 only the adapter and the head train; the saved directory holds the
    adapter (not a copy of the backbone) and reloads — merged, or trainable to resume — with
    the same scores. A fresh adapter (B = 0) leaves the rewards of the plain model."""
    plain = RewardModel.from_backbone(lm_dir, seed=1)
    rm = RewardModel.from_backbone(lm_dir, lora_rank=4, seed=1)
    texts = ["romeo greets juliet .", "gold gold"]
    torch.testing.assert_close(rm.score(texts), plain.score(texts), atol=1e-6, rtol=0)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    with torch.no_grad():  # move the adapter away from zero
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    before = rm.score(texts)
    out = tmp_path / "rm-lora"
    rm.save_pretrained(out)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    merged = RewardModel.from_pretrained(out)
    torch.testing.assert_close(merged.score(texts), before, atol=1e-5, rtol=1e-5)
    resumed = RewardModel.from_pretrained(out, trainable=True)
    assert resumed.is_lora and any(
        p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n
    )
    torch.testing.assert_close(resumed.score(texts), before, atol=1e-5, rtol=1e-5)


def test_value_model_starts_from_the_reward_model(lm_dir, tmp_path):
    """ValueModel.from_pretrained(reward model dir) gives one value per token whose value at
    the last real token is the reward model's reward."""
    rm = RewardModel.from_backbone(lm_dir, seed=2)
    rm.save_pretrained(tmp_path / "rm")
    rm.tokenizer.save_pretrained(tmp_path / "rm")
    vm = ValueModel.from_pretrained(tmp_path / "rm")
    ids, mask = encode(rm.tokenizer, ["romeo greets juliet .", "gold"])
    with torch.no_grad():
        values = vm(ids, mask)
        rewards = rm(ids, mask)
    assert values.shape == ids.shape
    torch.testing.assert_close(values[torch.arange(2), last_real_index(mask)], rewards)
