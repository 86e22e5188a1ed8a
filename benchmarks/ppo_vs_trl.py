"""PPO: rlfm's ``ppo`` stage against TRL's ``PPOTrainer``, and rlfm's sampling loop against
``transformers``' ``generate``.

Three measurements, side by side in one run, each contender in its own process:

**(a) Seconds per PPO update** (rollout + scoring + training) with the same randomly initialised
GPT-2 (the ``--model`` preset, default ``tiny``: 2 layers, 128 wide) as policy, reference, reward
model and value model, the same prompts (``--prompts`` prompts per update, each exactly
``--prompt-tokens`` tokens, so neither side pads), the same response length
(``--new-tokens``), one PPO epoch over one minibatch of the whole rollout, no gradient
accumulation (``--micro-batch`` sets one on both sides), fp32 on both sides (``--precision``),
temperature 0.7, top_k 0, top_p 1.

- rlfm: ``rlfm.stages.ppo.train`` (``--adapter full``, ``rollout_batch = minibatch = --prompts``,
  ``ppo_epochs 1``), in-process in its child. The reward-model directory is
  ``RewardModel.from_backbone(model).save_pretrained(...)``; the value model starts from it.
- TRL: ``trl.experimental.ppo.PPOTrainer`` (trl 1.12, the last release with PPO) with
  ``num_ppo_epochs=1, num_mini_batches=1, per_device_train_batch_size = --prompts,
  gradient_accumulation_steps=1, local_rollout_forward_batch_size = --prompts``,
  ``gradient_checkpointing=False`` (its default True recomputes activations in the backward
  pass: slower, less memory; rlfm has no checkpointing; ``--trl-gradient-checkpointing`` turns
  it on),
  ``bf16=False`` (fp32), ``num_sample_generations=0``, ``stop_token="eos"`` and a missing-EOS
  penalty as in rlfm. Policy and reference are ``AutoModelForCausalLM``, reward and value model
  ``AutoModelForSequenceClassification`` (a ``score`` head on the same backbone) loaded from the
  same directory.

An update's time is the wall time between the ends of two consecutive updates: rlfm's
``Tracker.log`` and TRL's ``on_step_end`` callback are stamped (the only instrumentation: the
child wraps them, and wraps each side's generation call to time it and count generated tokens;
no library code is changed). The first ``--warmup`` updates are not timed. rlfm's last update
(which also runs its held-out evaluation and writes the checkpoint) is run but not timed. Both
sides sample until EOS; with a randomly initialised model EOS has probability ≈ 1/vocabulary
per token, so responses are ``--new-tokens`` long up to a few tokens; the mean generated length
of each side is reported.

Work per update differs by design: rlfm recomputes the policy's log-probs of the sampled
tokens with one more forward pass (the issue requires recomputation at the training
temperature); TRL takes them from ``generate``'s scores. Everything else (reference, value and
reward forwards, one policy and one value forward + backward, an optimizer step) is the same.
TRL also calls ``gc.collect()`` twice per update; with transformers, datasets, pandas and
accelerate imported, each full collection takes a noticeable share of a small model's update.

**(b) Model memory with LoRA** = peak RSS during the timed PPO updates minus the RSS right
after imports (``/proc/self/status`` VmHWM and VmRSS), on a 6-layer, 384-wide GPT-2
(``--lora-layers``, ``--lora-width``; 6 heads of 64). rlfm ``--adapter lora`` (policy + LoRA,
reference = adapter disabled, value model = LoRA + head on the reward model's own weights: two
models' weights in memory). TRL with ``peft_config=LoraConfig(...)`` (same rank, alpha and target
modules as rlfm's policy adapter: GPT-2's ``c_attn`` and ``attn.c_proj``): its reference is the
adapter-disabled policy, but it still loads a separate reward model and a full, fully trained
value model (with its gradients and Adam moments). Both children import the same libraries
(torch, transformers' GPT-2 classes, peft, and their own trainer) before the baseline is read.
The rollout batch is ``--prompts`` as in (a), but both sides train in micro-batches of
``--lora-micro-batch`` (default 4; TRL: ``per_device_train_batch_size`` 4 with gradient
accumulation over the rollout): the saved activations of a backward pass grow with the
micro-batch, the models' weights, gradients and optimizer moments do not, and this part is about
the latter. ``--lora-micro-batch 32`` shows the whole-batch figure (activations then dominate
both sides). The (b) children run with ``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves
every block of 128 KiB or more (every tensor that matters) with its own ``mmap`` and returns it to
the kernel when freed, so RSS follows the memory actually in use. With glibc's default (a
threshold that moves up after large frees, so later tensors come from a fragmenting heap) the
same peak varied by ±10% from one round to the next (351–430 MiB for rlfm), against
±0.1 MiB with the fixed threshold. ``--default-malloc`` keeps glibc's default. Parts (a) and
(c) measure time and keep the default allocator.

**(c) Generation tokens/s**: ``rlfm.rollout.sample`` (KV cache) against
``model.generate(do_sample=True, temperature, top_k=0, top_p=1.0)`` on the ``--model`` model,
same batch of prompts, same ``--new-tokens``, in no-grad mode. Lengths are forced equal: both
sides are told no EOS (rlfm ``eos_token_id=-1``, an id never sampled; ``generate`` with the
model's ``generation_config.eos_token_id = None``, so it also runs no min-length processor), and
the script checks that every row got exactly ``--new-tokens`` tokens.

Noise: the machine is shared, so every measurement is repeated over ``--rounds`` rounds, the
contenders interleaved (the order reverses every other round), and the **median** over all
timed updates / calls of all rounds is reported (with the spread). Child CPU time (user + sys)
per update is reported too: it is less disturbed by other work than wall time. Each child runs
with one OpenMP thread (``--threads``, default 1): on a 2-core machine shared with other jobs,
two threads per process spend most of their time waiting for each other at every operator
(measured here: the same PPO update took 7 to 21 s with two threads against 1.4 to 1.5 s
with one), which buries any difference between the contenders; ``--threads 0`` keeps torch's
default.

TRL 1.12 with transformers 5.24: ``PPOTrainer`` runs as is in fp32. Its ``bf16=True`` does not
reach the computation: the trainer builds its own ``Accelerator()`` without a
``mixed_precision`` argument, and transformers 5 no longer exports
``ACCELERATE_MIXED_PRECISION`` from ``TrainingArguments``, so the accelerator runs fp32. With
``--precision bf16`` the TRL child sets ``ACCELERATE_MIXED_PRECISION=bf16`` itself (a shim, so
that both sides really use bf16 autocast) and reports the accelerator's precision.

Run (from the repository root, after ``pip install -e '.[bench]'``):
    python benchmarks/ppo_vs_trl.py                          # (a), (b), (c); about 6 minutes
    python benchmarks/ppo_vs_trl.py --parts a c --rounds 3 --json runs/bench/ppo.json
    python benchmarks/ppo_vs_trl.py --parts b --lora-micro-batch 32   # whole-batch memory
Targets (issue 5): ≥ 2× TRL's updates/s; with LoRA ≤ 0.6× TRL's model memory;
≥ 1.5× ``generate``'s tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import run_child, table  # noqa: E402

TEMPERATURE = 0.7
MMAP_THRESHOLD = 128 * 1024
"""Bytes from which glibc serves an allocation with its own mmap in the (b) children."""
LORA_TARGETS = ["c_attn", "attn.c_proj"]
"""rlfm's default LoRA targets for GPT-2 (``models.adapters.default_lora_targets``)."""


