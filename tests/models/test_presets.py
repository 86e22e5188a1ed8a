"""Presets: shapes and parameter counts against the GPT-3 and LLaMA tables; tiny models run."""

import pytest
import torch

from rlfm.errors import ConfigError
from rlfm.models.presets import (
    PRESETS,
    build_model,
    count_non_embedding_parameters,
    count_parameters,
    model_config,
    presets_table,
)

# Brown et al. 2020, Table 2.1 and Touvron et al. 2023, Table 2, copied independently of the
# presets: name -> (table params, n_layers, d_model, n_heads, d_head). Two GPT-3 rows are
# corrected as documented in presets.py: 13B d_model 5140 -> 5120; XL 24 heads -> 16.
TABLE = {
    "gpt3-small": (125e6, 12, 768, 12, 64),
    "gpt3-medium": (350e6, 24, 1024, 16, 64),
    "gpt3-large": (760e6, 24, 1536, 16, 96),
    "gpt3-xl": (1.3e9, 24, 2048, 16, 128),
    "gpt3-2.7b": (2.7e9, 32, 2560, 32, 80),
    "gpt3-6.7b": (6.7e9, 32, 4096, 32, 128),
    "gpt3-13b": (13.0e9, 40, 5120, 40, 128),
    "gpt3-175b": (175.0e9, 96, 12288, 96, 128),
    "llama-6.7b": (6.7e9, 32, 4096, 32, 128),
    "llama-13b": (13.0e9, 40, 5120, 40, 128),
    "llama-32.5b": (32.5e9, 60, 6656, 52, 128),
    "llama-65.2b": (65.2e9, 80, 8192, 64, 128),
}
TINY = ["tiny", "small", "llama-tiny"]


@pytest.mark.parametrize("name", list(TABLE))
def test_parameter_count_within_two_percent_of_table(name):
    """The parameter count of the built (meta) model is within 2% of the paper's table."""
    table_params = TABLE[name][0]
    assert PRESETS[name].table_params == table_params
    n = count_parameters(model_config(name))
    assert abs(n / table_params - 1) < 0.02, f"{name}: {n:,} vs {table_params:,.0f}"


@pytest.mark.parametrize("name", list(TABLE))
def test_shape_matches_table(name):
    """Layers, d_model, heads and d_head are the table's (GPT-3 Large d_head 96, 2.7B 80)."""
    _, n_layers, d_model, n_heads, d_head = TABLE[name]
    p = PRESETS[name]
    assert (p.n_layers, p.d_model, p.n_heads, p.d_head) == (n_layers, d_model, n_heads, d_head)
    assert p.context == 2048
    assert p.vocab_size == (50257 if p.family == "gpt2" else 32000)


def test_llama_intermediate_sizes_follow_swiglu_rule():
    """LLaMA MLP widths are 256·ceil(8/3·d/256): 11008, 13824, 17920, 22016."""
    sizes = [PRESETS[n].intermediate_size for n in TABLE if n.startswith("llama")]
    assert sizes == [11008, 13824, 17920, 22016]
    config = model_config("llama-6.7b")
    assert config.intermediate_size == 11008
    assert config.num_key_value_heads == config.num_attention_heads == 32
    assert config.tie_word_embeddings is False


def test_gpt3_small_exact_count_by_hand():
    """GPT-3 Small: 12·(12d²+13d) + 50257·d + 2048·d + 2d with d = 768 (head tied)."""
    d = 768
    expected = 12 * (12 * d * d + 13 * d) + 50257 * d + 2048 * d + 2 * d
    assert count_parameters(model_config("gpt3-small")) == expected == 125_226_240
    assert (
        count_non_embedding_parameters(model_config("gpt3-small"))
        == 12 * (12 * d * d + 13 * d) + 2 * d
    )


def test_non_embedding_count_keeps_untied_llama_head():
    """Non-embedding count drops only the token embedding for Llama, keeping its LM head."""
    config = model_config("llama-6.7b")
    assert count_non_embedding_parameters(config) == count_parameters(config) - 32000 * 4096


def test_unknown_preset_names_valid_ones_and_closest():
    """An unknown preset raises ConfigError listing the valid names and the closest match."""
    with pytest.raises(ConfigError) as err:
        model_config("gpt3-smal")
    message = str(err.value)
    assert "'gpt3-smal'" in message and "Did you mean 'gpt3-small'" in message
    assert all(name in message for name in PRESETS)


def test_bad_overrides_name_the_field():
    """Invalid vocab_size, dropout or token ids raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match="vocab_size"):
        model_config("tiny", vocab_size=0)
    with pytest.raises(ConfigError, match="dropout"):
        model_config("tiny", dropout=1.5)
    with pytest.raises(ConfigError, match="pad_token_id"):
        model_config("tiny", vocab_size=100, pad_token_id=100)


def test_overrides_reach_the_config():
    """vocab_size, context, dropout and special-token ids override the preset's values."""
    c = model_config(
        "tiny", vocab_size=300, context=64, dropout=0.1, eos_token_id=0, pad_token_id=1
    )
    assert (c.vocab_size, c.n_positions, c.resid_pdrop, c.attn_pdrop) == (300, 64, 0.1, 0.1)
    assert (c.eos_token_id, c.pad_token_id, c.tie_word_embeddings) == (0, 1, True)
    c = model_config("llama-tiny", context=64, dropout=0.1)
    assert (c.max_position_embeddings, c.attention_dropout) == (64, 0.1)


@pytest.mark.parametrize("name", TINY)
def test_cpu_presets_build_and_count_matches_real_model(name):
    """CPU presets build, run a forward pass, and count_parameters equals the real count."""
    config = model_config(name)
    model = build_model(config, seed=0)
    real = sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once
    assert count_parameters(config) == real
    assert 0.9e6 < real < 6e6
    tokens = torch.randint(0, config.vocab_size, (2, 16))
    with torch.no_grad():
        logits = model(tokens).logits
    assert logits.shape == (2, 16, config.vocab_size)
    assert torch.isfinite(logits).all()


def test_build_model_seed_is_reproducible_and_leaves_global_rng():
    """The same seed gives the same weights and the global RNG stream is not disturbed."""
    config = model_config("llama-tiny")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(config, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model(config, seed=7)
    c = build_model(config, seed=8)
    wa, wb, wc = (m.get_input_embeddings().weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


@pytest.mark.parametrize("name", ["tiny", "llama-tiny"])
def test_model_is_causal(name):
    """Changing tokens after position t leaves the logits at positions <= t unchanged."""
    config = model_config(name, context=32)
    model = build_model(config, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (2, 24), generator=g)
    t = 10
    changed = tokens.clone()
    changed[:, t + 1 :] = torch.randint(0, config.vocab_size, (2, 24 - t - 1), generator=g)
    with torch.no_grad():
        before, after = model(tokens).logits, model(changed).logits
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])  # the test can fail


def test_presets_table_lists_every_preset_with_counts():
    """presets_table shows every preset, human-readable counts and the difference column."""
    table = presets_table()
    lines = table.splitlines()
    assert len(lines) == 2 + len(PRESETS)
    for name in PRESETS:
        assert any(line.startswith(name + " ") for line in lines)
    assert "125.2M" in table and "6.74B" in table and "+0.2%" in table


def test_presets_table_filters_by_family():
    """presets_table(family) lists only that family's presets."""
    lines = presets_table("llama").splitlines()[2:]
    assert sorted(line.split()[0] for line in lines) == sorted(
        n for n, p in PRESETS.items() if p.family == "llama"
    )
