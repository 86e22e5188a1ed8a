"""Preference data: formats, prompt recovery, bad rows named by file and row, the collator that
runs each completion once, and its equivalence with the naive pairwise path."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import GPT2Config

from rlfm.data.preferences import (
    collate_rankings,
    encode_rankings,
    levels_to_ranking,
    load_preferences,
    ranking_levels,
    ranking_pairs,
    shared_prefix_cut,
    split_rankings,
)
from rlfm.errors import DataError
from rlfm.losses.preference import bradley_terry_loss, ranking_loss
from rlfm.models.heads import RewardModel
from rlfm.models.presets import build_model
from rlfm.models.tokenizer import train_bpe_tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(["User: who art thou?\nAssistant: a friend, good sir."] * 20, 300)


def test_pairs_rankings_and_ties_are_read(tmp_path):
    """A pair becomes a ranking of two (levels 0, 1), a ranking keeps its ties as shared
    levels, margins and gold scores are kept, and sources name file:line."""
    rows = [
        {"prompt": "Q:", "chosen": " yes", "rejected": " no", "margin": 0.5},
        {
            "prompt": "Q2:",
            "completions": ["a", "b", "c", "d"],
            "ranking": [[2, 0], 1, 3],
            "gold": [1, 0, 1, -1],
        },
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    pair, rank = load_preferences(path)
    assert pair.completions == (" yes", " no") and pair.levels == (0, 1) and pair.margin == 0.5
    assert rank.levels == (0, 1, 0, 2) and rank.ranking == [[0, 2], 1, 3]
    assert rank.gold == (1.0, 0.0, 1.0, -1.0) and rank.source == "p.jsonl:2"
    assert len(rank.pairs()) == 5


def test_prompt_is_recovered_as_shared_prefix_at_a_word_boundary(tmp_path):
    """Pairs with no prompt (Anthropic HH style): the shared prefix, cut before the whitespace
    of the first differing word, is the prompt."""
    assert shared_prefix_cut("Q: hi A: yes", "Q: hi A: no") == len("Q: hi A:")
    assert shared_prefix_cut("I like cats", "I like cars") == len("I like")
    assert shared_prefix_cut("hello", "help") == 0
    text = "\n\nHuman: Where is Verona?\n\nAssistant:"
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": text + " In Italy.", "rejected": text + " I do not know."}],
    )
    (r,) = load_preferences(path)
    assert r.prompt == text and r.completions == (" In Italy.", " I do not know.")


def test_conversations_render_with_the_sft_template(tmp_path, tok):
    """Message-form rows (explicit prompt, and whole conversations without one) render with the
    SFT default chat template: prompt up to 'Assistant:', completion the reply without EOS."""
    prompt = [{"role": "user", "content": "Who art thou?"}]
    rows = [
        {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "A friend."}],
            "rejected": [{"role": "assistant", "content": "Away!"}],
        },
        {
            "chosen": prompt + [{"role": "assistant", "content": "A friend."}],
            "rejected": prompt + [{"role": "assistant", "content": "Away!"}],
        },
        {
            "messages": prompt,
            "completions": ["A friend.", "Away!", "Nobody."],
            "ranking": [0, 2, 1],
        },
    ]
    got = load_preferences(write_jsonl(tmp_path / "chat.jsonl", rows), tok)
    for r in got:
        assert r.prompt == "User: Who art thou?\nAssistant:"
        assert r.completions[:2] == (" A friend.", " Away!")
    with pytest.raises(DataError, match="needs a tokenizer"):
        load_preferences(tmp_path / "chat.jsonl")


BAD_ROWS = [
    ({"prompt": "x", "completions": ["a", "b", "c"], "ranking": [0, 1, 1]}, "permutation"),
    ({"prompt": "x", "completions": ["a", "b"], "ranking": [0, 2]}, "permutation"),
    ({"prompt": "x", "completions": ["a", "b"], "ranking": [[0, 1]]}, "ties every"),
    ({"prompt": "x", "completions": ["a"], "ranking": [0]}, "at least 2"),
    ({"prompt": "x", "chosen": "same", "rejected": "same"}, "identical"),
    ({"chosen": "same text", "rejected": "same text"}, "identical"),
    ({"prompt": "x", "completions": ["a", "a"], "ranking": [0, 1]}, "identical"),
    ({"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
    ({"prompt": "x", "completions": ["a", "b"]}, "missing field 'ranking'"),
    ({"text": "hello"}, "missing fields"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "expected a string"),
    ({"prompt": "x", "chosen": "\ud800", "rejected": "b"}, "UTF-8"),
    ([1, 2], "expected an object"),
]


@pytest.mark.parametrize(("row", "message"), BAD_ROWS)
def test_bad_rows_name_file_and_row(tmp_path, row, message):
    """Each bad row raises DataError naming the file and the line (3: after two good rows)."""
    good = {"prompt": "ok", "chosen": " a", "rejected": " b"}
    path = tmp_path / "prefs.jsonl"
    write_jsonl(path, [good, dict(good, prompt="ok2"), row])
    with pytest.raises(DataError, match=message) as e:
        load_preferences(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value)


def test_non_utf8_bytes_and_parquet_rows_are_named(tmp_path):
    """Latin-1 bytes in a JSONL file: the error names the file and line; a bad Parquet row
    names the file and row; a saved `datasets` directory is read."""
    import datasets

    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl.*UTF-8.*line 2"):
        load_preferences(path)
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "q", "chosen": "a", "rejected": "a"},
    ]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(DataError, match=r"p\.parquet: row 2: .*identical"):
        load_preferences(tmp_path / "p.parquet")
    datasets.Dataset.from_list(rows[:1] * 3).save_to_disk(str(tmp_path / "saved"))
    assert len(load_preferences(tmp_path / "saved")) == 3


def test_split_keeps_each_prompt_on_one_side(tmp_path):
    """split_rankings holds out whole prompts: no prompt is in both train and validation."""
    rows = [{"prompt": f"p{i % 7}", "chosen": f" a{i}", "rejected": f" b{i}"} for i in range(40)]
    train, val = split_rankings(load_preferences(write_jsonl(tmp_path / "s.jsonl", rows)), 0.3, 0)
    assert train and val and not {r.prompt for r in train} & {r.prompt for r in val}


def test_collator_puts_each_completion_through_once(tmp_path, tok):
    """Rankings of K = 2, 4, 3 become 3 rows holding 9 completions once each (not 2·(1 + 5 + 3)
    = 18 sequences): row = prompt, then each completion + EOS; positions restart after the
    prompt for each completion; rewards are read at each EOS; levels are padded with −1."""
    rows = [
        {"prompt": "a", "chosen": " x", "rejected": " y"},
        {"prompt": "bb cc", "completions": [" 1", " 22", " 333", " 4"], "ranking": [3, [0, 2], 1]},
        {"prompt": "", "completions": [" p", " q", " r"], "ranking": [2, 1, 0]},
    ]
    rankings = load_preferences(write_jsonl(tmp_path / "c.jsonl", rows))
    enc = encode_rankings(tok, rankings, max_length=32)
    batch = collate_rankings(enc, tok.pad_token_id)
    assert batch.input_ids.shape == (3, max(e.n_tokens for e in enc))
    assert batch.read_index[:, 0].tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert batch.slot.tolist() == [0, 1, 0, 1, 2, 3, 0, 1, 2]
    assert batch.levels.tolist() == [[0, 1, -1, -1], [1, 2, 1, 0], [2, 1, 0, -1]]
    rows_, cols = batch.read_index[:, 0], batch.read_index[:, 1]
    assert (batch.input_ids[rows_, cols] == tok.eos_token_id).all()
    e = enc[1]
    P = len(e.prompt_ids)
    assert batch.segment_ids[1, :P].eq(0).all() and batch.position_ids[1, :P].tolist() == list(
        range(P)
    )
    start = P + len(e.completion_ids[0])  # completion 2 starts here, at position P again
    assert batch.segment_ids[1, start] == 2 and batch.position_ids[1, start] == P
    assert batch.input_ids[2, 0] == tok.eos_token_id  # empty prompt: a lone BOS (= EOS here)
    assert batch.attention_mask.sum() == sum(e.n_tokens for e in enc)
    assert batch.n_pairs == 1 + 5 + 3


def test_k_forward_path_equals_naive_pairwise_path(tmp_path, tok):
    """The K-forward path (each completion once, prompt shared) and the naive path (both full
    sequences of each of the C(K,2) pairs through the model, 2·C(K,2) forwards) give the same
    loss and the same gradients, in float64 to 1e-9, with ties, a margin and K = 2..4."""
    rm = tiny_reward_model(tok).double()
    rows = [
        {"prompt": "User: who", "chosen": " art thou?", "rejected": " a friend"},
        {
            "prompt": "good sir",
            "completions": [" who", " art", " thou?", " a"],
            "ranking": [3, [0, 2], 1],
        },
        {"prompt": "", "completions": [" friend", " sir.", " who art"], "ranking": [2, 1, 0]},
    ]
    rankings = load_preferences(write_jsonl(tmp_path / "k.jsonl", rows))
    params = [p for p in rm.parameters() if p.requires_grad]
    batch = collate_rankings(encode_rankings(tok, rankings, 64), tok.pad_token_id)
    R = batch.reward_matrix(rm(**batch.model_inputs()))
    k_loss = ranking_loss(R, batch.levels, 0.25)
    k_grads = torch.autograd.grad(k_loss, params)
    naive = _naive_loss(rm, tok, rankings, 0.25)
    naive_grads = torch.autograd.grad(naive, params)
    assert batch.read_index.shape[0] == 9  # vs 2 · (1 + 5 + 3) = 18 naive forwards
    torch.testing.assert_close(k_loss.double(), naive.double(), atol=1e-9, rtol=1e-9)
    for a, b in zip(k_grads, naive_grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def tiny_reward_model(tok) -> RewardModel:
    """A 2-layer, 32-wide GPT-2 reward model on ``tok`` (no dropout)."""
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return RewardModel(build_model(cfg, seed=0), seed=0, tokenizer=tok)


def _naive_loss(rm, tok, rankings, margin):
    """Mean over rankings of the mean over pairs, each pair's two sequences run separately."""
    eos = tok.eos_token_id
    per_ranking = []
    for r in rankings:
        p = tok(r.prompt, add_special_tokens=False)["input_ids"] if r.prompt else [eos]
        losses = []
        for i, j in itertools.product(range(r.k), range(r.k)):
            if r.levels[i] >= r.levels[j]:
                continue
            rew = []
            for c in (r.completions[i], r.completions[j]):
                ids = p + tok(c, add_special_tokens=False)["input_ids"] + [eos]
                rew.append(rm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)))
            losses.append(bradley_terry_loss(rew[0], rew[1], margin))
        per_ranking.append(torch.stack(losses).mean())
    return torch.stack(per_ranking).mean()


