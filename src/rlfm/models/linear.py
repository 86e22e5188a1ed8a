"""Linear layers through oneDNN's matrix multiply on the CPU in float32.

PyTorch's ``F.linear`` on a CPU calls MKL's GEMM. For the narrow layers of the small models
rlfm trains on CPUs (a Decision Transformer at the paper's size: 3,776 token rows × 128 → 384 /
128 / 512, and 512 → 128), oneDNN's matrix multiply, which PyTorch ships in every x86 CPU
build, is faster, and it applies a ReLU on its output in the same pass. Measured on one
thread of a 2-core AMD EPYC (AVX2, fp32, interleaved rounds, medians): the forward product
1.13–1.29× faster, the input gradient's product 1.20–1.44×; for the weight gradient
(3,776-long inner dimension) MKL stays faster (oneDNN 0.61–0.86×), so it keeps computing that.
A Decision Transformer training step at the paper's size ran 6–8.5% more steps/s in
interleaved A/B runs (same process, 8–10 rounds).

:func:`linear` and :func:`relu_mlp` compute the plain formulas — x·Wᵀ + b, and
fc_proj(relu(fc(x))) — with autograd; oneDNN computes the forward and input-gradient
products where :func:`fast_path` says so (float32 CPU tensors outside autocast, PyTorch built
with oneDNN), ``F.linear`` otherwise (GPUs, bf16 autocast, float64). Results agree with
``F.linear`` to float32 rounding (the tests compare outputs and every gradient).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable


def _onednn_linear() -> (
    Any
):  # the op inductor's CPU backend uses; absent from builds without oneDNN
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_OP = _onednn_linear() if torch.backends.mkldnn.is_available() else None
ENABLED = _OP is not None
"""Whether :func:`fast_path` may choose oneDNN at all (False turns it off, e.g. to compare)."""
MIN_ROWS = 1024
"""Fewest rows (the product of x's leading dimensions) oneDNN computes: each call costs it
~40 µs more than MKL (primitive lookup), which only large products repay (at 1 row: 64 against
20 µs; at 256 rows × 128 → 384: 428 against 393 µs; at 3,776: 5.6 against 7.3 ms)."""
MIN_WIDTH = 128
"""Narrowest input and output oneDNN computes: at 64 wide (the DT demos' models) a training
step was ~5% slower on oneDNN than on MKL."""


def fast_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN computes ``x @ weight.T`` (float32 CPU tensors, no autocast, at least
    :data:`MIN_ROWS` rows and :data:`MIN_WIDTH` inputs and outputs)."""
    return (
        ENABLED
        and x.numel() >= MIN_ROWS * x.shape[-1]
        and min(weight.shape) >= MIN_WIDTH
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
    )


def _mm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False
) -> torch.Tensor:
    """(..., K) @ (N, K)ᵀ + b, relu'd if asked, by oneDNN."""
    assert _OP is not None
    return _OP(x, weight, bias, "relu" if relu else "none", [], "")


def _weight_grad(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_rows gᵀ x for (..., N) output gradients and (..., K) inputs -> (N, K) (MKL)."""
    return g.reshape(-1, g.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    return g.reshape(-1, g.shape[-1]).sum(0)


Grads = tuple[torch.Tensor | None, ...]


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: torch.Tensor) -> Grads:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = _mm(g, weight.t(), None) if need_x else None
        gw = _weight_grad(g, x) if need_w else None
        gb = _bias_grad(g) if ctx.has_bias and need_b else None
        return gx, gw, gb


class _ReluMLP(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor | None,
        w2: torch.Tensor,
        b2: torch.Tensor | None,
    ) -> torch.Tensor:
        h = _mm(x, w1, b1, relu=True)
        ctx.save_for_backward(x, w1, h, w2)
        return _mm(h, w2, b2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: torch.Tensor) -> Grads:
        x, w1, h, w2 = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        gw2 = _weight_grad(g, h) if need_w2 else None
        gb2 = _bias_grad(g) if need_b2 else None
        gh = _mm(g, w2.t(), None)  # a fresh tensor: masked in place where relu was 0
        torch.ops.aten.threshold_backward.grad_input(gh, h, 0, grad_input=gh)
        gx = _mm(gh, w1.t(), None) if need_x else None
        gw1 = _weight_grad(gh, x) if need_w1 else None
        gb1 = _bias_grad(gh) if need_b1 else None
        return gx, gw1, gb1, gw2, gb2


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: (..., K), (N, K), (N,) -> (..., N)."""
    if not fast_path(x, weight):
        return F.linear(x, weight, bias)
    if _needs_graph(x, weight, bias):
        return _Linear.apply(x, weight, bias)
    return _mm(x, weight, bias)


def relu_mlp(x: torch.Tensor, fc: nn.Linear, proj: nn.Linear) -> torch.Tensor:
    """``proj(relu(fc(x)))``, the hidden activations masked in place in the backward pass."""
    if not fast_path(x, fc.weight):
        return proj(F.relu(fc(x)))
    if _needs_graph(x, fc.weight, fc.bias, proj.weight, proj.bias):
        return _ReluMLP.apply(x, fc.weight, fc.bias, proj.weight, proj.bias)
    return _mm(_mm(x, fc.weight, fc.bias, relu=True), proj.weight, proj.bias)


PACK_MIN_ROWS = 8
"""Fewest rows per call for which :func:`packed_for_inference` packs: at one row a decoding
step of the ``small`` preset was ~6% slower packed, at 8 rows 1.28× faster."""
PACK_MIN_WIDTH = 256
"""Narrowest layer :func:`packed_for_inference` packs: the ``tiny`` preset's 128-wide layers
decoded 6–11% slower packed (per-call cost), the ``small`` preset's 256-wide 1.28–1.34× faster."""


def available_memory() -> int | None:
    """Bytes of memory the system can still give without swapping (Linux ``MemAvailable``);
    None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _packable(module: nn.Module) -> bool:
    """A float32 CPU ``nn.Linear`` or transformers ``Conv1D`` (GPT-2's) at least
    :data:`PACK_MIN_WIDTH` wide, computing with its class's own forward (a subclass that
    changes the forward, e.g. a quantised or adapter layer, is left alone)."""
    cls = type(module)
    plain = cls.forward is nn.Linear.forward
    conv1d = cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")
    if not (plain or conv1d):
        return False
    w = getattr(module, "weight", None)
    return (
        isinstance(w, torch.Tensor)
        and w.dim() == 2
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and min(w.shape) >= PACK_MIN_WIDTH
    )


def _has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` carries peft adapters; without importing peft (≈ 4 s) where nothing
    has: a model can only be a peft model once peft is loaded."""
    if "peft" not in sys.modules:
        return False
    from rlfm.models.adapters import is_peft_model  # adapters imports the loaders

    return is_peft_model(model)


def _packed_forward(module: nn.Module, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` from the oneDNN-packed weight; the module's own forward wherever the
    packed product would not be the same computation (gradients wanted, autocast, another
    dtype or device, an empty input)."""
    if (
        torch.is_grad_enabled()
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or torch.is_autocast_enabled("cpu")
        or x.numel() == 0
    ):
        return type(module).forward(module, x)
    return _mm(x, packed, module.bias)


@contextmanager
def packed_for_inference(model: nn.Module, rows: int) -> Iterator[int]:
    """Inside: the model's float32 CPU linear layers (``nn.Linear`` and GPT-2's ``Conv1D``, at
    least :data:`PACK_MIN_WIDTH` wide) compute x·Wᵀ + b by oneDNN from a copy of their weights
    reordered once into oneDNN's blocked layout for ``rows``-row inputs, in gradient-free
    calls; calls that want gradients use the layers' own forward. Nothing is packed below
    :data:`PACK_MIN_ROWS` rows, where PyTorch has no oneDNN, in a model with peft adapters
    (LoRA and prefix-tuning are chosen to share the frozen weights; packing would copy them),
    or where the copies would take more than half of the memory the system has available (a
    large model sampled on a CPU keeps its plain layers rather than risk running out). Yields
    how many layers were packed. Costs one copy of those weights while inside.

    For incremental decoding — a few rows against every weight at each step — this is what
    makes the products fast: at 32 rows a GPT-3-Small-shaped layer ran 64–91 GFLOP/s packed
    against 22–62 through ``F.linear`` (2-core AMD EPYC, fp32), and sampling 32 rows from the
    ``small`` preset and a ~100M GPT-2 1.3× faster. The weights must not change inside (the
    copies would go stale)."""
    patched: list[nn.Module] = []
    try:
        wanted = ENABLED and rows >= PACK_MIN_ROWS and not _has_adapters(model)
        modules = model.modules() if wanted else ()  # scanned only when packing is wanted
        layers = [m for m in modules if _packable(m) and "forward" not in m.__dict__]
        size = sum(m.weight.numel() * m.weight.element_size() for m in layers)
        free = available_memory() if layers else None
        if layers and (free is None or 2 * size <= free):
            for module in layers:
                w = module.weight.detach()  # nn.Linear: (out, in); Conv1D stores (in, out)
                w = w if isinstance(module, nn.Linear) else w.t().contiguous()
                packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
                module.forward = functools.partial(_packed_forward, module, packed)
                patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward
