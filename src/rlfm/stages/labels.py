"""Human feedback for the reward model, through the labelling app's database.

The pipeline's third step. The SFT policy samples K replies per prompt (at the temperatures
``temperatures``, cycled over the K); the items go into the labelling app's database
(``<out>/labels.db``: a project ``train`` and a project ``val``);
labelers rank them — the simulated labelers (``source: simulated``: ``feedback.simulate``,
the same validation and storage as the web form) or people (``source: human``: through
``rlfm label serve``) — and the rankings are exported (``feedback.export_labels``) to
``<out>/train.jsonl`` and ``<out>/val.jsonl``, the files ``rlfm reward train --data`` reads.
Exactly the path human labels take.

The gold labeler (rlfm/gold.py) is made here: its fluency term is calibrated on the SFT
replies sampled at the first temperature, with the language model ``gold_model`` (the
pre-trained model), and saved as ``<out>/gold.json`` for every later stage. The simulated labelers perceive its scores through
their noise and biases, and each exported ranking carries its completions' ``gold`` scores, so
the reward model's report can say how well it recovers the rule the labels only approximate.

With ``source: human`` the step imports the items, prints the address and the commands that
let people label them, and stops (``run`` returns None); run again, it continues once every
item has ``overlap`` labels. A finished step (both exports written) is skipped; a simulated
step interrupted before its exports starts again from scratch (it is deterministic).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select

from rlfm.config import Runtime, check, settings
from rlfm.data.preferences import write_rankings
from rlfm.data.rows import file_rows
from rlfm.errors import DataError
from rlfm.feedback.db import Annotation, Database, Item, open_db, project_by_name
from rlfm.gold import GoldLabeler, calibrate, load_gold
from rlfm.tracking import console

TRAIN, VAL = "train", "val"
"""The two projects (and export files) of a labelling step."""
SAMPLING = "sampling.json"
"""<out>/sampling.json: the policy, K and each reply's sampling temperature, for the report."""


@settings(Runtime)
class Config:
    """Collect rankings of the SFT policy's replies through the labelling app's database."""

    out: Path = Path("runs/demo/labels")
    """Directory of the database, the gold labeler and the exported rankings."""
    policy: Path = Path("runs/demo/sft")
    """The policy that samples the replies to rank (the SFT policy)."""
    gold_model: Path | None = Path("runs/demo/pretrain")
    """The language model of the gold labeler's fluency term (None: the text rule alone)."""
    source: Literal["simulated", "human"] = "simulated"
    """Who ranks: the built-in simulated labelers, or people in the web app."""
    labelers: int = 3
    """Simulated labelers (careful, long-reply-loving, hasty, then again)."""
    overlap: int = 1
    """Labels per item (each from a different labeler)."""
    noise: float = 1.0
    """Noise scale of the simulated labelers (0 = they agree with the gold labeler)."""
    prompts: Path | None = None
    """Prompts to sample replies for (as `rlfm ppo --prompts` reads them). Default: the plays'
    dialogue (training plays for training, held-out plays for validation)."""
    val_fraction: float = 0.1
    """Share of --prompts held out for validation."""
    num_prompts: int = 600
    """Training items (prompts, each with K replies)."""
    num_val_prompts: int = 100
    """Validation items."""
    k: int = 4
    """Replies sampled and ranked per prompt."""
    max_new_tokens: int = 48
    """Tokens per sampled reply at most."""
    temperatures: tuple[float, ...] = (1.0,)
    """Sampling temperatures of each prompt's K replies, cycled over them (e.g. 1.0 0.5: two
    of 4 replies at 1.0, two at 0.5). The gold labeler's fluency reference is measured on the
    replies at the first temperature."""
    url: str = "http://127.0.0.1:8000"
    """Where `rlfm label serve` answers (printed for people to label)."""

    def __post_init__(self) -> None:
        for name in ("labelers", "overlap", "num_prompts", "num_val_prompts", "max_new_tokens"):
            check(getattr(self, name) >= 1, name, f"must be ≥ 1, got {getattr(self, name)}")
        check(self.k >= 2, "k", f"a ranking needs at least 2 replies, got {self.k}")
        check(self.noise >= 0, "noise", f"must be ≥ 0, got {self.noise}")
        check(
            len(self.temperatures) >= 1 and all(t > 0 for t in self.temperatures),
            "temperatures",
            f"must be one or more numbers > 0, got {self.temperatures}",
        )
        check(
            self.source == "human" or self.labelers >= self.overlap,
            "labelers",
            f"{self.labelers} simulated labelers cannot give each item {self.overlap} labels",
        )


