"""rlfm's Decision Transformer against the reference recipe: training steps/s and evaluation
episodes/s, same sizes, one run, ratio printed (peer time / rlfm time).

Reference: ``transformers.DecisionTransformerModel`` (a GPT-2 backbone fed ``inputs_embeds``,
as the original code does), trained the way its documentation and the original code do: left
padding with an attention mask, MSE on the action predictions at real steps, AdamW, gradients
clipped to 0.25; evaluated one episode at a time, each step the last K steps left-padded to K
(the original ``get_action``). rlfm: right padding, no mask, the last block only at state
tokens; evaluation of all episodes side by side (evaluate/episodes.py).

Same work on both sides: Hopper-sized tokens (11-D states, 3-D actions), the paper's model
(K = 20, 128 wide, 3 layers, 1 head, ReLU, dropout 0.1), batch 64, fp32, the same random
windows, the same number of environment steps (Hopper-v5 with ``terminate_when_unhealthy =
False``, every episode ``--episode-steps`` long). Rates are total work over total time. The
like-for-like evaluation row runs rlfm one episode at a time too.

    python benchmarks/dt_speed.py [--steps 30] [--episodes 8] [--episode-steps 200]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch

from rlfm.evaluate.episodes import policy_of, run_episodes
from rlfm.models.decision_transformer import DecisionTransformer, DTConfig

S, A, K, H, L, B = 11, 3, 20, 128, 3, 64


def windows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random windows; a quarter are short (their real steps are a prefix)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.where(
            torch.rand(B, generator=g) < 0.25, torch.randint(1, K, (B,), generator=g), K
        )
        mask = (torch.arange(K)[None] < lengths[:, None]).float()
        out.append(
            dict(
                states=torch.randn(B, K, S, generator=g) * mask[..., None],
                actions=(torch.rand(B, K, A, generator=g) * 2 - 1) * mask[..., None],
                rtg=torch.rand(B, K, generator=g) * 3 * mask,
                t=torch.randint(0, 900, (B, 1), generator=g) + torch.arange(K),
                mask=mask,
            )
        )
    return out


def rlfm_model() -> DecisionTransformer:
    torch.manual_seed(0)
    return DecisionTransformer(
        DTConfig(state_dim=S, action_dim=A, context=K, hidden=H, layers=L, heads=1, dropout=0.1)
    )


def hf_model():
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(
        state_dim=S,
        act_dim=A,
        hidden_size=H,
        max_ep_len=1000,
        n_layer=L,
        n_head=1,
        n_inner=4 * H,
        activation_function="relu",
        n_positions=1024,
        resid_pdrop=0.1,
        attn_pdrop=0.1,
        embd_pdrop=0.1,
        action_tanh=True,
    )
    return DecisionTransformerModel(cfg)


def left(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Right-padded (B, K, ...) -> left-padded (the real steps moved to the end)."""
    n = mask.sum(1).long()
    idx = (torch.arange(K)[None] - (K - n)[:, None]) % K
    return x.gather(1, idx.view(B, K, *([1] * (x.ndim - 2))).expand_as(x))


def train_rate(kind: str, data: list, warmup: int = 3) -> float:
    model = rlfm_model() if kind == "rlfm" else hf_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    if kind == "hf":  # the reference's layout: left padding with an attention mask
        data = [
            {k: left(v, d["mask"]) if k != "mask" else left(v, v) for k, v in d.items()}
            for d in data
        ]

    def step(d: dict) -> None:
        m = d["mask"]
        if kind == "rlfm":
            pred = model(d["states"], d["actions"], d["rtg"] * 1000, d["t"]).action
        else:
            pred = model(
                states=d["states"],
                actions=d["actions"],
                returns_to_go=d["rtg"][..., None],
                timesteps=d["t"],
                attention_mask=m.long(),
                return_dict=True,
            ).action_preds
        loss = ((pred - d["actions"]) ** 2 * m[..., None]).sum() / (m.sum() * A)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()

    for d in data[:warmup]:
        step(d)
    t0 = time.perf_counter()
    for d in data[warmup:]:
        step(d)
    return (len(data) - warmup) / (time.perf_counter() - t0)


