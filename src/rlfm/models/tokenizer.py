"""Tokenizers: train a byte-level BPE locally, load one from a model directory, fix its PAD.

Byte-level BPE (Radford et al. 2019, GPT-2; Sennrich et al. 2016, BPE): text is split into
UTF-8 bytes, each byte mapped to one of 256 printable symbols, and merges are learned on top,
so every string, in any script, encodes without an unknown token and decodes back exactly.
Training uses the Hugging Face ``tokenizers`` library; the result is wrapped as a
``transformers.PreTrainedTokenizerFast`` so it saves and loads like any HF tokenizer.

Special tokens: BOS = EOS = ``<|endoftext|>`` (GPT-2's), and a PAD ``<|pad|>`` that is always a
different token from EOS, so masking padding never masks a real end of sequence (which PPO's
"did the response end?" test and the reward at the last real token depend on).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlfm.errors import ConfigError, ModelError

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = EOS_TOKEN
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN]
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS) + 16
"""The 256 byte symbols, the special tokens, and room for at least 16 merges."""

# Files from which AutoTokenizer can build a tokenizer (fast, BPE, sentencepiece, WordPiece).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "vocab.txt",
)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, *, model_max_length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer of at most ``vocab_size`` tokens on ``texts``.

    ``vocab_size`` counts the special tokens and the 256 byte symbols; a small corpus can stop
    with fewer tokens than asked, so size a model's embedding with ``len(tokenizer)``. The same
    texts in the same order give the same tokenizer. ``model_max_length`` is the longest
    sequence the tokenizer will claim to support (e.g. the model's context).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ConfigError(f"vocab_size must be an integer, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least "
            f"{MIN_VOCAB_SIZE} (256 byte symbols + {len(SPECIAL_TOKENS)} special tokens + merges)"
        )
    tok = Tokenizer(models.BPE())
    # No normaliser: any normalisation (NFC, lower-casing) would break the exact round trip.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0 (EOS/BOS) and 1 (PAD)
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,  # keep " ." and " 's" exactly as encoded
        **kwargs,
    )


def has_tokenizer(path: str | Path) -> bool:
    """True when the directory ``path`` holds tokenizer files."""
    return any((Path(path) / name).is_file() for name in _TOKENIZER_FILES)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load the tokenizer saved in the local directory ``path`` (never from the hub)."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"tokenizer directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelError(f"tokenizer path {str(path)!r} is not a directory")
    if not has_tokenizer(path):
        raise ModelError(
            f"tokenizer directory {str(path)!r} holds no tokenizer files "
            f"(looked for {', '.join(_TOKENIZER_FILES)})"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load the tokenizer in {str(path)!r}: {e}") from e
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelError(
            f"the tokenizer in {str(path)!r} is a slow (Python) tokenizer "
            f"({type(tokenizer).__name__}); rlfm needs a fast one (tokenizer.json)"
        )
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give ``tokenizer`` a PAD token distinct from EOS, adding ``<|pad|>`` if needed.

    Returns True when the vocabulary grew: the caller must then grow the model's embeddings
    (``models.adapters.fit_vocabulary``, which knows the token was added here).
    """
    pad_id = tokenizer.pad_token_id
    if pad_id is not None and pad_id != tokenizer.eos_token_id:
        return False
    before = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.rlfm_added_tokens = len(tokenizer) - before  # type: ignore[attr-defined]
    return len(tokenizer) > before


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save ``tokenizer`` into ``directory`` (created if needed); return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return directory
