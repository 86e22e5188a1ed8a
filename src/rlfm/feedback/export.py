"""Export a project's labels as the files the training stages read (no server needed).

Formats (one JSON object per line, texts byte-identical to what was imported):

- ``rankings``: ``{"prompt", "completions", "ranking", "id", "labeler"}`` — the reward stage's
  ranking format (data/preferences.py; ``rlfm reward train --data`` reads it as it is), one row
  per labeler's ranking of an item, outputs in the imported order;
- ``pairs``: ``{"prompt", "chosen", "rejected", "id", "labeler"}`` — every pair of outputs at
  different levels of those rankings (C(K,2) per ranking without ties);
- ``demonstrations``: ``{"prompt", "completion", "id", "labeler"}`` — SFT rows;
- ``toxicity``: ``{"prompt", "completion", "input_toxicity", "toxicity", "relative_toxicity",
  "continuity", "id", "labeler"}``, one row per rated output.

``labeler`` is ``"labeler-<user id>"`` (no email in training data). Only labelers' labels are
exported (researchers' gold labels are the screening reference). Filters: ``screened_only``
keeps labelers who pass screening (stats.py); ``min_agreement`` keeps items whose labelers'
pairwise-comparison agreement is at least that (items with one labeler have none and are left
out). ``aggregate`` ("ranked-pairs" or "bradley-terry") writes one ranking per item combining
its labelers' rankings (agreement.py) instead of one per labeler.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from rlfm.data.preferences import levels_to_ranking, write_rankings
from rlfm.errors import DataError
from rlfm.feedback import agreement as ag
from rlfm.feedback.db import Annotation, Database, Item, Membership, open_db, project_by_name
from rlfm.feedback.stats import project_stats

Format = Literal["rankings", "pairs", "demonstrations", "toxicity"]
Aggregate = Literal["none", "ranked-pairs", "bradley-terry"]


@dataclass(frozen=True)
class ExportResult:
    """What was written: the file, its rows, and how many labels the filters left out."""

    path: Path
    rows: int
    labels: int
    left_out: int


def export_rows(
    db: Database,
    project: str,
    format: Format = "rankings",
    *,
    screened_only: bool = False,
    min_agreement: float | None = None,
    aggregate: Aggregate = "none",
) -> tuple[list[dict[str, Any]], int, int]:
    """(rows, labels considered, labels left out by the filters) for ``project``."""
    kind = {"rankings": "rank", "pairs": "rank", "demonstrations": "demonstration"}.get(
        format, "toxicity"
    )
    with db.read() as s:
        proj = project_by_name(s, project)
        labelers = set(
            s.scalars(
                select(Membership.user_id).where(
                    Membership.project_id == proj.id, Membership.role == "labeler"
                )
            )
        )
        anns = [
            a
            for a in s.scalars(
                select(Annotation)
                .where(Annotation.project_id == proj.id, Annotation.kind == kind)
                .order_by(Annotation.item_id, Annotation.id)
            )
            if a.user_id in labelers
        ]
        items = {
            it.id: it
            for it in s.scalars(select(Item).where(Item.id.in_({a.item_id for a in anns})))
        }
        stats = project_stats(s, proj) if (screened_only or min_agreement is not None) else None
    total = len(anns)
    if stats is not None and screened_only:
        passed = {ls.user_id for ls in stats.per_labeler if ls.passed}
        anns = [a for a in anns if a.user_id in passed]
    if stats is not None and min_agreement is not None:
        keep = {
            it.item_id
            for it in stats.per_item
            if it.agreement is not None and it.agreement >= min_agreement
        }
        anns = [a for a in anns if a.item_id in keep]
    rows: list[dict[str, Any]] = []

    def ident(item: Item) -> str:
        return item.external_id if item.external_id is not None else str(item.id)

    if kind == "rank" and aggregate != "none":
        by_item: dict[int, list[Annotation]] = defaultdict(list)
        for a in anns:
            by_item[a.item_id].append(a)
        rankings = []
        for item_id, group in by_item.items():
            item = items[item_id]
            k = len(item.completions)
            levels_list = [a.label["levels"] for a in group]
            if aggregate == "ranked-pairs":
                levels = ag.ranked_pairs(levels_list, k)
            else:
                levels = ag.levels_from_scores(ag.bradley_terry(levels_list, k))
            if len(set(levels)) > 1:  # an aggregate that ties everything compares nothing
                labeler = f"{aggregate}:{len(group)}"
                rankings.append((item, levels, labeler))
    else:
        rankings = [(items[a.item_id], a.label.get("levels"), f"labeler-{a.user_id}") for a in anns]
    if format == "rankings":
        for item, levels, labeler in rankings:
            rows.append(
                {
                    "prompt": item.prompt,
                    "completions": list(item.completions),
                    "ranking": levels_to_ranking(levels),
                    "id": ident(item),
                    "labeler": labeler,
                }
            )
    elif format == "pairs":
        for item, levels, labeler in rankings:
            for i, j in combinations(range(len(levels)), 2):
                if levels[i] == levels[j]:
                    continue
                win, lose = (i, j) if levels[i] < levels[j] else (j, i)
                rows.append(
                    {
                        "prompt": item.prompt,
                        "chosen": item.completions[win],
                        "rejected": item.completions[lose],
                        "id": ident(item),
                        "labeler": labeler,
                    }
                )
    elif format == "demonstrations":
        for a in anns:
            item = items[a.item_id]
            rows.append(
                {
                    "prompt": item.prompt,
                    "completion": a.label["demonstration"],
                    "id": ident(item),
                    "labeler": f"labeler-{a.user_id}",
                }
            )
    else:
        for a in anns:
            item = items[a.item_id]
            for i, text in enumerate(item.completions):
                rows.append(
                    {
                        "prompt": item.prompt,
                        "completion": text,
                        "input_toxicity": a.label["input_toxicity"],
                        "toxicity": a.label["toxicity"][i],
                        "relative_toxicity": a.label["relative_toxicity"][i],
                        "continuity": a.label["continuity"][i],
                        "id": ident(item),
                        "labeler": f"labeler-{a.user_id}",
                    }
                )
    return rows, total, total - len(anns)


def export_labels(
    db: Database | str | Path,
    project: str,
    out: str | Path,
    format: Format = "rankings",
    *,
    screened_only: bool = False,
    min_agreement: float | None = None,
    aggregate: Aggregate = "none",
) -> ExportResult:
    """Write ``project``'s labels to ``out`` (JSONL, atomically: a temporary file then a rename).

    DataError, and no file, when nothing is left to write (saying whether nothing was labelled
    or the filters left nothing).
    """
    database = db if isinstance(db, Database) else open_db(db, create=False)
    try:
        rows, total, left_out = export_rows(
            database,
            project,
            format,
            screened_only=screened_only,
            min_agreement=min_agreement,
            aggregate=aggregate,
        )
    finally:
        if database is not db:
            database.close()
    if not rows:
        what = {"rankings": "rank", "pairs": "rank"}.get(format, format.rstrip("s"))
        if total == 0:
            why = f"no {what} labels have been submitted by labelers yet"
        else:
            filters = []
            if screened_only:
                filters.append("--screened-only (see `rlfm label stats`: who passes)")
            if min_agreement is not None:
                filters.append(f"--min-agreement {min_agreement:g}")
            why = (
                f"all {total} {what} labels were left out by {' and '.join(filters)}"
                if left_out == total
                else f"the {total - left_out} labels left make no comparison"
            )
        raise DataError(f"project {project!r}: nothing to export: {why}")
    path = write_rankings(out, rows)
    return ExportResult(path, len(rows), total, left_out)
