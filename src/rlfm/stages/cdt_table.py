"""The CDT paper's Table 1 for several methods and tasks, from `rlfm cdt eval` results.

    rlfm cdt table --models runs/cdt/*/eval/result.json --out table.md

A row per method, a reward ↑ / cost ↓ column pair per task plus their average: normalised
return and normalised cost (cost / threshold), each averaged over the thresholds of its
evaluation; several results of one method and task (seeds) are averaged. Safe cells
(normalised cost ≤ 1) are bold, the best safe method of each column is starred.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlfm.config import check
from rlfm.evaluate.dt_report import print_table1, read_cdt_result, table1_markdown
from rlfm.tracking import console


@dataclass(frozen=True)
class Config:
    """Table 1 from `rlfm cdt eval` result files."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    models: tuple[Path, ...] = ()
    """`rlfm cdt eval` result files (or folders holding result.json)."""
    out: Path = Path("table.md")
    """Markdown file the table is written to."""

    def __post_init__(self) -> None:
        check(len(self.models) >= 1, "models", "give at least one result file (--models ...)")


def run(cfg: Config) -> str:
    """Read the results, print the table, write it as Markdown; returns the Markdown."""
    results = [read_cdt_result(p) for p in cfg.models]
    print_table1(results, title="normalised reward ↑ / cost ↓ (bold: safe)")
    text = table1_markdown(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    console.print(f"table: {out}")
    return text
