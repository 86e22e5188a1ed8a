"""Sampling with a KV cache: stopping at EOS, masks, log-probs, equivalence with no cache."""

import contextlib

import pytest
import torch

from rlfm.models.presets import build_model, model_config
from rlfm.rollout import draw, filter_logits, sample

EOS, PAD = 1, 2


def _model(family="tiny"):
    m = build_model(model_config(family, vocab_size=32, context=64), seed=0)
    return m.eval()


def _prompts():
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = (ids != PAD).long()
    return ids, mask


def test_greedy_with_cache_equals_full_recompute():
    """Greedy tokens from the cached loop equal argmax of a full forward at each step, with
    left padding, for both model families."""
    for family in ("tiny", "llama-tiny"):
        model = _model(family)
        ids, mask = _prompts()
        out = sample(
            model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD, temperature=0
        )
        for b in range(2):
            seq = ids[b][mask[b].bool()].tolist()
            for t in range(out.response_ids.shape[1]):
                if not out.response_mask[b, t]:
                    break
                logits = model(input_ids=torch.tensor([seq])).logits[0, -1]
                assert int(logits.argmax()) == int(out.response_ids[b, t])
                seq.append(int(out.response_ids[b, t]))


def test_logprobs_match_temperature_scaled_recompute():
    """The returned log-probs equal log-softmax(logits / T) recomputed on the full sequence."""
    model = _model()
    ids, mask = _prompts()
    T = 0.7
    g = torch.Generator().manual_seed(0)
    out = sample(
        model,
        ids,
        mask,
        max_new_tokens=5,
        eos_token_id=EOS,
        pad_token_id=PAD,
        temperature=T,
        generator=g,
    )
    full = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, out.response_mask], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
    P = ids.shape[1]
    lp = (logits[:, P - 1 : -1] / T).log_softmax(-1).gather(-1, out.response_ids[..., None])[..., 0]
    torch.testing.assert_close(lp * out.response_mask, out.logprobs, atol=1e-4, rtol=1e-4)


def test_stops_at_eos_and_pads_after():
    """A row that samples EOS keeps it (mask 1), then only PAD with mask 0; `ended` says so."""
    model = _model()
    with torch.no_grad():  # make EOS by far the likeliest token
        model.lm_head.weight[EOS] = 0
        model.transformer.wte.weight[EOS] += 0  # tied head: bias the output via the final norm
    ids, mask = _prompts()

    class Forced(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, **kw):
            out = self.module(**kw)
            out.logits[..., EOS] += 100 * (kw["input_ids"].shape[1] == 1)
            return out

    out = sample(
        Forced(model),
        ids,
        mask,
        max_new_tokens=5,
        eos_token_id=EOS,
        pad_token_id=PAD,
        temperature=1.0,
    )
    # first token is free, the second is forced EOS
    assert out.response_ids.shape[1] == 2
    assert torch.equal(out.response_ids[:, 1], torch.tensor([EOS, EOS]))
    assert out.ended.all() and out.response_mask.all()


def test_filter_logits_topk_topp():
    """top-k keeps k tokens; top-p keeps the smallest prefix reaching p; defaults keep all."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).sum() == 2
    kept = ~torch.isinf(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.equal(filter_logits(logits), logits)


def test_draw_matches_the_tempered_distribution_and_never_draws_a_filtered_token():
    """40,000 draws from logits (2, 1, 0, −1) at T = 0.5 with top_k = 3: frequencies within
    0.01 of softmax((2, 1, 0) / 0.5) = (0.8668, 0.1173, 0.0159), token 3 never; the returned
    log-probs are those of the filtered, tempered distribution."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40_000, 1)
    g = torch.Generator().manual_seed(0)
    tok, logp = draw(logits, 0.5, top_k=3, generator=g)
    want = torch.tensor([2.0, 1.0, 0.0]).div(0.5).softmax(-1)
    freq = torch.bincount(tok, minlength=4).double() / len(tok)
    assert freq[3] == 0
    torch.testing.assert_close(freq[:3].float(), want, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, want.log()[tok])
    greedy, greedy_logp = draw(logits[:2], 0.0)
    assert greedy.tolist() == [0, 0]
    torch.testing.assert_close(greedy_logp, logits[:2].log_softmax(-1)[:, 0])


# ------------------------------------------------- the preallocated (static) KV cache


