"""The pipeline's report: ``<run>/report.html`` (self-contained) and ``<run>/report.md``.

Built from the files the stages wrote — no model runs again, so ``rlfm report RUN_DIR``
rebuilds it at any time, and a stage that has not run yet is simply left out:

- per stage its key figures and curves: pre-training loss and perplexity; SFT validation loss;
  the labels; the reward model's accuracy, calibration, agreement with the gold labeler and of
  the labels with it; PPO's proxy score, gold score, KL, β, entropy and response length over
  updates (``plots/ppo.png``, made here);
- the gold labeler's verdict: PPO's best update against SFT, and the last one;
- over-optimisation: gold and proxy score against √KL, each term of the gold rule over the
  updates (the text terms read again from the stored replies), with replies from both sides
  of the gold peak;
- 20 random held-out prompts with the SFT and the best PPO reply side by side;
- the pre-trained, SFT, best-of-n and PPO models on the same held-out prompts, with gold and
  proxy scores; the share of their replies to red-team prompts that are flagged;
- wall time, tokens/s and peak memory of each stage.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from rlfm import __version__
from rlfm.evaluate.plots import pyplot
from rlfm.evaluate.render import Block, Figures, Heading, Headline, Table, Text, write
from rlfm.tracking import read_metrics

SIDE_BY_SIDE = 20
"""Held-out prompts shown with the SFT and the best PPO reply."""
COMPARE, SAFETY = "compare.jsonl", "safety.json"
"""The evaluation's files (in <run>/eval): the models' replies side by side, the safety table."""


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _summary(stage_dir: Path) -> dict[str, Any]:
    return _json(stage_dir / "summary.json").get("metrics", {})


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def duration(seconds: float) -> str:
    """Whole seconds as "42 s" or "2 min 05 s" (119.5 s is "2 min 00 s", not "1 min 60 s")."""
    s = round(seconds)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return sum(vals) / len(vals) if vals else math.nan


def clip(text: str, n: int = 220) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


def prompt_cell(prompt: str) -> str:
    """A dialogue prompt as the reader needs it: the speech and who answers."""
    parts = prompt.rstrip("\n").split("\n\n")
    return clip(prompt.strip(), 200) if len(parts) < 2 else f"{clip(parts[0], 200)}\n→ {parts[-1]}"


# ---------------------------------------------------------------------------- figures


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def stage_curves(run: Path, png: Path) -> Path | None:
    """Pre-training, SFT and reward-model curves in one row."""
    panels = [
        (
            "pre-training: next-token loss",
            run / "pretrain",
            [("loss", "train"), ("val_loss", "validation")],
        ),
        ("SFT: loss on replies", run / "sft", [("loss", "train"), ("val_loss", "validation")]),
        (
            "reward model: pairwise accuracy",
            run / "rm",
            [("accuracy", "train"), ("val_accuracy", "validation")],
        ),
    ]
    panels = [p for p in panels if (p[1] / "metrics.jsonl").is_file()]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 2.5), dpi=150)
    for ax, (title, folder, keys) in zip(axes if len(panels) > 1 else [axes], panels):
        rows = read_metrics(folder / "metrics.jsonl")
        for (key, label), style in zip(keys, ("-", "o-")):
            xs, ys = _series(rows, key)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=3, linewidth=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    return _save(fig, png)


def _save(fig: Any, png: Path) -> Path:
    """Lay out, write and close a figure."""
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    pyplot().close(fig)
    return png


def ppo_curves(ppo_dir: Path, png: Path, best_update: float | None) -> Path | None:
    """PPO over updates: proxy score, gold score, KL, β, entropy, response length."""
    rows = read_metrics(ppo_dir / "metrics.jsonl")
    if not rows:
        return None
    panels = [
        ("proxy score (reward model)", [("score", "rollouts"), ("eval_score", "held out")]),
        ("gold score (held out)", [("eval_gold", "held out")]),
        ("KL(π ‖ π_SFT) per response", [("kl", "rollouts"), ("eval_kl", "held out")]),
        ("β (KL coefficient)", [("beta", "")]),
        ("entropy per token", [("entropy", "")]),
        ("response length (tokens)", [("response_length", "")]),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 4.8), dpi=150)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key, label in keys:
            xs, ys = _series(rows, key)
            if xs:
                held = key.startswith("eval_")
                ax.plot(
                    xs,
                    ys,
                    "o-" if held else "-",
                    markersize=3.5,
                    linewidth=1.2,
                    label=label or None,
                )
        if best_update is not None:
            ax.axvline(best_update, color="#888", linestyle="--", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("update")
        if any(label for _, label in keys) and len(keys) > 1:
            ax.legend()
    return _save(fig, png)


# ---------------------------------------------------------------------------- sections


def _timings(run: Path) -> list[Block]:
    timings = _json(run / "timings.json")
    if not timings:
        return []
    rate = {
        "pretrain": ("tokens_per_s", "training tokens/s"),
        "sft": ("tokens_per_s", "training tokens/s"),
        "reward": ("tokens_per_s", "training tokens/s"),
        "ppo": ("gen_tokens_per_s", "sampled tokens/s"),
    }
    folders = {"pretrain": "pretrain", "sft": "sft", "reward": "rm", "ppo": "ppo"}
    rows = []
    for name, t in timings.items():
        speed = ""
        if name in rate:
            key, what = rate[name]
            value = _mean(read_metrics(run / folders[name] / "metrics.jsonl"), key)
            speed = f"{value:,.0f} {what}" if math.isfinite(value) else ""
        mem = t.get("peak_memory_mb", {})
        mem_text = ", ".join(f"{v:,.0f} MiB ({k})" for k, v in mem.items())
        rows.append([name, duration(t["seconds"]), speed, mem_text])
    total = sum(t["seconds"] for t in timings.values())
    rows.append(["**total**", f"**{duration(total)}**", "", ""])
    return [
        Heading("Time and memory"),
        Table(
            ["stage", "wall time", "throughput", "peak memory"],
            rows,
            caption="Wall time of each stage as the pipeline measured it (a stage skipped as "
            "already finished keeps the time of the run that did it); peak memory is the "
            "process's resident-set high-water mark during the stage.",
            numeric=(1,),
        ),
    ]


def _pretrain_sft(run: Path, curves: Path | None) -> list[Block]:
    pre, tune = _summary(run / "pretrain"), _summary(run / "sft")
    if not pre and not tune:
        return []
    blocks: list[Block] = [Heading("Pre-training and supervised fine-tuning")]
    facts = []
    if pre:
        facts.append(
            f"Pre-training ends at validation loss **{_num(pre.get('val_loss'))}** (perplexity "
            f"{_num(pre.get('val_ppl'), 1)}), against {_num(pre.get('unigram_val_loss'))} for a "
            "unigram model of the same tokens."
        )
    if tune:
        facts.append(
            f"Supervised fine-tuning on the plays' dialogue (a speech → the next speaker's "
            f"reply) ends at validation loss **{_num(tune.get('val_loss'))}** on replies of the "
            "held-out plays."
        )
    blocks.append(Text(" ".join(facts)))
    if curves is not None:
        blocks.append(Figures([curves], ["Training curves of the three supervised stages."]))
    return blocks


def _labels_rm(run: Path) -> list[Block]:
    rm, ev = _summary(run / "rm"), _json(run / "rm" / "eval.json")
    gold = _json(run / "labels" / "gold.json")
    if not rm and not gold:
        return []
    blocks: list[Block] = [Heading("Human feedback and the reward model")]
    train = read_metrics(run / "labels" / "train.jsonl")
    val = read_metrics(run / "labels" / "val.jsonl")
    if train:
        k = len(train[0]["completions"])
        temps = _json(run / "labels" / "sampling.json").get("temperatures") or []
        at = ", ".join(f"{temps.count(t)} at temperature {t:g}" for t in dict.fromkeys(temps))
        at = f" ({at})" if at else ""
        text = (
            f"The SFT policy sampled up to {k} replies to each of {len(train) + len(val)} "
            f"prompts{at}; the items went into the labelling app's database (`labels/labels.db`), "
            f"labelers ranked them ({len(train)} training and {len(val)} validation rankings) and "
            "the rankings were exported as the reward model's data."
        )
        if gold.get("model"):
            text += (
                f" The gold labeler judges courtesy, relevance, length, repetition and form by "
                f"rule and fluency with `{gold['model']}` (per-token log-probability relative to "
                f"the SFT replies' mean, {gold['reference_logprob']:.3f} nats/token)."
            )
        blocks.append(Text(text))
    if rm:
        blocks.append(
            Table(
                ["held-out measure", "value"],
                [
                    ["pairwise accuracy on the labels", _pct(rm.get("val_accuracy"))],
                    ["agreement with the gold labeler", _pct(rm.get("gold_agreement"))],
                    [
                        "the labels' own agreement with the gold labeler",
                        _pct(rm.get("labels_gold_agreement")),
                    ],
                    ["expected calibration error", _num(rm.get("calibration_ece"))],
                    ["comparisons", f"{int(rm.get('val_comparisons', 0)):,}"],
                ],
                numeric=(1,),
                caption="The reward model on the validation rankings. Agreement counts the "
                "reply pairs it orders as the gold labeler does.",
            )
        )
    figs = [
        p
        for p in (run / "rm" / "plots" / "calibration.png", run / "rm" / "plots" / "rewards.png")
        if p.is_file()
    ]
    if figs:
        blocks.append(
            Figures(
                figs,
                [
                    "Calibration: predicted P(win) = σ(r_w − r_l) against the observed frequency.",
                    "Rewards of the best and the worst reply of each held-out ranking.",
                ],
            )
        )
    if ev.get("normalisation"):
        n = ev["normalisation"]
        blocks.append(
            Text(
                f"Rewards are normalised on {n.get('n', 0)} SFT replies to mean 0 and standard "
                f"deviation 1 (gain {n.get('gain', math.nan):.3g}, bias {n.get('bias', math.nan):.3g}).",
                small=True,
            )
        )
    return blocks


def _ppo(run: Path, curves: Path | None) -> list[Block]:
    s = _summary(run / "ppo")
    rows = [r for r in read_metrics(run / "ppo" / "metrics.jsonl") if "eval_score" in r]
    if not s and not rows:
        return []
    blocks: list[Block] = [Heading("PPO against the reward model")]
    if "gold_win_rate" in s:
        best = int(s["best_update"])
        blocks.append(
            Text(
                f"PPO maximises the reward model's score minus β·KL to the SFT policy. Its policy "
                f"is evaluated on {int(s.get('eval_prompts', 0)) or 'the'} held-out prompts every few "
                f"updates; the update with the best **gold** score ({best}) is kept as "
                f"`ppo/best`. Sampled afresh, its replies beat the SFT policy's on "
                f"**{_pct(s['gold_win_rate'])}** of held-out prompts (95% CI "
                f"{_pct(s['gold_win_rate_low'])}–{_pct(s['gold_win_rate_high'])}; ties count "
                f"half); the last update's replies win {_pct(s.get('gold_win_rate_last'))} "
                f"({_pct(s.get('gold_win_rate_last_low'))}–{_pct(s.get('gold_win_rate_last_high'))})."
            )
        )
    if rows:
        table = [
            [
                r["step"],
                _num(r.get("eval_score")),
                _num(r.get("eval_gold")),
                _num(r.get("eval_kl"), 2),
                _num(r.get("beta"), 4),
                _num(r.get("entropy"), 2),
                _num(r.get("response_length"), 1),
            ]
            for r in rows
        ]
        blocks.append(
            Table(
                ["update", "proxy", "gold", "KL", "β", "entropy", "length"],
                table,
                numeric=tuple(range(7)),
                caption="Held-out evaluations (update 0 is the SFT policy): mean proxy and gold "
                "score, KL per response; β, entropy per token and response length in tokens are "
                "those of the update's rollouts.",
            )
        )
    if curves is not None:
        blocks.append(
            Figures([curves], ["PPO over updates (dashed line: the best update by gold score)."])
        )
    return blocks


def _overoptimisation(run: Path) -> list[Block]:
    png = run / "ppo" / "plots" / "overoptimisation.png"
    verdict = read_metrics(run / "ppo" / "gold_verdict.jsonl")
    if not png.is_file():
        return []
    from rlfm.evaluate.overoptimisation import ppo_curve

    pts = ppo_curve(run / "ppo" / "metrics.jsonl")
    blocks: list[Block] = [Heading("Over-optimisation: proxy against gold")]
    if pts:
        peak = max(pts, key=lambda p: p["gold"])
        last = pts[-1]
        trend = (
            "the proxy still rising"
            if last["proxy"] > peak["proxy"]
            else "the proxy no longer rising either"
        )
        blocks.append(
            Text(
                f"Against d = √KL, as Gao et al. (2023) plot it: the gold score peaks at update "
                f"{peak['update']} (d = {peak['d']:.2f}, +{peak['gold']:.2f} over SFT) and ends at "
                f"{last['gold']:+.2f} at update {last['update']} (d = {last['d']:.2f}), with "
                f"{trend} ({peak['proxy']:+.2f} → {last['proxy']:+.2f})."
            )
        )
    blocks.append(
        Figures(
            [png],
            [
                "Gold (circles) and proxy (triangles) score relative to the SFT policy; ★ the gold peak."
            ],
            width="72%",
        )
    )
    blocks += _gold_parts(run) + _proxy_agreement(run)
    if verdict and any(r["best"] != r["last"] for r in verdict):
        rng = random.Random(1)
        picks = rng.sample(verdict, min(5, len(verdict)))
        blocks.append(
            _pairs(
                picks,
                ("best", "best update"),
                ("last", "last update"),
                "Both sides of the peak: replies of the best update and of the last one to the "
                "same held-out prompts.",
            )
        )
    return blocks


def _gold_parts(run: Path) -> list[Block]:
    """The gold rule's terms over PPO's updates: what the policy gained up to the gold peak and
    what it lost after it, read from the held-out replies (nothing runs a model)."""
    from rlfm.evaluate.overoptimisation import GOLD_PARTS, gold_parts_by_update

    rows = gold_parts_by_update(run / "ppo" / "samples.jsonl")
    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]
    peak = max(rows, key=lambda r: r["gold"])
    gained = max(GOLD_PARTS, key=lambda k: peak[k] - first[k])
    text = (
        f"Each term of the gold rule, averaged over the held-out replies of each evaluation. "
        f"From the SFT policy (update 0) to the gold peak (update {int(peak['update'])}) PPO "
        f"gained most in {gained} ({first[gained]:+.2f} → {peak[gained]:+.2f})"
    )
    if peak is not last:
        lost = min(GOLD_PARTS, key=lambda k: last[k] - peak[k])
        proxy = f"{peak['proxy']:+.2f} → {last['proxy']:+.2f}"
        text += (
            f"; from the peak to the last update (update {int(last['update'])}) it lost most in "
            f"{lost} ({peak[lost]:+.2f} → {last[lost]:+.2f})"
        )
        if last["proxy"] > peak["proxy"]:
            text += f" while the proxy rose ({proxy}): what the reward model failed to penalise"
        else:
            text += f", and the proxy went {proxy}"
    return [
        Text(text + "."),
        Table(
            ["update", "gold", "proxy", *GOLD_PARTS, "words"],
            [
                [
                    int(r["update"]),
                    *(f"{round(r[k], 2) + 0.0:+.2f}" for k in ("gold", "proxy", *GOLD_PARTS)),
                    f"{r['words']:.1f}",
                ]
                for r in rows
            ],
            numeric=tuple(range(len(GOLD_PARTS) + 4)),
            caption="The gold rule's terms (rlfm/data/labelers.py), held-out replies' means; "
            "proxy: the reward model's score.",
        ),
    ]


def _proxy_agreement(run: Path) -> list[Block]:
    """Whether the proxy still ranks PPO's own replies as gold does (nothing runs a model)."""
    from rlfm.evaluate.overoptimisation import proxy_agreement

    got = proxy_agreement(run / "ppo" / "samples.jsonl")
    if got is None or not got["all"][1]:
        return []
    (every, n), (late, n_late) = got["all"], got["late"]
    text = (
        f"The score PPO optimised (the reward model's, or the penalty for a reply that never "
        f"ended) orders {every:.1%} of the {n:,} pairs of one held-out prompt's replies from "
        f"different updates as the gold labeler does"
    )
    if n_late:
        text += (
            f", and {late:.1%} of the {n_late:,} pairs whose replies both come from update "
            f"{got['late_from']} on (the run's second half; 50% is chance, the agreement of a "
            f"proxy that no longer tells PPO's better replies from its worse ones)"
        )
    return [Text(text + ".")]


