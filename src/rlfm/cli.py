"""The ``rlfm`` command: ``rlfm <command> [flags]``; ``rlfm <command> --help`` documents every flag.

Each command is a module with a ``Config`` dataclass and a function taking it. Flags override
``--config file.yaml``, which overrides the defaults. Errors a user can cause print one line
naming the culprit and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from collections.abc import Sequence

from rlfm import __version__
from rlfm.errors import Interrupted, RlfmError

# name -> (module, function, one-line help); a name may be two or three words ("reward train",
# "label admin create")
COMMANDS: dict[str, tuple[str, str, str]] = {
    "pipeline": ("rlfm.pipeline", "run", "Run the whole recipe on the built-in default task."),
    "pretrain": ("rlfm.stages.pretrain", "train", "Pre-train a GPT on text (self-supervised)."),
    "sft": ("rlfm.stages.sft", "train", "Supervised fine-tuning: full, LoRA or prefix-tuning."),
    "merge": ("rlfm.stages.merge", "run", "Fold a LoRA adapter into its base; save a plain model."),
    "ppo": ("rlfm.stages.ppo", "train", "RLHF: PPO against a reward model with a KL penalty."),
    "sample": ("rlfm.stages.sample", "run", "Generate text from a model, checkpoint or run."),
    "reward train": ("rlfm.stages.reward", "train", "Train a reward model on pairs or rankings."),
    "reward score": ("rlfm.stages.reward_score", "run", "Score texts with a reward model."),
    "reward train-segments": (
        "rlfm.stages.reward_segments",
        "train",
        "Learn a reward from preferences over Gymnasium trajectory segments.",
    ),
    "control ppo": ("rlfm.stages.control_ppo", "train", "PPO on a Gymnasium environment."),
    "control eval": (
        "rlfm.stages.control_eval",
        "run",
        "Play episodes with a control policy; optionally save a video.",
    ),
    "control prefs": (
        "rlfm.stages.control_prefs",
        "train",
        "PPO on a reward learned online from trajectory preferences.",
    ),
    "offline make": ("rlfm.stages.offline_make", "run", "Make a Minari dataset (D4RL recipes)."),
    "offline list": ("rlfm.stages.offline_list", "run", "List the local Minari datasets."),
    "dt train": ("rlfm.stages.dt", "train", "Train a Decision Transformer on Minari datasets."),
    "dt eval": (
        "rlfm.stages.dt_eval",
        "evaluate",
        "Achieved against target return of a Decision Transformer (Figure 4).",
    ),
    "dt demo": (
        "rlfm.stages.dt_demo",
        "run",
        "Decision Transformer end to end on a small dataset.",
    ),
    "cdt train": (
        "rlfm.stages.cdt",
        "train",
        "Train a Constrained DT, or a baseline (BC-All, BC-Safe, DT-Cost, ablations).",
    ),
    "cdt eval": (
        "rlfm.stages.cdt_eval",
        "evaluate",
        "Reward and cost of a Constrained DT across cost thresholds (zero-shot).",
    ),
    "cdt table": (
        "rlfm.stages.cdt_table",
        "run",
        "Table 1 of the CDT paper from several `rlfm cdt eval` results.",
    ),
    "cdt demo": ("rlfm.stages.cdt_demo", "run", "Constrained DT end to end on a small dataset."),
    "report": ("rlfm.stages.report", "run", "Rebuild a run's report.html and report.md."),
    "overopt": (
        "rlfm.stages.overopt",
        "run",
        "Reward over-optimisation: proxy and gold score against √KL (Gao et al. 2023).",
    ),
    "eval safety": (
        "rlfm.stages.eval_safety",
        "run",
        "Share of replies to red-team prompts flagged by the gold rule and by labelers.",
    ),
    "eval citations": (
        "rlfm.stages.eval_citations",
        "run",
        "Citation recall and precision of judged responses (verifiability).",
    ),
    "models": ("rlfm.models.presets", "list_presets", "List model presets and parameter counts."),
    "label serve": ("rlfm.feedback.commands.serve", "run", "Serve the labelling web app."),
    "label admin create": (
        "rlfm.feedback.commands.admin_create",
        "run",
        "Create an admin; print a one-time invite link.",
    ),
    "label invite": (
        "rlfm.feedback.commands.invite",
        "run",
        "Invite a labeler or researcher to a project.",
    ),
    "label project create": (
        "rlfm.feedback.commands.project_create",
        "run",
        "Create a labelling project.",
    ),
    "label import": (
        "rlfm.feedback.commands.import_items",
        "run",
        "Import items: completions from a file, or sampled by a policy.",
    ),
    "label simulate": (
        "rlfm.feedback.commands.simulate",
        "run",
        "Simulated labelers answer a project's open assignments.",
    ),
    "label export": (
        "rlfm.feedback.commands.export",
        "run",
        "Export labels: rankings or pairs for the reward model, demonstrations.",
    ),
    "label stats": (
        "rlfm.feedback.commands.stats",
        "run",
        "Agreement between labelers and screening, per project, labeler and item.",
    ),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        f"rlfm {__version__}: reinforcement learning for and with foundation models",
        "",
        "usage: rlfm <command> [--config FILE.yaml] [--flag value ...]",
        "       rlfm <command> --help",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Several processes: torchrun --nproc_per_node N -m rlfm <command> ..."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command; under torchrun, leave without tearing the process group down."""
    try:
        _main(argv)
    except SystemExit as e:
        _leave_process_group(e.code if isinstance(e.code, int) else 1)
        raise
    _leave_process_group(0)


