"""PPO: rlfm's ``ppo`` stage against TRL's ``PPOTrainer``, and rlfm's sampling loop against
``transformers``' ``generate``.

Three measurements, side by side in one run, each contender in its own process, at the
``--size`` model (default ``small``):

**(a) PPO updates/s, full fine-tuning, like-for-like.** The same randomly initialised GPT-2 as
policy, reference, reward model and value model, the same prompts (``--prompts`` per update,
each exactly ``--prompt-tokens`` tokens, so neither side pads), the same response length
(``--new-tokens``), **4 PPO epochs** (``--epochs``; TRL's default ``num_ppo_epochs``) over one
minibatch of the whole rollout (TRL's default ``num_mini_batches=1``), no gradient
accumulation, the same precision on both sides (``--precision``, default fp32: see below),
temperature 0.7, top_k 0, top_p 1, torch's default thread count (``--threads`` to change it).

- rlfm: ``rlfm.stages.ppo.train`` (``rollout_batch = minibatch = --prompts``,
  ``ppo_epochs = --epochs``), in-process in its child. The reward-model directory is
  ``RewardModel.from_backbone(model).save_pretrained(...)``; the value model starts from it.
- TRL: ``trl.experimental.ppo.PPOTrainer`` (trl 1.12, the last release with PPO) with
  ``num_ppo_epochs = --epochs, num_mini_batches=1, per_device_train_batch_size = --prompts,
  gradient_accumulation_steps=1, local_rollout_forward_batch_size = --prompts`` (one batched
  forward per rollout pass: its fastest), ``gradient_checkpointing=False`` (its default True
  recomputes activations), ``num_sample_generations=0``, ``stop_token="eos"`` and a missing-EOS
  penalty as in rlfm. Policy and reference are ``AutoModelForCausalLM``, reward and value
  model ``AutoModelForSequenceClassification`` loaded from the same directory.

updates/s = timed updates ÷ the time from the end of the last warm-up update to the end of the
last timed one (total work over total time), median over the rounds. The end of an update is
the end of its last optimizer step, stamped by the same global optimizer post-step hook as
every other benchmark (``_common.StepStamps``); rlfm's ``Tracker.log`` and TRL's
``on_step_end`` only say which optimizer step was an update's last. rlfm's last update (which also evaluates
and saves) is run but not timed. Work per update differs in one place by design: rlfm
recomputes the policy's log-probs of the sampled tokens with one more forward pass (log-probs
at the training temperature, from the training-mode forward); TRL takes them from
``generate``'s scores. TRL also calls ``gc.collect()`` twice per update.

**(b) LoRA.** The same model and batch, both policies with the same peft ``LoraConfig`` (rank
``--lora-r``, α = 2r, GPT-2's ``c_attn`` and ``attn.c_proj``); both train in micro-batches of
``--lora-micro-batch`` (TRL: gradient accumulation over the rollout), so the figure is about
weights, gradients and optimizer moments rather than activations.
- **like-for-like**: the value model is a LoRA adapter + scalar head on both sides. rlfm
  ``--adapter lora`` (reference = adapter disabled; value model = LoRA + head on the reward
  model's own, frozen weights); TRL with ``peft_config`` for the policy and a value model that
  is itself a peft ``SEQ_CLS`` LoRA model (same rank and targets, trainable head): the
  adapter-disabled policy as reference, and a separate reward model, as TRL loads it.
- **recipe vs recipe**: TRL's own recipe, ``peft_config`` for the policy and a full, fully
  trained value model (with its gradients and Adam moments), against rlfm's.
Model memory = peak RSS during the run above the RSS right after imports (``_common``:
``MemoryAboveImports``). The (b) children run with ``MALLOC_MMAP_THRESHOLD_=131072`` on both
sides: glibc then serves every block of 128 KiB or more with its own ``mmap`` and returns it
when freed, so RSS follows the memory in use (with glibc's default threshold the same peak
varied by ±10% from round to round). ``--default-malloc`` keeps glibc's default.

**(c) Generation tokens/s**: ``rlfm.rollout.sample`` (KV cache) against
``model.generate(do_sample=True, temperature, top_k=0, top_p=1.0)`` (KV cache, its default) on
the ``--size`` model, same batch of prompts, same ``--new-tokens``, no-grad, the same precision.
Lengths are forced equal: neither side may stop at EOS (rlfm ``eos_token_id=-1``, ``generate``
with ``generation_config.eos_token_id = None``), and the script checks every row got exactly
``--new-tokens`` tokens. tokens/s = all tokens of the timed calls ÷ their total time.

Precision: TRL 1.12's ``PPOTrainer`` builds its own ``Accelerator()`` without a
``mixed_precision`` argument, and transformers 5 no longer exports
``ACCELERATE_MIXED_PRECISION`` from ``TrainingArguments``, so its ``bf16=True`` does not reach
the computation: as its users run it, it computes in fp32, hence fp32 on both sides by default.
With ``--precision bf16`` the TRL child sets ``ACCELERATE_MIXED_PRECISION=bf16`` itself (so that
both sides really use bf16 autocast) and reports the accelerator's precision.

Every contender runs ``--rounds`` times (default 2), interleaved (the order reverses every other
round); tables give the median round and the range.

Run (from the repository root, after ``bash scripts/setup.sh dev,bench``):
    python benchmarks/ppo_vs_trl.py                          # (a), (b), (c) on the small size
    python benchmarks/ppo_vs_trl.py --parts c --size 100m --json out.json
Targets (issue 15): ≥ 2× TRL's updates/s on the small size at 4 epochs; like-for-like LoRA
model memory ≤ 0.8× TRL's; generation ≥ 2× ``generate``'s tokens/s on the ~100M model.
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
from _common import (  # noqa: E402
    SIZES,
    MemoryAboveImports,
    StepStamps,
    print_rows,
    proc_status_mib,
    result_row,
    run_child,
    size_config,
    write_rows,
)

TEMPERATURE = 0.7
MMAP_THRESHOLD = 128 * 1024
"""Bytes from which glibc serves an allocation with its own mmap in the (b) children."""
LORA_TARGETS = ["c_attn", "attn.c_proj"]
"""rlfm's default LoRA targets for GPT-2 (``models.adapters.default_lora_targets``)."""