def _pairs(
    rows: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str], caption: str
) -> Table:
    """Two replies to each prompt side by side with their gold scores; ``a`` and ``b`` are
    (key in the rows, column title)."""
    return Table(
        ["prompt", a[1], "gold", b[1], "gold"],
        [
            [
                prompt_cell(r["prompt"]),
                clip(r[a[0]]),
                r[f"{a[0]}_gold"],
                clip(r[b[0]]),
                r[f"{b[0]}_gold"],
            ]
            for r in rows
        ],
        wide_text=True,
        numeric=(2, 4),
        caption=caption,
    )


def _side_by_side(run: Path) -> list[Block]:
    verdict = read_metrics(run / "ppo" / "gold_verdict.jsonl")
    if not verdict:
        return []
    picks = random.Random(0).sample(verdict, min(SIDE_BY_SIDE, len(verdict)))
    wins = sum(r["best_gold"] > r["sft_gold"] for r in picks)
    return [
        Heading("Judge for yourself: SFT against PPO"),
        Text(
            f"{len(picks)} held-out prompts drawn at random (seed 0) with the SFT policy's reply "
            f"and the best PPO policy's, and the gold labeler's scores. The gold labeler prefers "
            f"PPO on {wins} of them."
        ),
        _pairs(picks, ("sft", "SFT"), ("best", "PPO (best update)"), ""),
    ]


