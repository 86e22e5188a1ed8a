"""Rebuild a run's report from the files its stages wrote.

    rlfm report runs/demo          # a pipeline run: report.html and report.md
    rlfm report runs/overopt       # an `rlfm overopt` study: its report.html and report.md

Nothing is trained or sampled: the report reads summaries, metrics, samples and evaluations
(evaluate/report.py, evaluate/overoptimisation.py), so it can be rebuilt at any time and shows
whatever stages have finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from rlfm.errors import RunError
from rlfm.tracking import console


@dataclass(frozen=True)
class Config:
    """Rebuild report.html and report.md of a pipeline run or an over-optimisation study."""

    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")] = Path("runs/demo")
    """The run directory (`rlfm pipeline --out` or `rlfm overopt --out`)."""


def run(cfg: Config) -> tuple[Path, Path]:
    """Write the report; returns (html, markdown)."""
    folder = Path(cfg.run)
    if not folder.is_dir():
        raise RunError(f"run: {folder} is not a directory (give an `rlfm pipeline --out` folder)")
    if (folder / "overopt.json").is_file():
        from rlfm.evaluate.overoptimisation import write_study_report

        html, md = write_study_report(folder)
    else:
        stages = [
            n for n in ("pretrain", "sft", "rm", "ppo") if (folder / n / "summary.json").is_file()
        ]
        if not stages:
            raise RunError(
                f"run: {folder} holds no finished stage (no <stage>/summary.json); give the "
                "folder of an `rlfm pipeline --out` or `rlfm overopt --out` run"
            )
        from rlfm.evaluate.report import write_report

        html, md = write_report(folder)
    console.print(f"report: {html} and {md}")
    return html, md
