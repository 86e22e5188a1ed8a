"""Reward and value heads: initialisation, reading at the last real token, the shared-prompt
forward, the value model initialised from a reward model; the standard format both ways (rlfm →
transformers / peft, a model made with transformers → rlfm) and rlfm's earlier format."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    GPT2Config,
    LlamaConfig,
    Qwen2Config,
    pipeline,
)

from rlfm.data.preferences import EncodedRanking, collate_rankings
from rlfm.models.heads import (
    RewardModel,
    ValueModel,
    encode_sequence,
    last_real_index,
    score_index,
    shared_prompt_mask,
)
from rlfm.models.presets import build_model
from rlfm.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

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
        cfg = (LlamaConfig if family == "llama" else Qwen2Config)(
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


def trained_looking(rm: RewardModel) -> RewardModel:
    """``rm`` with a head bias and a normalisation, as after `rlfm reward train`."""
    with torch.no_grad():
        rm.head.bias.fill_(0.37)
    rm.set_normalisation(1.7, -0.45)
    return rm


def test_save_and_load_full_model_keeps_scores_and_normalisation(lm_dir, tmp_path):
    """save_pretrained writes a one-label sequence classifier (config.json with rlfm_head:
    gain, bias, head bias, offset); from_pretrained gets the very same head back (score =
    gain · w stored in float64) and the same scores, normalisation included."""
    rm = trained_looking(RewardModel.from_backbone(lm_dir, seed=1))
    texts = ["romeo greets juliet .", "gold gold"]
    before = rm.score(texts)
    out = tmp_path / "rm"
    rm.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert config["id2label"] == {"0": "reward"} and config["problem_type"] == "regression"
    meta = config["rlfm_head"]
    assert meta["kind"] == "reward" and math.isclose(meta["gain"], 1.7, rel_tol=1e-7)
    assert math.isclose(meta["offset"], 1.7 * 0.37 - 0.45, rel_tol=1e-6)
    assert not (out / "head.json").exists() and not (out / "head.safetensors").exists()
    again = RewardModel.from_pretrained(out)
    assert again.load_note is None
    assert torch.equal(again.head.weight, rm.head.weight)
    assert torch.equal(again.head.bias, rm.head.bias)
    assert (float(again.gain), float(again.bias)) == (float(rm.gain), float(rm.bias))
    torch.testing.assert_close(again.score(texts), before, atol=0, rtol=0)
    torch.testing.assert_close(again.score(texts, raw=True) * 1.7 - 0.45, before, atol=1e-5, rtol=0)


def hf_inputs(tok, texts, prompts=None):
    """Token ids as rlfm reads a text (encode_sequence), right-padded with PAD for
    transformers."""
    prompts = prompts or [""] * len(texts)
    seqs = [encode_sequence(tok, p, t, 64) for p, t in zip(prompts, texts)]
    T = max(map(len, seqs))
    ids = torch.full((len(seqs), T), tok.pad_token_id)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor(q)
    return {"input_ids": ids, "attention_mask": (ids != tok.pad_token_id).long()}


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_transformers_loads_a_saved_reward_model_with_the_same_scores(tmp_path, family):
    """AutoModelForSequenceClassification.from_pretrained(dir) alone reads rlfm's reward model:
    its output (at the last non-pad token of right-padded rows) plus the stored offset is
    `rlfm reward score`'s normalised reward to 1e-5; the text-classification pipeline returns
    the output as it is (problem_type regression: no sigmoid)."""
    rm = trained_looking(RewardModel.from_backbone(make_backbone_dir(tmp_path, family), seed=2))
    out = tmp_path / "rm"
    rm.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    texts = ["romeo greets juliet .", "gold", "juliet thanks romeo : gold gold silver ."]
    prompts = ["", "romeo :", "lear :"]
    want = rm.score(texts, prompts)
    hf = AutoModelForSequenceClassification.from_pretrained(out).eval()
    offset = hf.config.rlfm_head["offset"]
    with torch.no_grad():
        right = hf(**hf_inputs(rm.tokenizer, texts, prompts)).logits[:, 0]
    torch.testing.assert_close(right + offset, want, atol=1e-5, rtol=0)
    if family == "gpt2":
        text = rm.tokenizer.decode(hf_inputs(rm.tokenizer, texts[:1])["input_ids"][0])
        result = pipeline("text-classification", model=str(out))(text)[0]
        assert result["label"] == "reward"
        assert math.isclose(result["score"] + offset, float(want[0]), abs_tol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_reward_model_made_with_transformers_loads_with_the_same_scores(tmp_path, family):
    """A one-label sequence classifier built with transformers alone, whose tokenizer pads with
    its EOS (as TRL sets it up): rlfm reads it with its own tokenizer, no normalisation, and
    scores what transformers scores — at the last non-pad token, here the token before EOS."""
    import random

    from rlfm.models.heads import own_tokenizer

    lm = make_backbone_dir(tmp_path, family)
    tok = own_tokenizer(lm)
    tok.pad_token = tok.eos_token  # no PAD of its own
    config = json.loads((lm / "config.json").read_text())
    cls = {"gpt2": GPT2Config, "llama": LlamaConfig}[family]
    cfg = cls(**{k: v for k, v in config.items() if k not in ("architectures", "dtype")})
    cfg.num_labels, cfg.pad_token_id = 1, tok.eos_token_id
    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_config(cfg).eval()
    out = tmp_path / "made-elsewhere"
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    rm = RewardModel.from_pretrained(out)
    assert (float(rm.gain), float(rm.bias), float(rm.head.bias.detach())) == (1.0, 0.0, 0.0)
    assert rm.tokenizer.pad_token_id == rm.tokenizer.eos_token_id  # no PAD added
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(5)]
    got = rm.score(texts, ["romeo :"] * 5)
    seqs = [encode_sequence(tok, "romeo :", t, 64) for t in texts]
    ids = torch.full((5, max(map(len, seqs))), tok.eos_token_id)
    for i, q in enumerate(seqs):
        ids[i, : len(q)] = torch.tensor(q)
    with torch.no_grad():
        want = hf(input_ids=ids).logits[:, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_score_index_is_the_last_non_pad_token():
    """PAD = 9: read at the last token that is not PAD within the mask; a row of PAD only (or
    no PAD token) at the mask's last real token."""
    ids = torch.tensor([[5, 6, 9, 9], [9, 5, 6, 7], [5, 6, 0, 9], [9, 9, 9, 9]])
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert score_index(ids, mask, 9).tolist() == [1, 3, 2, 1]
    assert score_index(ids, mask, None).tolist() == [1, 3, 3, 1]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_lora_reward_model_saves_an_adapter_and_reloads(tmp_path, family):
    """With lora_rank > 0 only the adapter and the head train; the saved directory is a peft
    SEQ_CLS adapter (not a copy of the backbone) that reloads — merged, or trainable to resume —
    with the same scores, and that transformers (with peft) loads onto the base model's
    sequence-classification class: output + offset = rlfm's reward. A fresh adapter (B = 0)
    leaves the rewards of the plain model."""
    from peft import PeftModel

    lm_dir = make_backbone_dir(tmp_path, family)
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
    trained_looking(rm)
    before = rm.score(texts)
    out = tmp_path / "rm-lora"
    rm.save_pretrained(out)
    rm.tokenizer.save_pretrained(out)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and adapter["modules_to_save"] == ["score"]
    assert not (out / "model.safetensors").exists()
    merged = RewardModel.from_pretrained(out)
    torch.testing.assert_close(merged.score(texts), before, atol=1e-5, rtol=1e-5)
    resumed = RewardModel.from_pretrained(out, trainable=True)
    assert resumed.is_lora and any(
        p.requires_grad for n, p in resumed.named_parameters() if "lora_" in n
    )
    torch.testing.assert_close(resumed.score(texts), before, atol=1e-5, rtol=1e-5)
    offset = json.loads((out / "rlfm_head.json").read_text())["offset"]
    inputs = hf_inputs(rm.tokenizer, texts)
    onto = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(lm_dir, num_labels=1), out
    )
    direct = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)
    with torch.no_grad():
        for hf in (onto, direct):
            torch.testing.assert_close(
                hf(**inputs).logits[:, 0] + offset, before, atol=1e-5, rtol=0
            )


