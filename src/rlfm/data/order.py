"""A resumable order over a dataset: shuffled per epoch, batches drawn without replacement.

Epoch e visits the indices 0..n−1 in a permutation drawn from ``(seed, e)`` alone, so the whole
state is ``(epoch, cursor)``: it goes into every checkpoint, and a resumed run sees exactly the
batches the uninterrupted run would have seen. Batches are global (the engine gives each
process its rows), so the order does not depend on the number of processes. A batch never
straddles two epochs: the rest of an epoch too short for a batch is skipped.
"""

from __future__ import annotations

import torch

from rlfm.errors import DataError


class EpochOrder:
    """Global batches of indices into a dataset of ``n`` items."""

    def __init__(self, n: int, batch_size: int, seed: int, name: str = "data") -> None:
        if n < batch_size:
            raise DataError(f"{name}: {n} items are fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._order = self.permutation(0)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of epoch ``epoch``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def next_batch(self) -> torch.Tensor:
        """The next ``batch_size`` indices; a new epoch begins when one would run short."""
        if self.cursor + self.batch_size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self.permutation(self.epoch)
        batch = self._order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return batch

    @property
    def progress(self) -> float:
        """Epochs completed, as a fraction."""
        return self.epoch + self.cursor / self.n

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self.permutation(self.epoch)