def _lora(model):
    """``model`` with LoRA on its attention projections, the B matrices nonzero (so the
    adapter changes the output)."""
    from rlfm.models.adapters import add_lora

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # LoRA's A matrices are drawn from the global generator
        peft_model = add_lora(model, r=4, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return peft_model.eval()


class _DDPLike(torch.nn.Module):
    """A wrapper with the model in ``.module``, as DistributedDataParallel has."""

    def __init__(self, m):
        super().__init__()
        self.module = m

    def forward(self, **kw):
        return self.module(**kw)


def _run(model, ids, mask, T, eos, *, growing=False, autocast=False):
    """``sample`` with the preallocated cache, or with the model's own growing cache."""
    import rlfm.rollout as rollout

    bf16 = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with pytest.MonkeyPatch.context() as mp, torch.no_grad(), bf16:
        if growing:
            mp.setattr(rollout, "_preallocated_cache", lambda *a: None)
        return sample(
            model,
            ids,
            mask,
            max_new_tokens=10,
            eos_token_id=eos,
            pad_token_id=PAD,
            temperature=T,
            generator=torch.Generator().manual_seed(3),
        )


def _recomputed_logprobs(model, ids, mask, out, T, autocast=False):
    """Log-probs of the sampled tokens from one forward over prompt + response, no cache."""
    full = torch.cat([ids, out.response_ids], 1)
    full_mask = torch.cat([mask, out.response_mask], 1)
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits.float()
    P = ids.shape[1]
    logits = logits[:, P - 1 : -1]
    lp = (logits.log_softmax(-1) if T == 0 else (logits / T).log_softmax(-1)).gather(
        -1, out.response_ids[..., None]
    )[..., 0]
    return lp * out.response_mask


def _left_padded_prompts(vocab):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (4, 7), generator=g)
    lengths = torch.tensor([7, 3, 5, 1])
    mask = (torch.arange(7)[None, :] >= 7 - lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


@pytest.mark.parametrize("family", ["tiny", "llama-tiny"])
@pytest.mark.parametrize("wrap", ["plain", "lora", "ddp+lora"])
@pytest.mark.parametrize("T", [0.0, 0.8])
def test_preallocated_cache_draws_what_the_growing_cache_draws(family, wrap, T):
    """GPT-2 and Llama, bare, LoRA-wrapped (the peft model itself) and DDP-wrapped LoRA,
    greedy and sampled, left-padded prompts, some rows ending early at EOS: the preallocated
    cache draws the same tokens as the growing (dynamic) cache for the same generator, with
    the same log-probs, which are those of a full forward without a cache."""
    import rlfm.rollout as rollout

    model = build_model(model_config(family, vocab_size=64, context=64), seed=0).eval()
    if wrap != "plain":
        model = _lora(model)
    if wrap == "ddp+lora":
        model = _DDPLike(model)
    assert rollout._preallocated_cache(model, 20) is not None  # the new path is the one taken
    ids, mask = _left_padded_prompts(64)
    # EOS: a token that row `stop` draws before its last step and row `go` never draws, so
    # some rows stop early and some run to the end
    first = _run(model, ids, mask, T, eos=-1)
    drawn = [set(row.tolist()) for row in first.response_ids]
    eos, stop, go = next(
        (tok, a, b)
        for a in range(4)
        for b in range(4)
        for tok in first.response_ids[a, :-1].tolist()
        if tok not in drawn[b]
    )
    new = _run(model, ids, mask, T, eos)
    old = _run(model, ids, mask, T, eos, growing=True)
    assert new.ended[stop] and not new.ended[go]
    assert not new.response_mask[stop].all()  # stopped before the end, padded after
    assert torch.equal(new.response_ids, old.response_ids)
    assert torch.equal(new.response_mask, old.response_mask)
    assert torch.equal(new.ended, old.ended)
    torch.testing.assert_close(new.logprobs, old.logprobs, atol=1e-5, rtol=1e-5)
    want = _recomputed_logprobs(model, ids, mask, new, T)
    torch.testing.assert_close(new.logprobs, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["tiny", "llama-tiny"])
def test_preallocated_cache_under_bf16_autocast(family):
    """Under bf16 autocast the preallocated cache's log-probs are as close to a bf16 forward
    without a cache as the growing cache's are (bf16 rounding, not a different computation)."""
    model = build_model(model_config(family, vocab_size=64, context=64), seed=0).eval()
    ids, mask = _left_padded_prompts(64)
    errors = []
    for growing in (False, True):
        out = _run(model, ids, mask, 0.8, -1, growing=growing, autocast=True)
        want = _recomputed_logprobs(model, ids, mask, out, 0.8, autocast=True)
        errors.append(float((out.logprobs - want).abs().max()))
    new_error, old_error = errors
    print("bf16 max |log-prob error| preallocated, growing:", errors)
    assert new_error < 0.1 and new_error <= 2 * old_error + 1e-2, errors


def test_models_that_take_no_preallocated_cache_keep_their_own():
    """A module that is not a Hugging Face model, and a prefix-tuned peft model (whose cache
    starts with the learned prefix), get no preallocated cache and sample as before."""
    import rlfm.rollout as rollout
    from rlfm.models.adapters import add_prefix, sampling_model

    model = _model()

    class Custom(torch.nn.Module):  # no `.module`, not a PreTrainedModel
        def __init__(self, m):
            super().__init__()
            self.inner = m

        def forward(self, **kw):
            return self.inner(**kw)

    assert rollout._preallocated_cache(Custom(model), 20) is None
    prefix = sampling_model(add_prefix(_model(), num_tokens=3).eval())
    assert rollout._preallocated_cache(prefix, 20) is None
    ids, mask = _prompts()
    for m in (Custom(model), prefix):
        out = sample(m, ids, mask, max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD)
        assert out.response_ids.shape == (2, 4)


def _padded_samples():
    from rlfm.rollout import Samples

    # prompts left-padded to 6 (the two longest need 4 columns), responses right-padded to 5
    # (the longest needs 3)
    pm = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    rm = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    pid = torch.where(pm.bool(), torch.arange(6) + 3, torch.tensor(PAD))
    rid = torch.where(rm.bool(), torch.arange(5) + 12, torch.tensor(PAD))
    lp = -torch.rand(3, 5) * rm
    return Samples(pid, pm, rid, rm, lp, torch.tensor([True, True, False]))


def test_trimmed_drops_only_the_padding_no_row_needs():
    s = _padded_samples()
    t = s.trimmed()
    assert t.prompt_ids.shape == (3, 4) and t.response_ids.shape == (3, 3)
    assert torch.equal(t.prompt_ids, s.prompt_ids[:, 2:])
    assert torch.equal(t.response_mask, s.response_mask[:, :3])
    assert torch.equal(t.logprobs, s.logprobs[:, :3]) and torch.equal(t.ended, s.ended)
    assert t.lengths().tolist() == s.lengths().tolist() == [5, 7, 3]
    assert s.select(torch.tensor([2])).trimmed().prompt_ids.shape == (1, 2)  # one row: its own
    full = _padded_samples().trimmed().trimmed()
    assert full.prompt_ids.shape == (3, 4)  # trimming twice changes nothing


def test_trimmed_samples_give_the_same_logits_on_real_tokens():
    """The policy's logits at every real response token are those of the padded batch."""
    from rlfm.stages.ppo import response_logits

    m = _model()
    s = _padded_samples()
    t = s.trimmed()
    with torch.no_grad():
        full = response_logits(m, s)
        trim = response_logits(m, t)
    real = t.response_mask.bool()
    assert torch.allclose(full[:, : t.response_ids.shape[1]][real], trim[real], atol=1e-5)


def test_length_grouped_minibatches_partition_the_rows_by_length():
    from rlfm.rollout import length_grouped

    lengths = torch.tensor([50, 3, 40, 7, 45, 5, 9, 48, 2, 41, 6, 44, 8, 47, 4, 43])
    g = torch.Generator().manual_seed(0)
    batches = length_grouped(lengths, 4, g, group=4)  # one group: the whole set sorted
    assert sorted(torch.cat(batches).tolist()) == list(range(16))
    spans = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches)
    assert all(hi < lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:]))  # no overlap
    # padding paid: each minibatch's longest row × its rows, against random minibatches
    grouped = sum(int(lengths[b].max()) * len(b) for b in batches)
    rand = torch.randperm(16, generator=torch.Generator().manual_seed(0)).split(4)
    assert grouped < sum(int(lengths[b].max()) * len(b) for b in rand)
    # groups of 2 minibatches: rows mix only within a group; a different draw each epoch
    again = length_grouped(lengths, 4, g, group=2)
    assert sorted(torch.cat(again).tolist()) == list(range(16)) and len(again) == 4
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]
    small = length_grouped(lengths[:6], 4, torch.Generator().manual_seed(1))
    assert sorted(len(b) for b in small) == [2, 4]  # the last minibatch is the remainder