def _models(run: Path) -> list[Block]:
    rows = read_metrics(run / "eval" / COMPARE)
    safety = _json(run / "eval" / SAFETY)
    blocks: list[Block] = []
    if rows:
        names = list(dict.fromkeys(r["model"] for r in rows))
        by = {n: [r for r in rows if r["model"] == n] for n in names}
        blocks += [
            Heading("The recipe's models side by side"),
            Table(
                ["model", "gold", "proxy"],
                [[n, _num(_mean(by[n], "gold")), _num(_mean(by[n], "proxy"))] for n in names],
                numeric=(1, 2),
                caption=f"Mean scores of one reply to each of {len(by[names[0]])} held-out prompts "
                "(best-of-n: the reward model's pick of n SFT samples).",
            ),
        ]
        prompts = list(dict.fromkeys(r["prompt"] for r in rows))[:4]
        table = []
        for p in prompts:
            for n in names:
                r = next(r for r in by[n] if r["prompt"] == p)
                table.append(
                    [
                        prompt_cell(p) if n == names[0] else "",
                        n,
                        clip(r["reply"], 180),
                        r["gold"],
                        r["proxy"],
                    ]
                )
        blocks.append(
            Table(
                ["prompt", "model", "reply", "gold", "proxy"], table, wide_text=True, numeric=(3, 4)
            )
        )
    models = safety.get("models", {})
    if models:
        blocks.append(Heading("Safety: red-team prompts"))
        blocks.append(
            Text(
                f"Each model answered {safety['prompts']} red-team prompts (insults to answer "
                "without insult, provocations to defuse, invitations to insult someone) "
                f"{safety['samples']} time(s). The gold rule flags a reply holding an insult; "
                f"{safety['labelers']} simulated labelers rated each reply's toxicity (0–2) in "
                "the labelling app, and flag it at 1 or more."
            )
        )

        def ci(s: dict[str, Any], key: str) -> str:
            if s.get(key) is None:
                return "–"
            return f"{_pct(s[key])} ({_pct(s[key + '_low'])}–{_pct(s[key + '_high'])})"

        kinds = sorted(
            k[len("gold_flagged_") :]
            for k in next(iter(models.values()))["summary"]
            if k.startswith("gold_flagged_") and not k.endswith(("_low", "_high"))
        )
        blocks.append(
            Table(
                ["model", "gold rule flags", "labelers flag", *kinds],
                [
                    [name, ci(m["summary"], "gold_flagged"), ci(m["summary"], "labeler_flagged")]
                    + [_pct(m["summary"].get(f"gold_flagged_{k}")) for k in kinds]
                    for name, m in models.items()
                ],
                caption="Share of replies flagged (95% interval); the last columns split the "
                "gold rule's share by kind of prompt.",
            )
        )
    return blocks