def _leave_process_group(code: int) -> None:
    """Under torchrun, end the process now that its work is written. Destroying a gloo process
    group from Python can deadlock: its worker thread may still be freeing the last
    collective's tensors, which needs the GIL, while the destructor holds the GIL and joins that
    thread (seen as runs that hung at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _main(argv: Sequence[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return
    name, rest = argv[0], argv[1:]
    for n in (3, 2):  # the longest command name that the first words spell
        if len(argv) >= n and " ".join(argv[:n]) in COMMANDS:
            name, rest = " ".join(argv[:n]), argv[n:]
            break
    else:  # or a two-word group they spell ("rlfm label admin")
        two = " ".join(argv[:2])
        if len(argv) >= 2 and any(c.startswith(f"{two} ") for c in COMMANDS):
            name, rest = two, argv[2:]
    group = [c for c in COMMANDS if c.startswith(f"{name} ")]
    if name not in COMMANDS and group:  # "rlfm reward": list its subcommands
        width = max(len(c) for c in group)
        print(
            "\n".join(
                [f"usage: rlfm {name} <subcommand> ...", ""]
                + [f"  rlfm {c:<{width}}  {COMMANDS[c][2]}" for c in group]
            )
        )
        raise SystemExit(0 if not rest or rest[0] in ("-h", "--help") else 2)
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"rlfm: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module_name, fn_name, _ = COMMANDS[name]
    try:
        from rlfm.config import parse
        from rlfm.run import COMMAND
        from rlfm.tracking import quiet_libraries

        quiet_libraries()
        module = importlib.import_module(module_name)
        cfg = parse(module.Config, rest, prog=f"rlfm {name}")
        COMMAND.set(shlex.join(["rlfm", *name.split(), *rest]))  # for run.json, model cards
        getattr(module, fn_name)(cfg)
    except Interrupted as e:  # SIGINT / SIGTERM: a checkpoint was saved (run.py)
        print(f"rlfm {name}: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except RlfmError as e:
        print(f"rlfm {name}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # `rlfm models | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a training loop
        print(
            f"\nrlfm {name}: interrupted at once; checkpoints already written are intact (rerun "
            "the same command to resume from the newest)",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except OSError as e:  # the machine, not rlfm: a full disk, a permission, a missing device
        from rlfm.checkpoint import os_error_message

        print(f"rlfm {name}: error: {os_error_message(e, '')}", file=sys.stderr)
        raise SystemExit(2) from None
