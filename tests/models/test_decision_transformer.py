"""The (C)DT model: token order, causality, the action read from the state token, padding,
saving."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlfm.models.decision_transformer import (
    BCConfig,
    BCPolicy,
    DecisionTransformer,
    DTConfig,
    interleave,
    load_policy,
)


def small(**kw) -> DecisionTransformer:
    torch.manual_seed(0)
    cfg = dict(state_dim=3, action_dim=2, context=4, hidden=16, layers=2, heads=2, dropout=0.0)
    return DecisionTransformer(DTConfig(**(cfg | kw))).eval()


def inputs(B=2, T=4, S=3, A=2, seed=1, discrete=False):
    g = torch.Generator().manual_seed(seed)
    actions = (
        torch.randint(0, A, (B, T), generator=g)
        if discrete
        else torch.rand(B, T, A, generator=g) * 2 - 1
    )
    return dict(
        states=torch.randn(B, T, S, generator=g),
        actions=actions,
        returns_to_go=torch.rand(B, T, generator=g) * 100,
        timesteps=torch.arange(T).expand(B, T).clone(),
    )


def test_interleave_by_hand():
    """Two steps of R̂, s, a (scalar embeddings): R̂_1 s_1 a_1 R̂_2 s_2 a_2."""
    R = torch.tensor([[[1.0], [2.0]]])
    s = torch.tensor([[[10.0], [20.0]]])
    a = torch.tensor([[[100.0], [200.0]]])
    assert interleave([R, s, a]).flatten().tolist() == [1, 10, 100, 2, 20, 200]


@pytest.mark.parametrize("prediction_heads", [True, False])
def test_tokens_enter_the_transformer_in_step_order(prediction_heads):
    """Hidden width 4, one direction per modality (CDT: R̂ → e0, Ĉ → e1, s → e2, a → e3), no
    timestep embedding and no LayerNorm: the first block's input, token by token, is
    R̂_1/scale·e0, Ĉ_1/scale·e1, s_1·e2, a_1·e3, R̂_2/scale·e0, ... Without prediction heads
    nothing reads the last action token, and it is left out."""
    m = small(
        hidden=4,
        heads=1,
        cost_tokens=True,
        prediction_heads=prediction_heads,
        state_dim=1,
        action_dim=1,
        return_scale=10.0,
    )
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for i, layer in enumerate((m.embed_return, m.embed_cost, m.embed_state, m.embed_action)):
            layer.weight[i, 0] = 1.0
    m.embed_ln = nn.Identity()
    seen = []
    m.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    m(
        states=torch.tensor([[[3.0], [4.0]]]),  # state_std 1, mean 0
        actions=torch.tensor([[[0.5], [-0.5]]]),  # unit box already
        returns_to_go=torch.tensor([[20.0, 10.0]]),
        timesteps=torch.tensor([[0, 1]]),
        costs_to_go=torch.tensor([[5.0, 4.0]]),
    )
    x = seen[0][0]  # (8, 4), or (7, 4) without the last action token
    assert x.shape == (8 if prediction_heads else 7, 4)
    expected = [
        [2.0, 0, 0, 0],  # R̂_1 / 10
        [0, 5.0, 0, 0],  # Ĉ_1 / cost_scale 1
        [0, 0, 3.0, 0],  # s_1
        [0, 0, 0, 0.5],  # a_1
        [1.0, 0, 0, 0],
        [0, 4.0, 0, 0],
        [0, 0, 4.0, 0],
        [0, 0, 0, -0.5],
    ]
    for got, want in zip(x.tolist(), expected):
        assert got == pytest.approx(want)


@pytest.mark.parametrize("cost_tokens", [False, True])
def test_no_attention_to_the_future(cost_tokens):
    """Changing step 2 onwards (state, action, R̂, Ĉ) leaves the predictions at steps 0, 1."""
    m = small(cost_tokens=cost_tokens, prediction_heads=cost_tokens)
    x = inputs()
    c = torch.rand(2, 4) * 10 if cost_tokens else None
    y = {k: v.clone() for k, v in x.items()}
    y["states"][:, 2:] += 5.0
    y["actions"][:, 2:] *= -1
    y["returns_to_go"][:, 2:] += 50
    c2 = None if c is None else c.clone()
    if c2 is not None:
        c2[:, 2:] += 3
    a, b = m(**x, costs_to_go=c), m(**y, costs_to_go=c2)
    assert torch.allclose(a.action[:, :2], b.action[:, :2], atol=1e-6)
    assert not torch.allclose(a.action[:, 2:], b.action[:, 2:], atol=1e-4)
    if cost_tokens:
        assert torch.allclose(a.cost[:, :2], b.cost[:, :2], atol=1e-6)


def test_action_comes_from_the_state_token():
    """a_t itself never influences the prediction of a_t (it is read at s_t, before a_t);
    s_t and R̂_t do (exactly zero change against a clearly non-zero one)."""
    m = small(return_scale=100.0)
    x = inputs()
    base = m(**x).action
    y = {k: v.clone() for k, v in x.items()}
    y["actions"][:, 3] = -y["actions"][:, 3]
    assert torch.equal(m(**y).action[:, 3], base[:, 3])
    z = {k: v.clone() for k, v in x.items()}
    z["states"][:, 3] += 1.0
    assert (m(**z).action[:, 3] - base[:, 3]).abs().max() > 1e-5
    r = {k: v.clone() for k, v in x.items()}
    r["returns_to_go"][:, 3] = -r["returns_to_go"][:, 3]
    assert (m(**r).action[:, 3] - base[:, 3]).abs().max() > 1e-5


def test_right_padding_equals_the_unpadded_window():
    """A 2-step window padded to 4 gives the same predictions at its 2 real steps."""
    m = small()
    x = inputs(B=1)
    short = {k: v[:, :2] for k, v in x.items()}
    padded = {k: v.clone() for k, v in x.items()}
    for v in padded.values():
        v[:, 2:] = 0
    assert torch.allclose(m(**short).action, m(**padded).action[:, :2], atol=1e-6)


@pytest.mark.parametrize("cost_tokens", [False, True])
def test_leaving_out_the_last_action_token_changes_no_action(cost_tokens):
    """The same weights with prediction heads (every token computed) and without (the window's
    last action token left out) predict the same actions at every step."""
    torch.manual_seed(0)
    full = small(cost_tokens=cost_tokens, prediction_heads=True).eval()
    cut = small(cost_tokens=cost_tokens, prediction_heads=False).eval()
    missing, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert not missing and all(k.startswith(("predict_reward", "predict_cost")) for k in unexpected)
    x = inputs()
    c = torch.rand(2, 4) * 10 if cost_tokens else None
    torch.testing.assert_close(
        cut(**x, costs_to_go=c).action, full(**x, costs_to_go=c).action, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("cdt", [True, False])
def test_last_only_matches_the_full_forward_and_act_cuts_history(cdt):
    m = small(cost_tokens=cdt, stochastic=cdt, prediction_heads=cdt).eval()
    x = inputs()
    c = torch.rand(2, 4) if cdt else None
    full = m(**x, costs_to_go=c)
    last = m(**x, costs_to_go=c, last_only=True)
    assert torch.allclose(full.action[:, -1:], last.action, atol=1e-6)
    if not cdt:  # act: the last step's action in environment units (default bounds [−1, 1])
        assert torch.allclose(m.act(**x), full.action[:, -1], atol=1e-6)
    long = inputs(T=7)
    act = m.act(**long, costs_to_go=torch.rand(2, 7) if cdt else None)
    assert act.shape == (2, 2) and act.abs().max() <= 1  # default bounds [−1, 1]


def test_discrete_actions_logits_and_argmax():
    m = small(discrete=True, action_dim=3)
    x = inputs(A=3, discrete=True)
    out = m(**x)
    assert out.action.shape == (2, 4, 3)
    assert m.act(**x).dtype == torch.long


def test_stochastic_policy_terms_are_a_gaussian():
    """log π and H of N(μ, σ²) summed over 2 dimensions, against torch.distributions."""
    m = small(cost_tokens=True, stochastic=True)
    x = inputs()
    c = torch.rand(2, 4)
    out = m(**x, costs_to_go=c)
    logp, ent = m.policy_terms(out, x["actions"])
    dist = torch.distributions.Normal(out.action, out.log_std.exp())
    assert torch.allclose(logp, dist.log_prob(m.unit_actions(x["actions"])).sum(-1), atol=1e-5)
    assert torch.allclose(ent, dist.entropy().sum(-1), atol=1e-5)
    assert m.temperature().item() == pytest.approx(0.1)


def test_action_bounds_round_trip():
    m = small()
    m.action_low.copy_(torch.tensor([[-2.0, 0.0]]))
    m.action_high.copy_(torch.tensor([[2.0, 10.0]]))
    a = torch.tensor([[[1.0, 7.5]]])
    unit = m.unit_actions(a)
    assert unit[0, 0].tolist() == pytest.approx([0.5, 0.5])
    assert m.env_actions(unit[:, 0])[0].tolist() == pytest.approx([1.0, 7.5])


def test_save_and_load(tmp_path):
    m = small(cost_tokens=True, stochastic=True, prediction_heads=True, tasks=2)
    m.state_mean.fill_(0.5)
    m.save_pretrained(tmp_path / "m")
    back = load_policy(tmp_path / "m")
    assert isinstance(back, DecisionTransformer) and back.cfg == m.cfg
    x = inputs()
    c, task = torch.rand(2, 4), torch.tensor([0, 1])
    assert torch.equal(
        m(**x, costs_to_go=c, task=task).action, back(**x, costs_to_go=c, task=task).action
    )
    bc = BCPolicy(BCConfig(state_dim=3, action_dim=2, thresholds=[10.0, 20.0]))
    bc.save_pretrained(tmp_path / "bc")
    again = load_policy(tmp_path / "bc")
    assert isinstance(again, BCPolicy) and again.cfg.thresholds == [10.0, 20.0]


def test_bc_safe_refuses_an_untrained_threshold():
    bc = BCPolicy(BCConfig(state_dim=3, action_dim=2, thresholds=[10.0, 20.0]))
    assert bc.policy_index(20.0) == 1
    with pytest.raises(Exception, match="policies for 10, 20 only"):
        bc.act_states(torch.zeros(1, 3), 15.0)


def test_training_forward_without_its_masks_is_the_eval_forward(monkeypatch):
    """In training mode with dropout > 0 the blocks take the explicit attention path; with the
    dropout masks made all-ones it gives the eval path's outputs (PyTorch's fused causal
    kernel), state tokens and action tokens alike."""
    m = small(dropout=0.3, prediction_heads=True, cost_tokens=True)
    x = inputs() | {"costs_to_go": torch.rand(2, 4)}
    want = m(**x)
    for module in ("attention", "decision_transformer"):  # attention weights, residual branches
        monkeypatch.setattr(f"rlfm.models.{module}.dropout", lambda t, p: t)
    got = m.train()(**x)
    for a, b in ((got.action, want.action), (got.reward, want.reward), (got.cost, want.cost)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