def make_env():
    return gym.make("Hopper-v5", terminate_when_unhealthy=False)


def eval_rate_rlfm(episodes: int, steps: int, batched: bool) -> float:
    model = rlfm_model().eval()
    policy, window = policy_of(model)
    t0 = time.perf_counter()
    groups = [episodes] if batched else [1] * episodes
    for i, n in enumerate(groups):
        run_episodes(
            policy,
            make_env,
            [(3600.0, None)],
            n,
            state_dim=S,
            action_dim=A,
            discrete=False,
            window=window,
            seed=i,
            max_steps=steps,
        )
    return episodes / (time.perf_counter() - t0)


@torch.no_grad()
def eval_rate_hf(episodes: int, steps: int) -> float:
    """The original evaluation loop: one episode at a time, the last K steps left-padded."""
    model = hf_model().eval()
    t0 = time.perf_counter()
    for ep in range(episodes):
        env = make_env()
        obs, _ = env.reset(seed=ep)
        states = torch.as_tensor(obs, dtype=torch.float32).view(1, S)
        actions = torch.zeros(0, A)
        rtg = torch.tensor([[3.6]])
        ts = torch.zeros(1, 1, dtype=torch.long)
        for t in range(steps):
            actions = torch.cat([actions, torch.zeros(1, A)])
            s, a, r, tt = states[-K:], actions[-K:], rtg[-K:], ts[0, -K:]
            pad = K - s.shape[0]
            mask = torch.cat([torch.zeros(pad), torch.ones(s.shape[0])]).long()[None]
            out = model(
                states=torch.cat([torch.zeros(pad, S), s])[None],
                actions=torch.cat([torch.ones(pad, A) * -10.0, a])[None],
                returns_to_go=torch.cat([torch.zeros(pad, 1), r])[None],
                timesteps=torch.cat([torch.zeros(pad, dtype=torch.long), tt])[None],
                attention_mask=mask,
                return_dict=True,
            )
            act = out.action_preds[0, -1]
            actions[-1] = act
            obs, rew, *_ = env.step(act.numpy())
            states = torch.cat([states, torch.as_tensor(obs, dtype=torch.float32).view(1, S)])
            rtg = torch.cat([rtg, rtg[-1:] - rew / 1000])
            ts = torch.cat([ts, torch.tensor([[t + 1]])], dim=1)
        env.close()
    return episodes / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30, help="training steps per side")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--episode-steps", type=int, default=200)
    args = p.parse_args()
    print(f"torch threads {torch.get_num_threads()}; model K={K} h={H} L={L}, batch {B}, fp32")
    data = windows(args.steps + 3, seed=0)
    hf = train_rate("hf", data)
    ours = train_rate("rlfm", data)
    print(f"train steps/s   reference {hf:7.2f}   rlfm {ours:7.2f}   ratio {ours / hf:.2f}x")
    e_hf = eval_rate_hf(args.episodes, args.episode_steps)
    e_one = eval_rate_rlfm(args.episodes, args.episode_steps, batched=False)
    e_all = eval_rate_rlfm(args.episodes, args.episode_steps, batched=True)
    n = args.episode_steps
    print(f"eval episodes/s ({n}-step Hopper-v5 episodes, {args.episodes} episodes)")
    print(f"  reference, one at a time {e_hf:7.3f}")
    print(f"  rlfm, one at a time      {e_one:7.3f}   ratio {e_one / e_hf:.2f}x (like for like)")
    print(f"  rlfm, side by side       {e_all:7.3f}   ratio {e_all / e_hf:.2f}x")


if __name__ == "__main__":
    main()
