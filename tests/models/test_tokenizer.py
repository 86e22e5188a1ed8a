"""Tokenizer: byte-level BPE training, exact round trip, PAD distinct from EOS, save and load."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rlfm.errors import ConfigError, ModelError
from rlfm.models.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    ensure_pad_token,
    load_tokenizer,
    save_tokenizer,
    train_bpe_tokenizer,
)

CORPUS = [
    "To be, or not to be, that is the question:\n",
    "Whether 'tis nobler in the mind to suffer\n",
    "The slings and arrows of outrageous fortune,\n",
    "Or to take arms against a sea of troubles\n",
] * 20

# Text the corpus never saw: other scripts, emoji (incl. ZWJ sequences), whitespace runs.
ROUND_TRIP = [
    "",
    "To be, or not to be",
    " leading space and trailing space ",
    "tabs\tand\t\tmultiple   spaces\n\n\nnewlines\r\n",
    "日本語のテキストと中文文本",
    "emoji 🎉🚀 family 👩‍👩‍👧 flag 🇫🇷",
    "Ünïcödé àccents, Ελληνικά, русский, עברית, العربية",
    "math ∑∫√∞ ≠ ≤ and symbols ©®™",
    "it 's . , ! ?  don't",
    "a<|endoftext|>b",
    "\x00control\x7fchars",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(CORPUS, vocab_size=400, model_max_length=128)


def test_special_tokens_pad_distinct_from_eos(tokenizer):
    """EOS = BOS = <|endoftext|> and PAD = <|pad|> have different ids."""
    assert tokenizer.eos_token == tokenizer.bos_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.model_max_length == 128


def test_vocab_learned_merges_within_limit(tokenizer):
    """The vocabulary holds all 256 bytes plus learned merges and never exceeds vocab_size."""
    assert 256 + 2 < len(tokenizer) <= 400
    assert len(tokenizer("To be, or not to be")["input_ids"]) < len("To be, or not to be")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tokenizer, text):
    """decode(encode(s)) == s for any unicode text, including unseen scripts and whitespace."""
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_no_special_tokens_added_on_encode(tokenizer):
    """Encoding adds no BOS/EOS of its own: the caller decides where EOS goes."""
    ids = tokenizer("hello")["input_ids"]
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids


def test_training_is_deterministic():
    """Training twice on the same texts gives identical vocabularies and merges."""
    a = train_bpe_tokenizer(CORPUS, vocab_size=350)
    b = train_bpe_tokenizer(CORPUS, vocab_size=350)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()


@pytest.mark.parametrize("bad", [100, 257, 0, 300.0])
def test_vocab_size_too_small_names_field(bad):
    """A vocab_size below 256 bytes + specials + merges raises ConfigError naming vocab_size."""
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe_tokenizer(CORPUS, vocab_size=bad)


def test_save_load_round_trip(tokenizer, tmp_path):
    """A saved tokenizer loads back with the same vocabulary, specials and encodings."""
    save_tokenizer(tokenizer, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, PreTrainedTokenizerFast)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.eos_token_id, loaded.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert loaded.model_max_length == 128
    for text in ROUND_TRIP:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text


def test_load_errors_name_the_path(tmp_path):
    """Missing path, a file, and a directory without tokenizer files raise ModelError naming it."""
    missing = tmp_path / "missing"
    with pytest.raises(ModelError, match="does not exist") as err:
        load_tokenizer(missing)
    assert str(missing) in str(err.value)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ModelError, match="not a directory") as err:
        load_tokenizer(a_file)
    assert str(a_file) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no tokenizer files") as err:
        load_tokenizer(empty)
    assert str(empty) in str(err.value)


def _eos_only_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer whose vocabulary has no <|pad|> and whose PAD is its EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def test_ensure_pad_token_adds_distinct_pad():
    """With pad == eos, ensure_pad_token adds <|pad|>, returns True, and the vocabulary grows."""
    tok = _eos_only_tokenizer()
    assert tok.pad_token_id == tok.eos_token_id
    before = len(tok)
    assert ensure_pad_token(tok) is True
    assert len(tok) == before + 1
    assert tok.pad_token == PAD_TOKEN and tok.pad_token_id != tok.eos_token_id
    assert ensure_pad_token(tok) is False  # idempotent


def test_ensure_pad_token_without_growth():
    """If <|pad|> is already in the vocabulary but PAD was set to EOS, no new token is added."""
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300)
    tok.pad_token = EOS_TOKEN
    before = len(tok)
    assert ensure_pad_token(tok) is False
    assert len(tok) == before and tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id != tok.eos_token_id
