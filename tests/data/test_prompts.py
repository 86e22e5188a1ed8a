"""The one --prompts reader and the one held-out split (PPO and the reward stage's built-in task)."""

from __future__ import annotations

import json

import pytest

from rlfm.data.prompts import load_prompts, split_prompts
from rlfm.errors import DataError


def test_text_jsonl_and_messages(tmp_path):
    """A .txt file gives one prompt per line (\\n in a line is a line break); JSONL rows give
    `prompt`, or `messages` rendered with the chat template up to the user's last turn."""
    from rlfm.data.sft import DEFAULT_CHAT_TEMPLATE
    from rlfm.models.tokenizer import train_bpe_tokenizer

    txt = tmp_path / "p.txt"
    txt.write_text("Romeo.\\nHow now?\n\nJuliet.\n")
    assert load_prompts(txt) == ["Romeo.\nHow now?", "Juliet."]
    tok = train_bpe_tokenizer(["hello there general"] * 5, 300)
    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    rows = tmp_path / "p.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rows.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"messages": chat}) + "\n")
    a, b = load_prompts(rows, tok)
    assert a == "a" and "hi" in b and "yo" not in b


def test_errors_name_the_file_and_row(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl: line 2: no `prompt` string"):
        load_prompts(f)
    f.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(DataError, match="at least 2 different prompts"):
        load_prompts(f)


def test_split_holds_out_distinct_prompts_and_keeps_repeats_in_training():
    """⌊10 · 0.25⌋ = 2 of 10 distinct prompts are held out, each once, never seen in training;
    a prompt repeated 3 times stays 3 times in training (when not held out); the split is
    fixed by the seed; at least one prompt is held out and one kept."""
    prompts = [f"p{i}" for i in range(10)] + ["p0", "p0"]
    train, held = split_prompts(prompts, 0.25, seed=3)
    assert len(held) == 2 == len(set(held)) and not set(held) & set(train)
    assert len(train) == len(prompts) - sum(prompts.count(h) for h in held)
    assert split_prompts(prompts, 0.25, seed=3) == (train, held)
    assert [len(x) for x in split_prompts(["a", "b"], 0.01, 0)] == [1, 1]
    assert [len(x) for x in split_prompts(["a", "b"], 0.99, 0)] == [1, 1]