def write_old_format(rm: RewardModel, directory) -> None:
    """rlfm's earlier layout: the backbone as a causal LM (or its adapter), head.safetensors
    (w, b) and head.json (kind, gain, bias), the tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory.mkdir(parents=True)
    if rm.is_lora:  # the adapter, keyed as on the causal LM (same transformer prefix)
        rm.backbone.peft_config["default"].task_type = "CAUSAL_LM"
        rm.backbone.save_pretrained(directory)
    else:
        lm = AutoModelForCausalLM.from_config(rm.config)
        lm.base_model.load_state_dict(rm.backbone.state_dict())
        lm.save_pretrained(directory)
    head = {"weight": rm.head.weight.detach().clone(), "bias": rm.head.bias.detach().clone()}
    save_file(head, str(directory / "head.safetensors"))
    meta = {"kind": "reward", "gain": float(rm.gain), "bias": float(rm.bias), "lora": rm.is_lora}
    (directory / "head.json").write_text(json.dumps(meta))
    rm.tokenizer.save_pretrained(directory)


@pytest.mark.parametrize("lora", [False, True])
def test_the_earlier_format_still_loads_with_a_note(lm_dir, tmp_path, lora):
    """A reward model in rlfm's earlier format (a causal LM or its adapter + head.safetensors +
    head.json) loads with its scores and a note saying which format it is; saving it again
    writes the standard format."""
    rm = trained_looking(RewardModel.from_backbone(lm_dir, lora_rank=4 if lora else 0, seed=4))
    texts = ["romeo greets juliet .", "gold gold"]
    before = rm.score(texts)
    old = tmp_path / "old"
    write_old_format(rm, old)
    again = RewardModel.from_pretrained(old)
    assert "earlier reward-model format" in again.load_note
    torch.testing.assert_close(again.score(texts), before, atol=1e-6, rtol=0)
    again.save_pretrained(tmp_path / "new")
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "new")
    with torch.no_grad():
        logits = hf(**hf_inputs(rm.tokenizer, texts)).logits[:, 0]
    torch.testing.assert_close(logits + hf.config.rlfm_head["offset"], before, atol=1e-5, rtol=0)


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
    vm.save_pretrained(tmp_path / "vm")  # the same standard format, labelled "value"
    config = json.loads((tmp_path / "vm" / "config.json").read_text())
    assert config["id2label"] == {"0": "value"} and config["rlfm_head"]["kind"] == "value"


def test_a_peft_lora_adapter_made_elsewhere_loads_with_its_scores(tmp_path):
    """A LoRA adapter made with peft alone (task SEQ_CLS, its score layer in modules_to_save)
    onto a one-label classifier saved with transformers: rlfm loads it — merged, or trainable
    — and scores what peft + transformers score."""
    from peft import LoraConfig, PeftModel, get_peft_model

    lm = make_backbone_dir(tmp_path)
    config = json.loads((lm / "config.json").read_text())
    cfg = GPT2Config(**{k: v for k, v in config.items() if k not in ("architectures", "dtype")})
    cfg.num_labels = 1
    torch.manual_seed(0)
    base_dir = tmp_path / "classifier"
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(base_dir)
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    lora = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.normal_(0, 0.1)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    tok = load_tokenizer(lm)
    tok.save_pretrained(out)
    texts = ["romeo greets juliet .", "gold gold silver"]
    fresh = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base_dir), out
    )
    with torch.no_grad():
        want = fresh.eval()(**hf_inputs(tok, texts)).logits[:, 0]
    for trainable in (False, True):
        rm = RewardModel.from_pretrained(out, trainable=trainable)
        assert rm.is_lora == trainable and float(rm.gain) == 1.0
        torch.testing.assert_close(rm.score(texts), want, atol=1e-5, rtol=0)
