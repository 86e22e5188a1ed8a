"""List the local Minari datasets ($MINARI_DATASETS_PATH, default ~/.minari/datasets) with
their episodes, steps, size on disk, mean return (and cost) and reference scores.

    rlfm offline list
"""

from __future__ import annotations

from dataclasses import dataclass

from rlfm.offline.datasets import datasets_root, human_bytes, list_datasets


@dataclass(frozen=True)
class Config:
    """List the local Minari datasets."""

    json: bool = False
    """Print one JSON object per dataset instead of a table."""


def run(cfg: Config) -> list[dict]:
    """Print the table (or JSON lines); returns the rows."""
    import json

    rows = list_datasets()
    if cfg.json:
        for r in rows:
            print(json.dumps(r))
        return rows
    if not rows:
        print(f"no datasets in {datasets_root()}")
        return rows

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    header = (
        "dataset",
        "episodes",
        "steps",
        "size",
        "mean return",
        "mean cost",
        "ref min",
        "ref max",
    )
    table = [
        (
            r["id"],
            str(r["episodes"]),
            str(r["steps"]),
            human_bytes(r["bytes"]),
            num(r["mean_return"]),
            num(r["mean_cost"]),
            num(r["ref_min_score"]),
            num(r["ref_max_score"]),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (header, *table)) for i in range(len(header))]
    print(f"{datasets_root()}:")
    for line in (header, *table):
        print(
            "  ".join(
                x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(line, widths))
            )
        )
    return rows