def exports(cfg: Config) -> tuple[Path, Path, Path]:
    """The step's results: training rankings, validation rankings, the gold labeler."""
    return cfg.out / f"{TRAIN}.jsonl", cfg.out / f"{VAL}.jsonl", cfg.out / "gold.json"


def run(cfg: Config) -> tuple[Path, Path, Path] | None:
    """Collect the labels; returns the exports, or None while people are still labelling."""
    train_file, val_file, gold_file = exports(cfg)
    if all(p.is_file() for p in (train_file, val_file, gold_file)):
        console.print(f"rlfm labels: {cfg.out} already finished; nothing to do")
        return train_file, val_file, gold_file
    db_path = cfg.out / "labels.db"
    if cfg.source == "simulated" or not db_path.is_file():
        if cfg.out.exists():  # a simulated step that did not finish: start it again
            shutil.rmtree(cfg.out)
        gold = sample_and_import(cfg, db_path, gold_file)
    else:
        gold = load_gold(gold_file)
    db = open_db(db_path)
    try:
        if cfg.source == "simulated":
            from rlfm.feedback.simulate import simulate

            for project in (TRAIN, VAL):
                result = simulate(db, project, cfg.labelers, cfg.seed, cfg.noise, gold)
                console.print(f"{project}: {result.total} rankings by simulated labelers")
        missing = _unlabelled(db, cfg.overlap)
        if missing:
            _ask_people(cfg, db_path, missing)
            return None
        for project, file in ((TRAIN, train_file), (VAL, val_file)):
            export(db, project, file, gold)
    finally:
        db.close()
    return train_file, val_file, gold_file


def sample_and_import(cfg: Config, db_path: Path, gold_file: Path) -> GoldLabeler:
    """Sample K replies per prompt, calibrate and save the gold labeler, import the items into
    a new database; returns the gold labeler."""
    from rlfm.builtin_task import sample_replies
    from rlfm.engine import Engine
    from rlfm.feedback import labels as lb
    from rlfm.stages import reward

    engine = Engine.create(cfg.device, cfg.precision)
    engine.seed(cfg.seed)
    rm_cfg = reward.Config(
        model=cfg.policy,
        prompts=cfg.prompts,
        val_fraction=cfg.val_fraction,
        num_prompts=cfg.num_prompts,
        num_val_prompts=cfg.num_val_prompts,
        seed=cfg.seed,
        device=cfg.device,
    )
    policy, tokenizer = reward.load_policy(rm_cfg, engine)
    splits = dict(zip((TRAIN, VAL), reward.builtin_prompts(rm_cfg, tokenizer)))
    cycled = [cfg.temperatures[i % len(cfg.temperatures)] for i in range(cfg.k)]
    temps = sorted(cycled, key=cfg.temperatures.index)  # each prompt's replies, in this order
    replies: dict[str, list[list[str]]] = {}
    for n, (project, prompts) in enumerate(splits.items()):
        replies[project] = [[] for _ in prompts]
        for i, t in enumerate(dict.fromkeys(temps)):  # each temperature's replies in one call
            with engine.autocast():
                part = sample_replies(
                    policy,
                    tokenizer,
                    prompts,
                    temps.count(t),
                    max_new_tokens=cfg.max_new_tokens,
                    temperature=t,
                    seed=cfg.seed + n + 1000 * i,
                )
            for rs, new in zip(replies[project], part):
                rs.extend(new)
    del policy
    sampling = {"policy": str(cfg.policy), "k": cfg.k, "temperatures": temps}
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / SAMPLING).write_text(json.dumps(sampling, indent=2) + "\n", encoding="utf-8")
    flat = [
        (p, r) for project in splits for p, rs in zip(splits[project], replies[project]) for r in rs
    ]
    if cfg.gold_model is not None:
        first = [
            (p, r)
            for project in splits
            for p, rs in zip(splits[project], replies[project])
            for r, t in zip(rs, temps)
            if t == temps[0]
        ]
        gold = calibrate(
            cfg.gold_model, [p for p, _ in first], [r for _, r in first], engine.device
        )
    else:
        gold = GoldLabeler()
    gold.save(gold_file)
    gold.scores([p for p, _ in flat], [r for _, r in flat])  # one batch; the labelers reuse them
    console.print(gold.describe)
    db = open_db(db_path)
    try:
        for project, prompts in splits.items():
            rows = [
                {"prompt": p, "completions": list(dict.fromkeys(rs)), "id": f"{project}-{j}"}
                for j, (p, rs) in enumerate(zip(prompts, replies[project]))
                if len(set(rs)) >= 2
            ]
            if not rows:
                raise DataError(
                    f"labels: every prompt's {cfg.k} replies were identical; the policy "
                    f"{cfg.policy} does not sample diverse replies"
                )
            with db.write() as s:
                lb.create_project(s, project, k=cfg.k, overlap=cfg.overlap)
            lb.import_rows(db, project, rows, source=f"{cfg.policy} samples ({project})")
            console.print(f"{project}: {len(rows)} items imported into {db_path}")
    finally:
        db.close()
    return gold