# ---------------------------------------------------------------------------- memory / time


def stamp() -> dict[str, float]:
    """Wall clock, this process's CPU time and its peak RSS so far."""
    return {
        "wall": time.perf_counter(),
        "cpu": time.process_time(),
        "hwm": proc_status_mib("VmHWM"),  # peak RSS so far
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
    from rlfm.models.tokenizer import train_bpe_tokenizer

    texts = corpus_texts()
    tok = train_bpe_tokenizer(texts, SIZES[a.size].vocab)
    save_model(size_config(a.size, tok), tok, root / "model", root / "rm")

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

    rss0 = MemoryAboveImports().baseline
    opt = StepStamps()
    stamps: list[dict] = []
    gens: list[dict] = []

    class StampingTracker(run.Tracker):
        def log(self, step, metrics, *, show=True):
            if step == 0:  # the SFT policy's evaluation before update 1: not an update
                gens.clear()
            else:
                stamps.append(update_stamp(opt))  # the update is complete when its row is logged
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
            ppo_epochs=spec["epochs"],
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


def update_stamp(opt: StepStamps) -> dict[str, float]:
    """The end of the update just completed: the time of its last optimizer step (the shared
    hook, ``_common.StepStamps``), this process's CPU time and peak RSS so far."""
    if not opt.ends:
        raise RuntimeError("an update ended without an optimizer step")
    return stamp() | {"wall": opt.ends[-1], "optimizer_steps": len(opt.ends)}


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

    rss0 = MemoryAboveImports().baseline
    opt = StepStamps()
    stamps: list[dict] = []
    gens: list[dict] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(update_stamp(opt))

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
    if spec.get("trl_value") == "lora":  # like-for-like: the value model is a LoRA adapter too
        from peft import get_peft_model

        value_lora = LoraConfig(
            r=spec["lora_r"],
            lora_alpha=2.0 * spec["lora_r"],
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            fan_in_fan_out=True,
            task_type="SEQ_CLS",  # the score head stays trainable (modules_to_save)
        )
        value = get_peft_model(value, value_lora)
    B, n = spec["batch"], spec["updates"]
    micro = spec["micro_batch"] or B
    ds = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    args = PPOConfig(
        output_dir=str(Path(spec["out"])),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=B // micro,
        num_mini_batches=1,
        num_ppo_epochs=spec["epochs"],
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


# ---------------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--parts", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    p.add_argument("--size", choices=list(SIZES), default="small", help="model size")
    p.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (≥ 2)")
    p.add_argument("--prompts", type=int, default=32, help="prompts per PPO update / gen batch")
    p.add_argument("--prompt-tokens", type=int, default=24, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per response")
    p.add_argument("--epochs", type=int, default=4, help="PPO epochs per update (both sides)")
    p.add_argument("--updates", type=int, default=3, help="timed PPO updates per run")
    p.add_argument("--warmup", type=int, default=1, help="untimed first PPO updates per run")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank on both sides")
    p.add_argument("--lora-updates", type=int, default=1, help="timed PPO updates in (b)")
    p.add_argument("--gen-reps", type=int, default=3, help="timed generate calls per run in (c)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--micro-batch", type=int, default=None, help="(a) micro-batch (default: all)")
    p.add_argument("--lora-micro-batch", type=int, default=4, help="(b) micro-batch, both sides")
    p.add_argument(
        "--trl-gradient-checkpointing", action="store_true", help="TRL's default (off here)"
    )
    p.add_argument("--threads", type=int, default=0, help="OMP threads per child (0: torch's)")
    p.add_argument(
        "--default-malloc", action="store_true", help="(b) without the fixed mmap threshold"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child at most")
    p.add_argument("--json", type=Path, default=None, help="write all results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    return p


def common_spec(a: argparse.Namespace, assets: dict) -> dict:
    """What every child of a run gets: the model, prompts and shape from the command line."""
    return {
        "prompt_ids": assets["prompt_ids"][: a.prompts],
        "prompts_file": assets["prompts_file"],
        "batch": a.prompts,
        "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens,
        "precision": a.precision,
        "lora_r": a.lora_r,
        "epochs": a.epochs,
        "trl_checkpointing": a.trl_gradient_checkpointing,
        "pad": assets["pad"],
        "eos": assets["eos"],
        "model": assets["model"],
        "rm": assets["rm"],
    }


def full_ppo_spec(a: argparse.Namespace, assets: dict) -> dict:
    """Part (a): full fine-tuning, ``a.warmup + a.updates`` updates (add ``kind``)."""
    spec = common_spec(a, assets) | {"adapter": "full", "micro_batch": a.micro_batch}
    return spec | {"updates": a.warmup + a.updates}


def main() -> None:
    p = parser()
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
    import trl

    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="ppo-bench-"))
    print(f"building tokenizer, {a.size} model and prompts in {root} ...", flush=True)
    assets = make_assets(root, a)
    common = common_spec(a, assets)
    jobs: dict[str, list[tuple[str, dict]]] = {}
    if "a" in a.parts:
        spec = full_ppo_spec(a, assets)
        jobs["a"] = [("rlfm", spec | {"kind": "rlfm-ppo"}), ("trl", spec | {"kind": "trl-ppo"})]
    if "b" in a.parts:
        spec = common | {"adapter": "lora", "micro_batch": a.lora_micro_batch}
        spec |= {"updates": a.warmup + a.lora_updates}
        jobs["b"] = [
            ("rlfm", spec | {"kind": "rlfm-ppo"}),
            ("trl-lora-value", spec | {"kind": "trl-ppo", "trl_value": "lora"}),
            ("trl-full-value", spec | {"kind": "trl-ppo", "trl_value": "full"}),
        ]
    if "c" in a.parts:
        spec = common | {"kind": "gen", "reps": a.gen_reps}
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
                if "error" in res:
                    sys.exit(f"{label} failed:\n{res['error']}")
                raw[part].setdefault(name, []).append(res)
                print(f"  round {r + 1}/{a.rounds}  ({part}) {name}: "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip

    trl_name = f"TRL {trl.__version__}"
    base = dict(size=a.size, precision=a.precision)
    shape = (
        f"{a.prompts} prompts × {a.prompt_tokens} + {a.new_tokens} new tokens, {a.epochs} "
        f"epochs × 1 minibatch, {a.precision}, {a.threads or 'default'} threads"
    )
    rows: list[dict] = []
    if "a" in jobs:
        rl = [update_rate(x, a.warmup) for x in raw["a"]["rlfm"]]
        tr = [update_rate(x, a.warmup) for x in raw["a"]["trl"]]
        rows.append(
            result_row(
                **base,
                workload="ppo (full)",
                peer=trl_name,
                peer_settings=f"PPOTrainer, gradient_checkpointing=False; {shape}",
                metric="updates/s",
                rlfm=rl,
                peer_value=tr,
                target=2.0,
            )
        )
        rows.append(
            result_row(
                **base,
                workload="ppo (full)",
                peer=trl_name,
                peer_settings=f"PPOTrainer, gradient_checkpointing=False; {shape}",
                metric="peak MiB above imports",
                rlfm=[model_mib(x) for x in raw["a"]["rlfm"]],
                peer_value=[model_mib(x) for x in raw["a"]["trl"]],
                lower_is_better=True,
            )
        )
    if "b" in jobs:
        lshape = f"LoRA r={a.lora_r} policy, micro-batch {a.lora_micro_batch}; {shape}"
        for name, kind, settings, target in (
            ("trl-lora-value", "like-for-like", "peft_config + LoRA value model", 0.8),
            ("trl-full-value", "recipe vs recipe", "peft_config + full value model", None),
        ):
            common_b = dict(
                **base, workload="ppo (LoRA)", peer=trl_name, kind=kind,
                peer_settings=f"PPOTrainer, {settings}; {lshape}",
            )  # fmt: skip
            rows.append(
                result_row(
                    **common_b,
                    metric="peak MiB above imports",
                    rlfm=[model_mib(x) for x in raw["b"]["rlfm"]],
                    peer_value=[model_mib(x) for x in raw["b"][name]],
                    target=target,
                    lower_is_better=True,
                )
            )
            if kind == "like-for-like":
                rows.append(
                    result_row(
                        **common_b,
                        metric="updates/s",
                        rlfm=[update_rate(x, a.warmup) for x in raw["b"]["rlfm"]],
                        peer_value=[update_rate(x, a.warmup) for x in raw["b"][name]],
                        note="micro-batched for the memory figure: not the speed headline",
                    )
                )
    if "c" in jobs:
        rows.append(
            result_row(
                **base,
                workload="generation",
                peer=f"transformers {_version('transformers')} generate",
                peer_settings=f"do_sample, KV cache, batch {a.prompts}, {a.prompt_tokens} + "
                f"{a.new_tokens} tokens, {a.precision}",
                metric="tokens/s",
                rlfm=[x["tokens"] * len(x["times"]) / sum(x["times"]) for x in raw["c"]["rlfm"]],
                peer_value=[
                    x["tokens"] * len(x["times"]) / sum(x["times"]) for x in raw["c"]["hf"]
                ],
                target=2.0,
            )
        )
    print(f"\nPPO benchmark, {a.size}: {shape}; {time.perf_counter() - t_start:.0f} s in all")
    for part in raw:
        for name, runs in raw[part].items():
            if part in ("a", "b"):
                gen = [statistics.median(ppo_samples(x, a.warmup)["gen"]) for x in runs]
                print(f"  ({part}) {name}: generation s/update by round "
                      + " / ".join(f"{g:.2f}" for g in gen))  # fmt: skip
    print()
    print_rows(rows)
    write_rows(a.json, rows, {"settings": vars(a) | {"json": str(a.json)}, "raw": raw})
    if not a.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"child logs kept in {root}")


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def update_rate(res: dict, warmup: int) -> float:
    """Timed PPO updates over their total time (updates/s) for one run."""
    st = res["stamps"]
    return (len(st) - warmup) / (st[-1]["wall"] - st[warmup - 1]["wall"])


def model_mib(res: dict) -> float:
    """Peak RSS during the run above the RSS after imports (MiB)."""
    return res["stamps"][-1]["hwm"] - res["rss_after_imports"]


if __name__ == "__main__":
    main()
