"""Packed token streams for pre-training.

Documents are tokenized, each followed by EOS, and concatenated into one stream (no padding,
so no compute is wasted). A training example is a window of ``block + 1`` consecutive tokens:
inputs are its first ``block`` tokens, targets its last ``block``.

Order: epoch e shifts the window grid by a random offset in [0, block) and visits the windows in
a random permutation, both drawn from ``(seed, e)`` alone. So the sampler's whole state is
``(epoch, cursor)``: it goes into every checkpoint, and a resumed run sees exactly the batches
the uninterrupted run would have seen. Batches are *global*: the engine gives each process its
rows, so the order does not depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rlfm.data.order import Batches
from rlfm.data.text import Document
from rlfm.errors import DataError


def tokenize_stream(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[Document], chunk: int = 512
) -> torch.Tensor:
    """One 1-D int64 tensor: the tokens of every document, each followed by EOS."""
    eos = tokenizer.eos_token_id
    parts: list[int] = []
    for i in range(0, len(documents), chunk):
        texts = [d.text for d in documents[i : i + chunk]]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            parts.extend(ids)
            parts.append(eos)
    return torch.tensor(parts, dtype=torch.long)


def gather_windows(stream: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Rows ``stream[s : s + length]`` for each start s. (N,) -> (N, length)."""
    return stream[starts[:, None] + torch.arange(length)]


class BlockSampler(Batches):
    """Global batches of window starts: windows of ``block + 1`` tokens at a random offset of
    the epoch plus multiples of ``block``, in a random order per epoch."""

    def __init__(self, n_tokens: int, block: int, batch_size: int, seed: int, name: str = "data"):
        self.n_tokens, self.block, self.batch_size = n_tokens, block, batch_size
        # windows that fit whatever the epoch's offset (offset ≤ block - 1)
        self.n_windows = (n_tokens - block) // block
        if self.n_windows < batch_size:
            raise DataError(
                f"{name}: {n_tokens:,} tokens make {max(self.n_windows, 0)} windows of "
                f"{block + 1} tokens, fewer than one batch of {batch_size}; give more text or "
                f"lower context / batch_size"
            )
        super().__init__(seed)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        g = self.generator(epoch)
        offset = int(torch.randint(0, self.block, (1,), generator=g))
        starts = offset + torch.randperm(self.n_windows, generator=g) * self.block
        n = self.n_windows // self.batch_size * self.batch_size
        return list(starts[:n].split(self.batch_size))


def eval_starts(n_tokens: int, block: int, n_windows: int) -> torch.Tensor:
    """Fixed, evenly spaced window starts covering a validation stream (at most n_windows)."""
    available = (n_tokens - 1) // block
    if available < 1:
        raise DataError(
            f"validation data: {n_tokens:,} tokens is shorter than one window of {block + 1}"
        )
    n = min(n_windows, available)
    return torch.linspace(0, (available - 1) * block, n).long()
