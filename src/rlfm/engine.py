"""The engine: the only module that touches devices, torch.distributed, autocast, gradient
accumulation and gradient clipping.

One process: ``Engine.create()`` picks CUDA when present, else the CPU. Several processes:
launch with ``torchrun --nproc_per_node N -m rlfm <stage> ...``; the engine reads the
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` variables torchrun sets, joins the process group (NCCL on
GPUs, gloo on CPUs) and wraps the model in DistributedDataParallel. Stages give it a *global*
batch size; each process takes its slice of every global batch, so the same seed and global
batch give the same loss curve whatever the number of processes.

Gradient accumulation: a process's share of a global batch is cut into micro-batches. A stage
runs each one's forward pass inside :meth:`Engine.micro_step` (autocast, and ``no_sync`` — no
all-reduce — on every micro-batch but the last) and hands its loss to :meth:`Engine.backward`
with the share of the global objective it carries; :meth:`Engine.step` then clips, steps the
optimizer and the schedule. So every stage scales, synchronises and clips the same way::

    for i in range(n_micro):
        with engine.micro_step(model, last=i == n_micro - 1):
            loss = ...                                    # forward under autocast
            engine.backward(loss, weight=rows_i / global_rows)
    engine.step(model, optimizer, scheduler, max_grad_norm)
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from rlfm.errors import ConfigError

Precision = Literal["auto", "fp32", "bf16"]


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs fast on this device (CUDA bf16, or a CPU with bf16 units)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters
KEEP_FREED_MAX = 32 * 2**20
"""Freed blocks up to this size stay in the process's heap (:func:`reuse_freed_memory`)."""


def reuse_freed_memory() -> bool:
    """Let glibc keep freed memory of up to 32 MiB a block for the next allocation instead of
    handing it back to the kernel. By default glibc serves large blocks with fresh mappings
    and returns freed memory at the top of its heap to the kernel; its thresholds adapt to the
    block sizes it sees, but not to a training step's mix of them, so a CPU training step that
    allocates the same activations every step page-faults and zeroes many anew. A Decision
    Transformer step at the paper's size (batch 64, K = 20, 128 wide) took 547k minor page
    faults and 1.97 s of system time over 90 steps before, 102k and 0.58 s after. Memory is
    reused, not leaked: the peak is that of the live tensors, but the process keeps its peak
    size until it exits. A no-op (False) where the C library has no ``mallopt`` (not glibc)."""
    import ctypes

    try:  # the process's own symbols, libc's among them (no library search, no subprocess)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_MAX) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1  # keep the freed top of the heap
    ok &= mallopt(_M_TOP_PAD, 64 * 2**20) == 1  # grow the heap in 64 MiB steps
    return bool(ok)


@dataclass
class Engine:
    """Device, precision and process-group state shared by every stage."""

    device: torch.device
    precision: Literal["fp32", "bf16"]
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def create(cls, device: str = "auto", precision: Precision = "auto") -> Engine:
        """Join the process group if launched by torchrun; choose the device and precision."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ConfigError(f"device: {device!r} is not one of 'auto', 'cpu', 'cuda'")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but no CUDA GPU is visible")
        if device == "cuda":
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(local_rank)
        dev = torch.device(device)
        if world_size > 1 and not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30)
            )
        if precision == "auto":
            precision = "bf16" if bf16_supported(dev) else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision: {precision!r} is not one of 'auto', 'fp32', 'bf16'")
        return cls(dev, precision, rank, world_size, local_rank)

    def reuse_freed_cpu_memory(self) -> bool:
        """:func:`reuse_freed_memory` when this engine computes on the CPU (CUDA memory has its
        own caching allocator). Called by the Decision Transformer stages, where it was
        measured."""
        return self.device.type == "cpu" and reuse_freed_memory()

    # ---------------------------------------------------------------- processes
    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self, clean: bool = True) -> None:
        """The end of a stage: every process waits for the others (``clean=False``, after an
        error, does not: the others may never arrive). The process group stays up for the next
        stage of the same process (a pipeline) and ends with the process (cli.py)."""
        if self.distributed and dist.is_initialized() and clean:
            dist.barrier()

    def all_reduce_mean(self, value: float | torch.Tensor) -> float:
        """Mean of a scalar over processes (a plain float on every process)."""
        t = torch.as_tensor(value, dtype=torch.float64, device=self.device).detach().clone()
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world_size
        return float(t)

    def any_process(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any of them."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of a tensor over processes (a new tensor, on the input's device).

        The reduction runs on the engine's device (NCCL reduces only GPU tensors)."""
        t = tensor.detach().to(self.device, copy=True)
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.to(tensor.device)

    def broadcast_object(self, obj: Any) -> Any:
        """``obj`` from rank 0, on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, global_batch: int) -> slice:
        """This process's rows of a global batch of ``global_batch`` rows."""
        if global_batch % self.world_size:
            raise ConfigError(
                f"batch_size: {global_batch} does not divide evenly over {self.world_size} processes"
            )
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def micro_batches(self, global_batch: int, micro_batch: int | None) -> int:
        """Number of gradient-accumulation steps for this process's share of a global batch."""
        per = self.shard(global_batch).stop - self.shard(global_batch).start
        if micro_batch is None or micro_batch >= per:
            return 1
        if per % micro_batch:
            raise ConfigError(
                f"micro_batch_size: {micro_batch} does not divide the per-process batch {per} "
                f"(batch_size {global_batch} over {self.world_size} processes)"
            )
        return per // micro_batch

    # ---------------------------------------------------------------- models
    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to the device; wrap in DDP when there are several processes."""
        model.to(self.device)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        """The model inside a DDP wrapper (or the model itself)."""
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when the run's precision is bf16, else nothing."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def micro_step(self, model: nn.Module, last: bool) -> Iterator[None]:
        """Context for the forward pass (under autocast) and :meth:`backward` of one
        micro-batch: gradients are all-reduced only on the ``last`` micro-batch of an optimizer
        step (DDP decides that in the forward pass, so the forward must be inside)."""
        sync = contextlib.nullcontext()
        if self.distributed and not last and hasattr(model, "no_sync"):
            sync = model.no_sync()
        with sync, self.autocast():
            yield

    def backward(self, loss: torch.Tensor, weight: float | torch.Tensor = 1.0) -> None:
        """Back-propagate ``loss × weight``, where ``weight`` is this micro-batch's share of
        the global objective (e.g. its rows / the global batch's rows, or 1 / the global
        batch's loss tokens for a summed loss).

        DDP averages gradients over processes; the loss is multiplied by the number of
        processes so the result is the gradient of the global objective itself, the same for
        any number of processes. Backward runs outside autocast (its ops follow the forward's
        dtypes)."""
        with torch.autocast(self.device.type, enabled=False):
            (loss * (weight * self.world_size)).backward()

    def step(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any | None = None,
        max_grad_norm: float | None = None,
    ) -> float:
        """Clip gradients, step the optimizer (and scheduler), zero the gradients.

        Returns the gradient norm before clipping (inf/nan steps are skipped, not applied).
        """
        params = [p for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(
            params, max_grad_norm if max_grad_norm else float("inf")
        )
        norm_value = float(norm)
        if np.isfinite(norm_value):
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return norm_value

    # ---------------------------------------------------------------- randomness
    def seed(self, seed: int) -> None:
        """Seed Python, NumPy and torch; the same on every process (data order is global)."""
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def rng_state(self) -> dict[str, Any]:
        """All RNG states of this process, for a checkpoint."""
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
