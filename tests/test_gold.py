"""The gold labeler's fluency term: per-token log-probabilities of the reply alone, relative to
the SFT replies it was calibrated on, clipped; saved and loaded as gold.json."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlfm.data.labelers import FLUENCY_RANGE, gold_components
from rlfm.errors import DataError
from rlfm.gold import GoldLabeler, calibrate, load_gold
from tests.helpers import tiny_gpt2

PROMPT = "Romeo.\nWhere is my gentle lady Juliet tonight?\n\nNurse.\n"
REPLIES = ["Good my lord, she sleeps.", "I pray you, sir, be patient.", "Away!"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A tiny random GPT-2 and its tokenizer, saved as a model directory."""
    folder = tmp_path_factory.mktemp("gold") / "lm"
    model, tok = tiny_gpt2(PROMPT + " ".join(REPLIES), folder)
    return folder, model, tok


def by_hand(model, tok, prompt, reply):
    """Mean log p(reply token | everything before it), computed one sequence at a time."""
    x = tok(prompt, add_special_tokens=False)["input_ids"]
    y = tok(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([x + y])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(float(logp[len(x) + t - 1, y[t]]) for t in range(len(y))) / len(y)


def test_logprobs_are_those_of_the_reply_tokens_alone(lm):
    """Batched with right padding, each reply's ℓ equals the unpadded hand computation; an
    empty reply has none (NaN)."""
    _, model, tok = lm
    gold = GoldLabeler(model, tok)
    got = gold.logprobs([PROMPT] * 4, [*REPLIES, ""])
    for reply, value in zip(REPLIES, got):
        assert value == pytest.approx(by_hand(model, tok, PROMPT, reply), abs=1e-5)
    assert math.isnan(got[-1])


def test_a_prompt_and_reply_longer_than_the_context_are_cut_to_fit(lm):
    """The model's context (128 positions) holds the reply and the end of the prompt: a reply
    of 100 tokens after a long prompt is scored after the prompt's last 28 tokens, one of over
    300 on its first 127 tokens after the prompt's last one."""
    _, model, tok = lm
    long_prompt = PROMPT * 20
    x = tok(long_prompt, add_special_tokens=False)["input_ids"]
    reply = " ".join(REPLIES * 40)
    y = tok(reply, add_special_tokens=False)["input_ids"]
    assert len(x) > 96 and len(y) > 300
    fits = tok.decode(y[:100])
    assert tok(fits, add_special_tokens=False)["input_ids"] == y[:100]

    def mean_logprob(context, reply_ids):
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([context + reply_ids])).logits[0].log_softmax(-1)
        n = len(context)
        return sum(float(logp[n + t - 1, reply_ids[t]]) for t in range(len(reply_ids))) / len(
            reply_ids
        )

    got = GoldLabeler(model, tok).logprobs([long_prompt, long_prompt], [fits, reply])
    assert got[0] == pytest.approx(mean_logprob(x[-28:], y[:100]), abs=1e-5)
    assert got[1] == pytest.approx(mean_logprob(x[-1:], y[:127]), abs=1e-5)


def test_calibration_centres_fluency_and_the_range_clips_it(lm):
    """Calibrated on the replies, ℓ_ref is their mean ℓ, so their unclipped fluency averages 0;
    fluency is ℓ − ℓ_ref clipped to FLUENCY_RANGE, the floor for an empty reply; the total is
    the text rule plus fluency."""
    folder, model, tok = lm
    gold = calibrate(folder, [PROMPT] * 3, REPLIES)
    lps = gold.logprobs([PROMPT] * 3, REPLIES)
    assert gold.reference_logprob == pytest.approx(sum(lps) / 3, abs=1e-6)
    assert gold.reference_replies == 3
    lo, hi = FLUENCY_RANGE
    flu = gold.fluency([PROMPT] * 4, [*REPLIES, ""])
    for lp, f in zip(lps, flu):
        assert f == pytest.approx(min(max(lp - gold.reference_logprob, lo), hi), abs=1e-6)
    assert flu[-1] == lo
    shifted = GoldLabeler(model, tok, reference_logprob=gold.reference_logprob - 10)
    assert shifted.fluency([PROMPT], [REPLIES[0]]) == [hi]  # far above the reference: capped
    total = gold.scores([PROMPT], [REPLIES[0]])[0]
    assert total == pytest.approx(gold_components(PROMPT, REPLIES[0], flu[0]).total)
    assert gold(PROMPT, REPLIES) == pytest.approx(gold.scores([PROMPT] * 3, REPLIES))


def test_saved_and_loaded_it_judges_alike(lm, tmp_path):
    """gold.json holds the model directory and ℓ_ref; loaded, the labeler gives the same
    scores. Without a file it is the text rule (fluency 0); a bad file is named."""
    folder, _, _ = lm
    gold = calibrate(folder, [PROMPT] * 3, REPLIES)
    path = gold.save(tmp_path / "gold.json")
    data = json.loads(path.read_text())
    assert data["model"] == str(folder) and data["reference_replies"] == 3
    again = load_gold(path)
    assert again.scores([PROMPT] * 3, REPLIES) == pytest.approx(gold.scores([PROMPT] * 3, REPLIES))
    plain = load_gold(None)
    assert plain.fluency([PROMPT], ["x"]) == [0.0] and plain.model is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "x"}')
    with pytest.raises(DataError, match=r"bad\.json is not a gold labeler file"):
        load_gold(bad)
    with pytest.raises(DataError, match=r"missing\.json does not exist"):
        load_gold(tmp_path / "missing.json")