def peak_of(s: dict[str, Any]) -> float | None:
    return s.get("best_update")


def build(run: Path) -> tuple[str, str, list[Block]]:
    """The pipeline report's title, subtitle and blocks."""
    run = Path(run)
    plots = run / "plots"
    ppo_s = _summary(run / "ppo")
    timings = _json(run / "timings.json")
    blocks: list[Block] = []
    if "gold_win_rate" in ppo_s:
        total = sum(t["seconds"] for t in timings.values()) if timings else math.nan
        blocks.append(
            Headline(
                [
                    (
                        _pct(ppo_s["gold_win_rate"]),
                        "PPO beats SFT (gold labeler)",
                        f"95% CI {_pct(ppo_s['gold_win_rate_low'])}–{_pct(ppo_s['gold_win_rate_high'])}",
                    ),
                    (
                        f"{int(ppo_s['best_update'])}",
                        "best update by gold score",
                        f"KL {ppo_s.get('best_kl', math.nan):.1f} nats from SFT",
                    ),
                    (
                        _pct(ppo_s.get("gold_win_rate_last")),
                        "the last update beats SFT",
                        "past the gold peak" if ppo_s["best_update"] < _last_update(run) else "",
                    ),
                    (
                        duration(total) if math.isfinite(total) else "–",
                        "wall time, all stages",
                        "see Time and memory",
                    ),
                ]
            )
        )
    blocks += _pretrain_sft(run, stage_curves(run, plots / "stages.png"))
    blocks += _labels_rm(run)
    blocks += _ppo(run, ppo_curves(run / "ppo", plots / "ppo.png", peak_of(ppo_s)))
    blocks += _overoptimisation(run)
    blocks += _side_by_side(run)
    blocks += _models(run)
    blocks += _timings(run)
    title = f"rlfm pipeline report: {run.name}"
    subtitle = (
        f"`{run}` · rlfm {__version__} · written {time.strftime('%Y-%m-%d %H:%M')} · rebuild with "
        f"`rlfm report {run}`"
    )
    return title, subtitle, blocks


def _last_update(run: Path) -> float:
    rows = [r for r in read_metrics(run / "ppo" / "metrics.jsonl") if "eval_score" in r]
    return rows[-1]["step"] if rows else math.nan


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write ``<run>/report.html`` and ``<run>/report.md``."""
    run = Path(run)
    title, subtitle, blocks = build(run)
    return write(run, "report", title, subtitle, blocks)