# ---------------------------------------------------------------------------- memory / time


def proc_status_mib(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def stamp() -> dict[str, float]:
    """Wall clock, this process's CPU time and its peak RSS so far."""
    return {
        "wall": time.perf_counter(),
        "cpu": time.process_time(),
        "hwm": proc_status_mib("VmHWM"),
    }


# ---------------------------------------------------------------------------- assets


def corpus_texts() -> list[str]:
    """Training texts for the tokenizer and the prompts: the built-in corpus (cached by
    ``rlfm pretrain``), else synthetic sentences."""
    try:
        from rlfm.data.corpora import load_builtin_corpus

        return [d.text for d in load_builtin_corpus().train]
    except Exception:  # no corpus here: any text will do for a speed benchmark
        rng = random.Random(0)
        words = ["good", "my", "lord", "sir", "thanks", "noble", "pray", "the", "moon", "love"]
        return [
            "\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000))
            for _ in range(4)
        ]


def save_model(cfg, tok, directory: Path, rm_directory: Path | None) -> None:
    """A randomly initialised model (seed 0) + tokenizer, and optionally its reward-model dir."""
    from rlfm.models.heads import RewardModel
    from rlfm.models.presets import build_model
    from rlfm.models.tokenizer import save_tokenizer

    build_model(cfg, seed=0).save_pretrained(directory)
    save_tokenizer(tok, directory)
    if rm_directory is not None:
        RewardModel.from_backbone(directory, seed=0).save_pretrained(rm_directory)


def make_assets(root: Path, a: argparse.Namespace) -> dict:
    """Tokenizer, the two models (+ reward-model directories) and the prompt set."""
    from rlfm.models.presets import model_config
    from rlfm.models.tokenizer import train_bpe_tokenizer

    texts = corpus_texts()
    tok = train_bpe_tokenizer(texts, a.vocab)
    ids_kw = dict(
        vocab_size=len(tok),
        context=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    small = model_config(a.model, **ids_kw)
    save_model(small, tok, root / "model", root / "rm")
    lora = model_config("small", **ids_kw)  # GPT-2 family; the shape is set below
    lora.n_layer, lora.n_embd, lora.n_head = a.lora_layers, a.lora_width, a.lora_width // 64
    save_model(lora, tok, root / "model-lora", root / "rm-lora")

    # prompts of exactly --prompt-tokens tokens that encode back to the same ids
    ids = tok("\n".join(texts), add_special_tokens=False)["input_ids"]
    n_want, L = 2 * a.prompts, a.prompt_tokens
    prompts: list[tuple[str, list[int]]] = []
    step = max(L, (len(ids) - L) // (4 * n_want))
    for start in range(0, len(ids) - L, step):
        window = ids[start : start + L]
        text = tok.decode(window)
        if tok(text, add_special_tokens=False)["input_ids"] == window and text.strip():
            prompts.append((text, window))
        if len(prompts) == n_want:
            break
    if len(prompts) < n_want:
        sys.exit(f"could only cut {len(prompts)} prompts of {L} tokens; lower --prompt-tokens")
    file = root / "prompts.jsonl"
    file.write_text("".join(json.dumps({"prompt": t}) + "\n" for t, _ in prompts))
    return {
        "model": str(root / "model"),
        "rm": str(root / "rm"),
        "model_lora": str(root / "model-lora"),
        "rm_lora": str(root / "rm-lora"),
        "prompts_file": str(file),
        "prompt_ids": [w for _, w in prompts],
        "vocab": len(tok),
        "pad": tok.pad_token_id,
        "eos": tok.eos_token_id,
    }


# ---------------------------------------------------------------------------- children


def import_common() -> None:
    """Imports both PPO children make before the baseline RSS is read."""
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        GPT2ForSequenceClassification,
        GPT2LMHeadModel,
    )


def child_rlfm_ppo(spec: dict) -> dict:
    """rlfm's PPO stage in this process; per-update stamps and generation timings."""
    import_common()
    import matplotlib.pyplot  # noqa: F401  (imported by the stage at its end)

    from rlfm import rollout, run
    from rlfm.data import labelers, prompts  # noqa: F401  (imported lazily by the stage)
    from rlfm.evaluate import plots  # noqa: F401
    from rlfm.stages import ppo

    rss0 = proc_status_mib("VmRSS")
    stamps: list[dict] = []
    gens: list[dict] = []

    class StampingTracker(run.Tracker):
        def log(self, step, metrics, *, show=True):
            if step == 0:  # the SFT policy's evaluation before update 1: not an update
                gens.clear()
            else:
                stamps.append(stamp())  # the update is complete when its row is logged
            super().log(step, metrics, show=show)

    real_sample = rollout.sample

    def timed_sample(*args, **kwargs):
        t0 = time.perf_counter()
        s = real_sample(*args, **kwargs)
        gens.append(
            {
                "s": time.perf_counter() - t0,
                "length": float(s.response_mask.sum(1).float().mean()),
                "eos": float(s.ended.float().mean()),
            }
        )
        return s

    run.Tracker, rollout.sample = StampingTracker, timed_sample
    n = spec["updates"] + 1  # the last update also evaluates and saves: not timed
    ppo.train(
        ppo.Config(
            policy=Path(spec["model"]),
            reward=Path(spec["rm"]),
            out=Path(spec["out"]),
            prompts=Path(spec["prompts_file"]),
            val_fraction=0.1,
            adapter=spec["adapter"],
            lora_r=spec["lora_r"],
            updates=n,
            rollout_batch=spec["batch"],
            minibatch=spec["batch"],
            micro_batch_size=spec["micro_batch"],
            ppo_epochs=1,
            max_prompt_tokens=spec["prompt_tokens"],
            max_new_tokens=spec["new_tokens"],
            temperature=TEMPERATURE,
            eval_every=n,
            save_every=n,
            precision=spec["precision"],
            device="cpu",
            seed=0,
        )
    )
    return {"rss_after_imports": rss0, "stamps": stamps[: spec["updates"]], "gens": gens}


def child_trl_ppo(spec: dict) -> dict:
    """TRL's PPOTrainer in this process; per-update stamps and generation timings."""
    if spec["precision"] == "bf16":  # shim: see the module docstring
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    import_common()
    import accelerate  # noqa: F401
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    rss0 = proc_status_mib("VmRSS")
    stamps: list[dict] = []
    gens: list[dict] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(stamp())

    real_generation = trl_ppo.batch_generation

    def timed_generation(model, queries, *args, **kwargs):
        t0 = time.perf_counter()
        query_responses, logits = real_generation(model, queries, *args, **kwargs)
        dt = time.perf_counter() - t0
        response = query_responses[:, queries.shape[1] :]
        R = response.shape[1]
        is_eos = response == spec["eos"]
        ended = is_eos.any(1)
        length = torch.where(
            ended, is_eos.float().argmax(1) + 1, torch.full(ended.shape, R, dtype=torch.long)
        )
        gens.append(
            {"s": dt, "length": float(length.float().mean()), "eos": float(ended.float().mean())}
        )
        return query_responses, logits

    trl_ppo.batch_generation = timed_generation
    torch.manual_seed(0)
    d = spec["model"]
    tok = AutoTokenizer.from_pretrained(d)
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    lora = spec["adapter"] == "lora"
    ref = None if lora else AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(
        d, num_labels=1, dtype=torch.float32
    )
    value = AutoModelForSequenceClassification.from_pretrained(d, num_labels=1, dtype=torch.float32)
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    B, n = spec["batch"], spec["updates"]
    micro = spec["micro_batch"] or B
    ds = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    args = PPOConfig(
        output_dir=str(Path(spec["out"])),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=B // micro,
        num_mini_batches=1,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=B,
        total_episodes=B * n,
        response_length=spec["new_tokens"],
        temperature=TEMPERATURE,
        stop_token="eos",
        missing_eos_penalty=1.0,
        kl_coef=0.05,
        learning_rate=1e-5,
        bf16=spec["precision"] == "bf16",
        use_cpu=True,
        gradient_checkpointing=spec["trl_checkpointing"],
        num_sample_generations=0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        seed=0,
    )
    peft_config = (
        LoraConfig(
            r=spec["lora_r"],
            lora_alpha=2.0 * spec["lora_r"],
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            fan_in_fan_out=True,  # GPT-2's Conv1D, as rlfm's add_lora sets it
            task_type="CAUSAL_LM",
        )
        if lora
        else None
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=ds,
        callbacks=[Stamp()],
        peft_config=peft_config,
    )
    precision = str(trainer.accelerator.mixed_precision)
    trainer.train()
    return {
        "rss_after_imports": rss0,
        "stamps": stamps,
        "gens": gens,
        "accelerator_precision": precision,
    }


def child_generation(spec: dict) -> dict:
    """rlfm.rollout.sample or model.generate, ``reps`` timed calls after one warm-up call."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    from rlfm.rollout import sample

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).eval()
    ids = torch.tensor(spec["prompt_ids"][: spec["batch"]])
    mask = torch.ones_like(ids)
    B, P, R = ids.shape[0], ids.shape[1], spec["new_tokens"]
    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if spec["precision"] == "bf16"
        else contextlib.nullcontext
    )
    if spec["impl"] == "rlfm":

        def run() -> int:
            s = sample(
                model,
                ids,
                mask,
                max_new_tokens=R,
                eos_token_id=-1,  # never sampled: every row runs R tokens
                pad_token_id=spec["pad"],
                temperature=TEMPERATURE,
                top_k=0,
                top_p=1.0,
            )
            return int(s.response_mask.sum())

    else:
        model.generation_config.eos_token_id = None  # no EOS: every row runs R tokens

        def run() -> int:
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=TEMPERATURE,
                top_k=0,
                top_p=1.0,
                max_new_tokens=R,
                pad_token_id=spec["pad"],
            )
            return int(out.shape[0] * (out.shape[1] - P))

    times, cpus = [], []
    with torch.no_grad(), ctx():
        run()  # warm-up
        for _ in range(spec["reps"]):
            s0 = stamp()
            n_tokens = run()
            s1 = stamp()
            if n_tokens != B * R:
                raise RuntimeError(f"{spec['impl']}: {n_tokens} tokens generated, {B * R} expected")
            times.append(s1["wall"] - s0["wall"])
            cpus.append(s1["cpu"] - s0["cpu"])
    return {"tokens": B * R, "times": times, "cpu": cpus}


CHILDREN = {"rlfm-ppo": child_rlfm_ppo, "trl-ppo": child_trl_ppo, "gen": child_generation}


def run_spec(
    root: Path, name: str, spec: dict, threads: int, timeout_s: float, extra_env: dict[str, str]
) -> dict:
    """Run one child; its result dict plus ``peak_rss_mib`` (wait4) and ``log``, or ``error``."""
    spec = dict(spec, result=str(root / f"{name}.result.json"), out=str(root / f"{name}-out"))
    spec_file = root / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env |= extra_env
    res = run_child(
        [sys.executable, __file__, "--child", str(spec_file)],
        root / f"{name}.log",
        env=env,
        timeout_s=timeout_s,
    )
    out = {"log": str(res.log), "peak_rss_mib": res.peak_rss_mib, "wall_s": res.wall_s}
    if res.returncode != 0 or not Path(spec["result"]).is_file():
        out["error"] = f"exit status {res.returncode}:\n{res.tail(25)}"
        print(f"  {name} FAILED ({res.returncode}); log: {res.log}\n{res.tail(15)}", flush=True)
        return out
    return out | json.loads(Path(spec["result"]).read_text())


# ---------------------------------------------------------------------------- analysis


def ppo_samples(res: dict, warmup: int) -> dict:
    """Per-update wall and CPU seconds and generation figures of the timed updates."""
    st = res["stamps"]
    wall = [st[k]["wall"] - st[k - 1]["wall"] for k in range(warmup, len(st))]
    cpu = [st[k]["cpu"] - st[k - 1]["cpu"] for k in range(warmup, len(st))]
    gens = res["gens"][warmup : len(st)]
    return {
        "wall": wall,
        "cpu": cpu,
        "gen": [g["s"] for g in gens],
        "length": [g["length"] for g in gens],
        "eos": [g["eos"] for g in gens],
        "peak_mib": st[-1]["hwm"],
        "model_mib": st[-1]["hwm"] - res["rss_after_imports"],
        "rss_after_imports_mib": res["rss_after_imports"],
    }


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float]) -> str:
    return f"{min(xs):.2f}–{max(xs):.2f}" if xs else "-"


def pool(rounds: list[dict], key: str) -> list[float]:
    return [x for r in rounds for x in (r[key] if isinstance(r[key], list) else [r[key]])]


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (≥ 2)")
    p.add_argument("--prompts", type=int, default=32, help="prompts per PPO update / gen batch")
    p.add_argument("--prompt-tokens", type=int, default=24, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per response")
    p.add_argument("--updates", type=int, default=3, help="timed PPO updates per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed first PPO updates per run")
    p.add_argument("--model", default="tiny", help="rlfm preset of the (a)/(c) model")
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--lora-layers", type=int, default=6, help="layers of the (b) model")
    p.add_argument("--lora-width", type=int, default=384, help="width of the (b) model")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank on both sides")
    p.add_argument("--lora-updates", type=int, default=1, help="timed PPO updates in (b)")
    p.add_argument("--gen-reps", type=int, default=3, help="timed generate calls per run in (c)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--micro-batch", type=int, default=None, help="(a) micro-batch (default: all)")
    p.add_argument("--lora-micro-batch", type=int, default=4, help="(b) micro-batch, both sides")
    p.add_argument(
        "--trl-gradient-checkpointing", action="store_true", help="TRL's default (off here)"
    )
    p.add_argument("--threads", type=int, default=1, help="OMP threads per child (0: torch's)")
    p.add_argument(
        "--default-malloc", action="store_true", help="(b) without the fixed mmap threshold"
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per child at most")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        spec = json.loads(a.child.read_text())
        result = CHILDREN[spec["kind"]](spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return
    if a.rounds < 1 or a.warmup < 1 or a.updates < 1 or a.lora_updates < 1:
        p.error("--rounds, --warmup, --updates and --lora-updates must be ≥ 1")
    for flag, mb in (("--micro-batch", a.micro_batch), ("--lora-micro-batch", a.lora_micro_batch)):
        if mb is not None and (mb < 1 or a.prompts % mb):
            p.error(f"{flag} {mb} must divide --prompts {a.prompts}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    import trl

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    print(f"building tokenizer, models and prompts in {root} ...", flush=True)
    assets = make_assets(root, a)
    common = {
        "prompt_ids": assets["prompt_ids"][: a.prompts],
        "prompts_file": assets["prompts_file"],
        "batch": a.prompts,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "precision": a.precision,
        "lora_r": a.lora_r,
        "trl_checkpointing": a.trl_gradient_checkpointing,
        "pad": assets["pad"],
        "eos": assets["eos"],
    }
    jobs: dict[str, list[tuple[str, dict]]] = {}
    if "a" in a.parts:
        spec = common | {"model": assets["model"], "rm": assets["rm"], "adapter": "full"}
        spec |= {"updates": a.warmup + a.updates, "micro_batch": a.micro_batch}
        jobs["a"] = [("rlfm", spec | {"kind": "rlfm-ppo"}), ("trl", spec | {"kind": "trl-ppo"})]
    if "b" in a.parts:
        spec = common | {"model": assets["model_lora"], "rm": assets["rm_lora"], "adapter": "lora"}
        spec |= {"updates": a.warmup + a.lora_updates, "micro_batch": a.lora_micro_batch}
        jobs["b"] = [("rlfm", spec | {"kind": "rlfm-ppo"}), ("trl", spec | {"kind": "trl-ppo"})]
    if "c" in a.parts:
        spec = common | {"kind": "gen", "model": assets["model"], "reps": a.gen_reps}
        jobs["c"] = [("rlfm", spec | {"impl": "rlfm"}), ("hf", spec | {"impl": "hf"})]

    part_env = {} if a.default_malloc else {"b": {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}}
    raw: dict[str, dict[str, list[dict]]] = {part: {} for part in jobs}
    for r in range(a.rounds):
        for part, contenders in jobs.items():
            order = contenders if r % 2 == 0 else contenders[::-1]
            for name, spec in order:
                label = f"{part}-{name}-r{r}"
                t0 = time.perf_counter()
                res = run_spec(root, label, spec, a.threads, a.timeout, part_env.get(part, {}))
                raw[part].setdefault(name, []).append(res)
                dt = time.perf_counter() - t0
                print(
                    f"  round {r + 1}/{a.rounds}  ({part}) {name}: {dt:.0f} s",
                    flush=True,
                )

    results: dict = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "settings": vars(a) | {"json": str(a.json), "child": None},
        "raw": raw,
    }
    print(
        f"\nPPO benchmark, CPU ({os.cpu_count()} cores, shared), {a.precision}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}"
    )
    print(
        f"{a.prompts} prompts x {a.prompt_tokens} tokens, {a.new_tokens} new tokens, "
        f"temperature {TEMPERATURE}; {a.threads or 'default'} thread(s) per process; medians over "
        f"{a.rounds} interleaved rounds (the machine is shared: absolute figures drift, read the "
        "ratios)"
    )
    verdicts: list[str] = []

    # ---- (a)
    if "a" in jobs:
        summary, rows = {}, []
        for name in ("rlfm", "trl"):
            ok = [ppo_samples(x, a.warmup) for x in raw["a"][name] if "error" not in x]
            if not ok:
                summary[name] = None
                rows.append([name, "failed", "", "", "", "", "", ""])
                continue
            wall, cpu, gen = pool(ok, "wall"), pool(ok, "cpu"), pool(ok, "gen")
            s = {
                "s_per_update": med(wall),
                "updates_per_s": 1 / med(wall),
                "cpu_s_per_update": med(cpu),
                "gen_s_per_update": med(gen),
                "mean_length": statistics.mean(pool(ok, "length")),
                "peak_rss_mib": med(pool(ok, "peak_mib")),
                "model_mib": med(pool(ok, "model_mib")),
                "n_updates": len(wall),
            }
            summary[name] = s
            rows.append([
                "rlfm ppo" if name == "rlfm" else "TRL PPOTrainer",
                f"{s['s_per_update']:.2f} ({spread(wall)})",
                f"{s['updates_per_s']:.3f}",
                f"{s['cpu_s_per_update']:.2f}",
                f"{s['gen_s_per_update']:.2f}",
                f"{s['mean_length']:.1f}",
                f"{s['peak_rss_mib']:,.0f}",
                f"{s['model_mib']:,.0f}",
            ])  # fmt: skip
        print(
            "\n(a) one PPO update (rollout + scoring + training), full fine-tuning, "
            f"{a.model} preset "
            f"for policy, reference, reward and value model; 1 epoch, 1 minibatch of {a.prompts}, "
            f"micro-batch {a.micro_batch or a.prompts}; {a.updates} timed updates per run after "
            f"{a.warmup} warm-up"
        )
        print(table(
            ["contender", "s/update (range)", "updates/s", "CPU s/upd", "gen s/upd", "gen len",
             "peak MiB", "model MiB"],
            rows,
        ))  # fmt: skip
        if summary.get("rlfm") and summary.get("trl"):
            ratio = summary["rlfm"]["updates_per_s"] / summary["trl"]["updates_per_s"]
            cpu_ratio = summary["trl"]["cpu_s_per_update"] / summary["rlfm"]["cpu_s_per_update"]
            summary["speedup"], summary["cpu_speedup"] = ratio, cpu_ratio
            line = f"updates/s rlfm / TRL = {ratio:.2f}x  (target >= 2x: {verdict(ratio >= 2)})"
            print(f"{line}; by CPU time {cpu_ratio:.2f}x")
            verdicts.append(f"(a) {line}")
        results["a"] = summary

    # ---- (b)
    if "b" in jobs:
        summary, rows = {}, []
        for name in ("rlfm", "trl"):
            ok = [ppo_samples(x, a.warmup) for x in raw["b"][name] if "error" not in x]
            if not ok:
                summary[name] = None
                rows.append([name, "failed", "", "", "", ""])
                continue
            s = {
                "rss_after_imports_mib": med(pool(ok, "rss_after_imports_mib")),
                "peak_rss_mib": med(pool(ok, "peak_mib")),
                "model_mib": med(pool(ok, "model_mib")),
                "s_per_update": med(pool(ok, "wall")),
                "mean_length": statistics.mean(pool(ok, "length")),
            }
            summary[name] = s
            rows.append([
                "rlfm ppo --adapter lora" if name == "rlfm" else "TRL PPOTrainer + peft LoRA",
                f"{s['rss_after_imports_mib']:,.0f}",
                f"{s['peak_rss_mib']:,.0f}",
                f"{s['model_mib']:,.0f} ({spread(pool(ok, 'model_mib'))})",
                f"{s['s_per_update']:.2f}",
                f"{s['mean_length']:.1f}",
            ])  # fmt: skip
        print(
            f"\n(b) LoRA r={a.lora_r}, GPT-2 {a.lora_layers} layers x {a.lora_width} wide, rollout "
            f"batch {a.prompts}, micro-batch {a.lora_micro_batch}; model memory = peak RSS during "
            "the PPO updates - RSS right after imports"
            + ("" if a.default_malloc else " (glibc mmap threshold fixed at 128 KiB)")
        )
        print(table(
            ["contender", "after imports MiB", "peak MiB", "model MiB (range)", "s/update",
             "gen len"],
            rows,
        ))  # fmt: skip
        if summary.get("rlfm") and summary.get("trl"):
            ratio = summary["rlfm"]["model_mib"] / summary["trl"]["model_mib"]
            summary["memory_ratio"] = ratio
            line = (
                f"model memory rlfm / TRL = {ratio:.2f}x  (target <= 0.6x: {verdict(ratio <= 0.6)})"
            )
            print(line)
            verdicts.append(f"(b) {line}")
        results["b"] = summary

    # ---- (c)
    if "c" in jobs:
        summary, rows = {}, []
        for name in ("rlfm", "hf"):
            ok = [x for x in raw["c"][name] if "error" not in x]
            if not ok:
                summary[name] = None
                rows.append([name, "failed", "", ""])
                continue
            rates = [x["tokens"] / t for x in ok for t in x["times"]]
            cpu_rates = [x["tokens"] / t for x in ok for t in x["cpu"]]
            s = {
                "tokens_per_s": med(rates),
                "tokens_per_cpu_s": med(cpu_rates),
                "n_calls": len(rates),
            }
            summary[name] = s
            rows.append([
                "rlfm.rollout.sample" if name == "rlfm" else "model.generate",
                f"{s['tokens_per_s']:,.0f} ({min(rates):,.0f}–{max(rates):,.0f})",
                f"{s['tokens_per_cpu_s']:,.0f}",
                str(len(rates)),
            ])  # fmt: skip
        print(
            f"\n(c) generation, {a.model} preset, batch {a.prompts}, {a.prompt_tokens} prompt + "
            f"{a.new_tokens} new tokens per row (no EOS on either side)"
        )
        print(table(["contender", "tokens/s (range)", "tokens/CPU-s", "calls"], rows))
        if summary.get("rlfm") and summary.get("hf"):
            ratio = summary["rlfm"]["tokens_per_s"] / summary["hf"]["tokens_per_s"]
            cpu_ratio = summary["rlfm"]["tokens_per_cpu_s"] / summary["hf"]["tokens_per_cpu_s"]
            summary["speedup"], summary["cpu_speedup"] = ratio, cpu_ratio
            ok_c = verdict(ratio >= 1.5)
            line = f"tokens/s rlfm / generate = {ratio:.2f}x  (target >= 1.5x: {ok_c})"
            print(f"{line}; by CPU time {cpu_ratio:.2f}x")
            verdicts.append(f"(c) {line}")
        results["c"] = summary

    print("\nsummary (medians over all rounds):\n  " + "\n  ".join(verdicts or ["no ratios"]))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2, default=str))
        print(f"results written to {a.json}")
    failed = any("error" in x for part in raw.values() for runs in part.values() for x in runs)
    if not a.keep and not failed:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"child logs kept in {root}")


if __name__ == "__main__":
    main()
