"""rlfm's attention: the written-out formula against a hand-worked example and against PyTorch's
SDPA (masks, causal alignment with a cache, grouped keys, dropout's mean), the rule that picks
it, and whole models on it against the same models on SDPA (logits, gradients, cached decoding,
the saved config)."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from rlfm.models.attention import (
    EXPLICIT_MAX_KEYS,
    NAME,
    attention,
    dropout,
    explicit_attention,
    explicit_is_faster,
    packed_attention,
    use_fast_attention,
)
from rlfm.models.heads import shared_prompt_mask

EXPLICIT = explicit_attention


def test_explicit_attention_by_hand():
    # one head, two tokens, d = 1: q = (1, 2), k = (0, 1), v = (10, 20), scale 1/√1 = 1
    q = torch.tensor([1.0, 2.0]).view(1, 1, 2, 1)
    k = torch.tensor([0.0, 1.0]).view(1, 1, 2, 1)
    v = torch.tensor([10.0, 20.0]).view(1, 1, 2, 1)
    out = explicit_attention(q, k, v, None, causal=False).flatten()
    # token 0: scores (0, 1) -> weights (1, e)/(1 + e); token 1: scores (0, 2)
    w0 = math.e / (1 + math.e)
    w1 = math.e**2 / (1 + math.e**2)
    assert out.tolist() == pytest.approx([10 + 10 * w0, 10 + 10 * w1], abs=1e-5)
    causal = explicit_attention(q, k, v, None, causal=True).flatten()
    assert causal.tolist() == pytest.approx([10.0, 10 + 10 * w1], abs=1e-5)  # 0 sees itself only


def _qkv(B=2, H=3, Tq=7, Tk=7, D=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=dtype) for T in (Tq, Tk, Tk)]


@pytest.mark.parametrize("Tq,Tk", [(7, 7), (3, 9), (1, 9)])
def test_explicit_attention_equals_sdpa(Tq, Tk):
    q, k, v = _qkv(Tq=Tq, Tk=Tk)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=Tq > 1 and Tq == Tk)
    if Tq > 1 and Tq != Tk:  # a cache holds the first Tk − Tq keys: SDPA with the explicit mask
        mask = torch.ones(Tq, Tk, dtype=torch.bool).tril(Tk - Tq)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    got = explicit_attention(q, k, v, None, causal=True)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert torch.allclose(
        explicit_attention(q, k, v, None, causal=False, scale=0.3),
        F.scaled_dot_product_attention(q, k, v, scale=0.3),
        atol=1e-6,
    )


def test_explicit_attention_masks_equal_sdpa():
    q, k, v = _qkv(B=2, H=2, Tq=9, Tk=9)
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, -1], [0, 0, 1, 1, 1, 1, 2, 2, 2]])
    mask = shared_prompt_mask(segments)  # bool (B, 1, T, T)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask, causal=True), want)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(explicit_attention(q, k, v, additive, causal=False), want)


def test_a_row_that_may_attend_to_nothing_stays_finite():
    q, k, v = _qkv(B=1, H=1, Tq=3, Tk=3)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    mask[0, 0, 0] = False
    assert torch.isfinite(explicit_attention(q, k, v, mask, causal=True)).all()


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_rescales():
    """p is taken to the nearest multiple of 1/32768 (0.1 -> 3277/32768 = 0.100006): kept
    elements are x / (1 − p') exactly, the rest 0; the kept share of 10⁶ elements is 1 − p'
    within 5 binomial standard deviations, in each of the four lanes a random draw is cut into
    too; the gradient is the same mask."""
    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    q = 3277 / 32768
    assert abs(q - p) < 1e-5
    x = (torch.rand(n) + 0.5).requires_grad_()
    y = dropout(x, p)
    kept = y != 0
    sd = (q * (1 - q) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - q)) < 5 * sd
    for lane in kept.view(-1, 4).float().mean(0):  # elements 4i + j share a 64-bit draw
        assert abs(lane.item() - (1 - q)) < 5 * 2 * sd
    torch.testing.assert_close(y[kept], x[kept] / (1 - q), rtol=1e-6, atol=0)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / (1 - q), rtol=1e-6, atol=0)
    assert dropout(x, 0.0) is x
    assert (dropout(x, 1.0) == 0).all()


def test_dropout_masks_of_neighbouring_elements_are_independent():
    """Elements cut from the same 64-bit draw are dropped independently: over 10⁶ elements,
    both of two neighbours are kept (1 − p')² of the time, within 5 standard deviations."""
    torch.manual_seed(1)
    q = 3277 / 32768
    kept = (dropout(torch.ones(1_000_000), 0.1) != 0).view(-1, 4).float()
    m = kept.shape[0]
    for a, b in ((0, 1), (1, 2), (2, 3)):
        both = (kept[:, a] * kept[:, b]).mean().item()
        sd = ((1 - q) ** 2 * (1 - (1 - q) ** 2) / m) ** 0.5
        assert abs(both - (1 - q) ** 2) < 5 * sd


def test_dropout_on_the_weights_is_sdpa_in_expectation_and_without_dropout():
    """With p = 0 it is F.scaled_dot_product_attention with the same mask; with p = 0.5 its
    mean over 4,000 draws converges to it (inverted dropout is unbiased)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 3, 4, generator=g) for _ in range(3))
    allowed = torch.ones(3, 3).tril().bool()
    exact = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(explicit_attention(q, k, v, allowed, causal=False), exact)
    torch.manual_seed(0)
    draws = [explicit_attention(q, k, v, allowed, causal=False, dropout_p=0.5) for _ in range(4000)]
    torch.testing.assert_close(torch.stack(draws).mean(0), exact, atol=0.05, rtol=0)


@pytest.mark.parametrize("separate_q", [False, True])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_packed_attention_and_its_gradients_equal_explicit_attention(separate_q, p):
    """Forward and every gradient against autograd through split + explicit_attention, with
    the same dropout draws (the same seed): all queries over a causal mask, or the queries of
    some rows given apart from a [k v] projection (the DT's last block)."""
    torch.manual_seed(0)
    B, L, h = 3, 7, 8
    rows = torch.tensor([1, 4, 6]) if separate_q else torch.arange(L)
    allowed = torch.arange(L)[None, :] <= rows[:, None]
    packed = torch.randn(B, L, (2 if separate_q else 3) * h, requires_grad=True)
    q = torch.randn(B, len(rows), h, requires_grad=True) if separate_q else None
    leaves = [packed] + ([q] if separate_q else [])
    dy = torch.randn(B, len(rows), h)

    def run(fn):
        torch.manual_seed(1)
        y = fn()
        y.backward(dy)
        grads = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return [y.detach()] + grads

    def plain():
        if separate_q:
            qq, (k, v) = q, packed.split(h, dim=-1)
        else:
            qq, k, v = packed.split(h, dim=-1)
        y = explicit_attention(
            qq[:, None], k[:, None], v[:, None], allowed, causal=False, dropout_p=p
        )
        return y[:, 0]

    fast = run(lambda: packed_attention(packed, allowed, q, dropout_p=p))
    expected = run(plain)
    for a, e in zip(fast, expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    if p:  # the draws matter: another seed gives other outputs
        torch.manual_seed(2)
        assert not torch.allclose(packed_attention(packed, allowed, q, dropout_p=p), fast[0])


def test_which_path():
    bf = dict(dtype=torch.bfloat16)
    assert explicit_is_faster(torch.empty(48, 4, 80, 32, **bf), torch.empty(48, 4, 80, 32, **bf))
    assert explicit_is_faster(torch.empty(8, 4, 1, 32, **bf), torch.empty(8, 4, 200, 32, **bf))
    assert not explicit_is_faster(torch.empty(48, 4, 80, 32), torch.empty(48, 4, 80, 32))  # fp32
    long = EXPLICIT_MAX_KEYS + 1
    assert not explicit_is_faster(torch.empty(1, 4, 1, 32, **bf), torch.empty(1, 4, long, 32, **bf))
    many = torch.empty(64, 12, 256, 64, **bf)  # 50M scores: SDPA's fused kernel
    assert not explicit_is_faster(many, many)


def test_grouped_keys_and_the_sdpa_fallback_equal_transformers_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=2, is_causal=True)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 6, 8, generator=g).bfloat16()
    k, v = (torch.randn(2, 2, 6, 8, generator=g).bfloat16() for _ in range(2))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    mask[1, :, :, :2] = False  # left padding
    mask[1, :, :2, :2] = torch.eye(2, dtype=torch.bool)
    for m in (None, mask):
        assert explicit_is_faster(q, k)
        got, _ = attention(module, q, k, v, m, scaling=8**-0.5)
        want, _ = sdpa_attention_forward(
            module, q.float(), k.float(), v.float(), m, scaling=8**-0.5
        )
        assert got.shape == want.shape == (2, 6, 4, 8)
        torch.testing.assert_close(got.float(), want, atol=0.03, rtol=0.03)
        f32, _ = attention(module, q.float(), k.float(), v.float(), m, scaling=8**-0.5)  # SDPA
        torch.testing.assert_close(f32, want)


def _models():
    gpt2 = GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=97, n_positions=64)
    gpt2.bos_token_id = gpt2.eos_token_id = 0
    llama = LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        num_hidden_layers=2, vocab_size=97, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    for config in (gpt2, llama):
        torch.manual_seed(0)
        yield AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


@pytest.mark.parametrize("model", list(_models()), ids=["gpt2", "llama"])
def test_a_model_on_it_computes_what_it_computes_on_sdpa(model, tmp_path, monkeypatch):
    import rlfm.models.attention as A

    written = []
    monkeypatch.setattr(
        A, "explicit_attention", lambda *a, **k: written.append(1) or EXPLICIT(*a, **k)
    )
    fast = use_fast_attention(copy.deepcopy(model))
    assert fast.config._attn_implementation == NAME
    ids = torch.randint(1, 97, (3, 20), generator=torch.Generator().manual_seed(0))
    am = torch.ones(3, 20, dtype=torch.long)
    am[0, :5] = 0  # left padding
    am[1, 15:] = 0  # right padding
    real = am.bool()
    for bf16 in (False, True):
        outs, grads = [], []
        for m in (model, fast):
            m.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = m(input_ids=ids, attention_mask=am).logits.float()
            logits[real].logsumexp(-1).sum().backward()
            outs.append(logits[real])
            grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
        tol = dict(atol=0.05, rtol=0.05) if bf16 else dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outs[1], outs[0], **tol)
        # bf16 writes GPT-2's attention out; LLaMA's rotary queries are float32 (SDPA)
        assert bool(written) == (bf16 and model.config.model_type == "gpt2")
        cos = F.cosine_similarity(grads[0], grads[1], dim=0)
        assert cos > (0.999 if bf16 else 0.999999)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # decoding with a cache
        a = model.generate(ids[2:], max_new_tokens=8, do_sample=False, pad_token_id=0)
        b = fast.generate(ids[2:], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)
    fast.save_pretrained(tmp_path)  # the choice is not saved: plain transformers loads it
    assert NAME not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation == "sdpa"


def test_other_implementations_are_left_alone():
    config = GPT2Config(n_embd=32, n_head=2, n_layer=1, vocab_size=50, n_positions=16)
    eager = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert use_fast_attention(eager).config._attn_implementation == "eager"
