"""The built-in preference set: a policy's sampled replies ranked by the simulated labelers."""

from __future__ import annotations

import pytest
from transformers import GPT2Config

from rlfm.builtin_task import build_preference_set
from rlfm.data.labelers import gold_score
from rlfm.data.preferences import parse_row
from rlfm.models.presets import build_model
from rlfm.models.tokenizer import train_bpe_tokenizer

PROMPT = "Romeo.\nWhere is my gentle lady Juliet tonight?\n\nNurse.\n"
POLITE = "Good my lord, I pray you, your lady Juliet sleeps in her chamber."
RUDE = "Away, thou knave and villain!"


def test_built_in_set_rows_are_valid_rankings():
    """A policy samples K = 4 replies per prompt; the rows are valid rankings (they pass the
    data checks) with the labeler's name and a gold score per reply."""
    tok = train_bpe_tokenizer([PROMPT + POLITE + RUDE] * 30, 300)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=96,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = build_model(cfg, seed=0)
    prompts = [
        PROMPT,
        "Juliet.\nGood night, good night!\n\nRomeo.\n",
        "Nurse.\nMadam!\n\nJuliet.\n",
    ]
    rows = build_preference_set(model, tok, prompts, k=4, max_new_tokens=12, seed=0)
    assert len(rows) == 3
    for n, row in enumerate(rows, start=1):
        r = parse_row(row, f"built-in: row {n}")
        assert r.k == 4 and r.gold is not None and row["labeler"].startswith("labeler-")
        assert r.gold == pytest.approx([gold_score(r.prompt, c) for c in r.completions], abs=1e-4)
    assert [row["labeler"] for row in rows] == ["labeler-1", "labeler-2", "labeler-3"]