def test_ranking_to_pairs_without_and_with_ties():
    """[2, 0, 1] gives the C(3,2) = 3 pairs (2,0), (2,1), (0,1); [[2, 0], 1, 3] (2 and 0 tie)
    gives 5 of C(4,2) = 6 pairs: no pair between 2 and 0; a K = 5 ranking without ties gives
    C(5,2) = 10."""
    assert ranking_pairs([2, 0, 1]) == [(2, 0), (2, 1), (0, 1)]
    assert ranking_pairs([[2, 0], 1, 3]) == [(2, 1), (2, 3), (0, 1), (0, 3), (1, 3)]
    assert len(ranking_pairs([4, 3, 2, 1, 0])) == 10
    assert ranking_levels([[2, 0], 1, 3], 4) == [0, 1, 0, 2]
    assert levels_to_ranking([0, 1, 0, 2]) == [[0, 2], 1, 3]


@pytest.mark.parametrize(
    ("ranking", "k", "message"),
    [
        ([0, 1, 1], 3, "twice"),
        ([0, 3], 2, "outside"),
        ([0], 2, "leaves out"),
        ([[0, 1]], 2, "ties every"),
        ([0, "1"], 2, "integers"),
        ([[], 0, 1], 2, "empty"),
    ],
)
def test_bad_rankings_say_why(ranking, k, message):
    """A ranking that is not a permutation of 0..K−1 (or ties everything) raises ValueError
    saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        ranking_levels(ranking, k)


def test_a_null_field_is_called_null(tmp_path):
    """`"chosen": null` says the field is null (it was reported as missing)."""
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "p", "chosen": None, "rejected": " b"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl: line 1: field 'chosen' is null"):
        load_preferences(f)
