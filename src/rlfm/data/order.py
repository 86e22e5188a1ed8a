"""Resumable orders over training data: batches drawn epoch by epoch, reshuffled every epoch.

Epoch e's batches come from a generator seeded with ``(seed, e)`` alone, so the whole state of
an order is ``(epoch, cursor)`` — the epoch and the index of the next batch in it. It goes into
every checkpoint, and a resumed run sees exactly the batches the uninterrupted run would have
seen. Batches are global (the engine gives each process its rows), so the order does not
depend on the number of processes, and a batch never straddles two epochs.

:class:`EpochOrder` is the plain one (a permutation cut into batches). data/blocks.py
(windows of a token stream) and data/sft.py (examples grouped by length) subclass
:class:`Batches` with their own ``epoch_batches``.
"""

from __future__ import annotations

import torch

from rlfm.errors import DataError


class Batches:
    """The resumable part every order shares; a subclass says what one epoch's batches are."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch, self.cursor = 0, 0
        self._batches = self.epoch_batches(0)

    def generator(self, epoch: int) -> torch.Generator:
        """The random generator of epoch ``epoch`` (a function of the seed and the epoch)."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The batches of epoch ``epoch``, in order."""
        raise NotImplementedError

    @property
    def n_batches(self) -> int:
        """Batches per epoch."""
        return len(self._batches)

    def next_batch(self) -> torch.Tensor:
        """The next global batch; a new epoch begins when this one is used up."""
        if self.cursor == len(self._batches):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._batches = self.epoch_batches(self.epoch)
        batch = self._batches[self.cursor]
        self.cursor += 1
        return batch

    @property
    def epochs(self) -> float:
        """Epochs completed, as a fraction (for the logs)."""
        return self.epoch + self.cursor / max(1, len(self._batches))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._batches = self.epoch_batches(self.epoch)


class EpochOrder(Batches):
    """Global batches of indices into a dataset of ``n`` items: a permutation per epoch cut
    into batches (the rest of an epoch too short for a batch is skipped)."""

    def __init__(self, n: int, batch_size: int, seed: int, name: str = "data") -> None:
        if n < batch_size:
            raise DataError(f"{name}: {n} items are fewer than one batch of {batch_size}")
        self.n, self.batch_size = n, batch_size
        super().__init__(seed)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        order = torch.randperm(self.n, generator=self.generator(epoch))
        return list(order[: self.n // self.batch_size * self.batch_size].split(self.batch_size))
