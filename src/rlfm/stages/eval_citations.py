"""Citation recall and precision of judged responses (Liu, Zhang & Liang 2023).

    rlfm eval citations --data judged.jsonl --out result.json

``--data`` holds one judged response a line (the layout and the definitions are in
evaluate/citations.py). ``result.json`` holds ``citation_recall`` and ``citation_precision``
over all statements / citations of the file, the same per response averaged
(``macro_recall``, ``macro_precision``), and the counts ``responses``, ``statements`` and
``citations``; a figure with nothing to count (no citation at all) is ``null``. The terminal
shows the same.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlfm.config import check
from rlfm.evaluate.citations import citation_scores, read_judged
from rlfm.tracking import console


@dataclass(frozen=True)
class Config:
    """Citation recall and precision of judged responses."""

    config: Path | None = None
    """YAML file of field values; flags on the command line override it."""
    data: Path | None = None
    """Judged responses, one JSON object a line: {"id", "statements": [{"text", "supported",
    "citations": [{"source", "support"}]}]}, each verdict full, partial or none."""
    out: Path | None = None
    """Where to write the figures as JSON (default: only print them)."""

    def __post_init__(self) -> None:
        check(self.data is not None, "data", "give the judged responses: --data judged.jsonl")


def run(cfg: Config) -> dict[str, float]:
    """Read, score, print, write; returns the figures (NaN where there is nothing to count)."""
    assert cfg.data is not None
    scores = citation_scores(read_judged(cfg.data))

    def shown(key: str, of: str) -> str:
        value = scores[key]
        return "n/a (nothing to count)" if math.isnan(value) else f"{value:.1%} {of}"

    console.print(
        f"[bold]citations[/] in {cfg.data}: {scores['responses']} responses, "
        f"{scores['statements']} statements, {scores['citations']} citations\n"
        f"citation recall     {shown('citation_recall', 'of statements fully supported')}\n"
        f"citation precision  {shown('citation_precision', 'of citations precise')}\n"
        f"macro recall        {shown('macro_recall', 'averaged over responses')}\n"
        f"macro precision     {shown('macro_precision', 'averaged over responses')}"
    )
    if cfg.out is not None:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plain = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in scores.items()
        }
        out.write_text(json.dumps(plain, indent=2) + "\n", encoding="utf-8")
        console.print(f"written: {out}")
    return scores
