"""Control actor-critic: distributions against torch.distributions, running statistics against
NumPy on the whole stream, action clipping for the environment only, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlfm.errors import ModelError
from rlfm.models.control import (
    MLP,
    ActorCritic,
    PolicyOutput,
    RunningMeanStd,
    categorical_log_prob_entropy,
    gaussian_entropy,
    gaussian_log_prob,
)


def test_gaussian_log_prob_by_hand():
    """One dimension, μ = 0, σ = 1, a = 1: log N = −½ − ½·log 2π = −1.418939; two dimensions
    with log σ = (0, ln 2), a − μ = (1, 2): −½ − ½ − ln 2 − log 2π = −3.531024."""
    lp = gaussian_log_prob(torch.tensor([[1.0]]), torch.zeros(1, 1), torch.zeros(1))
    assert math.isclose(float(lp), -1.418939, rel_tol=1e-5)
    lp2 = gaussian_log_prob(
        torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([0.0, math.log(2.0)])
    )
    assert math.isclose(float(lp2), -3.531024, rel_tol=1e-5)


def test_distributions_match_torch():
    g = torch.Generator().manual_seed(0)
    mean, log_std = torch.randn(5, 3, generator=g), torch.randn(3, generator=g)
    a = torch.randn(5, 3, generator=g)
    ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian_log_prob(a, mean, log_std), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(gaussian_entropy(log_std, 5), ref.entropy().sum(-1))
    logits, acts = torch.randn(5, 4, generator=g), torch.tensor([0, 3, 1, 2, 3])
    cat = torch.distributions.Categorical(logits=logits)
    lp, ent = categorical_log_prob_entropy(logits, acts)
    torch.testing.assert_close(lp, cat.log_prob(acts))
    torch.testing.assert_close(ent, cat.entropy())


def test_running_mean_std_equals_the_whole_stream():
    """Batch-by-batch statistics = mean and (population) variance of everything seen."""
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 2)) for n in (1, 7, 30, 4)]
    rms = RunningMeanStd((2,), epsilon=0.0)
    rms.count.fill_(0.0)
    for i, b in enumerate(batches):  # tensors and NumPy arrays alike
        rms.update(torch.from_numpy(b) if i % 2 else b)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean.numpy(), everything.mean(0), rtol=1e-10)
    np.testing.assert_allclose(rms.var.numpy(), everything.var(0), rtol=1e-10)
    assert float(rms.count) == len(everything)


def test_continuous_actions_are_clipped_for_the_environment_only():
    """A wide Gaussian samples outside [−2, 2]; the environment gets them clipped, PPO keeps the
    sample (its log-prob is of the unclipped action)."""
    torch.manual_seed(0)
    model = ActorCritic(3, "continuous", 1, log_std_init=2.0, action_low=[-2.0], action_high=[2.0])
    x = torch.zeros(256, 3)
    actions, logp = model.act(x)
    assert float(actions.abs().max()) > 2.0
    env = model.env_actions(actions)
    assert env.min() >= -2.0 and env.max() <= 2.0
    torch.testing.assert_close(logp, model.log_prob_entropy(x, actions)[0])
    assert model.log_std.shape == (1,) and model.log_std.requires_grad  # state-independent


def test_save_and_load_keep_weights_and_statistics(tmp_path):
    model = ActorCritic(4, "discrete", 2, hidden=(8,), cost_critic=True)
    model.obs_rms.update(torch.randn(50, 4) * 3 + 1)
    model.save_pretrained(tmp_path / "m")
    back = ActorCritic.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    obs = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_array_equal(model.predict(obs), back.predict(obs))
    assert back.cf is not None


def test_loading_another_kind_of_model_names_the_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ModelError, match="not a control policy"):
        ActorCritic.from_pretrained(tmp_path)


def test_mlp_forward_equals_the_sequential_it_is():
    """MLP skips the layers' __call__ bookkeeping, not their arithmetic: the same outputs as
    nn.Sequential on the same layers, and the same state-dict keys."""
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)]
    fast, plain = MLP(*layers), torch.nn.Sequential(*layers)
    x = torch.randn(7, 5)
    torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_sample_and_log_prob_are_act():
    """act = sample from the policy's output, then its log-prob (same RNG draws)."""
    for kind, dim, sde in (
        ("continuous", 2, False),
        ("discrete", 4, False),
        ("continuous", 2, True),
    ):
        model = ActorCritic(3, kind, dim, hidden=(8,), sde=sde)
        x = torch.randn(6, 3)
        torch.manual_seed(1)
        actions, logp = model.act(x)
        torch.manual_seed(1)
        p = model.policy(x)
        again = model.sample(p)
        torch.testing.assert_close(again, actions)
        torch.testing.assert_close(model.log_prob(p, again), logp)
        torch.testing.assert_close(logp, model.log_prob_entropy(x, actions)[0].detach())