def _unlabelled(db: Database, overlap: int) -> dict[str, tuple[int, int]]:
    """Projects with items still short of ``overlap`` labels: (items short, items)."""
    out = {}
    with db.read() as s:
        for name in (TRAIN, VAL):
            proj = project_by_name(s, name)
            counts = dict(
                s.execute(
                    select(Annotation.item_id, func.count())
                    .where(Annotation.project_id == proj.id)
                    .group_by(Annotation.item_id)
                ).all()
            )
            items = s.scalars(select(Item.id).where(Item.project_id == proj.id)).all()
            short = sum(1 for i in items if counts.get(i, 0) < overlap)
            if short:
                out[name] = (short, len(items))
    return out


def _ask_people(cfg: Config, db_path: Path, missing: dict[str, tuple[int, int]]) -> None:
    """Print where the items are, how to let people label them, and how to continue."""
    left = "; ".join(
        f"{name}: {short} of {n} items need labels" for name, (short, n) in missing.items()
    )
    console.print(
        f"[bold]rlfm labels[/]: waiting for people to label ({left}, {cfg.overlap} label(s) each)\n"
        f"  the labelling app:  rlfm label serve --db {db_path}   → {cfg.url}\n"
        f"  an account:         rlfm label admin create --db {db_path} --email you@example.org\n"
        f"  labelers:           rlfm label invite --db {db_path} --email ada@example.org "
        f"--role labeler --project {TRAIN}   (and --project {VAL})\n"
        f"  progress:           rlfm label stats --db {db_path} --project {TRAIN}\n"
        "then run the same `rlfm pipeline` command again: it continues from here",
        soft_wrap=True,  # commands to copy: never broken across lines
    )


def export(db: Database, project: str, file: Path, gold: GoldLabeler) -> None:
    """Export a project's rankings (feedback.export_labels) and add each completion's gold
    score to its row."""
    from rlfm.feedback.export import export_labels

    result = export_labels(db, project, file)
    rows = [r.value for r in file_rows(file)]
    prompts = [r["prompt"] for r in rows for _ in r["completions"]]
    texts = [c for r in rows for c in r["completions"]]
    scores = iter(gold.scores(prompts, texts))
    for r in rows:
        r["gold"] = [round(next(scores), 4) for _ in r["completions"]]
    write_rankings(file, rows)
    console.print(f"{project}: {result.rows} rankings exported to {file}")
