"""models/linear.py: oneDNN's products compute F.linear's formulas, forward and backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rlfm.models.linear as lin
from rlfm.models.decision_transformer import DecisionTransformer, DTConfig

needs_onednn = pytest.mark.skipif(not lin.ENABLED, reason="PyTorch built without oneDNN")


def grads(fn, *tensors):
    out = fn()
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    result = [out.detach()] + [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return result


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_linear_and_its_gradients_equal_f_linear(bias, strided):
    torch.manual_seed(0)
    x = torch.randn(8, 300 if strided else 150, 128, requires_grad=True)
    w = torch.randn(160, 128, requires_grad=True)
    b = torch.randn(160, requires_grad=True) if bias else None
    leaves = [t for t in (x, w, b) if t is not None]
    xs = (lambda: x[:, ::2]) if strided else (lambda: x)  # a view, as the DT's last block passes
    assert lin.fast_path(xs(), w)
    fast = grads(lambda: lin.linear(xs(), w, b), *leaves)
    plain = grads(lambda: F.linear(xs(), w, b), *leaves)
    for a, e in zip(fast, plain):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_relu_mlp_and_its_gradients_equal_the_plain_formula():
    torch.manual_seed(1)
    fc, proj = nn.Linear(128, 512), nn.Linear(512, 128)
    x = torch.randn(1100, 128, requires_grad=True)
    leaves = [x, fc.weight, fc.bias, proj.weight, proj.bias]
    fast = grads(lambda: lin.relu_mlp(x, fc, proj), *leaves)
    plain = grads(lambda: proj(F.relu(fc(x))), *leaves)
    assert (fc(x) <= 0).any() and (fc(x) > 0).any()  # the mask matters
    for a, e in zip(fast, plain):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_the_plain_path_where_onednn_does_not_apply(monkeypatch):
    w = torch.randn(128, 128)
    assert not lin.fast_path(torch.randn(10, 128), w)  # too few rows to repay a oneDNN call
    assert not lin.fast_path(torch.randn(2000, 64), torch.randn(128, 64))  # too narrow
    assert not lin.fast_path(torch.randn(2000, 128, dtype=torch.float64), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not lin.fast_path(torch.randn(2000, 128), w)
    assert lin.fast_path(torch.randn(2000, 128), w) == lin.ENABLED
    monkeypatch.setattr(lin, "ENABLED", False)
    x = torch.randn(2000, 128)
    assert not lin.fast_path(x, w)
    assert torch.equal(lin.linear(x, w), F.linear(x, w))  # F.linear itself


@needs_onednn
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_a_decision_transformer_step_equals_the_plain_one(monkeypatch, p):
    """oneDNN's products and the packed attention against nn.Linear, split and
    explicit_attention / SDPA: the same outputs and gradients, with dropout the same draws."""
    torch.manual_seed(2)
    cfg = DTConfig(state_dim=5, action_dim=2, context=20, hidden=128, layers=2, dropout=p)
    model = DecisionTransformer(cfg)
    B, T = 64, 20  # 64 × 59 token rows: on oneDNN
    batch = (
        torch.randn(B, T, 5),
        torch.rand(B, T, 2) * 2 - 1,
        torch.rand(B, T) * 100,
        torch.randint(0, 1000, (B, T)),
    )

    def step():
        torch.manual_seed(3)
        out = model(*batch).action
        out.square().sum().backward()
        g = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.zero_grad()
        return [out.detach()] + g

    calls = []
    op = lin._OP
    monkeypatch.setattr(lin, "_OP", lambda *a: calls.append(a[0].shape) or op(*a))
    fast = step()
    assert len(calls) == 2 * (
        4 + 5
    )  # each product of the 2 blocks (the last: q and kv apart), forward and input gradient
    monkeypatch.setattr(lin, "ENABLED", False)
    plain = step()
    assert len(fast) == len(plain) > 10
    for a, e in zip(fast, plain):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def _gpt2_small(vocab=300):
    from rlfm.models.presets import build_model, model_config

    return build_model(model_config("small", vocab_size=vocab, context=64), seed=0).eval()


@needs_onednn
def test_packed_layers_compute_the_models_own_outputs_and_are_restored():
    """Inside ``packed_for_inference`` every 256-wide Conv1D / Linear of a GPT-2 (the tied head
    too) computes from packed weights, gradient-free calls give the model's logits to float32
    rounding, calls with gradients take the layers' own forward, and on exit the layers are
    the class's again with their weights untouched."""
    model = _gpt2_small()
    convs = [m for m in model.modules() if type(m).__name__ == "Conv1D"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 300, (8, 12))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    with lin.packed_for_inference(model, rows=8) as n:
        assert n == len(convs) + 1  # every Conv1D and the LM head
        assert all("forward" in m.__dict__ for m in convs)
        with torch.no_grad():
            packed = model(input_ids=ids).logits
        graded = model(input_ids=ids).logits  # gradients wanted: the layers' own forward
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    assert not torch.equal(packed, plain)  # really computed another way (float32 rounding)
    torch.testing.assert_close(graded, plain, rtol=0, atol=0)
    graded.sum().backward()
    assert all(m.weight.grad is not None for m in convs)
    assert not any("forward" in m.__dict__ for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@needs_onednn
def test_nothing_is_packed_for_few_rows_narrow_layers_or_other_dtypes():
    narrow = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 512))
    wide = nn.Sequential(nn.Linear(256, 300), nn.Linear(300, 256))
    with lin.packed_for_inference(narrow, rows=32) as n:
        assert n == 0  # each has a 128-wide side
    with lin.packed_for_inference(wide, rows=lin.PACK_MIN_ROWS - 1) as n:
        assert n == 0
    with lin.packed_for_inference(wide.double(), rows=32) as n:
        assert n == 0

    class Scaled(nn.Linear):  # a subclass with its own forward: packing would skip it
        def forward(self, x):
            return 2 * super().forward(x)

    with lin.packed_for_inference(nn.Sequential(Scaled(256, 256)), rows=32) as n:
        assert n == 0
    from rlfm.models.adapters import add_lora

    lora = add_lora(_gpt2_small(), r=4)  # adapters share the frozen weights: not copied
    with lin.packed_for_inference(lora, rows=32) as n:
        assert n == 0
    x = torch.randn(3, 5, 256)
    wide.float()
    with torch.no_grad():
        expect = wide(x)
        with lin.packed_for_inference(wide, rows=32) as n:
            assert n == 2
            torch.testing.assert_close(wide(x), expect, rtol=1e-5, atol=1e-5)
            assert wide(x[:0]).shape == (0, 5, 256)  # an empty input: the layers' own forward


@needs_onednn
def test_nothing_is_packed_when_the_copies_would_take_over_half_the_available_memory(
    monkeypatch,
):
    real = lin.available_memory()
    assert real is None or real > 0  # Linux: /proc/meminfo's MemAvailable
    wide = nn.Sequential(nn.Linear(256, 300), nn.Linear(300, 256))
    size = 2 * 256 * 300 * 4  # bytes of the two weights
    monkeypatch.setattr(lin, "available_memory", lambda: 2 * size - 1)
    with lin.packed_for_inference(wide, rows=32) as n:
        assert n == 0
    monkeypatch.setattr(lin, "available_memory", lambda: 2 * size)
    with lin.packed_for_inference(wide, rows=32) as n:
        assert n == 2
    monkeypatch.setattr(lin, "available_memory", lambda: None)  # the system does not say
    with lin.packed_for_inference(wide, rows=32) as n:
        assert n == 2