def test_sampling_a_256_wide_model_with_packed_weights_decodes_what_a_full_forward_says():
    """At the `small` preset's width and 8 rows the decoding products run on oneDNN-packed
    weights (models/linear.py): greedy tokens still equal the argmax of a plain full forward
    at every step, and the log-probs equal log-softmax(logits / T) of it."""
    import rlfm.models.linear as lin

    model = build_model(model_config("small", vocab_size=300, context=64), seed=0).eval()
    ids = torch.randint(3, 300, (8, 6))
    ids[0, :2] = PAD
    mask = (ids != PAD).long()
    with lin.packed_for_inference(model, rows=8) as n:
        assert n == 17 if lin.ENABLED else n == 0  # 4 blocks × 4 Conv1D + the LM head
    for T in (0.0, 0.8):
        out = sample(
            model, ids, mask, max_new_tokens=6, eos_token_id=EOS, pad_token_id=PAD,
            temperature=T, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        full = torch.cat([ids, out.response_ids], 1)
        full_mask = torch.cat([mask, out.response_mask], 1)
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
        logits = logits[:, ids.shape[1] - 1 : -1]
        real = out.response_mask.bool()
        if T == 0:
            assert torch.equal(logits.argmax(-1)[real], out.response_ids[real])
        else:
            lp = (logits / T).log_softmax(-1).gather(-1, out.response_ids[..., None])[..., 0]
            torch.testing.assert_close(lp * out.response_mask, out.logprobs, atol=1e-4, rtol=1e-4)
    assert not any("forward" in m.__dict__ for m in model.modules())