def test_sde_distribution_is_the_per_state_gaussian():
    """gSDE: a = μ(s) + θᵀz(s) with θ_ji ~ N(0, σ_ji²) is, for one step, N(μ(s), σ(s)²) with
    σ_i(s)² = Σ_j z_j(s)²·σ_ji² + 10⁻⁶: log-prob and entropy against torch.distributions on
    that σ, and the spread of many exploration draws at one state against σ(s)."""
    torch.manual_seed(0)
    model = ActorCritic(3, "continuous", 2, hidden=(16, 8), sde=True, log_std_init=-1.0)
    with torch.no_grad():
        model.log_std.add_(torch.randn(8, 2) * 0.3)  # a σ that differs per feature
    x = torch.randn(5, 3)
    p = model.policy(x)
    _, z = model.pi.forward_features(x)
    std = torch.sqrt(z.square() @ model.log_std.exp().square() + 1e-6)  # (5, 2)
    ref = torch.distributions.Normal(p.out, std)
    a = torch.randn(5, 2)
    logp, entropy = model.log_prob_entropy(x, a)
    torch.testing.assert_close(logp, ref.log_prob(a).sum(-1))
    torch.testing.assert_close(entropy, ref.entropy().sum(-1))
    n = 20_000
    one = PolicyOutput(
        p.out[:1].expand(n, 2), p.log_std[:1].expand(n, 2), p.features[:1].expand(n, 8)
    )
    draws = model.sample(one, exploration=model.exploration(n))
    torch.testing.assert_close(draws.std(0), std[0], rtol=0.03, atol=0)
    torch.testing.assert_close(
        draws.mean(0), p.out[0].detach(), rtol=0, atol=0.05 * float(std[0].max())
    )


def test_sde_needs_box_actions():
    with pytest.raises(ModelError, match="sde"):
        ActorCritic(3, "discrete", 2, sde=True)


def test_normalize_is_the_plain_formula_bit_for_bit():
    """Observations are normalised with NumPy: clip((x − μ) / √(σ² + ε)) with the √ in float64
    rounded to float32 and float32 arithmetic, the values of the same formula in torch exactly
    (clipped ones included), so rollouts are those of the earlier torch implementation."""
    model = ActorCritic(6, "continuous", 2, hidden=(8,), clip_obs=2.0)
    rng = np.random.default_rng(0)
    model.obs_rms.update(rng.normal(size=(40, 6)) * [1e-3, 1, 10, 100, 3, 0.5] + 7)
    obs = (rng.normal(size=(9, 6)) * 30 + 7).astype(np.float32)
    fast = model.normalize(obs)
    assert fast.dtype == torch.float32 and float(fast.abs().max()) == 2.0  # some are clipped
    mean, std = model.obs_rms.mean, (model.obs_rms.var + 1e-8).sqrt()
    plain = ((torch.from_numpy(obs) - mean.float()) / std.float()).clamp(-2.0, 2.0)
    torch.testing.assert_close(fast, plain, rtol=0, atol=0)
    raw = ActorCritic(6, "continuous", 2, hidden=(8,), normalize_obs=False).normalize(obs)
    assert torch.equal(raw, torch.from_numpy(obs)) and raw.data_ptr() != obs.ctypes.data
